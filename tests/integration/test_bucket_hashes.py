"""Anti-entropy's bucket hashes tell two replicas apart whenever their states differ, subjects of
one bucket with equal states included (node.store.digests: a subject's digest is bound to its
key before it is XORed into its bucket), on a real Store and on real node processes."""

from __future__ import annotations

import hashlib
import itertools
import time
from pathlib import Path

from federation.client import user
from node.engine import Engine
from node.store import BUCKETS, Store, bucket_of
from node.store.digests import FORMAT_ROW, bucket_row
from selfmodel.v1 import model_pb2, selfmodel_pb2
from sync.causal import CausalContext, Dot
from sync.crdt import NO_ERASE, SubjectState
from sync.delivery import Delta
from sync.hlc import pack, wall_ms
from sync.observation import Observation, Subject, SubjectKind
from tests.harness import LocalCluster


def twins(count: int = 2) -> list[str]:
    """User ids whose subjects (tenant acme) share one bucket."""
    by_bucket: dict[int, list[str]] = {}
    for i in itertools.count():
        uid = f"twin-{i}"
        found = by_bucket.setdefault(
            bucket_of(Subject("acme", SubjectKind.USER, uid).storage_key()), []
        )
        found.append(uid)
        if len(found) == count:
            return found
    raise AssertionError("unreachable")


def same_state(subject: Subject, statement: str, hlc: int, n: int = 1) -> Delta:
    """A state of ``subject`` equal, but for its subject, to that of every other subject given
    the same arguments: the ``n``-th observation of one actor, which replaced the ones before."""
    dot = Dot("east.1", n)
    obs = Observation(dot, "facts", "k", "agent", statement, 0.8, (), hlc, "east")
    seen = CausalContext.of([Dot("east.1", i) for i in range(1, n + 1)])
    return Delta(SubjectState(subject, NO_ERASE, seen, {dot: obs}))


def from_scratch(store: Store, subjects: list[Subject]) -> list[bytes]:
    """Each bucket: the XOR, over its subjects written, of blake2b(digest + key)."""
    hashes = [0] * BUCKETS
    for subject in subjects:
        state = store.load(subject)
        assert state is not None
        bound = hashlib.blake2b(state.digest() + subject.storage_key(), digest_size=16)
        hashes[bucket_of(subject.storage_key())] ^= int.from_bytes(bound.digest(), "big")
    return [h.to_bytes(16, "big") for h in hashes]


def test_two_subjects_of_one_bucket_with_equal_states_do_not_cancel_out(tmp_path: Path) -> None:
    subjects = [Subject("acme", SubjectKind.USER, uid) for uid in twins()]
    bucket = bucket_of(subjects[0].storage_key())
    store = Store(tmp_path / "db", "west")
    engine = Engine(store)
    hlc = pack(wall_ms())
    try:
        empty = store.bucket_hashes()[bucket]
        engine.merge_remote([same_state(s, "on the free plan", hlc) for s in subjects])
        assert store.load(subjects[0]).digest() == store.load(subjects[1]).digest()  # type: ignore[union-attr]
        first = store.bucket_hashes()[bucket]
        assert first != empty, "two equal states cancelled out of their bucket's hash"
        # Both changed alike: the bucket's hash moves (a peer without the change must see it).
        engine.merge_remote([same_state(s, "on the paid plan", hlc + 1, 2) for s in subjects])
        assert store.bucket_hashes()[bucket] not in (first, empty)
        assert store.bucket_hashes() == from_scratch(store, subjects)
    finally:
        store.close()


def test_a_store_with_bucket_hashes_of_another_format_has_them_rebuilt_when_it_opens(
    tmp_path: Path,
) -> None:
    subjects = [Subject("acme", SubjectKind.USER, f"u{i}") for i in range(40)] + [
        Subject("acme", SubjectKind.USER, uid) for uid in twins()
    ]
    store = Store(tmp_path / "db", "west")
    engine = Engine(store)
    engine.merge_remote([same_state(s, "on the free plan", pack(wall_ms())) for s in subjects])
    expected = store.bucket_hashes()
    assert expected == from_scratch(store, subjects)
    # As an older release left it: plain digests XORed, and no format row.
    for b in range(BUCKETS):
        store._cf["digest"][bucket_row(b)] = bytes(16)
    del store._cf["meta"][FORMAT_ROW]
    store.close()

    reopened = Store(tmp_path / "db", "west")
    try:
        assert reopened.bucket_hashes() == expected
        assert reopened.get_meta("meta", FORMAT_ROW) is not None
    finally:
        reopened.close()
    again = Store(tmp_path / "db", "west")  # read as written, not rebuilt again
    try:
        assert again.bucket_hashes() == expected
    finally:
        again.close()


def _say(uid: str, statement: str) -> selfmodel_pb2.ObserveRequest:
    return selfmodel_pb2.ObserveRequest(
        subject=model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id=uid),
        context="plan", key="tier", statement=statement, confidence=0.8,
    )  # fmt: skip


def test_anti_entropy_repairs_subjects_of_one_bucket_changed_alike_that_the_stream_lost(
    make_cluster,
) -> None:
    """West misses a batch that changed two subjects of one bucket alike (its stream falls
    behind east's outbox retention while it is down): only anti-entropy can bring it, and only
    if their bucket's hashes differ."""
    ids = twins()
    cluster: LocalCluster = make_cluster(
        ("east", "west"), sync={"retention_entries": 1, "anti_entropy_s": 0.5}
    )
    with cluster.client("east", "agent") as east:
        east.observe_batch([_say(uid, "free") for uid in ids])
    cluster.wait_converged()
    west = cluster.nodes["west"]
    west.stop()
    with cluster.client("east", "agent") as east:
        east.observe_batch([_say(uid, "paid") for uid in ids])
        for i in range(3):  # past the outbox retention: the batch's deltas go from it
            east.observe(user(f"other-{i}"), "x", confidence=0.8, context="plan", key="tier")
    west.launch()
    west.await_started()
    deadline = time.monotonic() + 30
    with cluster.client("west", "agent") as reader:
        while True:
            held = {
                uid: [b.statement for b in reader.self_model(user(uid)).beliefs("plan")]
                for uid in ids
            }
            if all(h == ["paid"] for h in held.values()):
                break
            assert time.monotonic() < deadline, f"west still holds {held}"
            time.sleep(0.2)
    cluster.wait_converged()
