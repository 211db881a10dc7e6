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
    """One source's stance in a slot (model.proto's Support)."""

    source: str
    statement: str
    confidence: float
    observed_at: dt.datetime


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
class SelfModelView:
    subject: Subject
    node: str
    token: str
    all_beliefs: tuple[BeliefView, ...]
    # With a page_size: the token of the next page of beliefs ("" after the last).
    next_page_token: str = ""

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
    action: str  # forget | retract_on_behalf
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
    return Support(msg.source, msg.statement, msg.confidence, _time(msg.observed_at))


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
    return SelfModelView(subject, msg.node, msg.handoff_token, beliefs, msg.next_page_token)


__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TENANT",
    "AuditEntry",
    "BeliefView",
    "Observed",
    "Retracted",
    "SelfModelView",
    "SubjectLike",
    "SubjectRef",
    "Support",
    "audit_page",
    "org",
    "parse_subject",
    "team",
    "user",
    "view_from_proto",
]
