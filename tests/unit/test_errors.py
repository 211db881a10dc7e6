"""The errors as a program sees them: every reason documented, carried through google.rpc
details both ways, turned into typed exceptions by the client, and retried as the node says
(selfmodel.errors, federation.retries)."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status

from federation.retries import RetryPolicy, call, call_async
from selfmodel.errors import (
    BY_STATUS,
    DOMAIN,
    REASONS,
    FieldViolation,
    HandoffPending,
    HandoffTimeout,
    InvalidArgument,
    QuotaViolation,
    Reason,
    ResourceExhausted,
    SelfModelError,
    Unavailable,
    from_rpc_error,
    from_status,
    plain,
    to_status,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
ROW = re.compile(r"^\| `([A-Z_]+)` \| `([A-Z_]+)` \| .* \| (yes|no) \|$")


def test_the_errors_doc_lists_exactly_the_reasons_defined_with_their_code_and_retry() -> None:
    rows = [ROW.match(line) for line in DOCS.read_text().splitlines()]
    documented = {m.group(1): (m.group(2), m.group(3) == "yes") for m in rows if m}
    defined = {str(r): (d.code, d.retry) for r, d in REASONS.items()}
    assert documented == defined
    assert set(REASONS) == set(Reason), "every reason has its documentation in REASONS"


def test_reasons_are_stable_upper_snake_case_names_and_codes_are_grpc_codes() -> None:
    for reason, doc in REASONS.items():
        assert re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", reason), reason
        assert doc.code in grpc.StatusCode.__members__, (reason, doc.code)


def error_of(reason: Reason) -> SelfModelError:
    """An error of ``reason`` as the node builds it, every detail its kind may carry."""
    doc = REASONS[reason]
    metadata = {key: f"{key}-value" for key in doc.metadata if key != "field"}
    cls = BY_STATUS[doc.code]
    if cls is InvalidArgument:
        return InvalidArgument("observations[2].confidence", "must be given", reason=reason,
                               metadata=metadata)  # fmt: skip
    quota = [QuotaViolation("subject acme/user/u-1", "at most 3")] if doc.code == (
        "RESOURCE_EXHAUSTED"
    ) else []  # fmt: skip
    retry = 0.0125 if doc.retry and doc.code == "UNAVAILABLE" else None
    return cls(f"{reason} happened", reason=reason, metadata=metadata, quota=quota,
               retry_after_s=retry)  # fmt: skip


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_survives_the_trip_through_google_rpc_status(reason: Reason) -> None:
    sent = error_of(reason)
    status = to_status(sent)
    assert status.code == grpc.StatusCode[REASONS[reason].code].value[0]
    got = from_status(REASONS[reason].code, status.message, status)
    assert type(got) is (HandoffPending if reason == Reason.HANDOFF_POSITION_PENDING
                         else type(sent))  # fmt: skip
    assert isinstance(got, BY_STATUS[REASONS[reason].code])
    assert (got.reason, got.metadata, str(got)) == (sent.reason, sent.metadata, str(sent))
    assert (got.violations, got.quota) == (sent.violations, sent.quota)
    assert got.retry_after_s == sent.retry_after_s
    info = [d for d in status.details if d.type_url.endswith("google.rpc.ErrorInfo")]
    assert len(info) == 1 and DOMAIN.encode() in info[0].value


class FakeRpcError(grpc.RpcError):
    """A failed call as grpcio raises it: code, details and trailing metadata."""

    def __init__(self, error: SelfModelError | None, code: str = "", details: str = "") -> None:
        if error is not None:
            status = rpc_status.to_status(to_status(error))
            self._code, self._details = status.code, status.details
            self._trailers = status.trailing_metadata
        else:
            self._code, self._details, self._trailers = grpc.StatusCode[code], details, ()

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailers


def test_the_client_raises_typed_exceptions_built_from_the_details() -> None:
    refused = InvalidArgument(
        "observations[1].confidence", "must be a finite number within [0, 1], got NaN"
    )
    got = from_rpc_error(FakeRpcError(refused))
    assert isinstance(got, InvalidArgument)
    assert got.field == "observations[1].confidence" and got.reason == "FIELD_INVALID"
    assert got.description == "must be a finite number within [0, 1], got NaN"
    assert got.violations == (FieldViolation(got.field, got.description),)

    limit = ResourceExhausted(
        "subject acme/user/u-1 would hold 41 observations",
        reason=Reason.SUBJECT_TOO_LARGE,
        metadata={"limit": "observations", "maximum": 40},
        quota=[QuotaViolation("subject acme/user/u-1", "at most 40 observations per subject")],
    )
    got = from_rpc_error(FakeRpcError(limit))
    assert isinstance(got, ResourceExhausted) and got.reason == "SUBJECT_TOO_LARGE"
    assert got.metadata == {"limit": "observations", "maximum": "40"}
    assert got.quota == limit.quota

    pending = HandoffPending("not yet", metadata={"actor": "a.1.x"}, retry_after_s=0.007)
    got = from_rpc_error(FakeRpcError(pending))
    assert isinstance(got, HandoffPending) and isinstance(got, Unavailable)
    assert got.retry_after_s == 0.007 and got.metadata == {"actor": "a.1.x"}


def test_a_status_without_details_keeps_its_code_and_an_empty_reason() -> None:
    got = from_rpc_error(FakeRpcError(None, "RESOURCE_EXHAUSTED", "Received message larger"))
    assert type(got) is ResourceExhausted and got.reason == "" and got.retry_after_s is None
    assert str(got) == "Received message larger"
    got = from_rpc_error(FakeRpcError(None, "INVALID_ARGUMENT", "bad"))
    assert isinstance(got, InvalidArgument) and got.violations == () and str(got) == "bad"
    got = from_rpc_error(FakeRpcError(None, "DATA_LOSS", ""))
    assert type(got) is SelfModelError and str(got) == "DATA_LOSS"


def test_numbers_read_the_same_in_every_language() -> None:
    assert [plain(v) for v in (1.5, 0.30000001192092896, float("nan"))] == ["1.5", "0.3", "NaN"]
    assert [plain(float("inf")), plain(float("-inf")), plain(2.0)] == [
        "Infinity",
        "-Infinity",
        "2",
    ]


class Node:
    """A method that fails with the given errors in turn, then answers "ok"; it records when
    and with which timeout it was called."""

    def __init__(self, *errors: SelfModelError, forever: SelfModelError | None = None) -> None:
        self.errors = list(errors)
        self.forever = forever
        self.calls: list[tuple[float, float]] = []

    def __call__(self, request: Any, *, timeout: float, metadata: Any) -> str:
        self.calls.append((time.monotonic(), timeout))
        if self.errors:
            raise FakeRpcError(self.errors.pop(0))
        if self.forever is not None:
            raise FakeRpcError(self.forever)
        return "ok"

    def gaps(self) -> list[float]:
        times = [t for t, _ in self.calls]
        return [b - a for a, b in itertools.pairwise(times)]


def pending(delay_s: float, **metadata: str) -> HandoffPending:
    return HandoffPending("not merged yet", metadata=metadata, retry_after_s=delay_s)


def test_a_pending_read_is_asked_again_after_the_nodes_delay_growing() -> None:
    node = Node(pending(0.02), pending(0.02), pending(0.02))
    assert call(RetryPolicy(growth=2.0), node, None, 5.0, ()) == "ok"
    gaps = node.gaps()
    assert len(gaps) == 3
    for gap, wanted in zip(gaps, (0.02, 0.04, 0.08), strict=True):
        assert wanted <= gap < wanted + 0.5, gaps


def test_a_position_still_pending_at_the_deadline_is_a_handoff_timeout() -> None:
    node = Node(forever=pending(0.01, actor="a.1.x"))
    started = time.monotonic()
    with pytest.raises(HandoffTimeout) as timed_out:
        call(RetryPolicy(), node, None, 0.5, ())
    assert 0.3 < time.monotonic() - started < 1.5
    assert timed_out.value.reason == "HANDOFF_POSITION_PENDING"
    assert timed_out.value.metadata == {"actor": "a.1.x"}
    assert len(node.calls) > 5, "asked again until the deadline, not a fixed number of times"
    # Each ask ran within what was left of the one deadline.
    assert all(b[1] < a[1] for a, b in zip(node.calls, node.calls[1:], strict=False))


def test_a_final_pending_answer_ends_the_call_at_once() -> None:
    node = Node(forever=pending(0.01, final="true"))
    with pytest.raises(HandoffTimeout):
        call(RetryPolicy(), node, None, 30.0, ())
    assert len(node.calls) == 1


def test_unavailable_is_retried_a_bounded_number_of_times_after_at_least_the_retry_delay() -> None:
    full = Unavailable("disk full", reason=Reason.DISK_FULL, retry_after_s=0.1)
    node = Node(forever=full)
    with pytest.raises(Unavailable) as refused:
        call(RetryPolicy(attempts=3), node, None, 10.0, ())
    assert refused.value.reason == "DISK_FULL" and len(node.calls) == 3
    assert all(gap >= 0.1 for gap in node.gaps()), node.gaps()
    assert isinstance(refused.value.__cause__, grpc.RpcError)


def test_other_errors_are_not_retried() -> None:
    node = Node(forever=InvalidArgument("context", "is required"))
    with pytest.raises(InvalidArgument):
        call(RetryPolicy(), node, None, 10.0, ())
    assert len(node.calls) == 1


def test_the_asyncio_client_retries_the_same_way() -> None:
    def run(node: Callable[..., str], timeout_s: float) -> str:
        async def method(request: Any, *, timeout: float, metadata: Any) -> str:
            return node(request, timeout=timeout, metadata=metadata)

        return asyncio.run(call_async(RetryPolicy(), method, None, timeout_s, ()))

    node = Node(pending(0.01), pending(0.01))
    assert run(node, 5.0) == "ok" and len(node.calls) == 3
    with pytest.raises(HandoffTimeout):
        run(Node(forever=pending(0.01)), 0.4)
