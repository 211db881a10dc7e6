"""A replica's groups: memberships, members' forgets and roll-ups, moved together.

``Groups`` is pure: what a node calls as its subjects change, so the roll-ups follow the
replicated state (sync.members, node.rollup):

- ``group_changed`` after a group subject's ``_members`` slots changed (a local put or a merge);
- ``erased`` after a subject's erase bound moved (a forget, local or a peer's): the subject
  leaves every group whose add of it is before the forget;
- ``slot_changed`` / ``model_changed`` after a user's resolved belief changed.

Each returns the groups whose roll-up moved (whose watches fire). Not thread-safe: the caller
serializes, as for RollupIndex.

``Following`` wires it to a node: it follows every committed batch (``Engine.listeners``)
from the engine's start, and loads the stored groups after it (``load_every``, in the
background once the node serves), under one lock; the subjects' locks are taken before it and
the snapshots' after it, never the other way round. A group is loaded once, from its stored
state under the lock, or from a committed change of its memberships: what ``Groups`` holds for
a loaded group is then what a load at start would have built. A read of a group loads what
its roll-up needs first (the group and, for an organization, its teams), so no read answers
from a group not loaded yet; ``groups_of`` (every group of a member) loads every group first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from node.resolution import Belief
from node.rollup import GroupRollup, Holder, RollupIndex
from node.snapshots import Slot
from node.store import Change
from sync.crdt import SubjectState, touched_slots
from sync.members import MEMBERS, adds, in_effect, is_group
from sync.observation import Subject, SubjectKind

if TYPE_CHECKING:
    from node.engine import Engine


class Groups:
    def __init__(
        self,
        model_of: Callable[[Subject], Iterable[Belief]],
        erased_at: Callable[[Subject], int] = lambda s: 0,
    ) -> None:
        """``model_of``: a user's resolved beliefs; ``erased_at``: a subject's erase bound's
        timestamp as stored (asked once per member, then followed through ``erased``)."""
        self.adds: dict[Subject, dict[Subject, int]] = {}  # group -> member -> newest add
        self.forgets: dict[Subject, int] = {}  # member -> its erase bound's timestamp
        self.index = RollupIndex(model_of)
        self._model_of = model_of
        self._erased_at = erased_at
        self._rollups: dict[Subject, GroupRollup] = {}  # kept until the group's roll-up moves

    def members(self, group: Subject) -> frozenset[Subject]:
        found = self.adds.get(group, {})
        return frozenset(m for m, hlc in found.items() if in_effect(m, hlc, self.forgets))

    def group_changed(self, state: SubjectState) -> frozenset[Subject]:
        """Follows a group subject's new state (its ``_members`` view)."""
        group = state.subject
        found = adds(state)
        for member in found.keys() - self.forgets.keys():
            self.forgets[member] = self._erased_at(member)
        if found:
            self.adds[group] = found
        else:
            self.adds.pop(group, None)
        return self._moved(self.index.set_members(group, self.members(group)))

    def erased(self, subject: Subject, hlc: int) -> frozenset[Subject]:
        if hlc <= self.forgets.get(subject, 0):
            return frozenset()
        self.forgets[subject] = hlc
        moved: set[Subject] = set()
        for group in sorted(self.index.direct_groups(subject)):
            moved |= self.index.set_members(group, self.members(group))
        return self._moved(moved)

    def follows(self, user: Subject) -> bool:
        """True when ``user`` is in at least one team (its beliefs count in a roll-up)."""
        return bool(self.index.direct_groups(user))

    def slot_changed(
        self, user: Subject, context: str, key: str, belief: Belief | None
    ) -> frozenset[Subject]:
        return self._moved(self.index.slot_changed(user, context, key, belief))

    def model_changed(
        self, user: Subject, old: Iterable[Belief], new: Iterable[Belief]
    ) -> frozenset[Subject]:
        return self._moved(self.index.model_changed(user, old, new))

    def resolved_anew(
        self, contexts: frozenset[str] | None = None, tenant: str | None = None
    ) -> frozenset[Subject]:
        """Follows every followed user's model (of ``tenant``, None: any) as ``model_of`` now
        resolves it, in ``contexts`` (None: all), after the book it resolves with changed
        there: beliefs move without their subjects changing."""
        moved: set[Subject] = set()
        for user in self.index.followed():
            if tenant is None or user.tenant == tenant:
                moved |= self.index.model_is(user, self._model_of(user), contexts)
        return self._moved(moved)

    def user_resolved_anew(self, user: Subject) -> frozenset[Subject]:
        """Follows ``user``'s whole model as ``model_of`` now resolves it (if it is followed)."""
        if not self.follows(user):
            return frozenset()
        return self._moved(self.index.model_is(user, self._model_of(user)))

    def rollup(self, group: Subject) -> GroupRollup:
        found = self._rollups.get(group)
        if found is None:
            found = self._rollups[group] = self.index.rollup(group)
        return found

    def holders(self, group: Subject, context: str, key: str, statement: str) -> tuple[Holder, ...]:
        return self.index.holders(group, context, key, statement)

    def _moved(self, groups: Iterable[Subject]) -> frozenset[Subject]:
        moved = frozenset(groups)
        for group in moved:
            self._rollups.pop(group, None)
        return moved


