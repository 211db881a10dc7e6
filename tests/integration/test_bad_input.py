"""A table of bad requests, sent with the raw generated stub to one real node.

Each is refused with INVALID_ARGUMENT naming the field (RESOURCE_EXHAUSTED for a message over the
4 MiB limit), and changes nothing: the pre-seeded subject's model, its causal position and the
node's write counters are the same before and after. The base request of every case is valid and
aimed at the seeded slot by the seeding agent, so a request that slipped through would show.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from federation.client import Client, user
from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from tests.harness import policies_toml
from tests.nodes import NEVER_FADE

TENANT = "acme"
SEED_AGENT = "seed_agent"
SEEDED_ID = "u-seeded"
CONTEXT, KEY, STATEMENT = "budget", "amount", "Has a 50k budget"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
TIMEOUT_S = 5.0


def seeded_subject() -> model_pb2.Subject:
    return model_pb2.Subject(tenant=TENANT, kind=model_pb2.SUBJECT_KIND_USER, id=SEEDED_ID)


def observe_request() -> selfmodel_pb2.ObserveRequest:
    req = selfmodel_pb2.ObserveRequest(
        subject=seeded_subject(),
        context=CONTEXT,
        key=KEY,
        statement="Has a 90k budget",
        confidence=0.9,
    )
    req.evidence.add(
        kind=model_pb2.EVIDENCE_KIND_CALL, ref="gong://call/1", quote="ninety thousand"
    )
    return req


BASE: dict[str, Callable[[], Any]] = {
    "Observe": observe_request,
    "ObserveBatch": lambda: selfmodel_pb2.ObserveBatchRequest(
        observations=[observe_request(), observe_request()]
    ),
    "GetSelfModel": lambda: selfmodel_pb2.GetSelfModelRequest(subject=seeded_subject()),
    "ExplainBelief": lambda: selfmodel_pb2.ExplainBeliefRequest(
        subject=seeded_subject(), context=CONTEXT, key=KEY
    ),
    "Retract": lambda: selfmodel_pb2.RetractRequest(
        subject=seeded_subject(), context=CONTEXT, key=KEY
    ),
    "ForgetSubject": lambda: selfmodel_pb2.ForgetSubjectRequest(subject=seeded_subject()),
    "WatchSelfModel": lambda: selfmodel_pb2.WatchSelfModelRequest(subject=seeded_subject()),
}

_PART = re.compile(r"(\w+)(?:\[(\d+)\])?")


def _resolve(msg: Any, path: str) -> tuple[Any, str]:
    """The message holding the last part of ``path`` ('evidence[0].kind') and that part's name."""
    *parents, last = path.split(".")
    for part in parents:
        match = _PART.fullmatch(part)
        assert match, part
        msg = getattr(msg, match.group(1))
        if match.group(2) is not None:
            msg = msg[int(match.group(2))]
    return msg, last


CLEAR = object()  # a Case value: remove the field from the request


@dataclass(frozen=True)
class Case:
    method: str
    path: str  # the request field to break ("" for none)
    value: Any  # what to set there; CLEAR removes it; a callable mutates the request
    field: str | None  # the field the node must name; None for RESOURCE_EXHAUSTED
    code: grpc.StatusCode = INVALID
    agent: str = SEED_AGENT

    def request(self) -> Any:
        req = BASE[self.method]()
        if callable(self.value):
            self.value(req)
        elif self.path:
            holder, name = _resolve(req, self.path)
            if self.value is CLEAR:
                holder.ClearField(name)
            elif isinstance(self.value, list):
                del getattr(holder, name)[:]
                getattr(holder, name).extend(self.value)
            else:
                setattr(holder, name, self.value)
        return req


def evidence_17_items(req: selfmodel_pb2.ObserveRequest) -> None:
    """The base request's one piece of evidence plus 16: one over the limit."""
    for i in range(16):
        req.evidence.add(kind=model_pb2.EVIDENCE_KIND_MESSAGE, ref=f"mail://{i}")


