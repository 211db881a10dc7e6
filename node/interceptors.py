"""The one mechanism the node's server interceptors share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


class HandlerWrapper(grpc.ServerInterceptor):  # type: ignore[misc, type-arg]
    """Wraps a method's handler once and reuses it: gRPC asks an interceptor on every call, so a
    call then costs what the wrapper does, not building it."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (handler, wrapped)

    def applies(self, handler: Any) -> bool:
        return True

    def wrap(self, handler: Any, method: str) -> Any:
        raise NotImplementedError

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or not self.applies(handler):
            return handler
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self.wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class Chain(HandlerWrapper):
    """Several wrappers as one interceptor, the first outermost.

    gRPC runs its interceptor pipeline on every call, each interceptor a lookup and a
    continuation; chained here, a call costs one lookup of the fully wrapped handler.
    """

    def __init__(self, *wrappers: HandlerWrapper) -> None:
        super().__init__()
        self._wrappers = wrappers

    def wrap(self, handler: Any, method: str) -> Any:
        for wrapper in reversed(self._wrappers):
            if wrapper.applies(handler):
                handler = wrapper.wrap(handler, method)
        return handler
