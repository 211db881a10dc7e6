"""Idempotency keys: a retried write is answered as the first call was and records nothing new.

A call's key is scoped to its caller (tenant and agent). It is recognised, within the window
(``Limits.idempotency_window_s``):

- on the node that took the first call, from the record written in the same batch as the
  write (``requests`` column family), so a restart, even a kill -9 after the write and before
  its answer, keeps it: every write (Observe, ObserveBatch, Retract, ForgetSubject);
- on every node that has merged the first call's observations, from the observations
  themselves (``Observation.request_key``, replicated with them): Observe and ObserveBatch;
- on every node that has merged the first call's withdrawal or erase, from the keyed call
  replicated with it (``SubjectState.keyed_calls``, sync.crdt): Retract and ForgetSubject.

A replayed answer names the first call's observation ids and keys, or its count of withdrawn
observations; its handoff token is the
subject's position now, which covers the first write. A record holds no statement: only the
fingerprint of the request, the ids written and a count. Each keyed write deletes up to
``SWEEP`` expired records in its batch, so the records never outgrow the window's writes.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from node import metrics
from node.errors import InvalidArgument, Reason, Unavailable
from sync.crdt import FINGERPRINT_BYTES, KEYED_CALL_OPS, KeyedCall, KeyedCalls, SubjectState
from sync.hlc import physical_ms
from sync.observation import Subject

# How soon a retried write found here in part is told to ask again: the rest of its first call
# is a peer's delta away.
PARTIAL_RETRY_S = 0.05

CF = "requests"
SWEEP = 4
Row = tuple[str, bytes, bytes | None]


class Request(NamedTuple):
    """A keyed call: whose key it is, the key, and the fingerprint of what it asked."""

    tenant: str
    agent: str
    key: str
    fingerprint: str
    window_ms: int

    def row_key(self) -> bytes:
        return b"K" + b"\x00".join(s.encode() for s in (self.tenant, self.agent, self.key))


class Replay(NamedTuple):
    """What the first call wrote: its observation ids (Observe, ObserveBatch), or how many
    observations it withdrew (Retract)."""

    ids: tuple[str, ...] = ()
    retracted: int = 0


def fingerprint(*parts: bytes) -> str:
    """Of a request's canonical bytes (its key left out): equal exactly for equal requests."""
    h = hashlib.blake2b(digest_size=FINGERPRINT_BYTES)
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def _time_key(ms: int, row_key: bytes) -> bytes:
    return b"T" + ms.to_bytes(8, "big") + row_key


def _reused(request: Request) -> InvalidArgument:
    return InvalidArgument(
        "idempotency_key",
        f"{request.key!r} was used by this agent for a different request within the "
        "idempotency window: use a new key for a new request",
        reason=Reason.IDEMPOTENCY_KEY_REUSED,
        metadata={"key": request.key},
    )


def recorded(raw: bytes | None, request: Request, op: str, now_ms: int) -> Replay | None:
    """The first call's answer from its record (``raw``, None when there is none), if it is
    within the window; a record of a different request is refused."""
    if raw is None:
        return None
    record: dict[str, Any] = json.loads(raw)
    if record["ms"] + request.window_ms < now_ms:
        return None
    if record["op"] != op or record["fp"] != request.fingerprint:
        raise _reused(request)
    return Replay(tuple(record["ids"]), int(record["retracted"]))


def record_rows(
    request: Request,
    op: str,
    now_ms: int,
    replay: Replay,
    expired: Sequence[tuple[bytes, bytes]],
    previous: bytes | None = None,
) -> list[Row]:
    """The rows recording a keyed call (replacing ``previous``, its key's record past the
    window, and its time-index row), and deleting ``expired`` (time-index rows, oldest first,
    as ``Store.scan(CF, b"T")`` lists them) with their records when past the window.

    Each record has one time-index row, of its own time: so a sweep never deletes a record
    written again since (but for one written in a concurrent batch: its retry is then
    recognised by its observations, not by this node's record)."""
    key = request.row_key()
    value = {"ms": now_ms, "op": op, "fp": request.fingerprint, "ids": list(replay.ids)}
    value["retracted"] = replay.retracted
    rows: list[Row] = [
        (CF, key, json.dumps(value, separators=(",", ":")).encode()),
        (CF, _time_key(now_ms, key), b""),
    ]
    if previous is not None:
        before = int(json.loads(previous)["ms"])
        if before != now_ms:
            rows.append((CF, _time_key(before, key), None))
    for time_key, _ in expired[:SWEEP]:
        if (
            not time_key.startswith(b"T")
            or int.from_bytes(time_key[1:9], "big") + (request.window_ms) >= now_ms
        ):
            break
        if time_key[9:] == key:
            continue  # the previous record of this very key, replaced above
        rows += [(CF, time_key, None), (CF, time_key[9:], None)]
    return rows


class Records(Protocol):
    """Where records are kept (node.store.Store)."""

    def get_meta(self, cf: str, key: bytes) -> bytes | None: ...

    def scan(self, cf: str, after: bytes = b"", limit: int = 100) -> list[tuple[bytes, bytes]]: ...


