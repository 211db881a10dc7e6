"""Every error reason a caller can cause is reached on a real node process, and arrives as a
google.rpc.Status with its ErrorInfo (reason, domain, metadata) and the details of its kind:
BadRequest for a field, QuotaFailure for a limit, RetryInfo where asking again helps.

The reasons of other conditions are reached where those conditions are built: clock ahead of
the peers and an exhausted counter in tests/faults/test_clock.py, a full disk in
tests/faults/test_full_disk.py, peers' credentials and foreign writes in
tests/integration/test_sync_auth.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from federation import tokens
from selfmodel.admin.v1 import admin_pb2, admin_pb2_grpc
from selfmodel.errors import DOMAIN, REASONS, Reason, SelfModelError, from_rpc_error
from selfmodel.sync.v1 import sync_pb2
from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from sync.causal import CausalContext
from sync.codec import decode_token, encode_token
from tests.harness import LocalCluster, start_with_fresh_ports

ACME_U1 = model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id="u-1")
GLOBEX = model_pb2.Subject(tenant="globex", kind=model_pb2.SUBJECT_KIND_USER, id="g-1")
ACME_T1 = model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_TEAM, id="t-1")


@dataclass
class Node:
    cluster: LocalCluster
    tokens: dict[str, str]
    file: Path
    written: str  # a handoff token of acme/user/u-1
    actor: str  # the node's actor of this run

    @property
    def address(self) -> str:
        return self.cluster.address("sales")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One node with tokens: small subject and watch limits, so each limit is reached cheaply."""
    root = tmp_path_factory.mktemp("errors")
    file = root / "tokens.toml"
    made = {
        "alice": tokens.create(file, "alice", "acme", write=["style", "facts"])[0],
        "bob": tokens.create(file, "bob", "acme", write=["*"])[0],
        "elsewhere": tokens.create(file, "eve", "acme", write=["*"], domains=["support"])[0],
        "revoked": tokens.create(file, "rex", "acme", write=["*"])[0],
        "hr": tokens.create(file, "hr", "acme", members=True)[0],
    }
    tokens.revoke(file, token=made["revoked"])

    def attempt(n: int) -> LocalCluster:
        return LocalCluster(
            root / f"cluster-{n}",
            ("sales",),
            proxies=False,
            tokens=file,
            limits={"max_watchers": 2, "max_watches_per_connection": 1},
            node_args={"sales": ["--max-subject-observations", "3"]},
        )

    cluster = start_with_fresh_ports(attempt)
    try:
        with cluster.client("sales", "alice", token=made["alice"]) as alice:
            written = alice.observe("user:u-1", "Prefers chat", confidence=0.8, context="style")
        actor = written.observation_id.rpartition(":")[0]
        yield Node(cluster, made, file, written.token, actor)
    finally:
        cluster.stop()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def with_dot(token: str, actor: str, counter: int) -> str:
    [(subject, context)] = decode_token(token).items()
    return encode_token({subject: CausalContext({**context.vector, actor: counter})})


def stub(channel: grpc.Channel) -> selfmodel_pb2_grpc.SelfModelServiceStub:
    return selfmodel_pb2_grpc.SelfModelServiceStub(channel)


def admin(channel: grpc.Channel) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(channel)


def get(at_least: str = "", subject: model_pb2.Subject = ACME_U1) -> Any:
    return selfmodel_pb2.GetSelfModelRequest(subject=subject, at_least=at_least)


def observe(**fields: Any) -> selfmodel_pb2.ObserveRequest:
    base: dict[str, Any] = {
        "subject": ACME_U1,
        "context": "facts",
        "statement": "s",
        "confidence": 0.7,
    }
    return selfmodel_pb2.ObserveRequest(**{**base, **fields})


# Each case: the reason, and what causes it (a call on a channel to the node, which raises).
Case = Callable[[grpc.Channel, Node], object]


def _undecodable(channel: grpc.Channel, node: Node) -> object:
    raw = channel.unary_unary("/selfmodel.v1.SelfModelService/Observe")
    return raw(b"\xff\xff\xff\xff", timeout=5, metadata=bearer(node.tokens["bob"]))


def _too_large(channel: grpc.Channel, node: Node) -> object:
    for i in range(4):  # the limit is 3 observations per subject
        req = observe(subject=model_pb2.Subject(tenant="acme", kind=1, id="big"), key=f"k{i}")
        stub(channel).Observe(req, timeout=5, metadata=bearer(node.tokens["bob"]))
    return None


def _reused_key(channel: grpc.Channel, node: Node) -> object:
    md = bearer(node.tokens["bob"])
    stub(channel).Observe(observe(idempotency_key="k-1", key="first"), timeout=5, metadata=md)
    return stub(channel).Observe(
        observe(idempotency_key="k-1", key="second"), timeout=5, metadata=md
    )


