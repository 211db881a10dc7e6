"""Each call of the client library, described once: the request it sends, the stub method that
carries it, and how the reply becomes the answer. ``Client`` and ``AsyncClient`` run these same
descriptions (``federation.client``), so the two cannot differ in what a call does.

A description function takes the client's ``Requests`` (its tenant, and the token of the last
model read per subject) followed by the public method's own parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Literal, TypeVar

from google.protobuf.message import Message

from federation.pages import PolicyView, SubjectsPage, new_idempotency_key, policies, subjects_page
from federation.views import (
    AuditEntry,
    MembersPage,
    Observed,
    Retracted,
    SelfModelView,
    SubjectLike,
    SubjectRef,
    audit_page,
    members_page,
    outcome,
    parse_subject,
    view_from_proto,
)
from selfmodel.admin.v1 import admin_pb2
from selfmodel.v1 import model_pb2, selfmodel_pb2
from sync.codec import POLICIES, EnumWords, evidence_to_proto
from sync.observation import Evidence, SubjectKind

T = TypeVar("T")
Service = Literal["SelfModel", "Admin"]

SETTING_FIELDS = EnumWords(admin_pb2.SettingField)  # "min_confidence" and back


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One unary call; the clients retry it on UNAVAILABLE only, with the same request: a
    write's idempotency key is the same on every retry, so a retry whose first attempt was
    recorded (its answer lost) is answered as the first and records nothing new."""

    service: Service
    method: str  # the stub's method name
    request: Message
    answer: Callable[[Any], T]
    timeout_s: float | None = None  # None: the client's


@dataclass(frozen=True, slots=True)
class Stream(Generic[T]):
    """One server-streaming call of the SelfModel service; never retried (the caller decides)."""

    method: str
    request: Message
    item: Callable[[Any], T]
    timeout_s: float | None = None  # None: until cancelled


def raw(call: Call[Any]) -> Call[Any]:
    """The same call, answering with the reply message itself."""
    return replace(call, answer=lambda reply: reply)


class Requests:
    """What a client's calls are built from: its tenant, and what it has read."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        # The token of the last model read per subject: what the next observation of that
        # subject is based on (ObserveRequest.based_on), unless the caller says otherwise.
        self.read: dict[tuple[str, int, str], str] = {}

    def remember(self, view: SelfModelView) -> SelfModelView:
        s = view.subject
        self.read[(s.tenant, int(s.kind), s.id)] = view.token
        return view

    def subject(self, subject: SubjectLike) -> model_pb2.Subject:
        if isinstance(subject, SubjectRef):
            subject = subject.resolve(self.tenant)
        elif isinstance(subject, str):
            subject = parse_subject(subject, self.tenant)
        return model_pb2.Subject(tenant=subject.tenant, kind=int(subject.kind), id=subject.id)  # type: ignore[arg-type]


def _observed(reply: selfmodel_pb2.ObserveResponse) -> Observed:
    return Observed(reply.observation_id, reply.key, reply.handoff_token)


def _token(reply: Any) -> str:
    return str(reply.handoff_token)


def observe(
    req: Requests,
    subject: SubjectLike,
    statement: str,
    *,
    confidence: float,
    context: str,
    key: str = "",
    evidence: Iterable[Evidence] = (),
    based_on: str | None = None,
    idempotency_key: str | None = None,
) -> Call[Observed]:
    """Records an observation. ``based_on``: the handoff token of the model read it rests
    on; by default the last model of this subject read through this client ("" for none).
    ``idempotency_key``: by default a new one, reused by this call's retries."""
    subj = req.subject(subject)
    if based_on is None:
        based_on = req.read.get((subj.tenant, int(subj.kind), subj.id), "")
    request = selfmodel_pb2.ObserveRequest(
        subject=subj,
        context=context,
        key=key,
        statement=statement,
        confidence=confidence,
        based_on=based_on,
        idempotency_key=idempotency_key or new_idempotency_key(),
    )
    for ev in evidence:
        evidence_to_proto(ev, request.evidence.add())
    return Call("SelfModel", "Observe", request, _observed)


