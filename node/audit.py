"""The audit log of operator actions, in the store's append-only ``audit`` column family.

An audited action (forget, retract on behalf of another source) writes its audit row in the
same durable batch as the change itself, so the log can never miss an action that happened nor
record one that did not. Keys are big-endian (milliseconds, sequence): iteration order is
append order, and a key is a cursor for paging.

The log outlives ``forget``: it names the subject that was erased and who erased it, but never
holds a statement. A slot key that is not a plain identifier (an agent may use a normalized
statement as its key) is recorded as a hash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from node.store import Store
from sync.observation import Subject, SubjectKind

CF = "audit"
CLUSTER = "_cluster"  # the tenant of the cluster's own subjects (sync.governance)
KEY_BYTES = 16
_PLAIN_KEY = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What an operator (or the development principal) did, to which subject, and how."""

    actor: str
    role: str
    # forget | retract_on_behalf | add_member | remove_member | set_setting | clear_setting |
    # set_reliability | clear_reliability
    action: str
    subject: Subject
    detail: str = ""
    actor_tenant: str = ""  # empty: the development principal of a node without tokens


@dataclass(frozen=True, slots=True)
class AuditEntry:
    cursor: str  # hex of the row key
    time_ms: int
    node: str
    record: AuditRecord


def slot_detail(context: str, key: str, source: str, retracted: int) -> str:
    shown = (
        key
        if _PLAIN_KEY.fullmatch(key)
        else "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    )
    return f"context={context} key={shown} source={source} retracted={retracted}"


def _encode(record: AuditRecord, time_ms: int, node: str) -> bytes:
    s = record.subject
    return json.dumps(
        {
            "time_ms": time_ms,
            "node": node,
            "actor": record.actor,
            "role": record.role,
            "actor_tenant": record.actor_tenant,
            "action": record.action,
            "subject": [s.tenant, int(s.kind), s.id],
            "detail": record.detail,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


def _decode(key: bytes, raw: bytes) -> AuditEntry:
    d = json.loads(raw)
    tenant, kind, id = d["subject"]
    record = AuditRecord(
        d["actor"], d["role"], d["action"], Subject(tenant, SubjectKind(kind), id),
        d["detail"], d["actor_tenant"],
    )  # fmt: skip
    return AuditEntry(key.hex(), d["time_ms"], d["node"], record)


class AuditLog:
    """Allocates ordered keys for audit rows and reads them back, a page at a time."""

    def __init__(
        self, store: Store, now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000
    ) -> None:
        self.store = store
        self._now_ms = now_ms
        self._lock = threading.Lock()
        last = store.scan(CF, limit=1, reverse=True)
        self._last = (
            (int.from_bytes(last[0][0][:8], "big"), int.from_bytes(last[0][0][8:], "big"))
            if last
            else (0, 0)
        )

    @contextlib.contextmanager
    def appending(self, record: AuditRecord) -> Iterator[tuple[str, bytes, bytes]]:
        """Yields the (cf, key, value) row to commit with the action.

        Held across the commit, so rows reach the store in key order and a reader paging by
        cursor never misses a row committed behind it. Audited actions are rare; the
        serialization costs nothing that matters.
        """
        with self.appending_all([record]) as rows:
            yield rows[0]

    @contextlib.contextmanager
    def appending_all(self, records: list[AuditRecord]) -> Iterator[list[tuple[str, bytes, bytes]]]:
        """Yields the rows of ``records``, in order, to commit together (see ``appending``);
        none, and no lock held, for no records."""
        if not records:
            yield []
            return
        with self._lock:
            rows = []
            for record in records:
                ms = max(self._now_ms(), self._last[0])
                seq = self._last[1] + 1 if ms == self._last[0] else 0
                self._last = (ms, seq)
                key = ms.to_bytes(8, "big") + seq.to_bytes(8, "big")
                rows.append((CF, key, _encode(record, ms, self.store.node)))
            yield rows

    def list(
        self,
        after: bytes = b"",
        limit: int = 100,
        tenant: str | None = None,
        scan_budget: int = 10_000,
    ) -> tuple[list[AuditEntry], str]:
        """Entries after a cursor (of ``tenant`` only, unless None, and those of the cluster's
        own subjects, which concern every tenant), and the cursor to go on.

        The cursor is empty when the log holds nothing further. At most ``scan_budget`` rows
        are read per call, so a tenant with few entries in a long log still gets a bounded
        answer (possibly empty) and a cursor to continue from.
        """
        found: list[AuditEntry] = []
        cursor = after
        scanned = 0
        while len(found) < limit and scanned < scan_budget:
            rows = self.store.scan(CF, after=cursor, limit=min(512, scan_budget - scanned))
            if not rows:
                return found, ""
            for key, raw in rows:
                scanned += 1
                cursor = key
                entry = _decode(key, raw)
                if tenant is None or entry.record.subject.tenant in (tenant, CLUSTER):
                    found.append(_as_seen_by(entry, tenant))
                    if len(found) >= limit:
                        break
        more = self.store.scan(CF, after=cursor, limit=1)
        return found, cursor.hex() if more else ""


def _as_seen_by(entry: AuditEntry, tenant: str | None) -> AuditEntry:
    """``entry`` as a reader of ``tenant`` (None: every tenant) sees it: a change of the
    cluster's own subjects made by a principal of another tenant names the actor as acting for
    the cluster, never its tenant (a tenant learns nothing of another)."""
    actor_tenant = entry.record.actor_tenant
    if tenant is None or actor_tenant in ("", tenant, CLUSTER):
        return entry
    return dataclasses.replace(
        entry, record=dataclasses.replace(entry.record, actor_tenant=CLUSTER)
    )


__all__ = ["AuditEntry", "AuditLog", "AuditRecord", "slot_detail"]
