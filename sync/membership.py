"""Group membership: one observed-remove set of members per group, as a delta-state CRDT.

A group is a TEAM or ORG subject of a tenant. A team's members are users of its tenant, an
organization's members are teams of its tenant (an organization reaches its users through its
teams). A user may belong to several teams and a team to several organizations.

Per group the replicated state is ``(causal context, entries)``: each entry is ``dot -> (member,
timestamp)``, one add. Dots are those of sync.causal, minted per group state as a subject's are
(``GroupState.next_dot``). Every event (add, remove) gets a fresh dot:

- an add's delta holds its entry and, in its context, its own dot and the dots of the member's
  entries the adding replica held (an add replaces them: a member has one entry per replica's
  view, like a source's one position per slot);
- a remove's delta holds no entry and, in its context, its own dot and the dots of the member's
  entries the removing replica held (observed-remove).

Merge keeps an entry present on both sides or present on one side and unseen by the other, so it
is commutative, associative and idempotent, and a delta is itself a state. **Add wins**: an add
concurrent with a remove (its dot unseen by the remover) survives the remove; an add the remover
had seen is removed wherever it arrives.

**Forget.** Forgetting a subject (its erase, sync.crdt) also takes it out of every group, and
forgetting a group empties it, by the same rule as its observations: an entry is in effect only if
its add's timestamp is not before the erase timestamp of its member nor of its group
(``Forgets``, the subjects' erase bounds). That reaches adds the forgetting replica had never
seen, made concurrently on another node and in groups it did not know, because the erase bound is
itself replicated; and an add after the forget (a rejoin) stays. ``forget_delta`` additionally
removes the entries the forgetting replica holds, and ``purge`` drops entries a forget has put out
of effect (their dots stay in the context, so merging them back changes nothing).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import NamedTuple

from sync.causal import CausalContext, Dot
from sync.observation import Subject, SubjectKind

# Which member kinds each group kind holds.
MEMBER_KIND = {SubjectKind.TEAM: SubjectKind.USER, SubjectKind.ORG: SubjectKind.TEAM}

_NAMES = {SubjectKind.TEAM: "a team", SubjectKind.ORG: "an organization"}

# Subject -> the timestamp of its erase bound (sync.crdt.EraseBound.hlc); absent: never erased.
Forgets = Mapping[Subject, int]
NO_FORGETS: Forgets = MappingProxyType({})


class Entry(NamedTuple):
    member: Subject
    hlc: int  # the add's hybrid timestamp


class GroupState(NamedTuple):
    """Immutable by convention: ``entries`` is never mutated after construction."""

    group: Subject
    context: CausalContext = CausalContext()
    entries: Mapping[Dot, Entry] = MappingProxyType({})

    def next_dot(self, actor: str) -> Dot:
        return Dot(actor, self.context.max_counter(actor) + 1)

    def dots_of(self, member: Subject) -> list[Dot]:
        """The dots of ``member``'s entries, in dot order."""
        return sorted(dot for dot, entry in self.entries.items() if entry.member == member)

    def digest(self) -> bytes:
        return digest(self)


def check_member(group: Subject, member: Subject) -> None:
    """Raises ValueError naming the field when ``member`` cannot belong to ``group``."""
    wanted = MEMBER_KIND.get(group.kind)
    if wanted is None:
        raise ValueError(f"group: must be a team or an organization, got {group}")
    if member.tenant != group.tenant:
        raise ValueError(
            f"member: must be of the group's tenant {group.tenant!r}, got tenant {member.tenant!r}"
        )
    if member.kind != wanted:
        raise ValueError(
            f"member: the members of {_NAMES[group.kind]} are {wanted.name.lower()}s, got {member}"
        )


def add_delta(state: GroupState, member: Subject, actor: str, hlc: int) -> GroupState:
    """Adds ``member`` (its add at timestamp ``hlc``, after everything the replica merged)."""
    check_member(state.group, member)
    dot = state.next_dot(actor)
    context = CausalContext.of([dot, *state.dots_of(member)])
    return GroupState(state.group, context, {dot: Entry(member, hlc)})


