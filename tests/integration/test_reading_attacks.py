"""Hostile and careless callers of the reading calls and idempotency keys, on a real node with
tokens: another tenant learns nothing, and bad input is refused naming the field and its bound."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from federation import tokens
from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from tests.nodes import NodeProcess

USER = model_pb2.SUBJECT_KIND_USER
PRINCIPALS = {
    # name: (agent, tenant, role); one agent id in two tenants, as tokens allow
    "acme": ("planner", "acme", "agent"),
    "acme_other": ("scheduler", "acme", "agent"),
    "acm": ("planner", "acm", "agent"),
}


def subject(tenant: str, id: str) -> model_pb2.Subject:
    return model_pb2.Subject(tenant=tenant, kind=USER, id=id)


def observe(tenant: str, id: str, statement: str, key: str = "") -> selfmodel_pb2.ObserveRequest:
    return selfmodel_pb2.ObserveRequest(
        subject=subject(tenant, id), context="interests", key="sport", statement=statement,
        confidence=0.9, idempotency_key=key,
    )  # fmt: skip


@dataclass
class Node:
    process: NodeProcess
    tokens: dict[str, str]
    stub: selfmodel_pb2_grpc.SelfModelServiceStub

    def md(self, who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[who]}"),)

    def status(self, method: str, request: object, who: str | None) -> tuple[grpc.StatusCode, str]:
        md = self.md(who) if who else ()
        try:
            getattr(self.stub, method)(request, metadata=md, timeout=20)
        except grpc.RpcError as exc:
            return exc.code(), str(exc.details())
        return grpc.StatusCode.OK, ""


@pytest.fixture
def node(start_node: Callable[..., NodeProcess], tmp_path: Path) -> Iterator[Node]:
    file = tmp_path / "tokens.toml"
    made = {}
    for name, (agent, tenant, role) in PRINCIPALS.items():
        made[name], _ = tokens.create(file, agent, tenant, role, ["*"], ["*"])
    process = start_node("sales", "--tokens", str(file))
    with grpc.insecure_channel(process.address) as channel:
        yield Node(process, made, selfmodel_pb2_grpc.SelfModelServiceStub(channel))


def _token(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


NESTED = base64.urlsafe_b64encode(b"[" * 3000).decode()  # within max_token, past JSON depth


def test_hostile_page_tokens_are_invalid_argument_never_internal(node: Node) -> None:
    for i in range(3):
        node.stub.Observe(observe("acme", f"u-{i}", "Likes golf"), metadata=node.md("acme"))
    listing = selfmodel_pb2.ListSubjectsRequest(page_size=1)
    first = node.stub.ListSubjects(listing, metadata=node.md("acme"))
    assert first.next_page_token
    for token in [NESTED, "A" * 2_000_000, "€", first.next_page_token + "x"]:
        listing.page_token = token
        code, details = node.status("ListSubjects", listing, "acme")
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details, details
        read = selfmodel_pb2.GetSelfModelRequest(
            subject=subject("acme", "u-0"), page_size=1, page_token=token
        )
        code, details = node.status("GetSelfModel", read, "acme")
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details, details


def test_an_idempotency_key_is_its_callers_own_and_reveals_nothing_to_another(node: Node) -> None:
    first = node.stub.Observe(observe("acme", "u-1", "Likes golf", "k-1"), metadata=node.md("acme"))
    # The same agent id in another tenant, the same key, another request: a call of its own.
    code, details = node.status("Observe", observe("acm", "u-1", "Likes chess", "k-1"), "acm")
    assert code == grpc.StatusCode.OK, details
    # The very request acme's planner made, from acm's token: refused for the tenant alone.
    code, details = node.status("Observe", observe("acme", "u-1", "Likes golf", "k-1"), "acm")
    assert code == grpc.StatusCode.PERMISSION_DENIED and "k-1" not in details
    # Another agent of the same tenant repeating the request and key writes its own observation.
    theirs = node.stub.Observe(
        observe("acme", "u-1", "Likes golf", "k-1"), metadata=node.md("acme_other")
    )
    assert theirs.observation_id != first.observation_id
    explain = selfmodel_pb2.ExplainBeliefRequest(
        subject=subject("acme", "u-1"), context="interests", key="sport"
    )
    held = node.stub.ExplainBelief(explain, metadata=node.md("acme")).observations
    assert sorted(o.observation_id for o in held) == sorted(
        [first.observation_id, theirs.observation_id]
    )


def test_bad_keys_and_sizes_are_refused_naming_the_field_and_nothing_is_stored(node: Node) -> None:
    for key, rule in [("k" * 10_000, "128"), ("a\x00b", "letters"), ("é", "letters")]:
        code, details = node.status("Observe", observe("acme", "u-2", "Likes golf", key), "acme")
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert "idempotency_key" in details and rule in details, details
    listing = selfmodel_pb2.ListSubjectsRequest(page_size=2**32 - 1)
    code, details = node.status("ListSubjects", listing, "acme")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_page_size" in details, details
    assert not node.stub.ListSubjects(
        selfmodel_pb2.ListSubjectsRequest(), metadata=node.md("acme")
    ).subjects
    read = selfmodel_pb2.GetSelfModelRequest(subject=subject("acme", "u-2"), page_size=2**32 - 1)
    code, details = node.status("GetSelfModel", read, "acme")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_page_size" in details, details


def test_another_tenants_subject_is_refused_by_every_reading_call(node: Node) -> None:
    node.stub.Observe(observe("acme", "u-3", "Likes golf"), metadata=node.md("acme"))
    theirs = subject("acme", "u-3")
    calls = [
        ("ListContexts", selfmodel_pb2.ListContextsRequest(subject=theirs)),
        ("ListSubjects", selfmodel_pb2.ListSubjectsRequest(tenant="acme")),
        ("BatchGetSelfModels", selfmodel_pb2.BatchGetSelfModelsRequest(subjects=[theirs])),
        ("GetSelfModel", selfmodel_pb2.GetSelfModelRequest(subject=theirs, page_size=1)),
    ]
    for method, request in calls:
        assert node.status(method, request, "acm")[0] == grpc.StatusCode.PERMISSION_DENIED, method
        assert node.status(method, request, None)[0] == grpc.StatusCode.UNAUTHENTICATED, method
    assert node.status("GetPolicy", selfmodel_pb2.GetPolicyRequest(), None)[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    mine = node.stub.ListSubjects(selfmodel_pb2.ListSubjectsRequest(), metadata=node.md("acm"))
    assert not mine.subjects and not mine.next_page_token  # acm is no prefix of acme's range
