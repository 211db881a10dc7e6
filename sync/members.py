"""Group membership: a view over the group subject's own state (sync.crdt).

A group is a TEAM or ORG subject of a tenant. A team's members are users of its tenant, an
organization's members are teams of its tenant (an organization reaches its users through its
teams). A user may belong to several teams and a team to several organizations.

Membership is stored in the group subject itself, in its reserved context ``_members``: one
register slot per member (key: the member's id; statement: ``kind:id``, as ``member_statement``
writes it), set and cleared as node.engine.Engine.put does (``add_delta``, ``remove_delta`` are
those deltas). So it replicates, merges, digests and is forgotten as any subject's state, and
its laws are the subject CRDT's:

- an **add** is a put: an observation superseding every observation of the member's slot the
  adding replica held (a re-add replaces them);
- a **remove** is a clear: an observed-remove of the slot's observations the removing replica
  held. **Add wins**: an add concurrent with a remove (unseen by the remover) survives it; an add
  the remover had seen is removed wherever it arrives;
- **forget**: forgetting the group erases its own observations, hence its members (its erase
  bound). Forgetting a member takes it out of every group by the rule observations follow: an
  add is in effect only if its timestamp is not before the member's erase timestamp
  (``Forgets``: the members' erase bounds, replicated with them). That reaches adds the
  forgetting replica never saw, in groups it did not know; an add after the forget (a rejoin)
  stays.

``members`` is a pure function of a group's state and its members' erase bounds, so replicas
holding the same states show the same members.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sync.crdt import SubjectState, clear_delta, observe_delta, slot_dots
from sync.observation import Observation, Subject, SubjectKind

MEMBERS = "_members"  # the group subject's reserved context holding its members

# Which member kinds each group kind holds.
MEMBER_KIND = {SubjectKind.TEAM: SubjectKind.USER, SubjectKind.ORG: SubjectKind.TEAM}

_NAMES = {SubjectKind.TEAM: "a team", SubjectKind.ORG: "an organization"}

# Subject -> the timestamp of its erase bound (sync.crdt.EraseBound.hlc); absent: never erased.
Forgets = Mapping[Subject, int]
NO_FORGETS: Forgets = MappingProxyType({})


def is_group(subject: Subject) -> bool:
    return subject.kind in MEMBER_KIND


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


def member_statement(member: Subject) -> str:
    """What a member's register holds: ``user:u-1``, ``team:t-1``."""
    return f"{member.kind.name.lower()}:{member.id}"


def member_of(group: Subject, obs: Observation) -> Subject:
    """The member an observation of the group's ``_members`` context names (by its key)."""
    return Subject(group.tenant, MEMBER_KIND[group.kind], obs.key)


def adds(state: SubjectState) -> dict[Subject, int]:
    """Each member slot holding an add, with the newest add's timestamp (concurrent adds of one
    member both stay, as a register's do)."""
    if not is_group(state.subject):
        return {}
    found: dict[Subject, int] = {}
    for obs in state.observations.values():
        if obs.context == MEMBERS:
            member = member_of(state.subject, obs)
            if obs.hlc > found.get(member, -1):
                found[member] = obs.hlc
    return found


def in_effect(member: Subject, hlc: int, forgets: Forgets) -> bool:
    """True unless the add (at ``hlc``) is before an erase of its member."""
    return hlc >= forgets.get(member, 0)


def members(state: SubjectState, forgets: Forgets = NO_FORGETS) -> frozenset[Subject]:
    """The group's members: its adds in effect (the group's own erase already dropped those
    before it from ``state``)."""
    return frozenset(m for m, hlc in adds(state).items() if in_effect(m, hlc, forgets))


def add_delta(
    state: SubjectState, member: Subject, actor: str, hlc: int, source: str, origin: str = ""
) -> SubjectState:
    """The delta of adding ``member`` (Engine.put of its slot): an observation at ``hlc`` (after
    everything ``state``'s replica merged) superseding the slot's observations it held."""
    check_member(state.subject, member)
    obs = Observation(
        dot=state.next_dot(actor),
        context=MEMBERS,
        key=member.id,
        source=source,
        statement=member_statement(member),
        confidence=1.0,
        evidence=(),
        hlc=hlc,
        origin=origin or actor.split(".")[0],
    )
    return observe_delta(state, obs, slot_dots(state, MEMBERS, member.id))


def remove_delta(state: SubjectState, member: Subject, actor: str) -> SubjectState:
    """The delta of removing ``member`` (Engine.put of None: an observed-remove of its slot)."""
    check_member(state.subject, member)
    return clear_delta(state, actor, MEMBERS, member.id)


# --- a tenant's groups ----------------------------------------------------------------------

# group -> its state
Directory = Mapping[Subject, SubjectState]


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


__all__ = [
    "MEMBERS",
    "MEMBER_KIND",
    "NO_FORGETS",
    "Directory",
    "Forgets",
    "add_delta",
    "adds",
    "check_member",
    "groups_of",
    "in_effect",
    "is_group",
    "member_of",
    "member_statement",
    "members",
    "remove_delta",
    "users_of",
]