def _batch_of(n: int) -> Callable[[selfmodel_pb2.ObserveBatchRequest], None]:
    def mutate(req: selfmodel_pb2.ObserveBatchRequest) -> None:
        del req.observations[:]
        req.observations.extend(observe_request() for _ in range(n))

    mutate.__name__ = f"observations=({n} items)"
    return mutate


def _keyless(statement: str) -> Callable[[selfmodel_pb2.ObserveRequest], None]:
    def mutate(req: selfmodel_pb2.ObserveRequest) -> None:
        req.ClearField("key")
        req.statement = statement

    mutate.__name__ = f"key=(missing) statement={statement!r}"
    return mutate


def _second_of_batch(path: str, value: Any) -> Callable[[selfmodel_pb2.ObserveBatchRequest], None]:
    def mutate(req: selfmodel_pb2.ObserveBatchRequest) -> None:
        holder, name = _resolve(req.observations[1], path)
        if value is CLEAR:
            holder.ClearField(name)
        else:
            setattr(holder, name, value)

    shown = "(missing)" if value is CLEAR else repr(value)
    mutate.__name__ = f"observations[1].{path}={shown}"
    return mutate


def _kind(value: int) -> Callable[[Any], None]:
    def mutate(req: Any) -> None:
        req.subject.kind = value  # an open enum: unknown numbers travel as they are

    mutate.__name__ = f"subject.kind={value}"
    return mutate


def _ids(method: str, part: str) -> list[Case]:
    field = f"subject.{part}"
    bad = ["", "x" * 129, "ac me", "-acme", "acme/other", "acmé", "a\x00b", "../etc"]
    return [Case(method, field, v, field) for v in bad]


FIVE_MIB = 5 * 1024 * 1024

