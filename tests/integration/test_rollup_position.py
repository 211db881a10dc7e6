"""A group read with a member's handoff position is answered only once the group's roll-up has
the member state that covers it (node.engine.Engine.at_position), over a real RocksDB store.

A commit shows its state to readers before the listeners run, the roll-up's among them; the
commit holds the subject's lock through both, and a group read passes that lock once the state
covers the position. Here a listener ahead of the roll-up's is held in the middle of a member's
commit: the state shows the write, the roll-up does not have it yet, and the read must wait for
it rather than answer a roll-up without the write.
"""

from __future__ import annotations

import threading
from pathlib import Path

from node.engine import Engine
from node.rollup import GroupRollup
from node.store import Change, Store
from node.writes import ObservationInput
from sync.members import MEMBERS, member_statement
from sync.observation import Subject, SubjectKind

TEAM = Subject("acme", SubjectKind.TEAM, "t-1")
U1 = Subject("acme", SubjectKind.USER, "u-1")
WAIT_S = 10.0


def test_a_group_read_waits_until_its_rollup_has_the_member_state_it_found_covering(
    tmp_path: Path,
) -> None:
    engine = Engine(Store(tmp_path / "db", "sales"))
    try:
        engine.put(TEAM, MEMBERS, U1.id, member_statement(U1), "ops")
        inside, release = threading.Event(), threading.Event()

        def hold(changes: list[Change]) -> None:  # runs before the roll-up's listener
            if any(c.new.subject == U1 for c in changes):
                inside.set()
                release.wait(WAIT_S)

        engine.listeners.insert(0, hold)
        writer = threading.Thread(
            target=engine.observe,
            args=("agent", [ObservationInput(U1, "budget", "plan", "Yearly", 0.9)]),
        )
        writer.start()
        read: list[GroupRollup] = []
        try:
            assert inside.wait(WAIT_S), "the member's commit never reached its listeners"
            state = engine.state(U1)
            assert [o.statement for o in state.observations.values()] == ["Yearly"]
            assert not engine.groups.rollup(TEAM).beliefs  # the roll-up lags the state

            def read_team() -> None:
                engine.model(TEAM, {U1: state.context})
                read.append(engine.groups.rollup(TEAM))

            reader = threading.Thread(target=read_team)
            reader.start()
            reader.join(0.5)
            assert reader.is_alive() and not read, "answered before the roll-up had the write"
        finally:
            release.set()
            writer.join(WAIT_S)
        reader.join(WAIT_S)
        [rollup] = read
        assert [(r.statement, r.holders) for r in rollup.beliefs] == [("Yearly", 1)]
    finally:
        engine.store.close()