def observe_batch(
    req: Requests,
    requests: Sequence[selfmodel_pb2.ObserveRequest],
    *,
    idempotency_key: str | None = None,
) -> Call[str]:
    """Records the observations together (all or none); returns the batch's token."""
    request = selfmodel_pb2.ObserveBatchRequest(
        observations=requests, idempotency_key=idempotency_key or new_idempotency_key()
    )
    return Call("SelfModel", "ObserveBatch", request, _token)


def retract(
    req: Requests,
    subject: SubjectLike,
    context: str,
    key: str,
    *,
    source: str = "",
    idempotency_key: str | None = None,
) -> Call[Retracted]:
    """Withdraws ``source``'s observations in the slot (by default the caller's own)."""
    request = selfmodel_pb2.RetractRequest(
        subject=req.subject(subject),
        context=context,
        key=key,
        source=source,
        idempotency_key=idempotency_key or new_idempotency_key(),
    )
    return Call(
        "SelfModel",
        "Retract",
        request,
        lambda reply: Retracted(reply.retracted, reply.handoff_token, reply.recorded),
    )


def self_model(
    req: Requests,
    subject: SubjectLike,
    *,
    at_least: str | None = None,
    contexts: Sequence[str] = (),
    min_confidence: float = 0.0,
    include_uncertain: bool = False,
    timeout_s: float | None = None,
    page_size: int = 0,
    page_token: str = "",
    max_positions: int | None = None,
) -> Call[SelfModelView]:
    """The subject's resolved model; with ``at_least``, once the node holds that handoff
    token's writes. Its token becomes the default ``based_on`` of the next observation. With
    ``page_size``, one page of its beliefs (pass the view's ``next_page_token`` as
    ``page_token`` for the next). With ``max_positions``, at most that many supporters and
    dissenters per belief (0: their counts only, ``BeliefView.supporter_count``)."""
    request = selfmodel_pb2.GetSelfModelRequest(
        subject=req.subject(subject),
        contexts=list(contexts),
        min_confidence=min_confidence,
        include_uncertain=include_uncertain,
        at_least=at_least or "",
        page_size=page_size,
        page_token=page_token,
    )
    if max_positions is not None:
        request.max_positions = max_positions
    return Call(
        "SelfModel",
        "GetSelfModel",
        request,
        lambda reply: req.remember(view_from_proto(reply.snapshot)),
        timeout_s,
    )


def self_models(
    req: Requests,
    subjects: Sequence[SubjectLike],
    *,
    at_least: str | None = None,
    contexts: Sequence[str] = (),
    min_confidence: float = 0.0,
    include_uncertain: bool = False,
    max_positions: int | None = None,
) -> Call[tuple[list[SelfModelView], str]]:
    """The models of several subjects, in order, and one handoff token covering them all;
    ``max_positions`` as in ``self_model``."""
    request = selfmodel_pb2.BatchGetSelfModelsRequest(
        subjects=[req.subject(s) for s in subjects],
        contexts=list(contexts),
        min_confidence=min_confidence,
        include_uncertain=include_uncertain,
        at_least=at_least or "",
        max_positions=max_positions,
    )

    def answer(reply: selfmodel_pb2.BatchGetSelfModelsResponse) -> tuple[list[SelfModelView], str]:
        return [req.remember(view_from_proto(m)) for m in reply.models], str(reply.handoff_token)

    return Call("SelfModel", "BatchGetSelfModels", request, answer)


def subjects(
    req: Requests,
    *,
    kind: SubjectKind | None = None,
    page_size: int = 0,
    page_token: str = "",
    tenant: str | None = None,
) -> Call[SubjectsPage]:
    """One page of the tenant's subjects this node holds (default: the client's tenant)."""
    request = selfmodel_pb2.ListSubjectsRequest(
        tenant=tenant or req.tenant,
        kind=int(kind or 0),  # type: ignore[arg-type]
        page_size=page_size,
        page_token=page_token,
    )
    return Call("SelfModel", "ListSubjects", request, subjects_page)


