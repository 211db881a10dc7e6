"""Prometheus metrics of a node: the standard grpc_server_* families and selfmodel_* figures.

No user, subject or agent ids are ever used as label values: only methods, codes and peers.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client import metrics as _client_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from node.interceptors import HandlerWrapper
from sync import native

log = logging.getLogger("selfmodel.node")

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip


class CountingChild:
    """One child of a ``Family`` counter: a number under a lock."""

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"counters only go up, not by {amount}")
        with self._lock:
            self.value += amount

    def get(self) -> float:
        with self._lock:
            return self.value


class TimingChild:
    """One child of a ``Family`` histogram: a count per bucket and the sum, under a lock."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # ascending, the last +Inf
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()
        self._lock = threading.Lock()

    def observe(self, amount: float) -> None:
        # The first bucket whose bound is at least the amount, as prometheus_client counts.
        i = bisect.bisect_left(self.bounds, amount)
        with self._lock:
            self.counts[i] += 1
            self.sum += amount

    def snapshot(self) -> tuple[list[int], float]:
        """The count of each bucket (not cumulative) and the sum."""
        with self._lock:
            return list(self.counts), self.sum


class Family:
    """A counter (no ``buckets``) or histogram family whose children count in compiled code.

    prometheus_client's Counter and Histogram count in Python: several interpreted frames and
    a lock per increment, and a histogram walks its buckets in a loop. The families counted on
    every call (the grpc_server_* ones, observations, group commits) are these instead, whose
    children count where the call runs (compiled with the node's hot path, see
    sync.native) and which build prometheus_client's samples only when scraped: the same
    names, labels, bucket bounds and ``_created`` series as prometheus_client's own (a test
    compares the exposition).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] | None = None,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.name = name[: -len("_total")] if buckets is None and name.endswith("_total") else name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds: tuple[float, ...] = ()
        if buckets is not None:
            bounds = sorted(float(b) for b in buckets)
            if not bounds or bounds[-1] != math.inf:
                bounds.append(math.inf)
            self.bounds = tuple(bounds)
        # The buckets' "le" labels, as prometheus_client writes the bounds.
        self._les = tuple(
            str(floatToGoString(b))  # type: ignore[no-untyped-call]
            for b in self.bounds
        )
        self._counters: dict[tuple[str, ...], CountingChild] = {}
        self._timings: dict[tuple[str, ...], TimingChild] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def counter(self, *values: str) -> CountingChild:
        """The child counting for these label values, made on first use."""
        found = self._counters.get(values)
        if found is None:
            self._check(values, histogram=False)
            with self._lock:
                found = self._counters.setdefault(values, CountingChild())
        return found

    def timing(self, *values: str) -> TimingChild:
        """The child timing for these label values, made on first use."""
        found = self._timings.get(values)
        if found is None:
            self._check(values, histogram=True)
            with self._lock:
                found = self._timings.setdefault(values, TimingChild(self.bounds))
        return found

    def _check(self, values: tuple[str, ...], histogram: bool) -> None:
        if histogram != bool(self.bounds):
            kind = "a histogram" if self.bounds else "a counter"
            raise TypeError(f"{self.name} is {kind}")
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")

    def describe(self) -> list[Metric]:
        return [self._metric()]

    def _metric(self) -> Metric:
        return Metric(self.name, self.documentation, "histogram" if self.bounds else "counter")

    def collect(self) -> list[Metric]:
        metric = self._metric()
        created = bool(getattr(_client_metrics, "_use_created", True))
        with self._lock:
            counters = list(self._counters.items())
            timings = list(self._timings.items())
        for values, counting in counters:
            labels = dict(zip(self.labelnames, values, strict=True))
            metric.add_sample(self.name + "_total", labels, counting.get())
            if created:
                metric.add_sample(self.name + "_created", labels, counting.created)
        for values, timing in timings:
            labels = dict(zip(self.labelnames, values, strict=True))
            counts, total = timing.snapshot()
            seen = 0
            for le, count in zip(self._les, counts, strict=True):
                seen += count
                metric.add_sample(self.name + "_bucket", {**labels, "le": le}, seen)
            metric.add_sample(self.name + "_count", labels, seen)
            if self.bounds[0] >= 0:
                metric.add_sample(self.name + "_sum", labels, total)
            if created:
                metric.add_sample(self.name + "_created", labels, timing.created)
        return [metric]


GRPC_STARTED = Family(
    "grpc_server_started_total", "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)  # fmt: skip
GRPC_HANDLED = Family(
    "grpc_server_handled_total", "RPCs completed on the server, regardless of success or failure.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)  # fmt: skip
GRPC_HANDLING = Family(
    "grpc_server_handling_seconds", "Response latency of RPCs handled by the server.",
    ["grpc_type", "grpc_service", "grpc_method"], buckets=_LATENCY_BUCKETS,
)  # fmt: skip
GRPC_MSG_RECEIVED = Counter(
    "grpc_server_msg_received_total", "Stream messages received on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)  # fmt: skip
GRPC_MSG_SENT = Family(
    "grpc_server_msg_sent_total", "Stream messages sent by the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)  # fmt: skip

OBSERVATIONS = Family(
    "selfmodel_observations_total", "Observations accepted from agents."
).counter()
FORGOTTEN = Counter("selfmodel_subjects_forgotten_total", "Subjects erased by ForgetSubject.")
WATCHES = Gauge("selfmodel_watches", "Open WatchSelfModel streams.")
HANDOFF_TIMEOUTS = Counter(
    "selfmodel_handoff_timeouts_total", "Reads whose handoff token was not merged in time."
)
DELTAS_HELD = Gauge(
    "selfmodel_deltas_held",
    "Remote deltas waiting for a delta they depend on (causal delivery).",
)
CLOCK_SKEW_REFUSED = Counter(
    "selfmodel_clock_skew_refused_total",
    "Remote observations refused (held back until this node's clock allows them): timestamp "
    "further ahead of this node's wall clock than max_clock_offset_ms.",
)
CLOCK_AHEAD = Gauge(
    "selfmodel_clock_ahead_seconds",
    "How far this node's hybrid clock is ahead of its wall clock (0 when it is not); beyond "
    "max_clock_offset_ms the node refuses writes (UNAVAILABLE) until the wall clock catches up.",
)
WRITES_REFUSED = Counter(
    "selfmodel_writes_refused_total",
    "Writes refused before any change: clock_ahead (the clock is beyond max_clock_offset_ms), "
    "counter_exhausted (the next event counter would pass the bound peers accept).",
    ["reason"],
)
COMMIT_GROUPS = Family(
    "selfmodel_commit_groups_total", "Group commits written to RocksDB."
).counter()
COMMIT_BATCHES = Family(
    "selfmodel_commit_batches_total", "Mutations written by group commits."
).counter()
COMMIT_SECONDS = Family(
    "selfmodel_commit_seconds", "Time to write one group commit (fsync included when on).",
    buckets=_LATENCY_BUCKETS,
).timing()  # fmt: skip
STORE_BYTES = Gauge("selfmodel_store_bytes", "Bytes in RocksDB (SST files and memtables).")
CONTEXT_ENTRIES_MAX = Gauge(
    "selfmodel_causal_context_entries_max",
    "The most entries (one per actor, plus dots beyond them) in the causal context of any "
    "subject this node wrote since it started. A start that takes a new actor adds one; "
    "handoff tokens carry the context, about 33 characters an entry, and are refused above "
    "65,536.",
)
SUBJECTS = Gauge("selfmodel_subjects", "Subjects stored (RocksDB's estimate).")
STATE_CACHE_BYTES = Gauge(
    "selfmodel_state_cache_bytes",
    "Estimated memory of the subject states this node keeps in memory (at most its cache_mb, "
    "but for one state larger than that).",
)

COMPILED = Gauge(
    "selfmodel_compiled",
    "1 when the hot modules run compiled by mypyc, 0 when they run as pure Python (no C "
    "compiler where it was installed, or sources changed since the build: see sync/native.py).",
)
COMPILED.set(1 if native.choose() else 0)


def record_commit(batches: int, seconds: float) -> None:
    COMMIT_GROUPS.inc()
    COMMIT_BATCHES.inc(batches)
    COMMIT_SECONDS.observe(seconds)


def watch_store(
    size_bytes: Callable[[], int],
    subjects: Callable[[], int],
    context_entries: Callable[[], int],
    cache_bytes: Callable[[], int],
) -> None:
    STORE_BYTES.set_function(size_bytes)
    SUBJECTS.set_function(subjects)
    CONTEXT_ENTRIES_MAX.set_function(context_entries)
    STATE_CACHE_BYTES.set_function(cache_bytes)


def _code_name(context: grpc.ServicerContext) -> str:
    code = context.code()  # type: ignore[attr-defined]
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return str(code)


class ServerMetrics(HandlerWrapper):
    """Counts and times every RPC, as go-grpc-prometheus names the families.

    A method's handler and its label children are wrapped once, at registration (see
    node.interceptors), so a call costs the counting, not the wrapping.
    """

    def wrap(self, handler: Any, method: str) -> Any:
        return _wrap(handler, method)


def _wrap(handler: Any, full_method: str) -> Any:
    _, _, full = full_method.partition("/")
    service, _, method = full.partition("/")
    if handler.unary_unary:
        return handler._replace(
            unary_unary=_wrap_unary(handler.unary_unary, "unary", service, method)
        )
    if handler.unary_stream:
        return handler._replace(
            unary_stream=_wrap_stream(handler.unary_stream, "server_stream", service, method)
        )
    if handler.stream_stream:
        return handler._replace(
            stream_stream=_wrap_stream(handler.stream_stream, "bidi_stream", service, method)
        )
    return handler


def _handled(kind: str, service: str, method: str) -> Callable[[str], CountingChild]:
    """The grpc_server_handled_total child of a method for a code, created on first use."""
    children: dict[str, CountingChild] = {}

    def child(code: str) -> CountingChild:
        found = children.get(code)
        if found is None:
            found = children.setdefault(code, GRPC_HANDLED.counter(kind, service, method, code))
        return found

    return child


def _wrap_unary(fn: Callable[..., Any], kind: str, service: str, method: str) -> Callable[..., Any]:
    started = GRPC_STARTED.counter(kind, service, method)
    handling = GRPC_HANDLING.timing(kind, service, method)
    handled = _handled(kind, service, method)

    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        started.inc()
        t0 = time.perf_counter()
        code = "UNKNOWN"
        try:
            response = fn(request, context)
            code = _code_name(context)
            return response
        except BaseException:
            code = _code_name(context)
            if code == "OK":
                code = "UNKNOWN"
            raise
        finally:
            handling.observe(time.perf_counter() - t0)
            handled(code).inc()

    return wrapped


def _wrap_stream(
    fn: Callable[..., Any], kind: str, service: str, method: str
) -> Callable[..., Any]:
    started = GRPC_STARTED.counter(kind, service, method)
    sent = GRPC_MSG_SENT.counter(kind, service, method)
    handling = GRPC_HANDLING.timing(kind, service, method)
    handled = _handled(kind, service, method)

    def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started.inc()
        t0 = time.perf_counter()
        code = "UNKNOWN"
        try:
            for item in fn(request, context):
                sent.inc()
                yield item
            code = _code_name(context)
        except BaseException:
            code = _code_name(context)
            if code == "OK":
                code = "CANCELLED" if not context.is_active() else "UNKNOWN"
            raise
        finally:
            handling.observe(time.perf_counter() - t0)
            handled(code).inc()

    return wrapped
