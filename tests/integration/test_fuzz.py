"""Hostile input against a running node: every answer is a proper status, nothing else changes.

Hypothesis generates malformed, oversized and boundary requests for every method of the
SelfModel and Admin services (and random bytes as their serialized requests). Runs are
derandomized: the same examples every run, so any failure replays (hypothesis prints the
failing example). Each run sends a few thousand requests in well under a minute.
"""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from federation import tokens
from selfmodel.admin.v1 import admin_pb2, admin_pb2_grpc
from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from tests.nodes import NodeProcess

pytestmark = pytest.mark.slow

EXAMPLES = 2000  # typed requests; plus RAW_EXAMPLES random-bytes requests
RAW_EXAMPLES = 800
CALL_TIMEOUT_S = 3.0
OVERSIZED = "x" * (4 * 1024 * 1024 + 16)  # beyond the node's 4 MiB message limit
SEEDED = model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id="seeded")


def _page_token(value: dict[str, Any]) -> str:
    """A page token as a node writes them (node.listing), for another listing than asked."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


PAGE_OF_GLOBEX = _page_token({"v": 1, "of": "ListSubjects", "listing": ["globex", 0], "after": ""})
PAGE_OF_BOB = _page_token(
    {"v": 1, "of": "GetSelfModel", "subject": ["acme", 1, "bob"], "after": ["a", "b"]}
)
PAGE_AFTER_NOTHING = _page_token(
    {"v": 1, "of": "ListSubjects", "listing": ["acme", 0], "after": ["zz"]}
)

# Any other status (INTERNAL, UNKNOWN, UNAVAILABLE, or a client-side deadline) is a failure.
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
}

SERVICES = [
    selfmodel_pb2.DESCRIPTOR.services_by_name["SelfModelService"],
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
]
METHODS = [f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods]
STREAMING = {f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods if m.server_streaming}


@dataclass
class Target:
    node: NodeProcess
    channel: grpc.Channel
    tokens: dict[str, str]
    baseline: str = ""
    sent: int = 0

    def md(self, who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[who]}"),)

    def seeded_token(self) -> str:
        stub = selfmodel_pb2_grpc.SelfModelServiceStub(self.channel)
        req = selfmodel_pb2.GetSelfModelRequest(subject=SEEDED, include_uncertain=True)
        reply = stub.GetSelfModel(req, metadata=self.md("operator"), timeout=CALL_TIMEOUT_S)
        return str(reply.snapshot.handoff_token)


@pytest.fixture
def target(start_node: Callable[..., NodeProcess], tmp_path: Path) -> Iterator[Target]:
    file = tmp_path / "tokens.toml"
    made = {
        "fuzzer": tokens.create(file, "fuzzer", "acme", "agent", ["purchase_*", "team"])[0],
        "operator": tokens.create(file, "acme_ops", "acme", "operator", ["*"])[0],
        "globex": tokens.create(file, "globex_agent", "globex", "agent", ["*"])[0],
        "seeder": tokens.create(file, "seeder", "acme", "agent", ["*"])[0],
        "revoked": tokens.create(file, "gone", "acme", "agent", ["*"])[0],
    }
    tokens.revoke(file, agent="gone")
    node = start_node("fuzzed", "--tokens", str(file), "--domain", "sales", "--no-fsync")
    options = [("grpc.max_send_message_length", 16 * 1024 * 1024)]
    with grpc.insecure_channel(node.address, options=options) as channel:
        t = Target(node, channel, made)
        stub = selfmodel_pb2_grpc.SelfModelServiceStub(channel)
        for ctx, key, statement in [
            ("purchase_motivation", "motivation", "Wants quick time-to-value"),
            ("team", "team_size", "12 people"),
            ("budget", "", "Budget is tight"),
        ]:
            req = selfmodel_pb2.ObserveRequest(
                subject=SEEDED, context=ctx, key=key, statement=statement, confidence=0.8
            )
            req.evidence.add(
                kind=model_pb2.EVIDENCE_KIND_MESSAGE, ref="m-1", quote="we need it fast"
            )
            stub.Observe(req, metadata=t.md("seeder"), timeout=CALL_TIMEOUT_S)
        t.baseline = t.seeded_token()
        yield t


# -- strategies ----------------------------------------------------------------------------
#
# Each request starts valid (fields drawn from small pools of good values) and then has up to
# three of its fields replaced by hostile values, so the fuzz reaches every check: decoding,
# authentication, validation, authorization and the engine, not only the first one in line.

ID_CHARS = string.ascii_letters + string.digits + "_.:@+-"
hostile_ids = st.one_of(
    st.sampled_from(["", "a" * 129, "-bad", "a b", "é", "u\x00", "x" * 10_000]),
    st.text(ID_CHARS, min_size=1, max_size=140),
    st.text(max_size=40),
)
hostile_contexts = st.one_of(
    st.sampled_from(["", "a" * 65, "Team", "9lives", "purchase-motivation"]),
    st.text(string.ascii_lowercase + "_0", min_size=1, max_size=70),
    st.text(max_size=20),
)
hostile_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-0.0, 1.0000001, -1e-300, 5e-324, float("nan"), float("inf")]),
)
good_text = st.text(string.ascii_letters + " .,", min_size=1, max_size=40).filter(str.strip)


EVIDENCE_KINDS = st.sampled_from([model_pb2.EVIDENCE_KIND_MESSAGE, model_pb2.EVIDENCE_KIND_TICKET])
EVIDENCE_TEXT = st.text(string.ascii_letters, max_size=20)
EVIDENCE_MS = st.integers(0, 2**41)
EVIDENCE_FLAW = st.sampled_from(["kind", "ref", "quote", "time", "none"])
HOSTILE_EVIDENCE_KIND = st.one_of(
    st.sampled_from([model_pb2.EVIDENCE_KIND_UNSPECIFIED, 8]), st.integers(-(2**31), 2**31 - 1)
)
HOSTILE_EVIDENCE_TEXT = st.one_of(st.sampled_from(["q" * 2001, "\x01"]), st.text(max_size=40))
INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)


@st.composite
def evidence(draw: st.DrawFn, hostile: bool) -> list[model_pb2.Evidence]:
    items = []
    for _ in range(draw(st.sampled_from([1, 2, 17] if hostile else [0, 0, 1, 2]))):
        ev = model_pb2.Evidence(
            kind=draw(EVIDENCE_KINDS), ref=draw(EVIDENCE_TEXT), quote=draw(EVIDENCE_TEXT)
        )
        if draw(st.booleans()):
            ev.time.FromMilliseconds(draw(EVIDENCE_MS))
        flaw = draw(EVIDENCE_FLAW) if hostile else "none"
        if flaw == "kind":
            ev.kind = draw(HOSTILE_EVIDENCE_KIND)
        elif flaw in ("ref", "quote"):
            setattr(ev, flaw, draw(HOSTILE_EVIDENCE_TEXT))
        elif flaw == "time":
            ev.time.seconds = draw(INT64)
            ev.time.nanos = draw(INT32)
        items.append(ev)
    return items


GOOD: dict[str, st.SearchStrategy[Any]] = {
    "tenant": st.sampled_from(["acme", "acme", "globex"]),
    "kind": st.sampled_from([1, 2, 3]),
    "id": st.sampled_from(["seeded", "u-1", "u-2", "a" * 128]),
    "subject": st.just(True),
    "context": st.sampled_from(["purchase_motivation", "team", "budget", "a" * 64]),
    "key": st.sampled_from(["", "motivation", "team_size", "k" * 128]),
    "statement": st.one_of(good_text, st.just("x" * 2000)),
    "confidence": st.floats(0.0, 1.0),
    "evidence": evidence(False),
    "source": st.sampled_from(["", "seeder", "fuzzer"]),
    "contexts": st.lists(st.sampled_from(["purchase_motivation", "team", "budget"]), max_size=3),
    "min_confidence": st.floats(0.0, 1.0),
    "include_uncertain": st.booleans(),
    "at_least": st.just(""),
    "after": st.just(""),
    "limit": st.integers(0, 2000),
    "count": st.sampled_from([1, 2, 5]),
    "page_size": st.sampled_from([0, 1, 10, 1000]),
    "page_token": st.just(""),
    "idempotency_key": st.sampled_from(["", "call-1", "call-2"]),
    "list_kind": st.sampled_from([0, 1, 2, 3]),
    "setting_field": st.integers(1, 5),
    "policy": st.sampled_from([1, 2]),
    "number": st.floats(0.0, 1.0),
}
HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "tenant": st.one_of(hostile_ids, st.just("ACME")),
    "kind": st.one_of(st.sampled_from([0, 4, -1]), st.integers(-(2**31), 2**31 - 1)),
    "id": hostile_ids,
    "subject": st.just(False),  # left unset
    "context": hostile_contexts,
    "key": st.one_of(st.sampled_from(["k" * 129, "Key", "a b", "-k"]), st.text(max_size=30)),
    "statement": st.one_of(
        st.sampled_from(["", "   ", "x" * 2001, "tab\there", "nul\x00", "\x7f", "é" * 2001]),
        st.text(max_size=60),
    ),
    "confidence": hostile_floats,
    "evidence": evidence(True),
    "source": st.one_of(hostile_ids, st.sampled_from(["operator", "acme_ops"])),
    "contexts": st.one_of(
        st.lists(hostile_contexts, min_size=1, max_size=3), st.just(["team"] * 65)
    ),
    "min_confidence": hostile_floats,
    "include_uncertain": st.booleans(),
    "at_least": st.one_of(
        st.text(max_size=80),
        st.binary(max_size=60).map(bytes.hex),
        st.sampled_from(["x" * 70_000, "AAAA", "=", "g" * 65_536]),
    ),
    "after": st.one_of(
        st.text(max_size=40),
        st.binary(min_size=16, max_size=16).map(bytes.hex),
        st.just("f" * 32),
    ),
    "limit": st.integers(0, 2**32 - 1),
    "count": st.sampled_from([0, 501]),
    "page_size": st.integers(1001, 2**32 - 1),
    "page_token": st.one_of(
        st.text(max_size=80),
        st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode()),
        st.sampled_from([PAGE_OF_GLOBEX, PAGE_OF_BOB, PAGE_AFTER_NOTHING, "e30=", "W10="]),
    ),
    "idempotency_key": st.one_of(st.text(max_size=40), st.just("k" * 129)),
    "list_kind": st.integers(-(2**31), 2**31 - 1),
    "setting_field": st.one_of(st.just(0), st.integers(6, 2**31 - 1), st.integers(-(2**31), -1)),
    "policy": st.integers(-(2**31), 2**31 - 1),
    "number": hostile_floats,
}
SUBJECT_FIELDS = ["tenant", "kind", "id", "subject"]
OBSERVATION_FIELDS = [*SUBJECT_FIELDS, "context", "key", "statement", "confidence", "evidence"]
FIELDS = {
    "Observe": [*OBSERVATION_FIELDS, "idempotency_key"],
    "ObserveBatch": ["count"],
    "Retract": [*SUBJECT_FIELDS, "context", "key", "source", "idempotency_key"],
    "GetSelfModel": [
        *SUBJECT_FIELDS,
        "contexts",
        "min_confidence",
        "include_uncertain",
        "at_least",
        "page_size",
        "page_token",
    ],
    "ListSubjects": ["tenant", "list_kind", "page_size", "page_token"],
    "ListContexts": [*SUBJECT_FIELDS, "at_least"],
    "BatchGetSelfModels": [*SUBJECT_FIELDS, "count", "contexts", "include_uncertain", "at_least"],
    "GetPolicy": ["contexts"],
    "WatchSelfModel": [*SUBJECT_FIELDS, "contexts", "min_confidence", "include_uncertain"],
    "ExplainBelief": [*SUBJECT_FIELDS, "context", "key", "at_least"],
    "ForgetSubject": [*SUBJECT_FIELDS, "idempotency_key"],
    "ListAudit": ["after", "limit"],
    "ListSourceWeights": ["context", "tenant"],
    "GetSettings": [],
    "SetSetting": ["context", "setting_field", "policy", "number"],
    "ClearSetting": ["context", "setting_field"],
    "SetReliability": ["source", "context", "number"],
    "ClearReliability": ["source", "context"],
    "GetStatus": [],
    "ListSourceContributions": ["tenant", "source", "page_size", "page_token"],
    "WithdrawSource": ["tenant", "source"],
    "LiftSourceWithdrawal": ["tenant", "source"],
    "AddMember": SUBJECT_FIELDS,
    "RemoveMember": SUBJECT_FIELDS,
    "ListMembers": [*SUBJECT_FIELDS, "page_size", "page_token"],
}


SPOILED = {m: st.lists(st.sampled_from(f), max_size=3, unique=True) for m, f in FIELDS.items() if f}


@st.composite
def fields(draw: st.DrawFn, method: str) -> dict[str, Any]:
    """Good values for every field of a method, then hostile ones for up to three of them."""
    values = {name: draw(GOOD[name]) for name in FIELDS[method]}
    if method in SPOILED:
        for name in draw(SPOILED[method]):
            values[name] = draw(HOSTILE[name])
    return values


def build(name: str, v: dict[str, Any], draw: st.DrawFn) -> Message:
    msg: Any
    if name == "Observe":
        msg = selfmodel_pb2.ObserveRequest(
            context=v["context"], key=v["key"], statement=v["statement"],
            confidence=v["confidence"], evidence=v["evidence"],
            idempotency_key=v.get("idempotency_key", ""),
        )  # fmt: skip
    elif name == "ObserveBatch":
        msg = selfmodel_pb2.ObserveBatchRequest()
        first = build("Observe", draw(fields("Observe")), draw)
        msg.observations.append(first)
        for _ in range(v["count"] - 1):
            msg.observations.append(
                first if v["count"] > 5 else build("Observe", draw(fields("Observe")), draw)
            )
        if v["count"] == 0:
            del msg.observations[:]
        return msg  # type: ignore[no-any-return]
    elif name == "Retract":
        msg = selfmodel_pb2.RetractRequest(
            context=v["context"], key=v["key"], source=v["source"],
            idempotency_key=v["idempotency_key"],
        )  # fmt: skip
    elif name in ("GetSelfModel", "WatchSelfModel"):
        cls = selfmodel_pb2.GetSelfModelRequest if name == "GetSelfModel" else (
            selfmodel_pb2.WatchSelfModelRequest)  # fmt: skip
        msg = cls(
            contexts=v["contexts"], min_confidence=v["min_confidence"],
            include_uncertain=v["include_uncertain"],
        )  # fmt: skip
        if name == "GetSelfModel":
            msg.at_least = v["at_least"]
            msg.page_size, msg.page_token = v["page_size"], v["page_token"]
    elif name == "ExplainBelief":
        msg = selfmodel_pb2.ExplainBeliefRequest(
            context=v["context"], key=v["key"], at_least=v["at_least"]
        )
    elif name == "ListSubjects":
        return selfmodel_pb2.ListSubjectsRequest(
            tenant=v["tenant"], kind=v["list_kind"], page_size=v["page_size"],
            page_token=v["page_token"],
        )  # fmt: skip
    elif name == "ListContexts":
        msg = selfmodel_pb2.ListContextsRequest(at_least=v["at_least"])
    elif name == "GetPolicy":
        return selfmodel_pb2.GetPolicyRequest(contexts=v["contexts"])
    elif name == "BatchGetSelfModels":
        batch = selfmodel_pb2.BatchGetSelfModelsRequest(
            contexts=v["contexts"], include_uncertain=v["include_uncertain"],
            at_least=v["at_least"],
        )  # fmt: skip
        for i in range(v["count"]):
            one = model_pb2.Subject(tenant=v["tenant"], kind=v["kind"], id=f"{v['id'][:120]}-{i}")
            batch.subjects.append(one if v["subject"] else model_pb2.Subject())
        return batch
    elif name == "ForgetSubject":
        msg = selfmodel_pb2.ForgetSubjectRequest(idempotency_key=v["idempotency_key"])
        if v["id"] == SEEDED.id:
            v["id"] = "not-seeded"  # forget only other subjects
    elif name == "ListAudit":
        return admin_pb2.ListAuditRequest(after=v["after"], limit=v["limit"])
    elif name == "ListSourceWeights":
        return admin_pb2.ListSourceWeightsRequest(context=v["context"], tenant=v["tenant"])
    elif name == "GetSettings":
        return admin_pb2.GetSettingsRequest()
    elif name == "SetSetting":
        setting = admin_pb2.SetSettingRequest(context=v["context"], field=v["setting_field"])
        if draw(st.booleans()):
            setting.policy = v["policy"]
        else:
            setting.number = v["number"]
        return setting
    elif name == "ClearSetting":
        return admin_pb2.ClearSettingRequest(context=v["context"], field=v["setting_field"])
    elif name == "SetReliability":
        return admin_pb2.SetReliabilityRequest(
            source=v["source"], context=v["context"], reliability=v["number"]
        )
    elif name == "ClearReliability":
        return admin_pb2.ClearReliabilityRequest(source=v["source"], context=v["context"])
    elif name == "GetStatus":
        return admin_pb2.GetStatusRequest()
    elif name == "ListSourceContributions":
        return admin_pb2.ListSourceContributionsRequest(
            tenant=v["tenant"], source=v["source"], page_size=v["page_size"],
            page_token=v["page_token"],
        )  # fmt: skip
    elif name == "WithdrawSource":
        return admin_pb2.WithdrawSourceRequest(tenant=v["tenant"], source=v["source"])
    elif name == "LiftSourceWithdrawal":
        return admin_pb2.LiftSourceWithdrawalRequest(tenant=v["tenant"], source=v["source"])
    elif name in ("AddMember", "RemoveMember"):
        # the group from these fields, the member (or none) from a second draw of them
        pair = admin_pb2.AddMemberRequest if name == "AddMember" else admin_pb2.RemoveMemberRequest
        change = pair()
        other = draw(fields(name))
        if v["subject"]:
            change.group.CopyFrom(model_pb2.Subject(tenant=v["tenant"], kind=v["kind"], id=v["id"]))
        if other["subject"]:
            change.member.CopyFrom(
                model_pb2.Subject(tenant=other["tenant"], kind=other["kind"], id=other["id"])
            )
        return change  # type: ignore[no-any-return]
    elif name == "ListMembers":
        listing = admin_pb2.ListMembersRequest(page_size=v["page_size"], page_token=v["page_token"])
        if v["subject"]:
            listing.group.CopyFrom(
                model_pb2.Subject(tenant=v["tenant"], kind=v["kind"], id=v["id"])
            )
        return listing
    else:
        raise AssertionError(f"no strategy for {name}: add one")
    if v["subject"]:
        msg.subject.CopyFrom(model_pb2.Subject(tenant=v["tenant"], kind=v["kind"], id=v["id"]))
    return msg  # type: ignore[no-any-return]


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, Message]:
    method = draw(st.sampled_from(METHODS))
    name = method.rsplit("/", 1)[1]
    if name not in FIELDS:
        raise AssertionError(f"no strategy for {method}: add one")
    return method, build(name, draw(fields(name)), draw)


whos = st.sampled_from(
    ["fuzzer"] * 6 + ["operator"] * 2
    + ["globex", "revoked", "none", "wrong", "malformed", "twice", "header_only"]
)  # fmt: skip


def metadata(target: Target, who: str) -> tuple[tuple[str, str], ...]:
    special = {
        "none": (),
        "wrong": (("authorization", "Bearer not-a-token"),),
        "malformed": (("authorization", "Bearer"),),
        "twice": target.md("fuzzer") + target.md("operator"),
        "header_only": (("x-agent-id", "seeder"),),
    }
    return special[who] if who in special else target.md(who)


# -- calls ---------------------------------------------------------------------------------


def oversized(batch: bool = False) -> Message:
    """Past the node's 4 MiB message limit: one huge statement, or a batch of large ones."""
    one = selfmodel_pb2.ObserveRequest(
        subject=SEEDED, context="team", confidence=0.5,
        statement=OVERSIZED if not batch else OVERSIZED[: 1024 * 1024],
    )  # fmt: skip
    if not batch:
        return one
    return selfmodel_pb2.ObserveBatchRequest(observations=[one] * 5)