def _watches(per_connection: bool) -> Case:
    def case(channel: grpc.Channel, node: Node) -> object:
        req = selfmodel_pb2.WatchSelfModelRequest(subject=ACME_U1)
        md = bearer(node.tokens["bob"])
        channels = [grpc.insecure_channel(node.address, options=[
            ("grpc.use_local_subchannel_pool", 1)]) for _ in range(3)]  # fmt: skip
        streams = []
        try:
            # One watch on each of two connections takes the node's two; a second watch on the
            # first connection passes its own limit, a watch on a third connection the node's.
            for c in channels[:2]:
                streams.append(stub(c).WatchSelfModel(req, timeout=30, metadata=md))
                next(streams[-1])
            target = channels[0] if per_connection else channels[2]
            streams.append(stub(target).WatchSelfModel(req, timeout=30, metadata=md))
            return next(streams[-1])
        finally:
            for s in streams:
                s.cancel()
            for c in channels:
                c.close()

    return case


CASES: dict[Reason, Case] = {
    Reason.FIELD_INVALID: lambda c, n: stub(c).Observe(
        observe(confidence=float("nan")), timeout=5, metadata=bearer(n.tokens["bob"])
    ),
    Reason.CONFIDENCE_REQUIRED: lambda c, n: stub(c).Observe(
        selfmodel_pb2.ObserveRequest(subject=ACME_U1, context="facts", statement="s"),
        timeout=5,
        metadata=bearer(n.tokens["bob"]),
    ),
    Reason.REQUEST_UNDECODABLE: _undecodable,
    Reason.HANDOFF_TOKEN_INVALID: lambda c, n: stub(c).GetSelfModel(
        get("AAAAgarbageAAAA"), timeout=5, metadata=bearer(n.tokens["bob"])
    ),
    Reason.HANDOFF_TOKEN_OTHER_SUBJECT: lambda c, n: stub(c).GetSelfModel(
        get(n.written, model_pb2.Subject(tenant="acme", kind=1, id="u-2")),
        timeout=5,
        metadata=bearer(n.tokens["bob"]),
    ),
    Reason.HANDOFF_POSITION_IMPLAUSIBLE: lambda c, n: stub(c).GetSelfModel(
        get(with_dot(n.written, "mallory.1.00000000", 5)),
        timeout=5,
        metadata=bearer(n.tokens["bob"]),
    ),
    Reason.HANDOFF_POSITION_PENDING: lambda c, n: stub(c).GetSelfModel(
        get(with_dot(n.written, "sales.0.feedbeef", 3)),
        timeout=30,
        metadata=bearer(n.tokens["bob"]),
    ),
    Reason.TOKEN_MISSING: lambda c, n: stub(c).GetSelfModel(get(), timeout=5),
    Reason.TOKEN_MALFORMED: lambda c, n: stub(c).GetSelfModel(
        get(), timeout=5, metadata=(("authorization", "Basic abc"),)
    ),
    Reason.TOKEN_UNKNOWN: lambda c, n: stub(c).GetSelfModel(
        get(), timeout=5, metadata=bearer("not-a-token-of-this-node")
    ),
    Reason.TOKEN_REVOKED: lambda c, n: stub(c).GetSelfModel(
        get(), timeout=5, metadata=bearer(n.tokens["revoked"])
    ),
    Reason.TENANT_DENIED: lambda c, n: stub(c).GetSelfModel(
        get(subject=GLOBEX), timeout=5, metadata=bearer(n.tokens["alice"])
    ),
    Reason.CONTEXT_DENIED: lambda c, n: stub(c).Observe(
        observe(context="budget"), timeout=5, metadata=bearer(n.tokens["alice"])
    ),
    Reason.DOMAIN_DENIED: lambda c, n: stub(c).Observe(
        observe(), timeout=5, metadata=bearer(n.tokens["elsewhere"])
    ),
    Reason.OPERATOR_REQUIRED: lambda c, n: stub(c).ForgetSubject(
        selfmodel_pb2.ForgetSubjectRequest(subject=ACME_U1),
        timeout=5,
        metadata=bearer(n.tokens["alice"]),
    ),
    Reason.SOURCE_DENIED: lambda c, n: stub(c).Retract(
        selfmodel_pb2.RetractRequest(subject=ACME_U1, context="style", key="k", source="bob"),
        timeout=5,
        metadata=bearer(n.tokens["alice"]),
    ),
    Reason.MEMBERSHIP_DENIED: lambda c, n: admin(c).AddMember(
        admin_pb2.AddMemberRequest(group=ACME_T1, member=ACME_U1),
        timeout=5,
        metadata=bearer(n.tokens["alice"]),
    ),
    Reason.MEMBER_INVALID: lambda c, n: admin(c).AddMember(
        admin_pb2.AddMemberRequest(group=ACME_T1, member=ACME_T1),
        timeout=5,
        metadata=bearer(n.tokens["hr"]),
    ),
    Reason.PEER_DENIED: lambda c, n: c.unary_unary(
        "/selfmodel.sync.v1.SyncService/GetBuckets",
        request_serializer=sync_pb2.GetBucketsRequest.SerializeToString,
    )(sync_pb2.GetBucketsRequest(), timeout=5, metadata=n.cluster.peer_metadata("sales")),
    Reason.SUBJECT_TOO_LARGE: _too_large,
    Reason.PAGE_TOKEN_INVALID: lambda c, n: stub(c).ListSubjects(
        selfmodel_pb2.ListSubjectsRequest(page_token="bm90LWEtcGFnZQ"),
        timeout=5,
        metadata=bearer(n.tokens["bob"]),
    ),
    Reason.IDEMPOTENCY_KEY_REUSED: _reused_key,
    Reason.WATCHES_EXHAUSTED: _watches(per_connection=False),
    Reason.CONNECTION_WATCHES_EXHAUSTED: _watches(per_connection=True),
}
# Reached elsewhere (see the module docstring), or not by a caller at all.
ELSEWHERE = {
    Reason.PEER_UNAUTHENTICATED,
    Reason.PEER_FOREIGN_WRITE,
    Reason.COUNTER_EXHAUSTED,
    Reason.CLOCK_AHEAD,
    Reason.CLOCK_AHEAD_OF_PEERS,
    Reason.DISK_FULL,
    Reason.REPLICATION_BEHIND,  # tests/faults/test_admission.py
    Reason.MEMBER_GROUPS_EXHAUSTED,  # tests/integration/test_group_attacks.py
}
# A node starting while its peers are away: test_a_starting_node_says_so_and_when_to_ask_again.
STARTING = {Reason.NODE_STARTING}
# Conditions no caller can bring about on purpose: a failed write's I/O error or a store being
# reopened (tests/unit/test_errors.py checks their details), a stopping node's delta streams
# (answered in a window of milliseconds), a bug (INTERNAL); a retried write whose first
# call a node holds only in part (a window between two deltas of a peer, or the rest lost
# since) is built on an engine by tests/unit/test_idempotency.py, not on a node process.
UNREACHABLE_HERE = {
    Reason.IDEMPOTENT_WRITE_PENDING,
    Reason.IDEMPOTENT_WRITE_LOST,
    Reason.STORE_UNWRITABLE,
    Reason.NODE_STOPPING,
    Reason.INTERNAL,
}


