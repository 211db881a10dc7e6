"""node/idempotency.py: what a keyed call's record answers, and what the records keep."""

from __future__ import annotations

import pytest

from node.errors import InvalidArgument, Unavailable
from node.idempotency import (
    CF,
    SWEEP,
    Replay,
    Request,
    Sweeper,
    fingerprint,
    keyed_calls,
    merged_call,
    record_rows,
    recorded,
    replicated,
)
from sync.causal import CausalContext
from sync.crdt import SubjectState
from sync.hlc import pack
from sync.observation import Subject, SubjectKind
from tests.unit.strategies import BASE_MS, observation

WINDOW_MS = 60_000
REQUEST = Request("acme", "sales_agent", "call-1", fingerprint(b"observe", b"x"), WINDOW_MS)
ALICE = Subject("acme", SubjectKind.USER, "alice")
BOB = Subject("acme", SubjectKind.USER, "bob")


def stored(
    rows: list[tuple[str, bytes, bytes | None]], table: dict[bytes, bytes] | None = None
) -> dict[bytes, bytes]:
    """The requests column family after writing ``rows`` into ``table`` (default: empty)."""
    table = {} if table is None else table
    for cf, key, value in rows:
        assert cf == CF
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


def test_a_record_answers_its_call_within_the_window_and_nothing_after() -> None:
    table = stored(record_rows(REQUEST, "observe", BASE_MS, Replay(("a.1:3",)), []))
    raw = table[REQUEST.row_key()]
    assert recorded(raw, REQUEST, "observe", BASE_MS + WINDOW_MS) == Replay(("a.1:3",))
    assert recorded(raw, REQUEST, "observe", BASE_MS + WINDOW_MS + 1) is None
    assert recorded(None, REQUEST, "observe", BASE_MS) is None


def test_a_key_used_for_another_request_or_call_is_refused_naming_the_field() -> None:
    raw = stored(record_rows(REQUEST, "observe", BASE_MS, Replay(("a.1:3",)), []))[
        REQUEST.row_key()
    ]
    other = REQUEST._replace(fingerprint=fingerprint(b"observe", b"y"))
    with pytest.raises(InvalidArgument, match="idempotency_key"):
        recorded(raw, other, "observe", BASE_MS)
    with pytest.raises(InvalidArgument, match="idempotency_key"):
        recorded(raw, REQUEST, "retract", BASE_MS)


def test_fingerprints_tell_apart_requests_whose_parts_concatenate_alike() -> None:
    assert fingerprint(b"ab", b"c") != fingerprint(b"a", b"bc")
    assert fingerprint(b"ab", b"c") == fingerprint(b"ab", b"c")


def test_keys_are_scoped_to_tenant_and_agent() -> None:
    keys = {
        REQUEST.row_key(),
        REQUEST._replace(agent="support_agent").row_key(),
        REQUEST._replace(tenant="globex").row_key(),
    }
    assert len(keys) == 3


def test_records_past_the_window_are_swept_by_later_keyed_writes() -> None:
    table: dict[bytes, bytes] = {}
    for i in range(3):
        req = REQUEST._replace(key=f"old-{i}")
        table.update(stored(record_rows(req, "observe", BASE_MS + i, Replay(), [])))
    expired = sorted((k, v) for k, v in table.items() if k.startswith(b"T"))
    later = BASE_MS + WINDOW_MS + 2  # old-0 and old-1 are past the window, old-2 is not
    old0 = REQUEST._replace(key="old-0")
    # old-0 is written again (its record past the window), while old-1 is swept.
    stored(record_rows(old0, "observe", later, Replay(), expired, table[old0.row_key()]), table)
    assert recorded(table[old0.row_key()], old0, "observe", later) == Replay()
    assert REQUEST._replace(key="old-1").row_key() not in table
    assert REQUEST._replace(key="old-2").row_key() in table
    times = [k for k in table if k.startswith(b"T")]
    # One time-index row per record left, of the record's own time.
    assert sorted(t[9:] for t in times) == sorted(k for k in table if k.startswith(b"K"))
    assert len(times) == 2


class Tombstoning:
    """The requests column family as an LSM store keeps it: a deleted row stays as a tombstone
    (until a compaction, which never comes here), and a scan reads over the tombstones in its
    range; ``read_over`` counts them, per scan."""

    def __init__(self) -> None:
        self.rows: dict[bytes, bytes | None] = {}
        self.read_over: list[int] = []

    def get_meta(self, cf: str, key: bytes) -> bytes | None:
        return self.rows.get(key)

    def scan(self, cf: str, after: bytes = b"", limit: int = 100) -> list[tuple[bytes, bytes]]:
        found: list[tuple[bytes, bytes]] = []
        tombstones = 0
        for key in sorted(k for k in self.rows if k > after):
            value = self.rows[key]
            if value is None:
                tombstones += 1
            elif len(found) < limit:
                found.append((key, value))
            else:
                break
        self.read_over.append(tombstones)
        return found

    def write(self, rows: list[tuple[str, bytes, bytes | None]]) -> None:
        for _, key, value in rows:
            self.rows[key] = value