CASES: list[Case] = [
    # Observe: confidence
    *(Case("Observe", "confidence", v, "confidence") for v in (math.nan, math.inf, -math.inf)),
    *(Case("Observe", "confidence", v, "confidence") for v in (-0.1, 1.5, 1.0000001, -1e-300)),
    Case("Observe", "confidence", CLEAR, "confidence"),  # absent: never read as 0
    # Observe: subject
    Case("Observe", "subject", CLEAR, "subject"),
    *_ids("Observe", "tenant"),
    *_ids("Observe", "id"),
    Case("Observe", "", _kind(model_pb2.SUBJECT_KIND_UNSPECIFIED), "subject.kind"),
    Case("Observe", "", _kind(7), "subject.kind"),
    # Observe: context and key
    *(
        Case("Observe", "context", v, "context")
        for v in ("", "Budget", "1budget", "budget-plan", "budget plan", "b" * 65, "budget\n")
    ),
    *(Case("Observe", "key", v, "key") for v in ("Amount", "-amount", "a b", "a" * 129, "k\x07")),
    # Observe: statement
    *(
        Case("Observe", "statement", v, "statement")
        for v in (
            "",
            "   ",
            "\t\n",
            "x" * 2001,
            "bell\x07",
            "nul\x00byte",
            "esc\x1b[31m",
            "del\x7f",
        )
    ),
    *(Case("Observe", "", _keyless(v), "statement") for v in ("...", " . ! ", "!")),
    # Observe: evidence
    Case("Observe", "", evidence_17_items, "evidence"),
    *(
        Case("Observe", "evidence[0].kind", v, "evidence[0].kind")
        for v in (model_pb2.EVIDENCE_KIND_UNSPECIFIED, 8, -1)  # open enum: any number travels
    ),
    Case("Observe", "evidence[0].ref", "r" * 1025, "evidence[0].ref"),
    Case("Observe", "evidence[0].quote", "q\x00", "evidence[0].quote"),
    Case("Observe", "evidence[0].quote", "q" * 2001, "evidence[0].quote"),
    Case("Observe", "evidence[0].time.seconds", -1, "evidence[0].time"),
    Case("Observe", "evidence[0].time.seconds", 253402300800, "evidence[0].time"),
    # Observe: the caller's identity
    *(Case("Observe", "", None, "x-agent-id", agent=a) for a in ("bad agent", "-x", "a" * 129)),
    # Observe: a message beyond the node's 4 MiB limit
    Case("Observe", "statement", "x" * FIVE_MIB, None, grpc.StatusCode.RESOURCE_EXHAUSTED),
    # ObserveBatch: one bad item refuses all, and the batch itself is bounded
    Case("ObserveBatch", "", _second_of_batch("confidence", 1.5), "observations[1].confidence"),
    Case("ObserveBatch", "", _second_of_batch("confidence", CLEAR), "observations[1].confidence"),
    Case("ObserveBatch", "", _second_of_batch("subject.id", ""), "observations[1].subject.id"),
    Case("ObserveBatch", "", _batch_of(0), "observations"),
    Case("ObserveBatch", "", _batch_of(501), "observations"),
    # GetSelfModel
    Case("GetSelfModel", "subject", CLEAR, "subject"),
    Case("GetSelfModel", "subject.tenant", "", "subject.tenant"),
    Case("GetSelfModel", "subject.id", "u 1", "subject.id"),
    Case("GetSelfModel", "", _kind(model_pb2.SUBJECT_KIND_UNSPECIFIED), "subject.kind"),
    *(
        Case("GetSelfModel", "min_confidence", v, "min_confidence")
        for v in (math.nan, math.inf, -0.1, 1.5)
    ),
    Case("GetSelfModel", "contexts", ["budget", "Not Snake"], "contexts[1]"),
    Case("GetSelfModel", "contexts", [f"c{i}" for i in range(65)], "contexts"),
    *(
        Case("GetSelfModel", "at_least", v, "at_least")
        for v in ("garbage", "not a token", "AAAA", "!!!", "%%%%", "A" * 70_000)
    ),
    Case("GetSelfModel", "", None, "x-agent-id", agent="bad agent"),
    # ExplainBelief
    Case("ExplainBelief", "subject", CLEAR, "subject"),
    Case("ExplainBelief", "subject.id", "", "subject.id"),
    Case("ExplainBelief", "context", "", "context"),
    Case("ExplainBelief", "context", "Budget", "context"),
    *(Case("ExplainBelief", "key", v, "key") for v in ("", "...", "a\x07b", "x" * 2001, " . !")),
    Case("ExplainBelief", "at_least", "garbage", "at_least"),
    # Retract (by the seeding agent itself, so a valid one would change the model)
    Case("Retract", "subject", CLEAR, "subject"),
    Case("Retract", "subject.tenant", "acme/other", "subject.tenant"),
    Case("Retract", "", _kind(model_pb2.SUBJECT_KIND_UNSPECIFIED), "subject.kind"),
    Case("Retract", "context", "", "context"),
    *(Case("Retract", "key", v, "key") for v in ("", "!!", "k\x00", "x" * 2001)),
    Case("Retract", "", None, "x-agent-id", agent="bad agent"),
    # ForgetSubject (aimed at the seeded subject, so a valid one would erase it)
    Case("ForgetSubject", "subject", CLEAR, "subject"),
    Case("ForgetSubject", "subject.tenant", "", "subject.tenant"),
    Case("ForgetSubject", "subject.id", "x" * 129, "subject.id"),
    Case("ForgetSubject", "", _kind(model_pb2.SUBJECT_KIND_UNSPECIFIED), "subject.kind"),
    Case("ForgetSubject", "", _kind(9), "subject.kind"),
    # WatchSelfModel
    Case("WatchSelfModel", "subject", CLEAR, "subject"),
    Case("WatchSelfModel", "min_confidence", math.nan, "min_confidence"),
    Case("WatchSelfModel", "contexts", ["Bad"], "contexts[0]"),
]


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 24 else f"{shown[:12]}...({len(value)})"


def _case_id(case: Case) -> str:
    if case.agent != SEED_AGENT:
        return f"{case.method}-x-agent-id={_short(case.agent)}"
    if callable(case.value):
        return f"{case.method}-{case.value.__name__}"
    if case.value is CLEAR:
        return f"{case.method}-{case.path}=(missing)"
    return f"{case.method}-{case.path}={_short(case.value)}"


