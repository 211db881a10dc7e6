"""Prometheus metrics of a node: the standard grpc_server_* families and selfmodel_* figures.

No user, subject or agent ids are ever used as label values: only methods, codes and peers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from node.interceptors import HandlerWrapper

log = logging.getLogger("selfmodel.node")

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip


GRPC_STARTED = Counter(
    "grpc_server_started_total", "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)  # fmt: skip
GRPC_HANDLED = Counter(
    "grpc_server_handled_total", "RPCs completed on the server, regardless of success or failure.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)  # fmt: skip
GRPC_HANDLING = Histogram(
    "grpc_server_handling_seconds", "Response latency of RPCs handled by the server.",
    ["grpc_type", "grpc_service", "grpc_method"], buckets=_LATENCY_BUCKETS,
)  # fmt: skip
GRPC_MSG_RECEIVED = Counter(
    "grpc_server_msg_received_total", "Stream messages received on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)  # fmt: skip
GRPC_MSG_SENT = Counter(
    "grpc_server_msg_sent_total", "Stream messages sent by the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)  # fmt: skip

OBSERVATIONS = Counter("selfmodel_observations_total", "Observations accepted from agents.")
FORGOTTEN = Counter("selfmodel_subjects_forgotten_total", "Subjects erased by ForgetSubject.")
REPLAYED = Counter(
    "selfmodel_writes_replayed_total",
    "Writes answered as an earlier call with their idempotency key, recording nothing: by call "
    "and by where the earlier call was found (this node's record, its merged observations, or "
    "its merged keyed call: Retract, ForgetSubject).",
    ["call", "found"],
)
WATCHES = Gauge("selfmodel_watches", "Open WatchSelfModel streams.")
HANDOFF_TIMEOUTS = Counter(
    "selfmodel_handoff_timeouts_total",
    "Reads whose handoff token's position was still not merged when the reader's deadline left "
    "no time to ask again (the last HANDOFF_POSITION_PENDING answer a reader gets).",
)
HANDOFF_PENDING = Counter(
    "selfmodel_handoff_pending_total",
    "Reads with a handoff token answered HANDOFF_POSITION_PENDING (UNAVAILABLE, ask again): "
    "the position was not merged yet. No read waits in the node (a watch's first model "
    "waits for its token's positions instead, not counted here).",
)
HANDOFF_REFUSED = Counter(
    "selfmodel_handoff_refused_total",
    "Reads with a handoff token refused at once, by reason (implausible: a position no node "
    "issued).",
    ["reason"],
)
ROLLUP_MEMBERS = Counter(
    "selfmodel_rollup_members_total",
    "Users' contributions taken into a group's roll-up as a node loads it (after a start, or "
    "when a user joins its first team), by how: stored (its held record, valid for its state "
    "and book now) or resolved (its model resolved).",
    ["how"],
)
RESOLUTIONS = Counter(
    "selfmodel_resolutions_total",
    "Subject snapshots resolved, by how: change (a new state, only the slots the change "
    "touched resolved again), whole (a subject read cold, or whose snapshot was dropped). Every "
    "reader and watcher of one state shares one resolution.",
    ["cause"],
)
WATCHES_ENDED = Counter(
    "selfmodel_watches_ended_total",
    "Watch streams the node ended, by reason (revoked: the caller's token no longer allows it).",
    ["reason"],
)
DELTAS_HELD = Gauge(
    "selfmodel_deltas_held",
    "Remote deltas waiting for a delta they depend on (causal delivery).",
)
SUBJECT_LIMIT_REFUSED = Counter(
    "selfmodel_subject_limit_refused_total",
    "Writes (an agent's) and merges (a peer's) refused for taking a subject past its limits.",
    ["kind", "limit"],
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
    "counter_exhausted (the next event counter would pass the bound peers accept), "
    "replication_behind (a peer's delta stream falls behind: max_replication_lag_s).",
    ["reason"],
)
COMMIT_GROUPS = Counter("selfmodel_commit_groups_total", "Group commits written to RocksDB.")
COMMIT_BATCHES = Counter("selfmodel_commit_batches_total", "Mutations written by group commits.")
COMMIT_SECONDS = Histogram(
    "selfmodel_commit_seconds", "Time to write one group commit (fsync included when on).",
    buckets=_LATENCY_BUCKETS,
)  # fmt: skip
STORE_BYTES = Gauge("selfmodel_store_bytes", "Bytes in RocksDB (SST files and memtables).")
CONTEXT_ENTRIES_MAX = Gauge(
    "selfmodel_causal_context_entries_max",
    "The most entries (one per actor, plus dots beyond them) in the causal context of any "
    "subject this node wrote since it started. A start that takes a new actor adds one; "
    "handoff tokens carry the context, about 33 characters an entry, and are refused above "
    "65,536.",
)
SUBJECTS = Gauge("selfmodel_subjects", "Subjects stored (RocksDB's estimate).")
STORE_WRITABLE = Gauge(
    "selfmodel_store_writable",
    "1 while the node takes writes, 0 while they are suspended (its data directory's disk is "
    "full or nearly so, or a write to it failed); they resume by themselves.",
)
STORE_WRITABLE.set(1)
STORE_SUSPENSIONS = Counter(
    "selfmodel_store_suspensions_total",
    "Times writes were suspended, by why: no space (a write failed for lack of space), low "
    "space (free space under min_free_mb), I/O error.",
    ["reason"],
)
STORE_FREE_BYTES = Gauge(
    "selfmodel_store_free_bytes", "Free bytes on the disk holding the data directory."
)
STORE_CORRUPTION = Counter(
    "selfmodel_store_corruption_total",
    "Damage RocksDB found in the store: wal (a damaged write-ahead log at start: the writes "
    "after the damage come back from peers), sst (a subject's stored state: repaired from "
    "peers).",
    ["kind"],
)
STATE_CACHE_BYTES = Gauge(
    "selfmodel_state_cache_bytes",
    "Estimated memory of the subject states this node keeps in memory (at most its cache_mb, "
    "but for one state larger than that).",
)

ROCKSDB_CACHE_BYTES = Gauge(
    "selfmodel_rocksdb_cache_bytes",
    "Memory RocksDB holds within this node's rocksdb_cache_mb: the data, index and filter "
    "blocks it cached and its memtables, charged to one cache for every column family.",
)
ROCKSDB_MEMTABLE_BYTES = Gauge(
    "selfmodel_rocksdb_memtable_bytes",
    "Memory of RocksDB's memtables (writes not yet flushed), of every column family: part of "
    "selfmodel_rocksdb_cache_bytes, flushed once they take half of rocksdb_cache_mb.",
)

SNAPSHOT_CACHE_BYTES = Gauge(
    "selfmodel_snapshot_cache_bytes",
    "Estimated memory of the resolved snapshots (and their serialized replies) this node keeps "
    "(at most its snapshot_cache_mb, but for one snapshot larger than that).",
)
SNAPSHOTS_KEPT = Gauge(
    "selfmodel_snapshots_kept", "Subjects whose resolved snapshot or slot index this node keeps."
)
POLICY_DISAGREEMENTS = Gauge(
    "selfmodel_policy_disagreements",
    "Values of this node's cluster file ([policies]) that a replicated setting overrides with "
    "another, by kind (setting, reliability): 0 when the file agrees with the cluster.",
    ["kind"],
)

LEARNED_OUTCOMES = Gauge(
    "selfmodel_learned_outcomes",
    "Judged positions (source, slot) this node keeps in memory to learn from (node.learning): "
    "at most 2 x [cluster.learning] window per tenant, source and context with weights.",
)
LEARNING_REBUILDS = Counter(
    "selfmodel_learning_rebuilds_total",
    "Times a tenant, source and context's kept positions fell below the window after "
    "removals and were read again from the stored slots (node.learning).",
)


def watch_learning(kept: Callable[[], int]) -> None:
    LEARNED_OUTCOMES.set_function(kept)


def watch_snapshots(cost_bytes: Callable[[], int], kept: Callable[[], int]) -> None:
    SNAPSHOT_CACHE_BYTES.set_function(cost_bytes)
    SNAPSHOTS_KEPT.set_function(kept)


def record_commit(batches: int, seconds: float) -> None:
    COMMIT_GROUPS.inc()
    COMMIT_BATCHES.inc(batches)
    COMMIT_SECONDS.observe(seconds)


def watch_store(
    size_bytes: Callable[[], int],
    subjects: Callable[[], int],
    context_entries: Callable[[], int],
    cache_bytes: Callable[[], int],
    rocksdb_bytes: Callable[[], int],
    memtable_bytes: Callable[[], int],
) -> None:
    STORE_BYTES.set_function(size_bytes)
    SUBJECTS.set_function(subjects)
    CONTEXT_ENTRIES_MAX.set_function(context_entries)
    STATE_CACHE_BYTES.set_function(cache_bytes)
    ROCKSDB_CACHE_BYTES.set_function(rocksdb_bytes)
    ROCKSDB_MEMTABLE_BYTES.set_function(memtable_bytes)


def _code_name(context: grpc.ServicerContext) -> str:
    code = context.code()  # type: ignore[attr-defined]
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return str(code)


class ServerMetrics(HandlerWrapper):
    """Counts and times every RPC, as go-grpc-prometheus names the families."""

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


def _handled(kind: str, service: str, method: str) -> Callable[[str], Any]:
    """The grpc_server_handled_total child of a method for a status code."""
    return lambda code: GRPC_HANDLED.labels(kind, service, method, code)


def _wrap_unary(fn: Callable[..., Any], kind: str, service: str, method: str) -> Callable[..., Any]:
    started = GRPC_STARTED.labels(kind, service, method)
    handling = GRPC_HANDLING.labels(kind, service, method)
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
    started = GRPC_STARTED.labels(kind, service, method)
    sent = GRPC_MSG_SENT.labels(kind, service, method)
    handling = GRPC_HANDLING.labels(kind, service, method)
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