def test_a_sweep_reads_over_no_more_deleted_records_as_more_are_swept() -> None:
    """A keyed write's sweep costs its own rows, not the records swept since the node started."""
    records, sweeper = Tombstoning(), Sweeper()
    window = REQUEST.window_ms
    writes = 2000
    for i in range(writes):  # one each 100 ms: each expires 600 writes later, then is swept
        now = BASE_MS + i * 100
        req = REQUEST._replace(key=f"call-{i}")
        records.write(sweeper.rows_for(records, req, "observe", Replay(), now))
    swept = sum(1 for k, v in records.rows.items() if k.startswith(b"K") and v is None)
    assert writes - swept <= window // 100 + 1  # the records left: those of the window
    assert max(records.read_over) <= 2 * SWEEP, records.read_over[-5:]
    # A record timed before the last sweep (a wall clock stepped back) is swept in its turn.
    back = BASE_MS
    records.write(
        sweeper.rows_for(records, REQUEST._replace(key="back"), "observe", Replay(), back)
    )
    later = BASE_MS + writes * 100 + window
    for i in range(100):
        req = REQUEST._replace(key=f"late-{i}")
        records.write(sweeper.rows_for(records, req, "observe", Replay(), later + i))
    assert records.rows[REQUEST._replace(key="back").row_key()] is None


def _state(subject: Subject, *observations: object) -> SubjectState:
    obs = list(observations)
    return SubjectState(
        subject,
        context=CausalContext.of([o.dot for o in obs]),  # type: ignore[attr-defined]
        observations={o.dot: o for o in obs},  # type: ignore[attr-defined]
    )


def _keyed(counter: int, index: int, *, source: str = "sales_agent", ms: int = BASE_MS) -> object:
    return observation(
        "a.1", counter, source=source, ms=ms, request_key="call-1", request_index=index
    )


ASKED = [
    (0, ALICE, "budget", "amount", "ten thousand"),
    (1, BOB, "budget", "amount", "ten thousand"),
]


def test_a_call_is_recognised_from_its_merged_observations_only_once_all_are_merged() -> None:
    alice, bob = _state(ALICE, _keyed(1, 0)), _state(BOB, _keyed(2, 1))
    assert replicated([alice, bob], REQUEST, ASKED, BASE_MS) == Replay(("a.1:1", "a.1:2"))
    with pytest.raises(Unavailable, match="1 of the 2") as pending:
        replicated([alice, _state(BOB)], REQUEST, ASKED, BASE_MS)
    assert pending.value.reason == "IDEMPOTENT_WRITE_PENDING" and pending.value.retry_after_s
    assert replicated([_state(ALICE), _state(BOB)], REQUEST, ASKED, BASE_MS) is None


def test_a_call_lost_in_part_on_one_subject_says_retrying_here_never_helps() -> None:
    """A subject's observations of one call arrive together: one present and one not means the
    other was since replaced here, which no retry on this node finds."""
    both = [(0, ALICE, "budget", "amount", "ten thousand"), (1, ALICE, "plans", "size", "big")]
    with pytest.raises(Unavailable, match=r"since replaced.*node that took the first call") as lost:
        replicated([_state(ALICE, _keyed(1, 0))], REQUEST, both, BASE_MS)
    assert lost.value.reason == "IDEMPOTENT_WRITE_LOST" and lost.value.retry_after_s is None


def test_merged_observations_of_another_agent_or_past_the_window_are_not_the_call() -> None:
    theirs = _state(ALICE, _keyed(1, 0, source="support_agent"))
    assert replicated([theirs], REQUEST, ASKED[:1], BASE_MS) is None
    old = _state(ALICE, _keyed(1, 0))
    assert replicated([old], REQUEST, ASKED[:1], BASE_MS + WINDOW_MS + 1) is None


def test_merged_observations_of_the_key_that_say_something_else_refuse_the_call() -> None:
    alice = _state(ALICE, _keyed(1, 0))
    other = [(0, ALICE, "budget", "amount", "fifty thousand")]
    with pytest.raises(InvalidArgument, match="idempotency_key"):
        replicated([alice], REQUEST, other, BASE_MS)


def test_a_retract_or_forget_is_recognised_from_its_merged_keyed_call_within_the_window() -> None:
    calls = keyed_calls(REQUEST, "retract", pack(BASE_MS), retracted=2)
    alice = SubjectState(ALICE, keyed_calls=calls)
    assert merged_call([alice], REQUEST, "retract", BASE_MS + WINDOW_MS) == Replay(retracted=2)
    assert merged_call([alice], REQUEST, "retract", BASE_MS + WINDOW_MS + 1) is None
    assert merged_call([SubjectState(ALICE)], REQUEST, "retract", BASE_MS) is None
    theirs = REQUEST._replace(agent="support_agent")
    assert merged_call([alice], theirs, "retract", BASE_MS) is None
    assert keyed_calls(None, "forget", pack(BASE_MS)) == {}


def test_a_merged_keyed_call_of_another_request_or_call_refuses_the_key() -> None:
    alice = SubjectState(ALICE, keyed_calls=keyed_calls(REQUEST, "retract", pack(BASE_MS)))
    with pytest.raises(InvalidArgument, match="idempotency_key"):
        merged_call([alice], REQUEST, "forget", BASE_MS)
    other = REQUEST._replace(fingerprint=fingerprint(b"retract", b"y"))
    with pytest.raises(InvalidArgument, match="different request"):
        merged_call([alice], other, "retract", BASE_MS)
