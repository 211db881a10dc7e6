"""The one mechanism the node's method wrappers share: each wraps a handler once, at registration.

The wrappers (metrics, strict decoding, pre-serialized replies) could be server interceptors,
but gRPC runs its interceptor pipeline on every call: a pipeline step, a continuation and a
lookup of the wrapped handler, all under the GIL that bounds the node's throughput. Registered
through ``WrappingRegistrar`` instead, the server holds the wrapped handlers themselves and a
call costs only what the wrappers do.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import grpc

from node.errors import Reason, Unavailable, abort


class HandlerWrapper:
    """Wraps a method's handler, when it applies to it."""

    def applies(self, handler: Any) -> bool:
        return True

    def wrap(self, handler: Any, method: str) -> Any:
        raise NotImplementedError


class Chain(HandlerWrapper):
    """Several wrappers as one, the first outermost."""

    def __init__(self, *wrappers: HandlerWrapper) -> None:
        self._wrappers = wrappers

    def wrap(self, handler: Any, method: str) -> Any:
        for wrapper in reversed(self._wrappers):
            if wrapper.applies(handler):
                handler = wrapper.wrap(handler, method)
        return handler


class SerializedReplies(HandlerWrapper):
    """Lets a method answer with its replies already serialized, as GetSelfModel and
    WatchSelfModel do.

    A reply that is ``bytes`` goes out as it is; any other is serialized as the generated code
    says.
    """

    def applies(self, handler: Any) -> bool:
        answers = handler.unary_unary is not None or handler.unary_stream is not None
        return answers and handler.response_serializer is not None

    def wrap(self, handler: Any, method: str) -> Any:
        serialize = handler.response_serializer

        def serialize_unless_bytes(reply: Any) -> bytes:
            return reply if isinstance(reply, bytes) else serialize(reply)  # type: ignore[no-any-return]

        return handler._replace(response_serializer=serialize_unless_bytes)


class WrappingRegistrar:
    """Stands in for the server when a service registers, so its handlers go in wrapped.

    The generated ``add_*Servicer_to_server`` functions (and those of health and reflection)
    take any object with gRPC's two registration methods: given this one, every method handler
    is wrapped once, then registered on the real server.
    """

    def __init__(self, server: grpc.Server, wrapper: HandlerWrapper) -> None:
        self._server = server
        self._wrapper = wrapper

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        # grpcio >= 1.63, which the type stubs do not know yet
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service,
            {name: self._wrapper.wrap(h, f"/{service}/{name}") for name, h in handlers.items()},
        )

    def add_generic_rpc_handlers(
        self, handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGeneric(h, self._wrapper) for h in handlers)
        )


def wrapping(server: grpc.Server, wrapper: HandlerWrapper) -> grpc.Server:
    """A WrappingRegistrar for ``server``, typed as the server it stands in for at registration."""
    return cast(grpc.Server, WrappingRegistrar(server, wrapper))


class _WrappedGeneric(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A generic handler whose method handlers come out wrapped (each wrapped once).

    gRPC asks generic handlers only for methods that are not registered, which every method of
    the node's services is; this keeps any other path wrapped all the same.
    """

    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], wrapper: HandlerWrapper) -> None:
        self._inner = inner
        self._wrapper = wrapper
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (handler, wrapped)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrapper.wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


GATE_RETRY_S = 0.2  # a starting node asks its peers again about as often (node.replication)


class Gate(HandlerWrapper):
    """Refuses calls with UNAVAILABLE until opened, but for the methods it lets through.

    A starting node serves before it takes writes: it asks its peers to vouch for its previous
    run while they, started with it, ask it the same (node.server.start). Until it has decided,
    only those claims, health and reflection are answered.
    """

    def __init__(self, reason: str, let_through: tuple[str, ...], node: str = "") -> None:
        self.reason = reason
        self.node = node
        self.let_through = let_through  # method prefixes, e.g. "/grpc.health.v1.Health/"
        self.is_open = False

    def open(self) -> None:
        self.is_open = True

    def refusal(self) -> Unavailable:
        return Unavailable(
            self.reason,
            reason=Reason.NODE_STARTING,
            metadata={"node": self.node},
            retry_after_s=GATE_RETRY_S,
        )

    def wrap(self, handler: Any, method: str) -> Any:
        if method.startswith(self.let_through):
            return handler
        kind = next(
            k
            for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
            if getattr(handler, k) is not None
        )
        inner = getattr(handler, kind)

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            if not self.is_open:
                abort(context, self.refusal())
            return inner(request, context)  # a reply, or the iterator of a streaming method

        return handler._replace(**{kind: guarded})