def contexts(
    req: Requests, subject: SubjectLike, *, at_least: str | None = None
) -> Call[list[PolicyView]]:
    """The contexts the subject holds beliefs in, each with its policy in force."""
    request = selfmodel_pb2.ListContextsRequest(
        subject=req.subject(subject), at_least=at_least or ""
    )
    return Call("SelfModel", "ListContexts", request, lambda reply: policies(reply.contexts))


def policy(req: Requests, *contexts: str) -> Call[list[PolicyView]]:
    """The policy in force for each context (none given: the default, as context "")."""
    request = selfmodel_pb2.GetPolicyRequest(contexts=list(contexts))
    return Call("SelfModel", "GetPolicy", request, lambda reply: policies(reply.policies))


def explain(
    req: Requests, subject: SubjectLike, context: str, key: str, *, at_least: str | None = None
) -> Call[selfmodel_pb2.ExplainBeliefResponse]:
    """Every observation of the slot and why the winner won."""
    request = selfmodel_pb2.ExplainBeliefRequest(
        subject=req.subject(subject), context=context, key=key, at_least=at_least or ""
    )
    return Call("SelfModel", "ExplainBelief", request, lambda reply: reply)


def forget(req: Requests, subject: SubjectLike, *, idempotency_key: str | None = None) -> Call[str]:
    """Erases the subject on every node; returns the erasure's handoff token."""
    request = selfmodel_pb2.ForgetSubjectRequest(
        subject=req.subject(subject),
        idempotency_key=idempotency_key or new_idempotency_key(),
    )
    return Call("SelfModel", "ForgetSubject", request, _token)


def audit(req: Requests, after: str = "", limit: int = 100) -> Call[tuple[list[AuditEntry], str]]:
    """Up to ``limit`` audit entries after the cursor ``after``, oldest first, and the cursor
    to continue from ("" once there is nothing further). Operators only."""
    request = admin_pb2.ListAuditRequest(after=after, limit=limit)
    return Call("Admin", "ListAudit", request, audit_page)


def add_member(req: Requests, group: SubjectLike, member: SubjectLike) -> Call[str]:
    """Adds a user to a team or a team to an organization; answers ``added`` or
    ``already_member`` (nothing changed). Operators and tokens with the membership permission."""
    request = admin_pb2.AddMemberRequest(group=req.subject(group), member=req.subject(member))
    return Call("Admin", "AddMember", request, outcome)


def remove_member(req: Requests, group: SubjectLike, member: SubjectLike) -> Call[str]:
    """Removes a member; answers ``removed`` or ``not_member`` (nothing changed)."""
    request = admin_pb2.RemoveMemberRequest(group=req.subject(group), member=req.subject(member))
    return Call("Admin", "RemoveMember", request, outcome)


def members(
    req: Requests, group: SubjectLike, *, page_size: int = 0, page_token: str = ""
) -> Call[MembersPage]:
    """One page of a group's direct members, by id, as the node holds them."""
    request = admin_pb2.ListMembersRequest(
        group=req.subject(group), page_size=page_size, page_token=page_token
    )
    return Call("Admin", "ListMembers", request, members_page)


def settings(req: Requests) -> Call[admin_pb2.GetSettingsResponse]:
    """Every setting and source reliability in force on the node, and where each comes from
    (replicated, the node's cluster file, built in). Operators only."""
    return Call("Admin", "GetSettings", admin_pb2.GetSettingsRequest(), lambda reply: reply)


def set_setting(req: Requests, field: str, value: str | float, *, context: str = "") -> Call[str]:
    """Sets a policy field of ``context`` ("": every context's default) on every node;
    ``field`` a SettingField word (``policy``, ``min_confidence``, ``half_life_seconds``,
    ``max_observations``, ``evidence_discount``), ``value`` a policy word or a number.
    Operators only; returns the change's handoff token."""
    request = admin_pb2.SetSettingRequest(context=context, field=SETTING_FIELDS.number(field))  # type: ignore[arg-type]
    if isinstance(value, str):
        request.policy = POLICIES.number(value)  # type: ignore[assignment]
    else:
        request.number = value
    return Call("Admin", "SetSetting", request, _token)