def remove_delta(state: GroupState, member: Subject, actor: str) -> GroupState:
    """Removes every entry of ``member`` the replica holds; a concurrent add survives."""
    check_member(state.group, member)
    return GroupState(
        state.group, CausalContext.of([state.next_dot(actor), *state.dots_of(member)])
    )


def forget_delta(state: GroupState, member: Subject, actor: str) -> GroupState | None:
    """The remove a forget of ``member`` makes in a group holding it (None if it holds none).

    Not needed for the forget to take effect (``members`` reads the erase bound); it lets every
    replica drop the entries at once."""
    if not state.dots_of(member):
        return None
    return remove_delta(state, member, actor)


def merge(a: GroupState, b: GroupState) -> GroupState:
    if a.group != b.group:
        raise ValueError(f"cannot merge the memberships of {a.group} and {b.group}")
    entries = {d: e for d, e in a.entries.items() if d in b.entries or d not in b.context}
    for dot, entry in b.entries.items():
        if dot not in a.context:
            entries[dot] = entry
    return GroupState(a.group, a.context.join(b.context), entries)


def in_effect(group: Subject, entry: Entry, forgets: Forgets) -> bool:
    """True unless the entry's add is before an erase of its member or of its group."""
    return entry.hlc >= forgets.get(entry.member, 0) and entry.hlc >= forgets.get(group, 0)


def members(state: GroupState, forgets: Forgets = NO_FORGETS) -> frozenset[Subject]:
    return frozenset(e.member for e in state.entries.values() if in_effect(state.group, e, forgets))


def purge(state: GroupState, forgets: Forgets) -> GroupState:
    """``state`` without the entries out of effect; its members and context unchanged."""
    kept = {d: e for d, e in state.entries.items() if in_effect(state.group, e, forgets)}
    if len(kept) == len(state.entries):
        return state
    return state._replace(entries=kept)


def digest(state: GroupState) -> bytes:
    """An exact digest of a state: its context and the dots of its entries."""
    h = hashlib.blake2b(digest_size=16)
    for actor, counter in sorted(state.context.vector.items()):
        h.update(b"v%s\x00%d\x00" % (actor.encode(), counter))
    for dot in sorted(state.context.cloud):
        h.update(b"c%s\x00%d\x00" % (dot.actor.encode(), dot.counter))
    for dot in sorted(state.entries):
        h.update(b"o%s\x00%d\x00" % (dot.actor.encode(), dot.counter))
    return h.digest()


# --- a tenant's groups ----------------------------------------------------------------------

# group -> its membership state
Directory = Mapping[Subject, GroupState]


def groups_of(
    directory: Directory, member: Subject, forgets: Forgets = NO_FORGETS
) -> frozenset[Subject]:
    """The groups ``member`` directly belongs to."""
    return frozenset(g for g, s in directory.items() if member in members(s, forgets))


def users_of(
    directory: Directory, group: Subject, forgets: Forgets = NO_FORGETS
) -> frozenset[Subject]:
    """A team's users, or an organization's: the users of its teams, each once."""
    state = directory.get(group)
    if state is None:
        return frozenset()
    if group.kind == SubjectKind.TEAM:
        return members(state, forgets)
    users: set[Subject] = set()
    for team in members(state, forgets):
        users |= users_of(directory, team, forgets)
    return frozenset(users)


def forget_deltas(directory: Directory, member: Subject, actor: str) -> list[GroupState]:
    """The removes a forget of ``member`` makes in every group of ``directory`` holding it."""
    found = (forget_delta(s, member, actor) for _, s in sorted(directory.items()))
    return [d for d in found if d is not None]


def changed_members(
    before: Iterable[Subject], after: Iterable[Subject]
) -> tuple[frozenset[Subject], frozenset[Subject]]:
    """``(joined, left)`` between two views of a group's members (what a roll-up follows)."""
    old, new = frozenset(before), frozenset(after)
    return new - old, old - new
