"""Engine.listeners: every committed change reaches them, local writes and merges alike."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from node.engine import Engine
from node.store import Change, Store
from node.writes import ObservationInput
from sync.delivery import Delta
from sync.observation import Subject, SubjectKind

ACME = Subject("acme", SubjectKind.USER, "u-1")


def test_every_committed_change_reaches_the_listeners_in_commit_order(tmp_path: Path) -> None:
    writer = Engine(Store(tmp_path / "n1", "n1", fsync=False))
    reader = Engine(Store(tmp_path / "n2", "n2", fsync=False))
    seen: list[tuple[str, int, int]] = []

    def listen(changes: Sequence[Change]) -> None:
        for c in changes:
            old, new = c.old, c.new
            assert old is not None and new is not None
            seen.append((str(new.subject), len(old.observations), len(new.observations)))

    reader.listeners.append(listen)
    writer.observe("sales_agent", [ObservationInput(ACME, "team", "size", "12", 0.9)])
    reader.observe("support_agent", [ObservationInput(ACME, "team", "size", "14", 0.8)])
    reader.merge_remote([Delta(writer.state(ACME))])  # a peer's state, merged
    reader.merge_remote([Delta(writer.state(ACME))])  # nothing new: no change, no call
    reader.retract(ACME, "team", "size", "support_agent")
    assert seen == [("acme/user/u-1", 0, 1), ("acme/user/u-1", 1, 2), ("acme/user/u-1", 2, 1)]
