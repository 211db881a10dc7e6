"""The Python client library: a small typed surface that reads like the problem.

    client = Client("127.0.0.1:7070", agent="sales_agent", tenant="acme")
    written = client.observe(user("u-42"), "Motivated by quick time-to-value",
                             confidence=0.82, context="purchase_motivation")
    support.self_model(user("u-42"), at_least=written.token).beliefs(context="purchase_motivation")

``Client`` and ``AsyncClient`` run the same call descriptions (``federation.calls``): each
method of either is one of them, bound to the client. Calls are retried on UNAVAILABLE
only, after the node's RetryInfo delay or jittered exponential backoff, and a read whose
handoff position is pending is asked again until its deadline (federation.retries). Every write
carries an idempotency key, one per logical call and the same on each of its retries, so a
retry whose first attempt was recorded (its answer lost) is answered as the first and records
nothing new (node.idempotency). Every failure raises the selfmodel.errors exception built from
the node's status details (reason, field violations, quota, retry delay).
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import grpc
import grpc.aio

from federation import calls, retries
from federation.bearer import bearer_token
from federation.cache import CachedModel
from federation.calls import Call, Requests, Stream
from federation.views import (
    DEFAULT_TARGET,
    DEFAULT_TENANT,
    AuditEntry,
    BeliefView,
    Holder,
    MembersPage,
    Observed,
    Retracted,
    RollupView,
    SelfModelView,
    SubjectLike,
    SubjectRef,
    Support,
    holders,
    org,
    parse_subject,
    team,
    user,
    view_from_proto,
)
from selfmodel.admin.v1 import admin_pb2_grpc
from selfmodel.channels import ChannelOptions, open_aio_channel, open_channel
from selfmodel.errors import from_rpc_error as error_from_rpc
from selfmodel.v1 import selfmodel_pb2_grpc

T = TypeVar("T")
D = TypeVar("D")  # a call's description
R = TypeVar("R")  # what running it returns
P = ParamSpec("P")
C = TypeVar("C", grpc.Channel, grpc.aio.Channel)
S = TypeVar("S", bound="_Connection[Any]")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def _metadata(agent: str | None, token: str | None) -> tuple[tuple[str, str], ...]:
    md = []
    if agent:
        md.append(("x-agent-id", agent))
    if token:
        md.append(("authorization", f"Bearer {token}"))
    return tuple(md)


def _channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]


class _Connection(Generic[C]):
    """A channel to one node, the caller's identity and tenant; the clients' common part."""

    _open: Callable[[str, grpc.ChannelCredentials | None, ChannelOptions], C]

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        agent: str | None = None,
        token: str | None = None,
        tenant: str = DEFAULT_TENANT,
        credentials: grpc.ChannelCredentials | None = None,
        timeout_s: float = 10.0,
        attempts: int = 5,
        token_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """``token``, else ``token_file``, else $SELFMODEL_TOKEN or $SELFMODEL_TOKEN_FILE is the
        bearer token sent (see ``bearer_token``); ``agent`` names the caller on a development
        node without tokens."""
        self._md = _metadata(agent, bearer_token(token, token_file))
        self._req = Requests(tenant)
        self.timeout_s = timeout_s
        self._retries = retries.RetryPolicy(attempts=attempts)
        self._channel: C = self._open(target, credentials, _channel_options())
        self._stubs: dict[str, Any] = {
            "SelfModel": selfmodel_pb2_grpc.SelfModelServiceStub(self._channel),
            "Admin": admin_pb2_grpc.AdminServiceStub(self._channel),
        }

    def _method(self, service: str, method: str) -> Any:
        return getattr(self._stubs[service], method)


def _bind(
    describe: Callable[Concatenate[Requests, P], D], run: Callable[[S, D], R]
) -> Callable[Concatenate[S, P], R]:
    """A client method: ``describe`` the call from the method's arguments, then ``run`` it."""

    def method(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return run(self, describe(self._req, *args, **kwargs))

    functools.update_wrapper(method, describe)
    return method


class Client(_Connection[grpc.Channel]):
    """A synchronous client bound to one node and one agent identity."""

    _open = staticmethod(open_channel)

    def _run(self, call: Call[T]) -> T:
        method = self._method(call.service, call.method)
        timeout = call.timeout_s or self.timeout_s
        reply = retries.call(self._retries, method, call.request, timeout, self._md)
        return call.answer(reply)

    def _start(self, stream: Stream[Any]) -> Any:
        """The streaming call under way (iterate it; ``cancel()`` ends it)."""
        method = self._method("SelfModel", stream.method)
        return method(stream.request, timeout=stream.timeout_s, metadata=self._md)

    def _follow(self, stream: Stream[T]) -> Iterator[T]:
        call = self._start(stream)
        try:
            for msg in call:
                yield stream.item(msg)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    observe = _bind(calls.observe, _run)
    observe_batch = _bind(calls.observe_batch, _run)
    retract = _bind(calls.retract, _run)
    self_model = _bind(calls.self_model, _run)
    explain = _bind(calls.explain, _run)
    forget = _bind(calls.forget, _run)
    audit = _bind(calls.audit, _run)
    source_contributions = _bind(calls.source_contributions, _run)
    withdraw_source = _bind(calls.withdraw_source, _run)
    lift_withdrawal = _bind(calls.lift_withdrawal, _run)
    self_models = _bind(calls.self_models, _run)
    subjects = _bind(calls.subjects, _run)
    contexts = _bind(calls.contexts, _run)
    policy = _bind(calls.policy, _run)
    add_member = _bind(calls.add_member, _run)
    remove_member = _bind(calls.remove_member, _run)
    members = _bind(calls.members, _run)
    watch = _bind(calls.watch, _follow)

    def cached(
        self,
        subject: SubjectLike,
        *,
        contexts: Sequence[str] = (),
        include_uncertain: bool = False,
    ) -> CachedModel:
        """A local copy of the subject's model, kept current by a watch stream."""
        return CachedModel(self, subject, contexts, include_uncertain)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Connection[grpc.aio.Channel]):
    """The asyncio flavour of Client, with the same methods as coroutines."""

    _open = staticmethod(open_aio_channel)

    async def _run(self, call: Call[T]) -> T:
        method = self._method(call.service, call.method)
        timeout = call.timeout_s or self.timeout_s
        reply = await retries.call_async(self._retries, method, call.request, timeout, self._md)
        return call.answer(reply)

    async def _follow(self, stream: Stream[T]) -> AsyncIterator[T]:
        method = self._method("SelfModel", stream.method)
        call = method(stream.request, timeout=stream.timeout_s, metadata=self._md)
        try:
            async for msg in call:
                yield stream.item(msg)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    observe = _bind(calls.observe, _run)
    observe_batch = _bind(calls.observe_batch, _run)
    retract = _bind(calls.retract, _run)
    self_model = _bind(calls.self_model, _run)
    explain = _bind(calls.explain, _run)
    forget = _bind(calls.forget, _run)
    audit = _bind(calls.audit, _run)
    source_contributions = _bind(calls.source_contributions, _run)
    withdraw_source = _bind(calls.withdraw_source, _run)
    lift_withdrawal = _bind(calls.lift_withdrawal, _run)
    self_models = _bind(calls.self_models, _run)
    subjects = _bind(calls.subjects, _run)
    contexts = _bind(calls.contexts, _run)
    policy = _bind(calls.policy, _run)
    add_member = _bind(calls.add_member, _run)
    remove_member = _bind(calls.remove_member, _run)
    members = _bind(calls.members, _run)
    watch = _bind(calls.watch, _follow)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = [
    "AsyncClient",
    "AuditEntry",
    "BeliefView",
    "CachedModel",
    "Client",
    "Holder",
    "MembersPage",
    "Observed",
    "Retracted",
    "RollupView",
    "SelfModelView",
    "SubjectLike",
    "SubjectRef",
    "Support",
    "error_from_rpc",
    "holders",
    "org",
    "parse_subject",
    "team",
    "user",
    "view_from_proto",
]
