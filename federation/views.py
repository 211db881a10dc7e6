"""What the client library hands back: subjects as agents name them, and frozen views of the
node's replies (a resolved self-model, a write's acknowledgement, an audit entry); the default
node and tenant."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from selfmodel.admin.v1 import admin_pb2
from selfmodel.v1 import model_pb2
from sync.codec import POLICIES, EnumWords
from sync.observation import Subject, SubjectKind

AUDIT_ACTIONS = EnumWords(admin_pb2.AuditAction)

DEFAULT_TENANT = "default"
DEFAULT_TARGET = "127.0.0.1:7070"  # a development node's agents' port


def user(id: str, tenant: str | None = None) -> SubjectRef:
    return SubjectRef(SubjectKind.USER, id, tenant)


def team(id: str, tenant: str | None = None) -> SubjectRef:
    return SubjectRef(SubjectKind.TEAM, id, tenant)


def org(id: str, tenant: str | None = None) -> SubjectRef:
    return SubjectRef(SubjectKind.ORG, id, tenant)


@dataclass(frozen=True, slots=True)
class SubjectRef:
    """A subject whose tenant defaults to the client's."""

    kind: SubjectKind
    id: str
    tenant: str | None = None

    def resolve(self, tenant: str) -> Subject:
        return Subject(self.tenant or tenant, self.kind, self.id)


SubjectLike = SubjectRef | Subject | str


def parse_subject(text: str, tenant: str = DEFAULT_TENANT) -> Subject:
    """``tenant/kind/id``, ``kind/id`` or ``kind:id`` (kind: user, team or org)."""
    parts = text.replace(":", "/", 1).split("/") if "/" not in text else text.split("/")
    if len(parts) == 2:
        parts = [tenant, *parts]
    if len(parts) != 3 or parts[1].upper() not in SubjectKind.__members__:
        raise ValueError(
            f"subject {text!r} must be tenant/kind/id or kind:id (kind: user|team|org)"
        )
    return Subject(parts[0], SubjectKind[parts[1].upper()], parts[2])


@dataclass(frozen=True, slots=True)
class Support:
    """One source's stance in a slot (model.proto's Support): the confidence it reported and
    what that weighs in the slot, weight = confidence x reliability x recency x
    evidence_factor (0.82 without evidence: 0.82 x 0.9 = 0.738 by default)."""

    source: str
    statement: str
    confidence: float  # as the source reported it
    observed_at: dt.datetime
    weight: float = 0.0
    reliability: float = 1.0  # the operators' reliability of the source in the context
    recency: float = 1.0  # 0.5 ^ (age within the slot / half-life)
    evidence_factor: float = 1.0  # 1 - evidence_discount x 0.5 ^ (pieces of evidence)
    # The weight counts in its statement's support (false: below the context's minimum while
    # another observation is not, or no independent support).
    counted: bool = True


@dataclass(frozen=True, slots=True)
class BeliefView:
    context: str
    key: str
    statement: str
    confidence: float
    uncertain: bool
    supporters: tuple[Support, ...]
    dissenters: tuple[Support, ...]
    changed_at: dt.datetime  # the newest observation's time
    policy: str
    # How old the belief was when read (the node's resolved_at minus changed_at): staleness,
    # reported beside the confidence, which never depends on when it is read. Not compared:
    # two reads of the same belief are equal whenever they were made.
    age: dt.timedelta = field(default=dt.timedelta(0), compare=False)
    # How many sources support and dissent, whether or not the read listed them all
    # (``max_positions``).
    supporter_count: int = 0
    dissenter_count: int = 0


@dataclass(frozen=True, slots=True)
class RollupView:
    """What a group's users hold in one slot (model.proto's RollupBelief): how many hold the
    statement, their share of the group's users, their mean confidence, the newest change."""

    context: str
    key: str
    statement: str
    holders: int
    share: float
    mean_confidence: float
    changed_at: dt.datetime


@dataclass(frozen=True, slots=True)
class SelfModelView:
    subject: Subject
    node: str
    token: str
    all_beliefs: tuple[BeliefView, ...]
    # With a page_size: the token of the next page of beliefs ("" after the last).
    next_page_token: str = ""
    # What the read left out: beliefs below their context's minimum (without
    # include_uncertain), and beliefs below the reader's min_confidence.
    uncertain_omitted: int = 0
    below_min_confidence_omitted: int = 0
    # The minimum confidence in force in each context read; below it a belief is uncertain.
    context_min_confidence: dict[str, float] = field(default_factory=dict, hash=False)
    # Of a team or an organization: what its users hold, and how many users it has.
    rollups: tuple[RollupView, ...] = ()
    group_users: int = 0
    rollups_omitted: int = 0  # rows past the node's max_rollup_bytes: narrow the read to see them

    def rollup(self, context: str, key: str) -> list[RollupView]:
        """The roll-up rows of one slot, most held first."""
        return [r for r in self.rollups if r.context == context and r.key == key]

    def beliefs(self, context: str | None = None) -> list[BeliefView]:
        return [b for b in self.all_beliefs if context is None or b.context == context]

    def belief(self, context: str, key: str) -> BeliefView | None:
        return next((b for b in self.all_beliefs if b.context == context and b.key == key), None)