class Following:
    """A node's ``Groups``, kept up with its subjects.

    ``model_of`` and ``beliefs_of`` read resolved snapshots (the latter the belief per slot of
    a state); ``notify`` wakes a subject's watches; ``stored_groups`` lists the stored group
    subjects and ``state_of`` reads one (to load it).
    """

    def __init__(
        self,
        model_of: Callable[[Subject], Iterable[Belief]],
        beliefs_of: Callable[[SubjectState], Callable[[Slot], Belief | None]],
        state_of: Callable[[Subject], SubjectState],
        notify: Callable[[Subject], None],
        stored_groups: Callable[[], Iterable[Subject]] = lambda: (),
    ) -> None:
        self.groups = Groups(model_of, lambda s: state_of(s).erased.hlc)
        self._model_of = model_of
        self._beliefs_of = beliefs_of
        self._state_of = state_of
        self._notify = notify
        self._stored_groups = stored_groups
        self.lock = threading.Lock()
        self._loaded: set[Subject] = set()  # groups whose memberships Groups follows
        self.complete = threading.Event()  # set once every stored group is loaded

    def load_every(self) -> int:
        """Loads every stored group not loaded yet (a node's start, off its serving path);
        how many it loaded. A group stored after the listing began is loaded by its change."""
        count = 0
        for group in list(self._stored_groups()):
            count += self._load(group)
        self.complete.set()
        return count

    def _load(self, group: Subject) -> bool:
        """Follows ``group``'s stored state, if no load or change did yet; whether it did.

        Its users' models are resolved first, outside the lock (into the snapshots' cache), so
        that the lock, which every committed batch waits for, is held for the bookkeeping."""
        if group in self._loaded:
            return False
        for member in adds(self._state_of(group)):
            if member.kind == SubjectKind.USER:
                self._model_of(member)
        with self.lock:
            if group in self._loaded:
                return False
            moved = self.groups.group_changed(self._state_of(group))
            self._loaded.add(group)
        for other in sorted(moved):
            self._notify(other)
        return True

    def _ensure(self, group: Subject) -> None:
        """Loads what ``group``'s roll-up needs: the group and, for an organization, each of
        its teams (whose users are the organization's)."""
        if self.complete.is_set():
            return
        self._load(group)
        if group.kind == SubjectKind.ORG:
            with self.lock:
                teams = self.groups.members(group)
            for team in sorted(teams):
                self._load(team)

    def changed(self, changes: Sequence[Change]) -> None:
        """An Engine listener: follows one committed batch."""
        moved: set[Subject] = set()
        with self.lock:
            for change in changes:
                moved |= self._follow(change)
        for group in sorted(moved):
            self._notify(group)

    def _follow(self, change: Change) -> frozenset[Subject]:
        new = change.new
        old = change.old or SubjectState(new.subject)
        subject, groups = new.subject, self.groups
        moved: set[Subject] = set()
        if new.erased.hlc > old.erased.hlc:
            moved |= groups.erased(subject, new.erased.hlc)
        if is_group(subject):
            if any(context == MEMBERS for context, _ in touched_slots(old, new)):
                moved |= groups.group_changed(new)
                self._loaded.add(subject)  # its whole memberships, as stored now
        elif subject.kind == SubjectKind.USER and groups.follows(subject):
            slots = touched_slots(old, new)  # only for a user whose beliefs count somewhere
            if slots:
                belief = self._beliefs_of(new)
                for context, key in sorted(slots):
                    moved |= groups.slot_changed(subject, context, key, belief((context, key)))
        return frozenset(moved)

    def policies_changed(
        self, contexts: frozenset[str] | None = None, tenant: str | None = None
    ) -> None:
        """The engine resolves under another book (operators' settings; a tenant's learned
        weights) that moves beliefs in ``contexts`` (None: any) of ``tenant`` (None: any): every
        member's beliefs there are read again (one model read per user in a team), and moved
        groups' watches woken."""
        with self.lock:
            moved = self.groups.resolved_anew(contexts, tenant)
        for group in sorted(moved):
            self._notify(group)

    def resolved_anew(self, subject: Subject) -> None:
        """``subject`` resolves anew with no change to its state (a tenant's withdrawal of a
        source): a user in a team has its beliefs read again, and moved groups' watches woken."""
        if subject.kind != SubjectKind.USER:
            return
        with self.lock:
            moved = self.groups.user_resolved_anew(subject)
        for group in sorted(moved):
            self._notify(group)

    def rollup(self, group: Subject) -> GroupRollup:
        self._ensure(group)
        with self.lock:
            return self.groups.rollup(group)

    def holders(self, group: Subject, context: str, key: str, statement: str) -> tuple[Holder, ...]:
        self._ensure(group)
        with self.lock:
            return self.groups.holders(group, context, key, statement)

    def members(self, group: Subject) -> frozenset[Subject]:
        if not self.complete.is_set():
            self._load(group)
        with self.lock:
            return self.groups.members(group)

    def reach(self, group: Subject) -> frozenset[Subject]:
        """The subjects whose changes move ``group``'s roll-up, as it has them now: its members
        and, for an organization, its teams' members (the users it counts)."""
        self._ensure(group)
        with self.lock:
            index = self.groups.index
            direct = index.members(group)
            if group.kind != SubjectKind.ORG:
                return direct
            return direct.union(*(index.members(team) for team in direct))

    def groups_of(self, member: Subject) -> frozenset[Subject]:
        """The groups ``member`` is in (a user's teams, a team's organizations)."""
        if not self.complete.is_set():
            self.load_every()
        with self.lock:
            return self.groups.index.direct_groups(member)


def follow(engine: Engine) -> Following:
    """The groups of ``engine``'s store, followed through its listeners from now on, each
    loaded on its first read or by ``load_every``."""
    following = Following(
        lambda user: engine.model(user).beliefs,
        lambda state: engine.reader.snapshot(state).by_slot.get,
        engine.state,
        engine.watches.notify,
        engine.store.group_subjects,
    )
    engine.listeners.append(following.changed)  # before any load: no change is missed
    return following


__all__ = ["Following", "Groups", "follow"]
