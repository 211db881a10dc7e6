"""How the Python client retries a call (tenacity), from what the node says in its errors.

- A call has one deadline, the client's ``timeout_s`` (or the call's own); every attempt runs
  within what is left of it, and no retry is begun that the deadline would cut short.
- Only ``Unavailable`` is retried (an Observe replaces the same source's earlier observation in
  its slot, so a retried write cannot double-count). A plain one is asked again at most
  ``attempts`` times in all, after full-jitter exponential backoff, or after the node's
  RetryInfo delay when that is longer.
- ``HandoffPending`` (the node has not merged the read's handoff position yet; it never waits
  for it) is asked again until the deadline: first after the node's RetryInfo delay ``d``, then
  ``growth`` times longer each time, at most ``max_pending_wait_s``, and the last time with
  ``LAST_ASK_S`` left of the deadline. The node marks its answer ``final`` when the caller's
  deadline leaves less than ``d + LAST_ASK_S`` (and counts it in
  selfmodel_handoff_timeouts_total): that answer ends the call with ``HandoffTimeout``, as
  does a deadline reached while pending.

Every failure leaves as the ``selfmodel.errors`` exception the node's status details describe.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    wait_random_exponential,
)

from selfmodel.errors import (
    LAST_ASK_S,
    DeadlineExceeded,
    HandoffPending,
    HandoffTimeout,
    SelfModelError,
    Unavailable,
    from_rpc_error,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5  # of a call answered plain UNAVAILABLE, the first included
    multiplier_s: float = 0.05  # full-jitter exponential backoff: up to multiplier * 2^n
    max_wait_s: float = 2.0
    growth: float = 1.5  # of the wait between two asks of a pending handoff position
    max_pending_wait_s: float = 1.0

    def backoff_s(self, state: RetryCallState, exc: BaseException | None) -> float:
        """The wait before the next attempt, the deadline aside."""
        hint = exc.retry_after_s if isinstance(exc, SelfModelError) else None
        if isinstance(exc, HandoffPending):
            grown = _pending_delay(exc, self.multiplier_s) * self.growth ** (
                state.attempt_number - 1
            )
            return float(min(grown, self.max_pending_wait_s))
        jitter = wait_random_exponential(multiplier=self.multiplier_s, max=self.max_wait_s)
        return float(max(hint or 0.0, jitter(state)))


def _pending_delay(exc: HandoffPending, default_s: float) -> float:
    return exc.retry_after_s if exc.retry_after_s is not None else default_s


class _Call:
    """One logical call: its deadline, and whether a handoff position was pending."""

    def __init__(self, policy: RetryPolicy, timeout_s: float) -> None:
        self.policy = policy
        self.deadline = time.monotonic() + timeout_s
        self.pending: HandoffPending | None = None

    def remaining_s(self) -> float:
        return max(0.001, self.deadline - time.monotonic())

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = self.policy.backoff_s(state, exc)
        if isinstance(exc, HandoffPending):
            # Near the deadline, the last ask goes with LAST_ASK_S left: the node then answers
            # it final (or with the model).
            delay = _pending_delay(exc, self.policy.multiplier_s)
            left = self.deadline - time.monotonic()
            if left - wait < delay + 2 * LAST_ASK_S:
                wait = max(0.0, left - LAST_ASK_S)
        return wait

    def stop(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome is not None else None
        left = self.deadline - time.monotonic()
        if isinstance(exc, HandoffPending):
            return exc.metadata.get("final") == "true" or left <= 0.001
        return left <= (state.upcoming_sleep or 0.0) or state.attempt_number >= self.policy.attempts

    def failed(self, exc: grpc.RpcError) -> SelfModelError:
        """``exc`` as the node's error; noted if it is a pending handoff position."""
        error = from_rpc_error(exc)
        if isinstance(error, HandoffPending):
            self.pending = error
        return error

    def outcome(self, error: SelfModelError) -> SelfModelError:
        """What the caller is told: a pending position at the deadline is a HandoffTimeout."""
        if self.pending is not None and isinstance(error, HandoffPending | DeadlineExceeded):
            pending = self.pending
            return HandoffTimeout(
                f"the handoff token's position was still not merged at the deadline: {pending}",
                reason=pending.reason,
                metadata=pending.metadata,
            )
        return error

    def retrying(self, factory: Any) -> Any:
        return factory(
            retry=retry_if_exception_type(Unavailable),
            stop=self.stop,
            wait=self.wait,
            reraise=True,
        )


def call(
    policy: RetryPolicy,
    method: Callable[..., T],
    request: Any,
    timeout_s: float,
    metadata: Any,
) -> T:
    """``method(request)`` with the client's retries, as a ``selfmodel.errors`` exception."""
    this = _Call(policy, timeout_s)

    def attempt() -> T:
        try:
            return method(request, timeout=this.remaining_s(), metadata=metadata)
        except grpc.RpcError as exc:
            raise this.failed(exc) from exc

    try:
        result: T = this.retrying(Retrying)(attempt)
        return result
    except SelfModelError as error:
        final = this.outcome(error)
        if final is error:
            raise
        raise final from error


async def call_async(
    policy: RetryPolicy,
    method: Callable[..., Awaitable[T]],
    request: Any,
    timeout_s: float,
    metadata: Any,
) -> T:
    """The asyncio flavour of ``call``."""
    this = _Call(policy, timeout_s)

    async def attempt() -> T:
        try:
            return await method(request, timeout=this.remaining_s(), metadata=metadata)
        except grpc.RpcError as exc:
            raise this.failed(exc) from exc

    try:
        result: T = await this.retrying(AsyncRetrying)(attempt)
        return result
    except SelfModelError as error:
        final = this.outcome(error)
        if final is error:
            raise
        raise final from error


__all__ = ["RetryPolicy", "call", "call_async"]
