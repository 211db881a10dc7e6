"""Real nodes never serve a snapshot without a change the read waited for, full or summary.

A three-node cluster takes random observes, retracts and forgets on random nodes (each a fresh
subject per example, so examples share the cluster). After every change each node is read
with the handoff token of every change so far, through the raw GetSelfModel: the node has then
merged every change, so a snapshot kept from before any of them would show. Each read must
equal the reference model of docs/semantics.md (tests/faults/test_model_based.py), and its
summary read (``max_positions = 0``) must show the same beliefs with counts equal to the full
read's lists.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation import retries
from federation.client import user
from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from sync.codec import merge_tokens
from sync.hlc import wall_ms
from tests.faults.test_model_based import (
    CONFIDENCES,
    CTX,
    KEYS,
    NODES,
    SOURCES,
    STATEMENTS,
    Model,
    _after_this_millisecond,
)
from tests.harness import LocalCluster, start_with_fresh_ports
from tests.nodes import NEVER_FADE
from tests.unit.strategies import LAWS

pytestmark = pytest.mark.faults

node = st.sampled_from(NODES)
source = st.sampled_from(SOURCES)
key = st.sampled_from(KEYS)
step = st.one_of(
    st.tuples(
        st.just("observe"), node, source, key, st.sampled_from(STATEMENTS),
        st.sampled_from(CONFIDENCES),
    ),
    st.tuples(st.just("retract"), node, source, key),
    st.tuples(st.just("forget"), node),
)  # fmt: skip
_subjects = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("snapshot-reads")

    def attempt(n: int) -> LocalCluster:
        return LocalCluster(root / f"c{n}", NODES, policies=NEVER_FADE)

    started = start_with_fresh_ports(attempt)
    try:
        yield started
    finally:
        started.stop()


def read(
    stub: selfmodel_pb2_grpc.SelfModelServiceStub, subject: str, token: str, limit: int | None
):
    req = selfmodel_pb2.GetSelfModelRequest(include_uncertain=True, at_least=token)
    req.subject.CopyFrom(model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER))
    req.subject.id = subject
    if limit is not None:
        req.max_positions = limit
    # A node that has not merged the token's position answers HANDOFF_POSITION_PENDING at once:
    # asked again, as every client does, until the 30 s deadline.
    reply = retries.call(
        retries.RetryPolicy(), stub.GetSelfModel, req, 30.0, (("x-agent-id", "auditor"),)
    )
    return reply.snapshot


def shown(model: model_pb2.SelfModelSnapshot) -> dict[str, tuple[str, frozenset]]:
    return {
        b.key: (
            b.statement,
            frozenset((p.source, p.statement) for p in (*b.supporters, *b.dissenters)),
        )
        for b in model.beliefs
    }


@settings(LAWS, max_examples=8)
@given(steps=st.lists(step, min_size=1, max_size=10))
def test_every_node_reads_every_change_it_waited_for_in_full_and_in_summary(
    cluster: LocalCluster, steps: list[tuple]
) -> None:
    subject = f"snap-{next(_subjects)}"
    model = Model()
    tokens: list[str] = []
    channels = {n: grpc.insecure_channel(cluster.address(n)) for n in NODES}
    clients = {(n, s): cluster.client(n, s) for n in NODES for s in (*SOURCES, "operator")}
    try:
        stubs = {n: selfmodel_pb2_grpc.SelfModelServiceStub(c) for n, c in channels.items()}
        for op in steps:
            kind, at = op[0], op[1]
            if kind == "observe":
                _, _, who, k, statement, conf = op
                written = clients[(at, who)].observe(
                    user(subject), statement, confidence=conf, context=CTX, key=k
                )
                tokens.append(written.token)
                model.observe(subject, who, k, statement, conf)
            elif kind == "retract":
                _, _, who, k = op
                tokens.append(clients[(at, who)].retract(user(subject), CTX, k).token)
                model.retract(subject, who, k)
            else:
                tokens.append(clients[(at, "operator")].forget(user(subject)))
                model.forget(subject)
            _after_this_millisecond(wall_ms())
            everything = merge_tokens(tokens)
            for n, stub in stubs.items():
                full = read(stub, subject, everything, None)
                assert shown(full) == model.beliefs(subject), (n, op)
                summary = read(stub, subject, everything, 0)
                assert [(b.key, b.statement, b.confidence) for b in summary.beliefs] == [
                    (b.key, b.statement, b.confidence) for b in full.beliefs
                ], n
                for f, s in zip(full.beliefs, summary.beliefs, strict=True):
                    assert (s.supporter_count, s.dissenter_count) == (
                        len(f.supporters), len(f.dissenters),
                    ) == (f.supporter_count, f.dissenter_count)  # fmt: skip
                    assert not s.supporters and not s.dissenters
            # The Python client's summary read agrees with the raw one.
            view = clients[(at, "operator")].self_model(
                user(subject), at_least=everything, include_uncertain=True, max_positions=0
            )
            assert [(b.key, b.supporter_count, b.dissenter_count) for b in view.all_beliefs] == [
                (b.key, b.supporter_count, b.dissenter_count) for b in full.beliefs
            ]
            assert not any(b.supporters or b.dissenters for b in view.all_beliefs)
    finally:
        for c in clients.values():
            c.close()
        for ch in channels.values():
            ch.close()