def clear_setting(req: Requests, field: str, *, context: str = "") -> Call[str]:
    """Hands a setting back to each node's cluster file. Operators only."""
    request = admin_pb2.ClearSettingRequest(context=context, field=SETTING_FIELDS.number(field))  # type: ignore[arg-type]
    return Call("Admin", "ClearSetting", request, _token)


def set_reliability(
    req: Requests, source: str, reliability: float, *, context: str = ""
) -> Call[str]:
    """Sets ``source``'s reliability in ``context`` ("": every context) on every node."""
    request = admin_pb2.SetReliabilityRequest(
        source=source, context=context, reliability=reliability
    )
    return Call("Admin", "SetReliability", request, _token)


def clear_reliability(req: Requests, source: str, *, context: str = "") -> Call[str]:
    """Hands ``source``'s reliability in ``context`` back to each node's cluster file."""
    request = admin_pb2.ClearReliabilityRequest(source=source, context=context)
    return Call("Admin", "ClearReliability", request, _token)


def source_contributions(
    req: Requests, source: str, *, page_size: int = 0, page_token: str = "", tenant: str = ""
) -> Call[admin_pb2.ListSourceContributionsResponse]:
    """One page of what ``source`` contributed in the tenant (default: the client's), as the
    node holds it. Operators only."""
    request = admin_pb2.ListSourceContributionsRequest(
        tenant=tenant or req.tenant, source=source, page_size=page_size, page_token=page_token
    )
    return Call("Admin", "ListSourceContributions", request, _same)


def withdraw_source(
    req: Requests, source: str, *, tenant: str = ""
) -> Call[admin_pb2.WithdrawSourceResponse]:
    """Withdraws ``source`` across the tenant (default: the client's), audited. Operators only."""
    request = admin_pb2.WithdrawSourceRequest(tenant=tenant or req.tenant, source=source)
    return Call("Admin", "WithdrawSource", request, _same)


def lift_withdrawal(
    req: Requests, source: str, *, tenant: str = ""
) -> Call[admin_pb2.LiftSourceWithdrawalResponse]:
    """Lifts ``source``'s withdrawal in the tenant (default: the client's). Operators only."""
    request = admin_pb2.LiftSourceWithdrawalRequest(tenant=tenant or req.tenant, source=source)
    return Call("Admin", "LiftSourceWithdrawal", request, _same)


def _same(reply: T) -> T:
    return reply


def watch(
    req: Requests,
    subject: SubjectLike,
    *,
    contexts: Sequence[str] = (),
    include_uncertain: bool = False,
    timeout_s: float | None = None,
    max_positions: int | None = None,
    at_least: str | None = None,
) -> Stream[SelfModelView]:
    """The subject's model now, then after every change; ends when the call is cancelled.
    ``max_positions`` as in ``self_model``; with ``at_least``, the first model is sent once
    the node holds that handoff token's writes."""
    request = selfmodel_pb2.WatchSelfModelRequest(
        subject=req.subject(subject),
        contexts=list(contexts),
        include_uncertain=include_uncertain,
        max_positions=max_positions,
        at_least=at_least or "",
    )
    return Stream(
        "WatchSelfModel", request, lambda reply: view_from_proto(reply.snapshot), timeout_s
    )


__all__ = [
    "Call",
    "Requests",
    "Stream",
    "add_member",
    "audit",
    "clear_reliability",
    "clear_setting",
    "contexts",
    "explain",
    "forget",
    "lift_withdrawal",
    "members",
    "observe",
    "observe_batch",
    "policy",
    "raw",
    "remove_member",
    "retract",
    "self_model",
    "self_models",
    "set_reliability",
    "set_setting",
    "settings",
    "source_contributions",
    "subjects",
    "watch",
    "withdraw_source",
]