@dataclass(frozen=True, slots=True)
class Observed:
    observation_id: str
    key: str
    token: str


@dataclass(frozen=True, slots=True)
class Retracted:
    count: int  # how many the node held and withdrew
    token: str
    # The withdrawal is recorded: the source's observations in the slot from before it are
    # withdrawn wherever written, including ones the node had not merged yet.
    recorded: bool = True


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One operator action of the node's audit log (see Admin.ListAudit)."""

    cursor: str
    time: dt.datetime
    node: str
    actor: str
    actor_role: str
    actor_tenant: str
    action: str  # forget | retract_on_behalf | add_member | remove_member
    subject: Subject
    detail: str


def audit_page(reply: admin_pb2.ListAuditResponse) -> tuple[list[AuditEntry], str]:
    entries = [
        AuditEntry(
            e.cursor,
            _time(e.time),
            e.node,
            e.actor,
            e.actor_role,
            e.actor_tenant,
            AUDIT_ACTIONS.of(e.action),
            Subject(e.subject.tenant, SubjectKind(e.subject.kind), e.subject.id),
            e.detail,
        )
        for e in reply.entries
    ]
    return entries, str(reply.next_cursor)


def _time(ts: Any) -> dt.datetime:
    return ts.ToDatetime(tzinfo=dt.UTC)  # type: ignore[no-any-return]


def _support(msg: model_pb2.Support) -> Support:
    return Support(
        msg.source,
        msg.statement,
        msg.confidence,
        _time(msg.observed_at),
        msg.weight,
        msg.reliability,
        msg.recency,
        msg.evidence_factor,
        msg.counted,
    )


def view_from_proto(msg: model_pb2.SelfModelSnapshot) -> SelfModelView:
    resolved = _time(msg.resolved_at)
    beliefs = tuple(
        BeliefView(
            b.context,
            b.key,
            b.statement,
            b.confidence,
            b.uncertain,
            tuple(_support(s) for s in b.supporters),
            tuple(_support(s) for s in b.dissenters),
            changed := _time(b.changed_at),
            POLICIES.of(b.policy),
            max(resolved - changed, dt.timedelta(0)),
            b.supporter_count,
            b.dissenter_count,
        )
        for b in msg.beliefs
    )
    subject = Subject(msg.subject.tenant, SubjectKind(msg.subject.kind), msg.subject.id)
    return SelfModelView(
        subject,
        msg.node,
        msg.handoff_token,
        beliefs,
        msg.next_page_token,
        msg.uncertain_omitted,
        msg.below_min_confidence_omitted,
        dict(msg.context_min_confidence),
        tuple(
            RollupView(
                r.context,
                r.key,
                r.statement,
                r.holders,
                r.share,
                r.mean_confidence,
                _time(r.changed_at),
            )
            for r in msg.rollups
        ),
        msg.group_users,
        msg.rollups_omitted,
    )


@dataclass(frozen=True, slots=True)
class Holder:
    """A user behind a rolled-up statement (ExplainBelief of a group's slot)."""

    user: Subject
    statement: str
    confidence: float
    changed_at: dt.datetime


def holders(msg: Any) -> list[Holder]:
    """The holders of an ExplainBeliefResponse."""
    return [
        Holder(_subject(h.user), h.statement, h.confidence, _time(h.changed_at))
        for h in msg.holders
    ]


@dataclass(frozen=True, slots=True)
class MembersPage:
    """One page of a group's direct members (Admin.ListMembers)."""

    members: tuple[Subject, ...]
    next_page_token: str
    group_users: int


def members_page(reply: admin_pb2.ListMembersResponse) -> MembersPage:
    found = tuple(_subject(m) for m in reply.members)
    return MembersPage(found, reply.next_page_token, reply.group_users)


MEMBERSHIP_OUTCOMES = EnumWords(admin_pb2.MembershipOutcome)


def outcome(reply: Any) -> str:
    """A membership change's outcome: added, already_member, removed or not_member."""
    return MEMBERSHIP_OUTCOMES.of(reply.outcome)


def _subject(msg: model_pb2.Subject) -> Subject:
    return Subject(msg.tenant, SubjectKind(msg.kind), msg.id)


__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TENANT",
    "AuditEntry",
    "BeliefView",
    "Holder",
    "MembersPage",
    "Observed",
    "Retracted",
    "RollupView",
    "SelfModelView",
    "SubjectLike",
    "SubjectRef",
    "Support",
    "audit_page",
    "holders",
    "members_page",
    "org",
    "outcome",
    "parse_subject",
    "team",
    "user",
    "view_from_proto",
]