@pytest.fixture(scope="module")
def module_node_args(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    """The shared node's beliefs never fade (NEVER_FADE): a refused request must leave the model
    as it was to the last digit, however long the two reads around it are apart."""
    policies = tmp_path_factory.mktemp("policies") / "policies.toml"
    policies.write_text("\n".join(policies_toml(NEVER_FADE)) + "\n")
    return ("--policies", str(policies))


@pytest.fixture(scope="module")
def stub(module_node) -> Iterator[selfmodel_pb2_grpc.SelfModelServiceStub]:
    with Client(module_node.address, agent=SEED_AGENT, tenant=TENANT) as seeder:
        written = seeder.observe(
            user(SEEDED_ID), STATEMENT, confidence=0.8, context=CONTEXT, key=KEY
        )
        assert written.key == KEY
        time.sleep(0.01)  # old enough to have faded, had the node not read --policies
        explained = seeder.explain(user(SEEDED_ID), CONTEXT, KEY)
        assert [w.recency for w in explained.observations] == [1.0]
    with grpc.insecure_channel(module_node.address) as channel:
        yield selfmodel_pb2_grpc.SelfModelServiceStub(channel)


def _snapshot(stub: selfmodel_pb2_grpc.SelfModelServiceStub) -> model_pb2.SelfModelSnapshot:
    req = selfmodel_pb2.GetSelfModelRequest(subject=seeded_subject(), include_uncertain=True)
    reply = stub.GetSelfModel(req, timeout=TIMEOUT_S, metadata=(("x-agent-id", SEED_AGENT),))
    snap = reply.snapshot
    snap.ClearField("resolved_at")
    return snap


def _write_counters(node) -> dict[str, float]:
    wanted = ("selfmodel_observations", "selfmodel_subjects_forgotten", "selfmodel_commit_batches")
    found = {
        f.name: sum(s.value for s in f.samples if s.name.endswith("_total"))
        for f in text_string_to_metric_families(node.metrics())
        if f.name in wanted
    }
    assert set(found) == set(wanted), f"the node no longer exposes {set(wanted) - set(found)}"
    return found


def _call(stub: selfmodel_pb2_grpc.SelfModelServiceStub, case: Case, request: Any) -> grpc.RpcError:
    method = getattr(stub, case.method)
    metadata = (("x-agent-id", case.agent),)
    try:
        if case.method == "WatchSelfModel":
            for _ in method(request, timeout=TIMEOUT_S, metadata=metadata):
                break
        else:
            method(request, timeout=TIMEOUT_S, metadata=metadata)
    except grpc.RpcError as exc:
        return exc
    pytest.fail(f"{case.method} accepted a bad request: {case}")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_request_is_refused_with_the_field_named_and_changes_nothing(stub, module_node, case):
    before, counters_before = _snapshot(stub), _write_counters(module_node)
    assert [b.statement for b in before.beliefs] == [STATEMENT]

    error = _call(stub, case, case.request())

    assert error.code() == case.code, error.details()
    if case.field is not None:
        assert error.details().startswith(f"{case.field}: "), error.details()
    assert _snapshot(stub) == before, "a refused request changed the subject's model"
    assert _write_counters(module_node) == counters_before, "a refused request wrote something"


def test_the_base_requests_of_the_table_are_valid(stub, module_node):
    """The table's cases differ from a request the node accepts only in the field they break."""
    before = _snapshot(stub)
    metadata = (("x-agent-id", SEED_AGENT),)
    for method in ("GetSelfModel", "ExplainBelief"):
        getattr(stub, method)(BASE[method](), timeout=TIMEOUT_S, metadata=metadata)
    assert _snapshot(stub) == before
    reply = stub.Observe(observe_request(), timeout=TIMEOUT_S, metadata=metadata)
    assert reply.key == KEY
    assert [b.statement for b in _snapshot(stub).beliefs] == ["Has a 90k budget"]
    # Put the seed back for any case that runs after this test.
    restore = observe_request()
    restore.statement, restore.confidence = STATEMENT, 0.8
    del restore.evidence[:]
    stub.Observe(restore, timeout=TIMEOUT_S, metadata=metadata)
    assert [b.statement for b in _snapshot(stub).beliefs] == [STATEMENT]
