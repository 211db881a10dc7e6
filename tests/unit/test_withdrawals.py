"""Tenant-wide withdrawals of a source (node.withdrawals, node.resolution's ``withdrawn``): the
observations of a withdrawn source from before its withdrawal are left out of resolution, later
ones count, and a snapshot advanced across changes of withdrawals equals one resolved afresh."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from node.policy import PolicyBook
from node.resolution import NO_WITHDRAWN, Withdrawn, counted, resolve
from node.snapshots import advance, advance_index, resolve_snapshot
from node.withdrawals import WITHDRAWN, sources_subject, withdrawn_of
from sync.crdt import SubjectState, apply_observe, clear_delta, merge
from sync.hlc import pack
from tests.unit.strategies import BASE_MS, LAWS, SOURCES, Run, observation, runs

BOOK = PolicyBook()

# Withdrawals drawn over the runs' sources and around their timestamps (None: not withdrawn).
withdrawal_maps = st.lists(
    st.fixed_dictionaries(
        {s: st.none() | st.integers(BASE_MS - 5, BASE_MS + 60_000) for s in SOURCES}
    ).map(lambda d: {s: pack(ms, 0) for s, ms in d.items() if ms is not None}),
    min_size=1,
    max_size=4,
)


@LAWS
@given(run=runs, maps=withdrawal_maps)
def test_a_snapshot_advanced_across_states_and_withdrawals_equals_one_resolved_afresh(
    run: Run, maps: list[dict[str, int]]
) -> None:
    history = [*(run.history or run.replicas), *run.replicas]
    snapshot = resolve_snapshot(history[0], BOOK)
    for i, state in enumerate(history):
        withdrawn: Withdrawn = dict(maps[i % len(maps)])
        snapshot = advance(snapshot, advance_index(snapshot.index, state), withdrawn)
        assert snapshot.beliefs == tuple(resolve(state.observations.values(), BOOK, withdrawn))
        assert snapshot.beliefs == resolve_snapshot(state, BOOK, withdrawn).beliefs
        assert snapshot.withdrawn is withdrawn


def test_a_withdrawn_sources_observations_before_the_withdrawal_are_left_out_and_later_count():
    before = observation("a.1", 1, source="bot", statement="fifty thousand", ms=BASE_MS)
    other = observation("a.1", 2, source="sales_agent", statement="ten thousand", ms=BASE_MS + 1)
    later = observation("a.1", 3, source="bot", key="owner", statement="me", ms=BASE_MS + 20)
    own = observation("a.1", 4, source="bot", context="_members", key="x", ms=BASE_MS)
    withdrawn = {"bot": pack(BASE_MS + 10, 0)}

    assert counted([before, other, later, own], withdrawn) == [other, later, own]
    assert counted([before], NO_WITHDRAWN) == [before]
    beliefs = resolve([before, other, later], BOOK, withdrawn)
    assert [(b.key, b.statement) for b in beliefs] == [("amount", "ten thousand"), ("owner", "me")]
    assert [s.source for s in beliefs[0].supporters] == ["sales_agent"]
    assert not beliefs[0].dissenters  # the withdrawn dissent is gone, not shown
    # A slot whose every observation is withdrawn has no belief.
    assert resolve([before], BOOK, withdrawn) == []


def test_the_withdrawals_of_a_tenant_are_its_registers_newest_values_and_a_clear_lifts_one():
    state = SubjectState(sources_subject("acme"))
    first = observation("n.1", 1, context=WITHDRAWN, key="bot", source="ops", ms=BASE_MS)
    state = apply_observe(state, first)
    again = observation("n.1", 2, context=WITHDRAWN, key="bot", source="ops", ms=BASE_MS + 9)
    state = apply_observe(state, again, [first.dot])
    other = observation("n.1", 3, context=WITHDRAWN, key="spam", source="ops", ms=BASE_MS + 5)
    state = apply_observe(state, other)
    assert withdrawn_of(state) == {"bot": again.hlc, "spam": other.hlc}

    lifted = merge(state, clear_delta(state, "n.1", WITHDRAWN, "spam"))
    assert withdrawn_of(lifted) == {"bot": again.hlc}