def test_every_reason_is_reached_here_or_named_where_it_is() -> None:
    assert set(CASES) | ELSEWHERE | STARTING | UNREACHABLE_HERE == set(Reason)
    assert not set(CASES) & (ELSEWHERE | STARTING | UNREACHABLE_HERE)


def refusal(case: Case, node: Node) -> tuple[grpc.RpcError, SelfModelError]:
    with grpc.insecure_channel(node.address) as channel, pytest.raises(grpc.RpcError) as failed:
        case(channel, node)
    return failed.value, from_rpc_error(failed.value)


def details(exc: grpc.RpcError) -> dict[str, Any]:
    """The call's google.rpc.Status details by kind, read with grpcio-status alone."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.Status: {exc.code()} {exc.details()}"
    found: dict[str, Any] = {}
    for detail in status.details:
        for kind in ("ErrorInfo", "BadRequest", "QuotaFailure", "RetryInfo"):
            message = getattr(error_details_pb2, kind)()
            if detail.Unpack(message):
                assert kind not in found, f"two {kind} details"
                found[kind] = message
    return found


@pytest.mark.parametrize("reason", list(CASES), ids=str)
def test_the_node_answers_each_reason_with_its_details(node: Node, reason: Reason) -> None:
    raw, error = refusal(CASES[reason], node)
    doc = REASONS[reason]
    assert raw.code() == grpc.StatusCode[doc.code], (raw.code(), raw.details())
    found = details(raw)
    info = found["ErrorInfo"]
    assert (info.reason, info.domain) == (reason, DOMAIN), raw.details()
    assert set(info.metadata) <= set(doc.metadata), (set(info.metadata), doc.metadata)
    assert error.reason == reason and error.metadata == dict(info.metadata)
    assert error.status == doc.code
    assert ("BadRequest" in found) == (doc.code == "INVALID_ARGUMENT" and "field" in doc.metadata)
    if "BadRequest" in found:
        [violation] = found["BadRequest"].field_violations
        assert violation.field and violation.description
        assert raw.details() == f"{violation.field}: {violation.description}"
    assert ("QuotaFailure" in found) == (reason in _QUOTA)
    assert ("RetryInfo" in found) == (doc.code == "UNAVAILABLE")
    # Messages say the same in every language: no Python reprs, no parser's type names.
    assert not re.search(r"\b(nan|inf)\b|Error parsing|with type '|Traceback", raw.details())


_QUOTA = {
    Reason.SUBJECT_TOO_LARGE,
    Reason.WATCHES_EXHAUSTED,
    Reason.CONNECTION_WATCHES_EXHAUSTED,
}


def test_field_violations_name_the_field_the_rule_the_limit_and_its_setting(node: Node) -> None:
    _, error = refusal(
        lambda c, n: stub(c).Observe(
            observe(statement="x" * 2001), timeout=5, metadata=bearer(n.tokens["bob"])
        ),
        node,
    )
    assert [(v.field, v.description) for v in error.violations] == [
        ("statement", "must be at most 2000 characters, got 2001 (setting max_statement)")
    ]
    assert error.metadata == {"field": "statement", "limit": "2000", "setting": "max_statement"}
    _, nan = refusal(CASES[Reason.FIELD_INVALID], node)
    assert str(nan) == "confidence: must be a finite number within [0, 1], got NaN"


def test_a_garbage_handoff_token_is_refused_without_the_parsers_words(node: Node) -> None:
    raw, _ = refusal(CASES[Reason.HANDOFF_TOKEN_INVALID], node)
    assert raw.details() == (
        "at_least: is not a handoff token returned by a write or read (it does not decode to "
        "a position)"
    )


def test_a_pending_position_names_the_missing_dot_and_a_short_retry_delay(node: Node) -> None:
    _, error = refusal(CASES[Reason.HANDOFF_POSITION_PENDING], node)
    assert error.metadata["actor"] == "sales.0.feedbeef" and error.metadata["counter"] == "3"
    assert error.metadata["held"] == "0" and "final" not in error.metadata
    assert error.retry_after_s is not None and 0.005 <= error.retry_after_s <= 1.0


def test_a_subject_limit_names_the_subject_the_limit_and_the_setting(node: Node) -> None:
    _, error = refusal(_too_large, node)
    assert error.metadata == {
        "subject": "acme/user/big",
        "limit": "observations",
        "value": "4",
        "maximum": "3",
        "setting": "max_subject_observations",
    }
    [quota] = error.quota
    assert quota.subject == "subject acme/user/big" and "max_subject_observations" in (
        quota.description
    )


def test_admin_calls_carry_details_too(node: Node) -> None:
    with grpc.insecure_channel(node.address) as channel:
        audit = channel.unary_unary(
            "/selfmodel.admin.v1.AdminService/ListAudit",
            request_serializer=admin_pb2.ListAuditRequest.SerializeToString,
        )
        with pytest.raises(grpc.RpcError) as refused:
            audit(admin_pb2.ListAuditRequest(), timeout=5, metadata=bearer(node.tokens["alice"]))
    error = from_rpc_error(refused.value)
    assert error.reason == "OPERATOR_REQUIRED"
    assert error.metadata == {"agent": "alice", "action": "read the audit log"}


def test_a_starting_node_says_so_and_when_to_ask_again(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """A node whose previous run stopped cleanly asks its peers to vouch for it before it takes
    calls; with its peer away it keeps asking for claim_wait_s, answering NODE_STARTING."""
    cluster = make_cluster(("sales", "support"), proxies=False, sync={"claim_wait_s": 8.0})
    sales = cluster.nodes["sales"]
    for node in cluster.nodes.values():
        node.stop()
    sales.launch()
    deadline = time.monotonic() + 8.0
    seen: list[SelfModelError] = []
    with grpc.insecure_channel(cluster.address("sales")) as channel:
        # Refused connections first (UNAVAILABLE from gRPC itself, no reason), until it serves.
        while not any(e.reason for e in seen) and time.monotonic() < deadline:
            try:
                stub(channel).GetSelfModel(get(), timeout=2, metadata=(("x-agent-id", "a"),))
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                seen.append(from_rpc_error(exc))
            time.sleep(0.05)
    sales.await_started()
    [error] = [e for e in seen if e.reason][:1]
    assert error.reason == "NODE_STARTING" and error.metadata == {"node": "sales"}
    assert error.retry_after_s is not None and 0 < error.retry_after_s <= 1.0
