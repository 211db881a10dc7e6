"""What a caller with a valid token cannot do to a node: keep watching after its token is
revoked, pin the node's threads with pending handoff reads, read a subject under another subject's
token, learn other tenants' subject counts; and a node without tokens keeps metrics on loopback.
Real node processes throughout."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from federation import tokens
from federation.client import Client, user
from federation.processes import node_command
from node.auth import hash_token, load_tokens, render_tokens
from selfmodel.admin.v1 import admin_pb2, admin_pb2_grpc
from selfmodel.errors import HandoffPending, HandoffTimeout, from_rpc_error
from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from sync.causal import CausalContext
from sync.codec import decode_token, encode_token
from tests.nodes import LocalCluster, NodeProcess, free_port

SUBJECT = model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id="u-1")
WAIT_S = 10.0


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def metric(node: NodeProcess, name: str) -> float:
    """A series' value in the node's /metrics (0 when absent)."""
    for line in node.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ")[1])
    return 0.0


def wait_until(what: str, condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        time.sleep(0.05)


@dataclass
class Watch:
    """A WatchSelfModel stream read on a thread of its own: its snapshots and how it ended."""

    stream: Any
    snapshots: list[model_pb2.SelfModelSnapshot] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)
    ended_at: float = 0.0
    code: grpc.StatusCode | None = None
    details: str = ""

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for snapshot in self.stream:
                self.snapshots.append(snapshot.snapshot)
        except grpc.RpcError as exc:
            self.code, self.details = exc.code(), exc.details()
        self.ended_at = time.monotonic()
        self.ended.set()


@pytest.fixture
def secured(start_node: Callable[..., NodeProcess], tmp_path: Path) -> Iterator[Any]:
    """A node with a token file holding two agents of acme, one of globex and an operator."""
    file = tmp_path / "tokens.toml"
    made = {
        name: tokens.create(file, agent, tenant, role, write=["*"])[0]
        for name, agent, tenant, role in (
            ("alice", "alice", "acme", "agent"),
            ("bob", "bob", "acme", "agent"),
            ("globex", "gina", "globex", "agent"),
            ("ops", "acme_ops", "acme", "operator"),
        )
    }
    node = start_node("sales", "--tokens", str(file))
    with grpc.insecure_channel(node.address) as channel:
        yield node, file, made, channel


def _narrow_to_globex(file: Path, token: str) -> None:
    """A hand edit of the token file: the token now belongs to tenant globex."""
    digest = hash_token(token)
    entries = [
        e if e.sha256 != digest else type(e)(e.sha256, e.agent, "globex", e.role, e.write)
        for e in load_tokens(file)
    ]
    _replace(file, render_tokens(entries))


def _remove(file: Path, token: str) -> None:
    digest = hash_token(token)
    _replace(file, render_tokens([e for e in load_tokens(file) if e.sha256 != digest]))


def _replace(file: Path, text: str) -> None:
    tmp = file.with_name(file.name + ".new")
    tmp.write_text(text)
    tmp.replace(file)


def _revoke_with_the_cli(file: Path, token: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "federation", "token", "revoke", "--file", str(file),
         "--token", token],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "code", "says"),
    [
        (_revoke_with_the_cli, grpc.StatusCode.UNAUTHENTICATED, "was revoked"),
        (_remove, grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token"),
        (_narrow_to_globex, grpc.StatusCode.PERMISSION_DENIED, "may not use subjects"),
    ],
    ids=["revoked", "removed", "narrowed"],
)
def test_a_token_taken_back_ends_its_open_watches_within_a_second_and_others_go_on(
    secured: Any, change: Callable[[Path, str], None], code: grpc.StatusCode, says: str
) -> None:
    node, file, made, channel = secured
    stub = selfmodel_pb2_grpc.SelfModelServiceStub(channel)
    req = selfmodel_pb2.WatchSelfModelRequest(subject=SUBJECT)
    doomed = Watch(stub.WatchSelfModel(req, metadata=bearer(made["alice"]), timeout=60))
    kept = Watch(stub.WatchSelfModel(req, metadata=bearer(made["bob"]), timeout=60))
    try:
        wait_until("both watches show the model", lambda: bool(doomed.snapshots and kept.snapshots))
        change(file, made["alice"])
        changed_at = time.monotonic()
        assert doomed.ended.wait(WAIT_S), "the watch of a token taken back kept running"
        assert doomed.code == code, (doomed.code, doomed.details)
        assert "watch ended" in doomed.details and says in doomed.details, doomed.details
        assert doomed.ended_at - changed_at < 1.0, (
            f"the watch ended {doomed.ended_at - changed_at:.2f}s after the token file changed"
        )
        assert metric(node, 'selfmodel_watches_ended_total{reason="revoked"}') == 1

        with Client(node.address, token=made["bob"], tenant="acme") as bob:
            bob.observe(user("u-1"), "Prefers chat", confidence=0.8, context="style")
        wait_until("the other watch sees the change", lambda: len(kept.snapshots) >= 2)
        assert not kept.ended.is_set()
    finally:
        doomed.stream.cancel()
        kept.stream.cancel()


def made_up(state_token: str, actor: str, counter: int) -> str:
    """``state_token``'s position with a dot ``actor:counter`` added."""
    [(subject, context)] = decode_token(state_token).items()
    return encode_token({subject: CausalContext({**context.vector, actor: counter})})