def send(target: Target, method: str, payload: bytes, md: tuple[tuple[str, str], ...]) -> Any:
    """Sends serialized bytes; returns (code, details). A streaming call reads one message."""
    target.sent += 1
    try:
        if method in STREAMING:
            stream = target.channel.unary_stream(method)(
                payload, metadata=md, timeout=CALL_TIMEOUT_S
            )
            try:
                next(stream)
            finally:
                stream.cancel()
        else:
            target.channel.unary_unary(method)(payload, metadata=md, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def check(target: Target, method: str, code: grpc.StatusCode, details: str) -> None:
    handoff_wait = code == grpc.StatusCode.DEADLINE_EXCEEDED and "has not yet merged" in details
    assert code == grpc.StatusCode.OK or code in REFUSALS or handoff_wait, (method, code, details)
    now = target.seeded_token()
    if code == grpc.StatusCode.OK:
        target.baseline = now  # an accepted write may change it; a refused one never does
    else:
        assert now == target.baseline, f"{method} refused ({code}) yet changed the seeded subject"


def test_every_method_answers_hostile_requests_with_a_proper_status(target: Target) -> None:
    @settings(
        max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
        suppress_health_check=list(HealthCheck), print_blob=True,
    )  # fmt: skip
    @given(request=requests(), who=whos)
    @example(request=("/selfmodel.v1.SelfModelService/Observe", oversized()), who="fuzzer")
    @example(
        request=("/selfmodel.v1.SelfModelService/ObserveBatch", oversized(batch=True)), who="fuzzer"
    )
    def typed(request: tuple[str, Message], who: str) -> None:
        method, msg = request
        code, details = send(target, method, msg.SerializeToString(), metadata(target, who))
        check(target, method, code, details)

    @settings(
        max_examples=RAW_EXAMPLES, derandomize=True, database=None, deadline=None,
        suppress_health_check=list(HealthCheck), print_blob=True,
    )  # fmt: skip
    @given(
        method=st.sampled_from(METHODS),
        payload=st.one_of(st.binary(max_size=300), st.sampled_from([b"\xff" * 8, b"\x0a\xff\xff"])),
        who=whos,
    )
    def raw(method: str, payload: bytes, who: str) -> None:
        code, details = send(target, method, payload, metadata(target, who))
        check(target, method, code, details)

    typed()
    raw()
    assert target.sent >= EXAMPLES + RAW_EXAMPLES

    code, _ = send(target, "/selfmodel.v1.SelfModelService/NoSuchMethod", b"", target.md("fuzzer"))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    health = health_pb2_grpc.HealthStub(target.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    status = admin_pb2_grpc.AdminServiceStub(target.channel).GetStatus(
        admin_pb2.GetStatusRequest(), metadata=target.md("fuzzer"), timeout=CALL_TIMEOUT_S
    )
    assert status.serving and target.node.running
    assert "Traceback" not in target.node.log(), target.node.log()[-4000:]
