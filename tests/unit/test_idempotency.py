"""node/idempotency.py: what a keyed call's record answers, and what the records keep."""

from __future__ import annotations

import pytest

from node.errors import InvalidArgument, Unavailable
from node.idempotency import CF, Replay, Request, fingerprint, record_rows, recorded, replicated
from sync.causal import CausalContext
from sync.crdt import SubjectState
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
    with pytest.raises(Unavailable, match="1 of the 2"):
        replicated([alice, _state(BOB)], REQUEST, ASKED, BASE_MS)
    assert replicated([_state(ALICE), _state(BOB)], REQUEST, ASKED, BASE_MS) is None


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
