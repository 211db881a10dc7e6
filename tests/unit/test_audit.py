from __future__ import annotations

import gc
from pathlib import Path

from node.audit import AuditLog, AuditRecord, slot_detail
from node.engine import Engine
from node.store import Store
from node.writes import ObservationInput
from sync.observation import Subject, SubjectKind

ACME = Subject("acme", SubjectKind.USER, "u-1")
GLOBEX = Subject("globex", SubjectKind.USER, "u-1")


def record(subject: Subject, action: str = "forget") -> AuditRecord:
    return AuditRecord("boss", "operator", action, subject, actor_tenant=subject.tenant)


def test_audit_rows_keep_append_order_when_the_clock_stands_still_or_steps_back(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "db", "n1", fsync=False)
    times = iter([1000, 1000, 999, 1001])
    log = AuditLog(store, now_ms=lambda: next(times))
    for i in range(4):
        with log.appending(record(ACME, f"a{i}")) as row:
            store.commit([], [row])
    entries, cursor = log.list()
    assert [e.record.action for e in entries] == ["a0", "a1", "a2", "a3"]
    assert [e.time_ms for e in entries] == [1000, 1000, 1000, 1001]
    assert cursor == ""
    store.close()
    del store, log
    gc.collect()  # rocksdict releases the db lock only when every handle is gone

    reopened = Store(tmp_path / "db", "n1", fsync=False)
    log = AuditLog(reopened, now_ms=lambda: 5)  # a clock far behind: keys still grow
    with log.appending(record(ACME, "after restart")) as row:
        reopened.commit([], [row])
    assert log.list()[0][-1].record.action == "after restart"
    reopened.close()


def test_audit_pages_by_cursor_and_filters_by_tenant(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", "n1", fsync=False)
    log = AuditLog(store)
    for i in range(7):
        with log.appending(record(ACME if i % 2 else GLOBEX, f"a{i}")) as row:
            store.commit([], [row])
    first, cursor = log.list(limit=2, tenant="acme")
    assert [e.record.action for e in first] == ["a1", "a3"]
    rest, end = log.list(bytes.fromhex(cursor), limit=10, tenant="acme")
    assert [e.record.action for e in rest] == ["a5"]
    assert end == ""
    everything, _ = log.list(limit=100)
    assert len(everything) == 7
    store.close()


def test_the_audit_never_holds_a_statement_used_as_a_key() -> None:
    assert "key=team_size " in slot_detail("team", "team_size", "a", 1)
    detail = slot_detail("motivation", "wants quick time-to-value", "a", 1)
    assert "quick" not in detail and "key=sha256:" in detail


def test_forget_and_retract_on_behalf_are_audited_in_the_same_batch(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", "n1", fsync=False)
    engine = Engine(store)
    engine.observe("sales_agent", [ObservationInput(ACME, "team", "team_size", "12", 0.9)])
    who = AuditRecord("boss", "operator", "retract_on_behalf", ACME, actor_tenant="acme")
    assert engine.retract(ACME, "team", "team_size", "sales_agent", who)[0] == 1
    assert engine.retract(ACME, "team", "team_size", "sales_agent", who)[0] == 0
    engine.retract(ACME, "team", "team_size", "boss")  # its own: not an operator action
    engine.forget(ACME, record(ACME))
    entries, _ = engine.audit.list()
    assert [(e.record.action, e.record.detail) for e in entries] == [
        ("retract_on_behalf", "context=team key=team_size source=sales_agent retracted=1"),
        ("retract_on_behalf", "context=team key=team_size source=sales_agent retracted=0"),
        ("forget", ""),
    ]
    assert all(e.node == "n1" and e.record.subject == ACME for e in entries)
    store.close()
