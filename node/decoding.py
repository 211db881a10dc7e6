"""Strict request decoding: a request that is not a valid message is INVALID_ARGUMENT.

grpcio decodes requests before the servicer runs and answers a decode failure with INTERNAL
("Exception deserializing request!"), which reads like a bug in the node. This wrapper
takes decoding over, so hostile or corrupt bytes get a status that says what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from node.errors import InvalidArgument, Reason, abort
from node.interceptors import HandlerWrapper


def _decoder(
    parse: Callable[[bytes], Any], method: str
) -> Callable[[bytes, grpc.ServicerContext], Any]:
    def decode(raw: bytes, context: grpc.ServicerContext) -> Any:
        try:
            return parse(raw)
        except Exception:  # protobuf raises DecodeError, and others for some inputs
            abort(
                context,
                InvalidArgument(
                    "",
                    f"the request is not a valid message for {method}: send a serialized "
                    "request of the method's type",
                    reason=Reason.REQUEST_UNDECODABLE,
                    metadata={"method": method},
                ),
            )

    return decode


class StrictDecoding(HandlerWrapper):
    """Decodes requests itself, so an undecodable one is INVALID_ARGUMENT, not INTERNAL."""

    def applies(self, handler: Any) -> bool:
        return handler.request_deserializer is not None

    def wrap(self, handler: Any, method: str) -> Any:
        return _strict(handler, method)


def _strict(handler: Any, method: str) -> Any:
    """The handler, decoding its requests itself."""
    decode = _decoder(handler.request_deserializer, method)
    if handler.unary_unary:
        inner = handler.unary_unary

        def unary_unary(raw: bytes, context: grpc.ServicerContext) -> Any:
            return inner(decode(raw, context), context)

        return handler._replace(request_deserializer=None, unary_unary=unary_unary)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        def unary_stream(raw: bytes, context: grpc.ServicerContext) -> Iterator[Any]:
            request = decode(raw, context)
            yield from inner_us(request, context)

        return handler._replace(request_deserializer=None, unary_stream=unary_stream)

    def each(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
        for raw in requests:
            yield decode(raw, context)

    if handler.stream_unary:
        inner_su = handler.stream_unary

        def stream_unary(requests: Iterator[bytes], context: grpc.ServicerContext) -> Any:
            return inner_su(each(requests, context), context)

        return handler._replace(request_deserializer=None, stream_unary=stream_unary)
    if handler.stream_stream:
        inner_ss = handler.stream_stream

        def stream_stream(
            requests: Iterator[bytes], context: grpc.ServicerContext
        ) -> Iterator[Any]:
            return inner_ss(each(requests, context), context)  # type: ignore[no-any-return]

        return handler._replace(request_deserializer=None, stream_stream=stream_stream)
    return handler
