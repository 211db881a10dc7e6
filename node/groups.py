"""A replica's groups: membership states, forgets and roll-ups, moved together.

What a node calls after each change it merges, so the roll-ups follow the replicated state:

- ``merge_group`` after a membership delta (local or a peer's);
- ``erased`` after a subject's erase bound moved (a forget, local or a peer's): the subject
  leaves every group, and a forgotten group is emptied (sync.membership's forget rule);
- ``model_changed`` after a user's resolved model changed (its old and new beliefs).

Each returns the groups whose roll-up moved (whose watches fire). Not thread-safe: the caller
serializes, as for RollupIndex.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from node.resolution import Belief
from node.rollup import GroupRollup, Holder, RollupIndex
from sync.membership import GroupState, members, merge, purge
from sync.observation import Subject


class Groups:
    def __init__(self, model_of: Callable[[Subject], Iterable[Belief]]) -> None:
        self.states: dict[Subject, GroupState] = {}
        self.forgets: dict[Subject, int] = {}  # subject -> its erase bound's timestamp
        self.index = RollupIndex(model_of)

    def state(self, group: Subject) -> GroupState:
        return self.states.get(group) or GroupState(group)

    def merge_group(self, delta: GroupState) -> frozenset[Subject]:
        state = purge(merge(self.state(delta.group), delta), self.forgets)
        self.states[delta.group] = state
        return self.index.set_members(delta.group, members(state, self.forgets))

    def erased(self, subject: Subject, hlc: int) -> frozenset[Subject]:
        if hlc <= self.forgets.get(subject, 0):
            return frozenset()
        self.forgets[subject] = hlc
        moved: set[Subject] = set()
        touched = set(self.index.direct_groups(subject))
        if subject in self.states:
            touched.add(subject)
        for group in sorted(touched):
            state = self.states[group] = purge(self.states[group], self.forgets)
            moved |= self.index.set_members(group, members(state, self.forgets))
        return frozenset(moved)

    def model_changed(
        self, user: Subject, old: Iterable[Belief], new: Iterable[Belief]
    ) -> frozenset[Subject]:
        return self.index.model_changed(user, old, new)

    def rollup(self, group: Subject) -> GroupRollup:
        return self.index.rollup(group)

    def holders(self, group: Subject, context: str, key: str, statement: str) -> tuple[Holder, ...]:
        return self.index.holders(group, context, key, statement)
