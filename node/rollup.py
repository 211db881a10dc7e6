"""Roll-ups: what a team's or an organization's members believe, kept as their models change.

A group's roll-up is a pure function of its users and their resolved models (node.resolution):

- a team's *users* are its members; an organization's are the users of its teams, each once;
- a user *holds* a statement in a slot when its belief there has that statement (compared as
  ``normalize_statement`` does) and is not uncertain (the context's minimum confidence, as a
  member's own read applies it);
- per (context, key, statement) held by at least one user: ``holders``, the number of users
  holding it; ``share``, holders / the group's users; ``mean_confidence``, the mean of the
  holders' belief confidences; ``changed_ms``, the newest ``changed_ms`` of the holders'
  beliefs; the wording shown is that of the most recently changed holder's belief (ties: the
  lexically smallest wording).

``compute_rollup`` computes it from scratch; ``RollupIndex`` keeps every group's roll-up as
members' beliefs and memberships change, touching only the groups of the user that changed (a
belief change) or the users that joined or left (a membership change), never scanning a group's
members on a read. Confidences are summed in integer millionths (a belief's confidence is rounded
to six places), so the incremental sum is exact and equals the from-scratch one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from node.resolution import Belief, normalize_statement
from sync.members import check_member
from sync.observation import Subject, SubjectKind

Slot = tuple[str, str]  # (context, key)
_MICRO = 1_000_000


class Held(NamedTuple):
    """What a user's belief in one slot contributes to its groups' roll-ups."""

    statement: str  # normalized
    wording: str
    micro: int  # confidence in millionths
    changed_ms: int


def held(belief: Belief | None) -> Held | None:
    """The contribution of a belief: none when absent or uncertain."""
    if belief is None or belief.uncertain:
        return None
    micro = round(belief.confidence * _MICRO)
    return Held(normalize_statement(belief.statement), belief.statement, micro, belief.changed_ms)


def held_by_slot(beliefs: Iterable[Belief]) -> dict[Slot, Held]:
    """A resolved model's contribution to its groups' roll-ups, per slot."""
    found: dict[Slot, Held] = {}
    for belief in beliefs:
        h = held(belief)
        if h is not None:
            found[belief.context, belief.key] = h
    return found


@dataclass(frozen=True, slots=True)
class RolledUp:
    context: str
    key: str
    statement: str
    holders: int
    share: float
    mean_confidence: float
    changed_ms: int


@dataclass(frozen=True, slots=True)
class GroupRollup:
    group: Subject
    users: int
    beliefs: tuple[RolledUp, ...]  # by (context, key), then most held first, then statement


@dataclass(frozen=True, slots=True)
class Holder:
    """One user behind a rolled-up statement (for Explain)."""

    user: Subject
    confidence: float
    changed_ms: int


def _rank(h: Held) -> tuple[int, str]:
    return (-h.changed_ms, h.wording)  # the smallest is the wording shown


@dataclass(slots=True)
class _Tally:
    """The holders of one (context, key, statement) in one group, and their running sums."""

    holders: dict[Subject, Held] = field(default_factory=dict)
    micro: int = 0
    shown: Held | None = None

    def add(self, user: Subject, h: Held) -> None:
        self.holders[user] = h
        self.micro += h.micro
        if self.shown is None or _rank(h) < _rank(self.shown):
            self.shown = h

    def remove(self, user: Subject) -> None:
        h = self.holders.pop(user)
        self.micro -= h.micro
        if h == self.shown:  # only then can the shown wording (and newest change) move
            self.shown = min(self.holders.values(), key=_rank, default=None)


def _rolled(slot_statement: tuple[str, str, str], tally: _Tally, users: int) -> RolledUp:
    context, key, _ = slot_statement
    n = len(tally.holders)
    assert tally.shown is not None  # a tally with holders shows one of them
    return RolledUp(
        context=context,
        key=key,
        statement=tally.shown.wording,
        holders=n,
        share=n / users,
        mean_confidence=round(tally.micro / n / _MICRO, 6),
        changed_ms=tally.shown.changed_ms,
    )


def _ordered(
    tallies: Mapping[tuple[str, str, str], _Tally], group: Subject, users: int
) -> GroupRollup:
    rows = sorted(
        tallies.items(), key=lambda kv: (kv[0][0], kv[0][1], -len(kv[1].holders), kv[0][2])
    )
    return GroupRollup(group, users, tuple(_rolled(k, t, users) for k, t in rows))


def compute_rollup(
    group: Subject,
    members: Mapping[Subject, Iterable[Subject]],
    models: Mapping[Subject, Iterable[Belief]],
) -> GroupRollup:
    """A group's roll-up from scratch: ``members`` maps each group to its direct members,
    ``models`` each user to its resolved beliefs."""
    if group.kind == SubjectKind.TEAM:
        users = set(members.get(group, ()))
    else:
        users = {u for team in members.get(group, ()) for u in members.get(team, ())}
    tallies: dict[tuple[str, str, str], _Tally] = {}
    for user in users:
        for belief in models.get(user, ()):
            h = held(belief)
            if h is not None:
                tallies.setdefault((belief.context, belief.key, h.statement), _Tally()).add(user, h)
    return _ordered(tallies, group, len(users))


def select_rollup(
    rollup: GroupRollup, contexts: frozenset[str] = frozenset(), min_confidence: float = 0.0
) -> GroupRollup:
    """The rows a reader asked for: some contexts, a floor on the mean confidence (as
    node.resolution.select filters a member's beliefs)."""
    rows = tuple(
        r
        for r in rollup.beliefs
        if (not contexts or r.context in contexts) and r.mean_confidence >= min_confidence
    )
    return GroupRollup(rollup.group, rollup.users, rows)


class RollupIndex:
    """Every group's roll-up, kept incrementally. Not thread-safe: the caller serializes.

    It follows membership (``add_member``, ``remove_member``, ``set_members``, ``forget``) and
    the beliefs of users in at least one team (``slot_changed``, ``model_changed``); it keeps a
    copy of those users' held beliefs, read once when a user joins its first team: through
    ``held_of`` when given (a user's held beliefs as a node kept them, node.heldrecords), else
    from ``model_of``. Every change returns the groups whose roll-up it moved (whose watches
    fire).
    """

    def __init__(
        self,
        model_of: Callable[[Subject], Iterable[Belief]],
        held_of: Callable[[Subject], Mapping[Slot, Held]] | None = None,
    ) -> None:
        self._model_of = model_of
        self._held_of = held_of or (lambda user: held_by_slot(model_of(user)))
        self._held: dict[Subject, dict[Slot, Held]] = {}  # users in at least one team
        self._members: dict[Subject, set[Subject]] = {}  # group -> direct members
        self._groups: dict[Subject, set[Subject]] = {}  # member -> groups holding it directly
        self._count: dict[Subject, dict[Subject, int]] = {}  # group -> user -> teams through
        self._tallies: dict[Subject, dict[tuple[str, str, str], _Tally]] = {}

    # -- reads ----------------------------------------------------------------------------

    def rollup(self, group: Subject) -> GroupRollup:
        users = len(self._count.get(group, ()))
        return _ordered(self._tallies.get(group, {}), group, users)

    def holders(self, group: Subject, context: str, key: str, statement: str) -> tuple[Holder, ...]:
        """The users behind a rolled-up statement (any wording of it), by user."""
        tally = self._tallies.get(group, {}).get((context, key, normalize_statement(statement)))
        if tally is None:
            return ()
        return tuple(
            Holder(u, h.micro / _MICRO, h.changed_ms) for u, h in sorted(tally.holders.items())
        )

    def members(self, group: Subject) -> frozenset[Subject]:
        return frozenset(self._members.get(group, ()))

    def direct_groups(self, member: Subject) -> frozenset[Subject]:
        """The groups holding ``member`` itself (a user's teams, a team's organizations)."""
        return frozenset(self._groups.get(member, ()))

    def groups_of(self, user: Subject) -> frozenset[Subject]:
        """Every group whose roll-up counts ``user``: its teams and their organizations."""
        teams = self._groups.get(user, set())
        orgs = {o for t in teams for o in self._groups.get(t, ())}
        return frozenset(teams | orgs)

    # -- membership -----------------------------------------------------------------------

    def add_member(self, group: Subject, member: Subject) -> frozenset[Subject]:
        check_member(group, member)
        if member in self._members.get(group, ()):
            return frozenset()
        if member.kind == SubjectKind.USER and member not in self._held:
            self._held[member] = dict(self._held_of(member))
        self._members.setdefault(group, set()).add(member)
        self._groups.setdefault(member, set()).add(group)
        moved = {group}
        for user, groups in self._reach(group, member):
            for g in groups:
                if self._bump(g, user, +1):
                    moved.add(g)
        return frozenset(moved)

    def remove_member(self, group: Subject, member: Subject) -> frozenset[Subject]:
        check_member(group, member)
        if member not in self._members.get(group, ()):
            return frozenset()
        moved = {group}
        for user, groups in self._reach(group, member):
            for g in groups:
                if self._bump(g, user, -1):
                    moved.add(g)
        self._members[group].discard(member)
        self._groups[member].discard(group)
        if not self._groups[member]:
            del self._groups[member]
            self._held.pop(member, None)  # a user in no team is no longer followed
        return frozenset(moved)

    def set_members(self, group: Subject, members: Iterable[Subject]) -> frozenset[Subject]:
        """Moves ``group`` to exactly ``members`` (a merged membership state's view)."""
        new = set(members)
        old = self._members.get(group, set())
        moved: set[Subject] = set()
        for m in sorted(old - new):
            moved |= self.remove_member(group, m)
        for m in sorted(new - old):
            moved |= self.add_member(group, m)
        return frozenset(moved)

    def forget(self, subject: Subject) -> frozenset[Subject]:
        """Takes a forgotten user or team out of every group (and empties a forgotten group)."""
        moved: set[Subject] = set()
        for g in sorted(self._groups.get(subject, ())):
            moved |= self.remove_member(g, subject)
        if subject.kind != SubjectKind.USER:
            moved |= self.set_members(subject, ())
        return frozenset(moved)

    def _reach(self, group: Subject, member: Subject) -> list[tuple[Subject, list[Subject]]]:
        """The users a (group, member) edge brings into groups, and those groups."""
        if group.kind == SubjectKind.TEAM:  # a user into the team and the team's organizations
            return [(member, [group, *sorted(self._groups.get(group, ()))])]
        return [(u, [group]) for u in sorted(self._members.get(member, ()))]

    def _bump(self, group: Subject, user: Subject, by: int) -> bool:
        """Counts one more (or one fewer) way ``user`` is in ``group``; True when it entered or
        left the group."""
        counts = self._count.setdefault(group, {})
        n = counts.get(user, 0) + by
        if n:
            counts[user] = n
        else:
            del counts[user]
        if by > 0 and n == 1:
            for slot, h in self._held.get(user, {}).items():
                self._tally_add(group, slot, user, h)
            return True
        if by < 0 and n == 0:
            for slot, h in self._held.get(user, {}).items():
                self._tally_remove(group, slot, user, h)
            return True
        return False

    # -- beliefs --------------------------------------------------------------------------

    def slot_changed(
        self, user: Subject, context: str, key: str, belief: Belief | None
    ) -> frozenset[Subject]:
        """``user``'s belief in the slot is now ``belief`` (None: it has none)."""
        beliefs = self._held.get(user)
        if beliefs is None:
            return frozenset()
        slot = (context, key)
        old, new = beliefs.get(slot), held(belief)
        if old == new:
            return frozenset()
        groups = self.groups_of(user)
        for g in groups:
            if old is not None:
                self._tally_remove(g, slot, user, old)
            if new is not None:
                self._tally_add(g, slot, user, new)
        if new is None:
            del beliefs[slot]
        else:
            beliefs[slot] = new
        return groups

    def model_changed(
        self, user: Subject, old: Iterable[Belief], new: Iterable[Belief]
    ) -> frozenset[Subject]:
        """Follows every slot that differs between two resolved models of ``user``."""
        before = {(b.context, b.key): b for b in old}
        after = {(b.context, b.key): b for b in new}
        moved: set[Subject] = set()
        for slot in sorted(before.keys() | after.keys()):
            if before.get(slot) != after.get(slot):
                moved |= self.slot_changed(user, slot[0], slot[1], after.get(slot))
        return frozenset(moved)

    def followed(self) -> list[Subject]:
        """The users whose beliefs count in a roll-up (those in at least one team), by id."""
        return sorted(self._held)

    def model_is(
        self, user: Subject, beliefs: Iterable[Belief], contexts: frozenset[str] | None = None
    ) -> frozenset[Subject]:
        """Follows ``user``'s resolved model (resolved anew, under another policy book): every
        slot it held or holds now, of ``contexts`` only when given."""
        held_now = self._held.get(user)
        if held_now is None:
            return frozenset()
        after = {(b.context, b.key): b for b in beliefs}
        slots = held_now.keys() | after.keys()
        if contexts is not None:
            slots = {slot for slot in slots if slot[0] in contexts}
        moved: set[Subject] = set()
        for slot in sorted(slots):
            moved |= self.slot_changed(user, slot[0], slot[1], after.get(slot))
        return frozenset(moved)

    def _tally_add(self, group: Subject, slot: Slot, user: Subject, h: Held) -> None:
        tallies = self._tallies.setdefault(group, {})
        tallies.setdefault((slot[0], slot[1], h.statement), _Tally()).add(user, h)

    def _tally_remove(self, group: Subject, slot: Slot, user: Subject, h: Held) -> None:
        tallies = self._tallies[group]
        k = (slot[0], slot[1], h.statement)
        tallies[k].remove(user)
        if not tallies[k].holders:
            del tallies[k]