def first_answer(
    records: Records,
    load: Callable[[Subject], SubjectState],
    request: Request,
    op: str,
    subjects: Sequence[Subject],
    items: Sequence[tuple[int, Subject, str, str, str]],
    now_ms: int,
) -> Replay | None:
    """The first answer of a keyed call seen before: recorded on this node, or merged from the
    node that took it, with its observations (``items``: ``replicated``) or as a keyed call
    (Retract, Forget: ``merged_call``); counted by where."""
    found = recorded(records.get_meta(CF, request.row_key()), request, op, now_ms)
    where = "record"
    if found is None and items:
        states = [load(s) for s in subjects]
        found, where = replicated(states, request, items, now_ms), "observations"
    elif found is None and op in KEYED_CALL_OPS:
        states = [load(s) for s in subjects]
        found, where = merged_call(states, request, op, now_ms), "call"
    if found is not None:
        metrics.REPLAYED.labels(op, where).inc()
    return found


class Sweeper:
    """The rows recording keyed calls, each batch also deleting expired records: one per node.

    Records expire oldest first, and a sweep deletes the oldest, so the time index's head is a
    run of deleted rows, which an LSM store's iterator reads over until compaction drops them.
    A sweep therefore starts after the last row swept before (``_after``), never at the head:
    its cost stays that of its own rows, however many records were swept since the start.
    Invariant: every time-index row at or before ``_after`` is deleted, or in a batch being
    written; a record timed at or before it (a wall clock stepped back) resets it to the head.
    A batch that fails after its sweep leaves its rows to the first sweep after a restart.
    """

    def __init__(self) -> None:
        self._after = b"T"
        self._lock = threading.Lock()

    def rows_for(
        self, records: Records, request: Request, op: str, replay: Replay, now_ms: int
    ) -> list[Row]:
        """The rows that record a keyed call's answer, written in the call's batch."""
        with self._lock:
            after = self._after
        expired = records.scan(CF, after, SWEEP)
        key = request.row_key()
        rows = record_rows(request, op, now_ms, replay, expired, records.get_meta(CF, key))
        swept = [k for _, k, v in rows if v is None and k.startswith(b"T") and k[9:] != key]
        with self._lock:
            if _time_key(now_ms, key) <= self._after:
                self._after = b"T"
            elif swept:
                self._after = max(self._after, swept[-1])
        return rows


def keyed_calls(request: Request | None, op: str, hlc: int, retracted: int = 0) -> KeyedCalls:
    """The keyed call a Retract or Forget (``op``) with ``request`` replicates with its withdrawal
    or erase (timed ``hlc``), so any node that merges it recognises a retry; none without a key."""
    if request is None:
        return {}
    call = KeyedCall(hlc, op, bytes.fromhex(request.fingerprint), retracted)
    return {(request.agent, request.key): call}


def merged_call(
    states: Sequence[SubjectState], request: Request, op: str, now_ms: int
) -> Replay | None:
    """The first call's answer from its keyed call in ``states`` (merged from the node that took
    it), if the call is the caller's and within the window; a call of the key that asked for
    something else is refused."""
    for state in states:
        call = state.keyed_calls.get((request.agent, request.key))
        if call is None or physical_ms(call.hlc) + request.window_ms < now_ms:
            continue
        if call.op != op or call.fingerprint.hex() != request.fingerprint:
            raise _reused(request)
        return Replay(retracted=call.retracted)
    return None


def replicated(
    states: Sequence[SubjectState],
    request: Request,
    items: Sequence[tuple[int, Subject, str, str, str]],
    now_ms: int,
) -> Replay | None:
    """The first call's answer from its observations in ``states``, when they hold every one
    of them (``items``: index, subject, context, key and statement of each one asked for).

    Only observations of the caller within the window count. A call found in part is
    Unavailable: retried, it finds the rest once merged, unless the rest was lost since (its
    message then says to retry on the node that took the call).
    """
    found: dict[int, str] = {}
    for state in states:
        for obs in state.observations.values():
            if (
                obs.request_key == request.key
                and obs.source == request.agent
                and physical_ms(obs.hlc) + request.window_ms >= now_ms
            ):
                found[obs.request_index] = str(obs.dot)
                wanted = next((i for i in items if i[0] == obs.request_index), None)
                here = (state.subject, obs.context, obs.key, obs.statement)
                if wanted is None or wanted[1:] != here:
                    raise _reused(request)
    if not found:
        return None
    if len(found) < len(items):
        # One call's observations of one subject arrive in one delta: a subject holding some of
        # them and not the others lost those since (replaced, retracted, forgotten), for good.
        held = {s for i, s, *_ in items if i in found}
        if any(s in held for i, s, *_ in items if i not in found):
            raise Unavailable(
                f"idempotency_key {request.key!r}: {len(found)} of the {len(items)} "
                "observations of the first call are on this node, the others were since "
                "replaced, retracted or forgotten here, so retrying here never finds them: "
                "retry on the node that took the first call, or read the subject",
                reason=Reason.IDEMPOTENT_WRITE_LOST,
                metadata={"key": request.key, "found": len(found), "wanted": len(items)},
            )
        raise Unavailable(
            f"idempotency_key {request.key!r}: {len(found)} of the {len(items)} observations "
            "of the first call are merged on this node, the rest not yet; retry",
            reason=Reason.IDEMPOTENT_WRITE_PENDING,
            metadata={"key": request.key, "found": len(found), "wanted": len(items)},
            retry_after_s=PARTIAL_RETRY_S,
        )
    return Replay(tuple(found[i] for i, *_ in items))


__all__ = [
    "CF",
    "Replay",
    "Request",
    "Sweeper",
    "fingerprint",
    "first_answer",
    "keyed_calls",
    "merged_call",
    "record_rows",
    "recorded",
    "replicated",
]
