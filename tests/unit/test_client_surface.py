"""The agent client: importable without the node, and its blocking and asyncio flavours alike.

Both clients run the call descriptions of federation.calls; these tests hold them to it against
an in-process fake node on a loopback port: the same requests on the wire, the same answers,
the same retry on UNAVAILABLE and the same signatures.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from federation.client import AsyncClient, Client, user
from selfmodel.admin.v1 import admin_pb2, admin_pb2_grpc
from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc

# What an agent's process must not load to reach a node: RocksDB, the node's metrics (their
# registration is an import-time side effect), and any module of the node package (the
# exceptions agents catch live in selfmodel.errors, the channel helpers in selfmodel.channels).
NODE_ONLY = ("rocksdict", "prometheus_client")


def test_importing_the_client_loads_nothing_of_the_node() -> None:
    probe = "import federation.client, federation, sys, json; print(json.dumps(list(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(done.stdout))
    assert "federation.client" in loaded
    node = sorted(m for m in loaded if m in NODE_ONLY or m == "node" or m.startswith("node."))
    assert not node, node


class FakeNode(selfmodel_pb2_grpc.SelfModelServiceServicer, admin_pb2_grpc.AdminServiceServicer):
    """Records every request; the first call of each method fails UNAVAILABLE once (its request
    is kept in ``refused``)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Message]] = []
        self.refused: dict[str, Message] = {}
        self._lock = threading.Lock()

    def _take(self, method: str, request: Message, context: grpc.ServicerContext) -> None:
        with self._lock:
            first = method not in self.refused
            if first:
                self.refused[method] = request
            else:
                self.requests.append((method, request))
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    def Observe(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._take("Observe", request, context)
        return selfmodel_pb2.ObserveResponse(
            observation_id="o-1", key=request.key or "k", handoff_token="t-observe"
        )

    def ObserveBatch(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._take("ObserveBatch", request, context)
        return selfmodel_pb2.ObserveBatchResponse(handoff_token="t-batch")

    def Retract(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._take("Retract", request, context)
        return selfmodel_pb2.RetractResponse(retracted=2, handoff_token="t-retract", recorded=True)

    def GetSelfModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._take("GetSelfModel", request, context)
        return selfmodel_pb2.GetSelfModelResponse(snapshot=snapshot(request.subject, "t-read"))

    def ExplainBelief(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._take("ExplainBelief", request, context)
        return selfmodel_pb2.ExplainBeliefResponse(context=request.context, key=request.key)

    def ForgetSubject(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._take("ForgetSubject", request, context)
        return selfmodel_pb2.ForgetSubjectResponse(handoff_token="t-forget")

    def WatchSelfModel(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with self._lock:
            self.requests.append(("WatchSelfModel", request))
        for token in ("t-watch-1", "t-watch-2"):
            yield selfmodel_pb2.WatchSelfModelResponse(snapshot=snapshot(request.subject, token))

    def ListSubjects(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._take("ListSubjects", request, context)
        reply = selfmodel_pb2.ListSubjectsResponse(next_page_token="p-2")
        reply.subjects.add(tenant=request.tenant, kind=1, id="u-1")
        return reply

    def ListContexts(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._take("ListContexts", request, context)
        reply = selfmodel_pb2.ListContextsResponse()
        reply.contexts.add(context="c", policy=model_pb2.POLICY_WEIGHTED, min_confidence=0.5)
        return reply

    def BatchGetSelfModels(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._take("BatchGetSelfModels", request, context)
        reply = selfmodel_pb2.BatchGetSelfModelsResponse(handoff_token="t-batch-read")
        for subject in request.subjects:
            reply.models.append(snapshot(subject, "t-model"))
        return reply

    def GetPolicy(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._take("GetPolicy", request, context)
        reply = selfmodel_pb2.GetPolicyResponse()
        for name in request.contexts:
            reply.policies.add(context=name, policy=model_pb2.POLICY_LATEST, half_life_seconds=60.0)
        return reply

    def ListAudit(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._take("ListAudit", request, context)
        reply = admin_pb2.ListAuditResponse(next_cursor="c-2")
        entry = reply.entries.add(
            cursor="c-1", node="n", actor="ops", action=admin_pb2.AUDIT_ACTION_FORGET
        )
        entry.subject.CopyFrom(model_pb2.Subject(tenant="acme", kind=1, id="u-1"))
        return reply


def snapshot(subject: model_pb2.Subject, token: str) -> model_pb2.SelfModelSnapshot:
    reply = model_pb2.SelfModelSnapshot(node="n", handoff_token=token)
    reply.subject.CopyFrom(subject)
    belief = reply.beliefs.add(
        context="c",
        key="k",
        statement="likes tea",
        confidence=0.75,
        policy=model_pb2.POLICY_WEIGHTED,
    )
    belief.supporters.add(source="a", statement="likes tea", confidence=0.75)
    return reply


@pytest.fixture
def fake_node() -> Iterator[tuple[FakeNode, str]]:
    fake = FakeNode()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    selfmodel_pb2_grpc.add_SelfModelServiceServicer_to_server(fake, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()


def every_call_blocking(client: Client) -> list[Any]:
    request = selfmodel_pb2.ObserveRequest(context="c", statement="s", confidence=0.5)
    return [
        client.self_model(user("u-1"), contexts=["c"], at_least="t-0"),
        client.observe("user:u-1", "likes tea", confidence=0.75, context="c", key="k"),
        client.observe_batch([request]),
        client.retract(user("u-1"), "c", "k", source="a"),
        client.explain(user("u-1"), "c", "k", at_least="t-1"),
        client.forget(user("u-1")),
        client.audit("c-0", 10),
        client.subjects(page_size=5, page_token="p-1"),
        client.contexts(user("u-1"), at_least="t-2"),
        client.self_models([user("u-1"), "team:t-1"], contexts=["c"]),
        client.policy("c", "d"),
        list(client.watch(user("u-1"), contexts=["c"], include_uncertain=True)),
    ]


async def every_call_async(client: AsyncClient) -> list[Any]:
    request = selfmodel_pb2.ObserveRequest(context="c", statement="s", confidence=0.5)

    async def collect(stream: AsyncIterator[Any]) -> list[Any]:
        return [item async for item in stream]

    return [
        await client.self_model(user("u-1"), contexts=["c"], at_least="t-0"),
        await client.observe("user:u-1", "likes tea", confidence=0.75, context="c", key="k"),
        await client.observe_batch([request]),
        await client.retract(user("u-1"), "c", "k", source="a"),
        await client.explain(user("u-1"), "c", "k", at_least="t-1"),
        await client.forget(user("u-1")),
        await client.audit("c-0", 10),
        await client.subjects(page_size=5, page_token="p-1"),
        await client.contexts(user("u-1"), at_least="t-2"),
        await client.self_models([user("u-1"), "team:t-1"], contexts=["c"]),
        await client.policy("c", "d"),
        await collect(client.watch(user("u-1"), contexts=["c"], include_uncertain=True)),
    ]


WRITES = ("Observe", "ObserveBatch", "Retract", "ForgetSubject")


def without_keys(sent: list[tuple[str, Message]]) -> list[tuple[str, Message]]:
    """The requests with their idempotency keys cleared (each logical call draws a new one)."""
    cleared = []
    for method, request in sent:
        copy = type(request)()
        copy.CopyFrom(request)
        if method in WRITES:
            copy.ClearField("idempotency_key")
        cleared.append((method, copy))
    return cleared


def test_both_clients_send_the_same_requests_retry_alike_and_answer_alike(
    fake_node: tuple[FakeNode, str],
) -> None:
    fake, address = fake_node
    with Client(address, agent="a", tenant="acme", attempts=2) as blocking:
        answers = every_call_blocking(blocking)
    sent_blocking, refused_blocking = list(fake.requests), dict(fake.refused)
    fake.requests.clear()
    fake.refused.clear()

    async def run() -> list[Any]:
        async with AsyncClient(address, agent="a", tenant="acme", attempts=2) as client:
            return await every_call_async(client)

    assert asyncio.run(run()) == answers
    assert without_keys(fake.requests) == without_keys(sent_blocking)
    # Each unary call failed UNAVAILABLE once and was retried with the same request: a write
    # with the same idempotency key, a new one per call.
    assert [m for m, _ in sent_blocking] == [
        "GetSelfModel", "Observe", "ObserveBatch", "Retract", "ExplainBelief", "ForgetSubject",
        "ListAudit", "ListSubjects", "ListContexts", "BatchGetSelfModels", "GetPolicy",
        "WatchSelfModel",
    ]  # fmt: skip
    for refused, sent in ((refused_blocking, sent_blocking), (fake.refused, fake.requests)):
        assert all(refused[m] == r for m, r in sent if m != "WatchSelfModel")
        keys = [r.idempotency_key for m, r in sent if m in WRITES]
        assert all(keys) and len(set(keys)) == len(WRITES)
    [observe] = [r for m, r in sent_blocking if m == "Observe"]
    assert observe.based_on == "t-read" and observe.subject.tenant == "acme"
    assert [v.token for v in answers[-1]] == ["t-watch-1", "t-watch-2"]
    assert answers[7].next_page_token == "p-2" and answers[9][1] == "t-batch-read"


def test_without_retries_left_an_unavailable_node_raises_the_same_domain_error(
    fake_node: tuple[FakeNode, str],
) -> None:
    _, address = fake_node
    with Client(address, agent="a", attempts=1) as blocking, pytest.raises(Exception) as sync:
        blocking.forget(user("u-1"))

    async def run() -> None:
        async with AsyncClient(address, agent="a", attempts=1) as client:
            await client.self_model(user("u-1"))

    with pytest.raises(Exception) as aio:
        asyncio.run(run())
    assert type(sync.value) is type(aio.value) and type(sync.value).__name__ == "Unavailable"


def public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(getattr(cls, name))
        for name in dir(cls)
        if not name.startswith("_") and callable(getattr(cls, name))
    }


def test_both_clients_offer_the_same_calls_with_the_same_signatures() -> None:
    blocking, aio = public(Client), public(AsyncClient)
    assert blocking.pop("cached")  # a thread keeps the copy current: the blocking client's only
    assert blocking == aio