def test_made_up_handoff_positions_are_refused_at_once_and_ordinary_calls_still_answer(
    secured: Any,
) -> None:
    node, _, made, channel = secured
    stub = selfmodel_pb2_grpc.SelfModelServiceStub(channel)
    with Client(node.address, token=made["alice"], tenant="acme") as alice:
        written = alice.observe(user("u-1"), "Prefers chat", confidence=0.8, context="style")
    own_actor = written.observation_id.rpartition(":")[0]
    forged = {
        "an actor of no node of the cluster": made_up(written.token, "mallory.1.00000000", 5),
        "a counter of this run's actor it never issued": made_up(written.token, own_actor, 10**9),
        "a counter far past what the node holds": made_up(written.token, "sales.0.feedbeef", 10**9),
    }
    calls = []
    for token in forged.values():
        for _ in range(40):  # 120 waits: far more than the node would hold
            req = selfmodel_pb2.GetSelfModelRequest(subject=SUBJECT, at_least=token)
            calls.append(stub.GetSelfModel.future(req, metadata=bearer(made["alice"]), timeout=60))
    plain = selfmodel_pb2.GetSelfModelRequest(subject=SUBJECT)
    assert stub.GetSelfModel(plain, metadata=bearer(made["bob"]), timeout=WAIT_S).snapshot.beliefs
    whats = [what for what in forged for _ in range(40)]
    for what, call in zip(whats, calls, strict=True):
        with pytest.raises(grpc.RpcError) as refused:
            call.result()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
        assert "no node has issued that position" in refused.value.details(), what
    assert metric(node, 'selfmodel_handoff_refused_total{reason="implausible"}') == len(calls)
    assert metric(node, "selfmodel_handoff_timeouts_total") == 0, "no made-up position waited"


def test_a_token_of_one_subject_does_not_read_another(secured: Any) -> None:
    node, _, made, channel = secured
    with Client(node.address, token=made["alice"], tenant="acme") as alice:
        written = alice.observe(user("u-1"), "Prefers chat", confidence=0.8, context="style")
        assert alice.self_model(user("u-1"), at_least=written.token).beliefs()
    stub = selfmodel_pb2_grpc.SelfModelServiceStub(channel)
    u2 = model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id="u-2")
    for call in (
        lambda: stub.GetSelfModel(
            selfmodel_pb2.GetSelfModelRequest(subject=u2, at_least=written.token),
            metadata=bearer(made["alice"]), timeout=WAIT_S,
        ),
        lambda: stub.ExplainBelief(
            selfmodel_pb2.ExplainBeliefRequest(
                subject=u2, context="style", key="k", at_least=written.token
            ),
            metadata=bearer(made["alice"]), timeout=WAIT_S,
        ),
    ):  # fmt: skip
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith("at_least: is a handoff token of acme/user/u-1")
        assert "not of acme/user/u-2" in refused.value.details()


