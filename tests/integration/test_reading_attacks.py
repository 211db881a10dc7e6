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
    stub: selfmodel_pb2_grpc.SelfModelStub

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
        yield Node(process, made, selfmodel_pb2_grpc.SelfModelStub(channel))


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
