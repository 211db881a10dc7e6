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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from node.heldkeep import HeldKeeper, Resolved
from node.policy import PolicyBook
from node.resolution import Belief, Withdrawn
from node.rollup import GroupRollup, Held, Holder, RollupIndex, held_by_slot
from node.snapshots import Slot
from node.store import Change
from sync.crdt import SubjectState, touched_slots
from sync.members import MEMBERS, adds, in_effect, is_group
from sync.observation import Subject, SubjectKind

if TYPE_CHECKING:
    from node.engine import Engine

# How often the held records of members whose beliefs moved are written (Following.checkpoint):
# a start re-resolves at most the members changed within the last interval before a crash.
CHECKPOINT_S = 10.0


class Groups:
    def __init__(
        self,
        model_of: Callable[[Subject], Iterable[Belief]],
        erased_at: Callable[[Subject], int] = lambda s: 0,
        held_of: Callable[[Subject], Mapping[Slot, Held]] | None = None,
    ) -> None:
        """``model_of``: a user's resolved beliefs; ``erased_at``: a subject's erase bound's
        timestamp as stored (asked once per member, then followed through ``erased``);
        ``held_of``: a user's held beliefs when it joins its first team (node.rollup)."""
        self.adds: dict[Subject, dict[Subject, int]] = {}  # group -> member -> newest add
        self.forgets: dict[Subject, int] = {}  # member -> its erase bound's timestamp
        self.index = RollupIndex(model_of, held_of)
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
    subjects and ``state_of`` reads one (to load it); ``keeper`` keeps the users' held records
    (node.heldkeep; None: each user loaded is resolved).
    """

    def __init__(
        self,
        model_of: Callable[[Subject], Iterable[Belief]],
        beliefs_of: Callable[[SubjectState], Callable[[Slot], Belief | None]],
        state_of: Callable[[Subject], SubjectState],
        notify: Callable[[Subject], None],
        stored_groups: Callable[[], Iterable[Subject]] = lambda: (),
        keeper: HeldKeeper | None = None,
    ) -> None:
        self.groups = Groups(model_of, self._erased_at, self._held_of)
        self._model_of = model_of
        self._beliefs_of = beliefs_of
        self._state_of = state_of
        self._notify = notify
        self._stored_groups = stored_groups
        self.keeper = keeper
        self.lock = threading.Lock()
        self._loaded: set[Subject] = set()  # groups whose memberships Groups follows
        # A group being loaded, and the event set once its load ends: a second read of it
        # waits for that load instead of doing it again (guarded by _loading_lock).
        self._loading: dict[Subject, threading.Event] = {}
        self._loading_lock = threading.Lock()
        self.complete = threading.Event()  # set once every stored group is loaded
        self.closing = threading.Event()  # set when the node stops: checkpoints end

    def _erased_at(self, subject: Subject) -> int:
        known = None if self.keeper is None else self.keeper.erased_of(subject)
        return known if known is not None else self._state_of(subject).erased.hlc

    def _held_of(self, user: Subject) -> Mapping[Slot, Held]:
        if self.keeper is None:
            return held_by_slot(self._model_of(user))
        return self.keeper.held_of(user, self._model_of)

    def load_every(self) -> int:
        """Loads every stored group not loaded yet (a node's start, off its serving path);
        how many it loaded. A group stored after the listing began is loaded by its change."""
        count = 0
        for group in list(self._stored_groups()):
            count += self._load(group)
        self.complete.set()
        return count

    def _load(self, group: Subject) -> bool:
        """Follows ``group``'s stored state, if no load or change did yet; whether this call
        did. One load of a group at a time: a call finding it under way waits for it."""
        for _ in range(3):  # a load that failed (the store closing, say) is tried again
            with self._loading_lock:
                if group in self._loaded:
                    return False
                running = self._loading.get(group)
                if running is None:
                    done = self._loading[group] = threading.Event()
            if running is not None:
                running.wait()
                continue
            try:
                return self._load_now(group)
            finally:
                with self._loading_lock:
                    del self._loading[group]
                done.set()
        return self._load_now(group)

    def _load_now(self, group: Subject) -> bool:
        """Its users' contributions are found first, outside the lock (node.heldkeep: stored
        records still valid, else their models resolved), so that the lock, which every
        committed batch waits for, is held for the bookkeeping; under it they are confirmed
        against the stored states (a user changed meanwhile is resolved there)."""
        users = [m for m in adds(self._state_of(group)) if m.kind == SubjectKind.USER]
        found = {}
        if self.keeper is not None:
            with self.lock:
                users = [u for u in users if not self.groups.follows(u)]
            found = self.keeper.prepare(users)
        else:
            for user in users:
                self._model_of(user)  # into the snapshots' cache
        with self.lock:
            if group in self._loaded:
                return False
            if self.keeper is not None:
                self.keeper.confirm(found)
            try:
                moved = self.groups.group_changed(self._state_of(group))
            finally:
                self._unready(found)
            self._loaded.add(group)
        for other in sorted(moved):
            self._notify(other)
        return True

    def _records(self, state: SubjectState) -> Iterable[Subject]:
        """With the lock held: the held records of the group's users not followed yet, valid
        now, ready for its change (node.heldkeep); the users whose records were looked up."""
        if self.keeper is None:
            return ()
        users = [
            m for m in adds(state) if m.kind == SubjectKind.USER and not self.groups.follows(m)
        ]
        found = self.keeper.prepare(users)
        self.keeper.confirm(found)
        return found

    def _unready(self, users: Iterable[Subject]) -> None:
        if self.keeper is not None:
            for user in users:
                self.keeper.ready.pop(user, None)

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

    def checkpoint(self) -> int:
        """Writes the held records of the users whose beliefs moved since the last checkpoint
        (and deletes those of users no longer in a team); how many it wrote or deleted."""
        if self.keeper is None:
            return 0
        with self.lock:
            dirty, self.keeper.dirty = self.keeper.dirty, set()
            followed = sorted(u for u in dirty if self.groups.follows(u))
        gone = sorted(dirty.difference(followed))
        made = {u: self.keeper.record_of(u) for u in followed}
        with self.lock:
            self.keeper.write(made, gone)
        return len(dirty)

    def run_checkpoints(self, interval_s: float) -> None:
        """Checkpoints every ``interval_s`` until ``close``."""
        while not self.closing.wait(interval_s):
            self.checkpoint()

    def close(self) -> None:
        """Ends the checkpoints, after a last one (the node stops: its store is still open)."""
        self.closing.set()
        self.checkpoint()

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
                found = self._records(new)
                try:
                    moved |= groups.group_changed(new)
                finally:
                    self._unready(found)
                self._loaded.add(subject)  # its whole memberships, as stored now
        elif subject.kind == SubjectKind.USER and groups.follows(subject):
            if self.keeper is not None:
                self.keeper.dirty.add(subject)  # its record's digest is no longer stored
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
            if self.keeper is not None:  # their records name another book now
                self.keeper.dirty.update(
                    u for u in self.groups.index.followed() if tenant in (None, u.tenant)
                )
        for group in sorted(moved):
            self._notify(group)

    def resolved_anew(self, subject: Subject) -> None:
        """``subject`` resolves anew with no change to its state (a tenant's withdrawal of a
        source): a user in a team has its beliefs read again, and moved groups' watches woken."""
        if subject.kind != SubjectKind.USER:
            return
        with self.lock:
            moved = self.groups.user_resolved_anew(subject)
            if self.keeper is not None and self.groups.follows(subject):
                self.keeper.dirty.add(subject)
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

    def resolve(user: Subject) -> Resolved:
        found = engine.model(user).snapshot
        return Resolved(found.state, found.beliefs, found.policies, found.withdrawn)

    def resolving_with(tenant: str) -> tuple[PolicyBook, Withdrawn]:
        return engine.book_of(tenant), engine.reader.withdrawals.of(tenant)

    following = Following(
        lambda user: engine.model(user).beliefs,
        lambda state: engine.reader.snapshot(state).by_slot.get,
        engine.state,
        engine.watches.notify,
        engine.store.group_subjects,
        HeldKeeper(engine.store, resolve, resolving_with),
    )
    engine.listeners.append(following.changed)  # before any load: no change is missed
    return following


__all__ = ["Following", "Groups", "follow"]