def test_pending_handoff_reads_hold_no_thread_and_ordinary_calls_stay_fast(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    """400 reads naming a position a peer may yet deliver (the finding held 400 threads for 30 s)
    are each answered at once, UNAVAILABLE with HANDOFF_POSITION_PENDING and a retry delay;
    clients asking again until their deadlines leave the node's threads free for other calls."""
    file = tmp_path / "tokens.toml"
    made = {name: tokens.create(file, name, "acme", write=["*"])[0] for name in ("alice", "bob")}
    # One watch at most: the node's pool is then 65 threads (max_watchers + 64), far fewer than
    # the reads below, which would all be held if a pending read held its thread.
    cluster = make_cluster(
        ("sales",),
        proxies=False,
        limits={"max_watchers": 1},
        node_args={"sales": ["--tokens", str(file)]},
    )
    node = cluster.nodes["sales"]
    with Client(node.address, token=made["alice"], tenant="acme") as alice:
        written = alice.observe(user("u-1"), "Prefers chat", confidence=0.8, context="style")
    # A dot of an earlier run of this node: plausible (a peer could deliver it), never merged.
    pending = made_up(written.token, "sales.0.feedbeef", 3)
    channel = grpc.insecure_channel(node.address)
    stub = selfmodel_pb2_grpc.SelfModelServiceStub(channel)
    req = selfmodel_pb2.GetSelfModelRequest(subject=SUBJECT, at_least=pending)
    started = time.monotonic()
    calls = [
        stub.GetSelfModel.future(req, metadata=bearer(made["alice"]), timeout=60)
        for _ in range(400)
    ]
    plain = selfmodel_pb2.GetSelfModelRequest(subject=SUBJECT)
    assert stub.GetSelfModel(plain, metadata=bearer(made["bob"]), timeout=WAIT_S).snapshot.beliefs
    for call in calls:
        with pytest.raises(grpc.RpcError) as answered:
            call.result(timeout=WAIT_S)
        assert answered.value.code() == grpc.StatusCode.UNAVAILABLE
        error = from_rpc_error(answered.value)
        assert isinstance(error, HandoffPending), error
        assert error.metadata["actor"] == "sales.0.feedbeef" and error.metadata["counter"] == "3"
        assert error.retry_after_s is not None and 0 < error.retry_after_s <= 1.0
    assert time.monotonic() - started < WAIT_S, "400 reads a deadline of 60 s answered at once"
    assert metric(node, "selfmodel_handoff_pending_total") >= 400

    # Clients asking again until their deadline, while others read: no read is held in the node.
    timed_out: list[float] = []

    def hold_on() -> None:
        with Client(node.address, token=made["alice"], tenant="acme", timeout_s=3.0) as client:
            try:
                client.self_model(user("u-1"), at_least=pending)
            except HandoffTimeout:
                timed_out.append(time.monotonic())

    holders = [threading.Thread(target=hold_on, daemon=True) for _ in range(32)]
    for t in holders:
        t.start()
    slowest = 0.0
    with Client(node.address, token=made["bob"], tenant="acme") as bob:
        for _ in range(20):
            t0 = time.monotonic()
            assert bob.self_model(user("u-1")).beliefs()
            slowest = max(slowest, time.monotonic() - t0)
    for t in holders:
        t.join(WAIT_S)
    channel.close()
    assert len(timed_out) == len(holders), "every pending read ended at its client's deadline"
    assert slowest < 1.0, f"an ordinary read took {slowest:.2f}s beside pending ones"
    # The node counts each pending read's last answer, the one that ended it at the deadline.
    assert metric(node, "selfmodel_handoff_timeouts_total") == len(holders)


def test_get_status_counts_subjects_only_for_operators_and_within_their_tenant(
    secured: Any,
) -> None:
    node, _, made, channel = secured
    for who, tenant, ids in (("alice", "acme", ["u-1", "u-2"]), ("globex", "globex", ["g-1"])):
        with Client(node.address, token=made[who], tenant=tenant) as client:
            for i in ids:
                client.observe(user(i), "Prefers chat", confidence=0.8, context="style")
    admin = admin_pb2_grpc.AdminServiceStub(channel)

    def subjects(who: str) -> int:
        status = admin.GetStatus(
            admin_pb2.GetStatusRequest(), metadata=bearer(made[who]), timeout=WAIT_S
        )
        assert status.node == "sales"
        return int(status.subjects)

    assert subjects("ops") == 2, "an operator sees its own tenant's subjects, not globex's"
    assert subjects("alice") == 0 and subjects("globex") == 0, "agents see no subject count"


def test_without_tokens_a_node_refuses_to_serve_metrics_beyond_loopback(
    tmp_path: Path,
) -> None:
    command = node_command(
        "open",
        data_dir=tmp_path / "data",
        listen=f"127.0.0.1:{free_port()}",
        metrics=f"0.0.0.0:{free_port()}",
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert re.fullmatch(
        r"selfmodel node: refusing to serve metrics on 0\.0\.0\.0:\d+ without a token file: .*",
        line,
    ), line
    assert "--tokens" in line


def test_unread_watches_share_one_resolution_per_change_and_hold_one_snapshot_each(
    start_node: Callable[..., NodeProcess],
) -> None:
    """128 watches of a 230 KB subject, read once and then never: a change is resolved once for
    all of them, and each holds about one snapshot in the node (before: 136-168 MiB, about
    five snapshots each, and a resolution per watch and change)."""
    node = start_node()
    with Client(node.address, agent="writer", tenant="acme") as writer:
        for i in range(110):  # about 230 KB of statements
            statement = f"{i:04} " + "s" * 1990
            writer.observe(user("u-1"), statement, confidence=0.8, context="c", key=f"k{i}")
    watchers, per_connection = 128, 16  # the node's default watches per connection
    req = selfmodel_pb2.WatchSelfModelRequest(subject=SUBJECT, include_uncertain=True)
    channels = [
        grpc.insecure_channel(node.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(watchers // per_connection)
    ]
    streams = []
    rss_before = rss_kib(node)
    try:
        for i in range(watchers):
            stub = selfmodel_pb2_grpc.SelfModelServiceStub(channels[i // per_connection])
            stream = stub.WatchSelfModel(req, metadata=(("x-agent-id", f"w{i}"),), timeout=120)
            size = next(stream).ByteSize()  # then never read again
            streams.append(stream)
        assert size > 220_000
        wait_until("every watch is open", lambda: metric(node, "selfmodel_watches") == watchers)
        before = metric(node, 'selfmodel_resolutions_total{cause="change"}')
        changes = 5
        with Client(node.address, agent="writer", tenant="acme") as writer:
            for i in range(changes):
                writer.observe(user("u-1"), f"change {i}", confidence=0.9, context="c", key="k0")
        wait_until(
            "the watches to have resolved the last change",
            lambda: metric(node, 'selfmodel_resolutions_total{cause="change"}') >= before + 1,
        )
        resolved = metric(node, 'selfmodel_resolutions_total{cause="change"}') - before
        assert resolved <= changes, f"{changes} changes resolved {resolved} times"
        # The bound holds throughout the next two seconds, while the watches take the changes.
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            grown = (rss_kib(node) - rss_before) * 1024
            assert grown < 2.5 * watchers * size, (
                f"{watchers} unread watches of a {size}-byte model grew the node by "
                f"{grown / 2**20:.0f} MiB"
            )
            time.sleep(0.1)
    finally:
        for stream in streams:
            stream.cancel()
        for channel in channels:
            channel.close()


def rss_kib(node: NodeProcess) -> int:
    assert node.proc is not None
    status = Path(f"/proc/{node.proc.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
