"""The Python client library: a small typed surface that reads like the problem.

    client = Client("127.0.0.1:7070", agent="sales_agent", tenant="acme")
    written = client.observe(user("u-42"), "Motivated by quick time-to-value",
                             confidence=0.82, context="purchase_motivation")
    support.self_model(user("u-42"), at_least=written.token).beliefs(context="purchase_motivation")

Calls are retried on UNAVAILABLE only, after the node's RetryInfo delay or jittered exponential
backoff, and a read whose handoff position is pending is asked again until its deadline
(federation.retries). Every write carries an idempotency key, one per logical call and the same
on each of its retries, so a retry whose first attempt was recorded (its answer lost) is
answered as the first and records nothing new (node.idempotency). Every failure raises the
selfmodel.errors exception built from the node's status details (reason, field violations,
quota, retry delay).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio

from federation import retries
from federation.bearer import bearer_token
from federation.pages import (
    PolicyView,
    SubjectsPage,
    new_idempotency_key,
    policies,
    subjects_page,
)
from node.tls import open_channel
from selfmodel.errors import from_rpc_error as error_from_rpc
from selfmodel.v1 import admin_pb2, admin_pb2_grpc, model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from sync.observation import Evidence, Subject, SubjectKind

T = TypeVar("T")

DEFAULT_TENANT = "default"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


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
class Stance:
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
    supporters: tuple[Stance, ...]
    dissenters: tuple[Stance, ...]
    changed_at: dt.datetime  # the newest observation's time
    policy: str
    # How old the belief was when read (the node's resolved_at minus changed_at): staleness,
    # reported beside the confidence, which never depends on when it is read. Not compared:
    # two reads of the same belief are equal whenever they were made.
    age: dt.timedelta = field(default=dt.timedelta(0), compare=False)


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


def _audit_page(reply: admin_pb2.ListAuditResponse) -> tuple[list[AuditEntry], str]:
    entries = [
        AuditEntry(
            e.cursor,
            _time(e.time),
            e.node,
            e.actor,
            e.actor_role,
            e.actor_tenant,
            e.action,
            Subject(e.subject.tenant, SubjectKind(e.subject.kind), e.subject.id),
            e.detail,
        )
        for e in reply.entries
    ]
    return entries, str(reply.next_cursor)


def _time(ts: Any) -> dt.datetime:
    return ts.ToDatetime(tzinfo=dt.UTC)  # type: ignore[no-any-return]


def _stance(msg: model_pb2.Support) -> Stance:
    return Stance(msg.source, msg.statement, msg.confidence, _time(msg.observed_at))


def view_from_proto(msg: model_pb2.SelfModelSnapshot) -> SelfModelView:
    resolved = _time(msg.resolved_at)
    beliefs = tuple(
        BeliefView(
            b.context,
            b.key,
            b.statement,
            b.confidence,
            b.uncertain,
            tuple(_stance(s) for s in b.supporters),
            tuple(_stance(s) for s in b.dissenters),
            changed := _time(b.changed_at),
            b.policy,
            max(resolved - changed, dt.timedelta(0)),
        )
        for b in msg.beliefs
    )
    subject = Subject(msg.subject.tenant, SubjectKind(msg.subject.kind), msg.subject.id)
    return SelfModelView(subject, msg.node, msg.handoff_token, beliefs, msg.next_page_token)


class _Requests:
    """Builds requests; shared by the sync and asyncio clients."""

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

    def observe(
        self,
        subject: SubjectLike,
        statement: str,
        confidence: float,
        context: str,
        key: str,
        evidence: Iterable[Evidence],
        based_on: str | None = None,
    ) -> selfmodel_pb2.ObserveRequest:
        subj = self.subject(subject)
        if based_on is None:
            based_on = self.read.get((subj.tenant, int(subj.kind), subj.id), "")
        req = selfmodel_pb2.ObserveRequest(
            subject=subj,
            context=context,
            key=key,
            statement=statement,
            confidence=confidence,
            based_on=based_on,
        )
        for ev in evidence:
            e = req.evidence.add(kind=ev.kind, ref=ev.ref, quote=ev.quote)
            if ev.time_ms:
                e.time.FromMilliseconds(ev.time_ms)
        return req

    def get(
        self,
        subject: SubjectLike,
        at_least: str | None,
        contexts: Sequence[str],
        min_confidence: float,
        include_uncertain: bool,
        page_size: int = 0,
        page_token: str = "",
    ) -> selfmodel_pb2.GetSelfModelRequest:
        return selfmodel_pb2.GetSelfModelRequest(
            subject=self.subject(subject),
            contexts=list(contexts),
            min_confidence=min_confidence,
            include_uncertain=include_uncertain,
            at_least=at_least or "",
            page_size=page_size,
            page_token=page_token,
        )

    def batch_get(
        self,
        subjects: Sequence[SubjectLike],
        at_least: str | None,
        contexts: Sequence[str],
        min_confidence: float,
        include_uncertain: bool,
    ) -> selfmodel_pb2.BatchGetSelfModelsRequest:
        return selfmodel_pb2.BatchGetSelfModelsRequest(
            subjects=[self.subject(s) for s in subjects],
            contexts=list(contexts),
            min_confidence=min_confidence,
            include_uncertain=include_uncertain,
            at_least=at_least or "",
        )


def _metadata(agent: str | None, token: str | None) -> tuple[tuple[str, str], ...]:
    md = []
    if agent:
        md.append(("x-agent-id", agent))
    if token:
        md.append(("authorization", f"Bearer {token}"))
    return tuple(md)


def _channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]


class Client:
    """A synchronous client bound to one node and one agent identity."""

    def __init__(
        self,
        target: str = "127.0.0.1:7070",
        *,
        agent: str | None = None,
        token: str | None = None,
        tenant: str = DEFAULT_TENANT,
        credentials: grpc.ChannelCredentials | None = None,
        timeout_s: float = 10.0,
        attempts: int = 5,
        token_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """``token``, else ``token_file``, else $SELFMODEL_TOKEN or $SELFMODEL_TOKEN_FILE is the
        bearer token sent (see ``bearer_token``); ``agent`` names the caller on a development
        node without tokens."""
        self._channel = open_channel(target, credentials, _channel_options())
        self._stub = selfmodel_pb2_grpc.SelfModelStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)
        self._md = _metadata(agent, bearer_token(token, token_file))
        self._req = _Requests(tenant)
        self.timeout_s = timeout_s
        self._retries = retries.RetryPolicy(attempts=attempts)

    def _call(self, method: Any, request: Any, timeout_s: float | None = None) -> Any:
        return retries.call(self._retries, method, request, timeout_s or self.timeout_s, self._md)

    def observe(
        self,
        subject: SubjectLike,
        statement: str,
        *,
        confidence: float,
        context: str,
        key: str = "",
        evidence: Iterable[Evidence] = (),
        based_on: str | None = None,
        idempotency_key: str | None = None,
    ) -> Observed:
        """Records an observation. ``based_on``: the handoff token of the model read it rests
        on; by default the last model of this subject read through this client ("" for none).
        ``idempotency_key``: by default a new one, reused by this call's retries."""
        req = self._req.observe(subject, statement, confidence, context, key, evidence, based_on)
        req.idempotency_key = idempotency_key or new_idempotency_key()
        reply = self._call(self._stub.Observe, req)
        return Observed(reply.observation_id, reply.key, reply.handoff_token)

    def observe_batch(
        self,
        requests: Sequence[selfmodel_pb2.ObserveRequest],
        *,
        idempotency_key: str | None = None,
    ) -> str:
        """Records the observations together (all or none); returns the batch's token."""
        batch = selfmodel_pb2.ObserveBatchRequest(
            observations=requests, idempotency_key=idempotency_key or new_idempotency_key()
        )
        return str(self._call(self._stub.ObserveBatch, batch).handoff_token)

    def retract(
        self,
        subject: SubjectLike,
        context: str,
        key: str,
        *,
        source: str = "",
        idempotency_key: str | None = None,
    ) -> Retracted:
        req = selfmodel_pb2.RetractRequest(
            subject=self._req.subject(subject),
            context=context,
            key=key,
            source=source,
            idempotency_key=idempotency_key or new_idempotency_key(),
        )
        reply = self._call(self._stub.Retract, req)
        return Retracted(reply.retracted, reply.handoff_token, reply.recorded)

    def self_model(
        self,
        subject: SubjectLike,
        *,
        at_least: str | None = None,
        contexts: Sequence[str] = (),
        min_confidence: float = 0.0,
        include_uncertain: bool = False,
        timeout_s: float | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> SelfModelView:
        """The subject's model; with ``page_size``, one page of its beliefs (pass the view's
        ``next_page_token`` as ``page_token`` for the next)."""
        req = self._req.get(
            subject, at_least, contexts, min_confidence, include_uncertain, page_size, page_token
        )
        return self._req.remember(
            view_from_proto(self._call(self._stub.GetSelfModel, req, timeout_s))
        )

    def explain(
        self, subject: SubjectLike, context: str, key: str, *, at_least: str | None = None
    ) -> selfmodel_pb2.Explanation:
        req = selfmodel_pb2.ExplainBeliefRequest(
            subject=self._req.subject(subject), context=context, key=key, at_least=at_least or ""
        )
        reply: selfmodel_pb2.Explanation = self._call(self._stub.ExplainBelief, req)
        return reply

    def watch(
        self,
        subject: SubjectLike,
        *,
        contexts: Sequence[str] = (),
        include_uncertain: bool = False,
        timeout_s: float | None = None,
    ) -> Iterator[SelfModelView]:
        """The subject's model now, then after every change; ends when the call is cancelled."""
        req = selfmodel_pb2.WatchSelfModelRequest(
            subject=self._req.subject(subject),
            contexts=list(contexts),
            include_uncertain=include_uncertain,
        )
        stream = self._stub.WatchSelfModel(req, timeout=timeout_s, metadata=self._md)
        try:
            for msg in stream:
                yield view_from_proto(msg)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                return
            raise error_from_rpc(exc) from exc
        finally:
            stream.cancel()  # type: ignore[no-untyped-call]

    def forget(self, subject: SubjectLike, *, idempotency_key: str | None = None) -> str:
        req = selfmodel_pb2.ForgetSubjectRequest(
            subject=self._req.subject(subject),
            idempotency_key=idempotency_key or new_idempotency_key(),
        )
        return str(self._call(self._stub.ForgetSubject, req).handoff_token)

    def subjects(
        self,
        *,
        kind: SubjectKind | None = None,
        page_size: int = 0,
        page_token: str = "",
        tenant: str | None = None,
    ) -> SubjectsPage:
        """One page of the tenant's subjects this node holds (default: the client's tenant)."""
        req = selfmodel_pb2.ListSubjectsRequest(
            tenant=tenant or self._req.tenant,
            kind=int(kind or 0),  # type: ignore[arg-type]
            page_size=page_size,
            page_token=page_token,
        )
        return subjects_page(self._call(self._stub.ListSubjects, req))

    def contexts(self, subject: SubjectLike, *, at_least: str | None = None) -> list[PolicyView]:
        """The contexts the subject holds beliefs in, each with its policy in force."""
        req = selfmodel_pb2.ListContextsRequest(
            subject=self._req.subject(subject), at_least=at_least or ""
        )
        return policies((self._call(self._stub.ListContexts, req)).contexts)

    def self_models(
        self,
        subjects: Sequence[SubjectLike],
        *,
        at_least: str | None = None,
        contexts: Sequence[str] = (),
        min_confidence: float = 0.0,
        include_uncertain: bool = False,
    ) -> tuple[list[SelfModelView], str]:
        """The models of several subjects, in order, and one handoff token covering them all."""
        req = self._req.batch_get(subjects, at_least, contexts, min_confidence, include_uncertain)
        reply = self._call(self._stub.BatchGetSelfModels, req)
        views = [self._req.remember(view_from_proto(m)) for m in reply.models]
        return views, str(reply.handoff_token)

    def policy(self, *contexts: str) -> list[PolicyView]:
        """The policy in force for each context (none given: the default, as context "")."""
        req = selfmodel_pb2.GetPolicyRequest(contexts=list(contexts))
        return policies((self._call(self._stub.GetPolicy, req)).policies)

    def audit(self, after: str = "", limit: int = 100) -> tuple[list[AuditEntry], str]:
        """Up to ``limit`` audit entries after the cursor ``after``, oldest first, and the cursor
        to continue from ("" once there is nothing further). Operators only."""
        req = admin_pb2.ListAuditRequest(after=after, limit=limit)
        return _audit_page(self._call(self._admin.ListAudit, req))

    def cached(
        self, subject: SubjectLike, *, contexts: Sequence[str] = (), include_uncertain: bool = False
    ) -> CachedModel:
        """A local copy of the subject's model, kept current by a watch stream."""
        return CachedModel(self, subject, contexts, include_uncertain)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CachedModel:
    """A subject's model kept current by a watch stream, so repeated reads cost microseconds.

    While the stream is up, ``get()`` is never staler than the node's push delay; while it is
    down (node restarting, network cut), ``get()`` reads from the node directly and the stream
    reconnects in the background with jittered backoff.
    """

    def __init__(
        self,
        client: Client,
        subject: SubjectLike,
        contexts: Sequence[str] = (),
        include_uncertain: bool = False,
    ) -> None:
        self._client = client
        self._subject = subject
        self._contexts = tuple(contexts)
        self._include_uncertain = include_uncertain
        self._request = selfmodel_pb2.WatchSelfModelRequest(
            subject=client._req.subject(subject),
            contexts=list(contexts),
            include_uncertain=include_uncertain,
        )
        self._view: SelfModelView | None = None
        self._live = threading.Event()
        self._closed = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._follow, name="selfmodel-cache", daemon=True)
        self._thread.start()

    @property
    def live(self) -> bool:
        return self._live.is_set()

    def get(self, wait_s: float = 2.0) -> SelfModelView:
        if self._live.wait(wait_s) and self._view is not None:
            return self._view
        return self._client.self_model(
            self._subject, contexts=self._contexts, include_uncertain=self._include_uncertain
        )

    def close(self) -> None:
        self._closed.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        self._thread.join(5)

    def __enter__(self) -> CachedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _follow(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                self._stream = self._client._stub.WatchSelfModel(
                    self._request, metadata=self._client._md
                )
                for msg in self._stream:
                    self._view = view_from_proto(msg)
                    self._live.set()
                    failures = 0
            except grpc.RpcError:
                pass
            finally:
                self._live.clear()
            failures += 1
            self._closed.wait(min(2.0, 0.05 * 2 ** min(failures, 6)) * random.random())


class AsyncClient:
    """The asyncio flavour of Client, with the same methods as coroutines."""

    def __init__(
        self,
        target: str = "127.0.0.1:7070",
        *,
        agent: str | None = None,
        token: str | None = None,
        tenant: str = DEFAULT_TENANT,
        credentials: grpc.ChannelCredentials | None = None,
        timeout_s: float = 10.0,
        attempts: int = 5,
        token_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """``token``, else ``token_file``, else $SELFMODEL_TOKEN or $SELFMODEL_TOKEN_FILE is the
        bearer token sent (see ``bearer_token``); ``agent`` names the caller on a development
        node without tokens."""
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=_channel_options())
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=_channel_options())
        self._stub = selfmodel_pb2_grpc.SelfModelStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)
        self._md = _metadata(agent, bearer_token(token, token_file))
        self._req = _Requests(tenant)
        self.timeout_s = timeout_s
        self._retries = retries.RetryPolicy(attempts=attempts)

    async def _call(self, method: Any, request: Any, timeout_s: float | None = None) -> Any:
        return await retries.call_async(
            self._retries, method, request, timeout_s or self.timeout_s, self._md
        )

    async def observe(
        self,
        subject: SubjectLike,
        statement: str,
        *,
        confidence: float,
        context: str,
        key: str = "",
        evidence: Iterable[Evidence] = (),
        based_on: str | None = None,
        idempotency_key: str | None = None,
    ) -> Observed:
        """Records an observation. ``based_on``: the handoff token of the model read it rests
        on; by default the last model of this subject read through this client ("" for none).
        ``idempotency_key``: by default a new one, reused by this call's retries."""
        req = self._req.observe(subject, statement, confidence, context, key, evidence, based_on)
        req.idempotency_key = idempotency_key or new_idempotency_key()
        reply = await self._call(self._stub.Observe, req)
        return Observed(reply.observation_id, reply.key, reply.handoff_token)

    async def retract(
        self,
        subject: SubjectLike,
        context: str,
        key: str,
        *,
        source: str = "",
        idempotency_key: str | None = None,
    ) -> Retracted:
        req = selfmodel_pb2.RetractRequest(
            subject=self._req.subject(subject),
            context=context,
            key=key,
            source=source,
            idempotency_key=idempotency_key or new_idempotency_key(),
        )
        reply = await self._call(self._stub.Retract, req)
        return Retracted(reply.retracted, reply.handoff_token, reply.recorded)

    async def self_model(
        self,
        subject: SubjectLike,
        *,
        at_least: str | None = None,
        contexts: Sequence[str] = (),
        min_confidence: float = 0.0,
        include_uncertain: bool = False,
        timeout_s: float | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> SelfModelView:
        """The subject's model; with ``page_size``, one page of its beliefs (pass the view's
        ``next_page_token`` as ``page_token`` for the next)."""
        req = self._req.get(
            subject, at_least, contexts, min_confidence, include_uncertain, page_size, page_token
        )
        reply = await self._call(self._stub.GetSelfModel, req, timeout_s)
        return self._req.remember(view_from_proto(reply))

    async def explain(
        self, subject: SubjectLike, context: str, key: str, *, at_least: str | None = None
    ) -> selfmodel_pb2.Explanation:
        req = selfmodel_pb2.ExplainBeliefRequest(
            subject=self._req.subject(subject), context=context, key=key, at_least=at_least or ""
        )
        reply: selfmodel_pb2.Explanation = await self._call(self._stub.ExplainBelief, req)
        return reply

    async def watch(
        self, subject: SubjectLike, *, contexts: Sequence[str] = (), include_uncertain: bool = False
    ) -> AsyncIterator[SelfModelView]:
        req = selfmodel_pb2.WatchSelfModelRequest(
            subject=self._req.subject(subject),
            contexts=list(contexts),
            include_uncertain=include_uncertain,
        )
        call = self._stub.WatchSelfModel(req, metadata=self._md)
        try:
            async for msg in call:
                yield view_from_proto(msg)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    async def forget(self, subject: SubjectLike, *, idempotency_key: str | None = None) -> str:
        req = selfmodel_pb2.ForgetSubjectRequest(
            subject=self._req.subject(subject),
            idempotency_key=idempotency_key or new_idempotency_key(),
        )
        return str((await self._call(self._stub.ForgetSubject, req)).handoff_token)

    async def subjects(
        self,
        *,
        kind: SubjectKind | None = None,
        page_size: int = 0,
        page_token: str = "",
        tenant: str | None = None,
    ) -> SubjectsPage:
        """One page of the tenant's subjects this node holds (default: the client's tenant)."""
        req = selfmodel_pb2.ListSubjectsRequest(
            tenant=tenant or self._req.tenant,
            kind=int(kind or 0),  # type: ignore[arg-type]
            page_size=page_size,
            page_token=page_token,
        )
        return subjects_page(await self._call(self._stub.ListSubjects, req))

    async def contexts(
        self, subject: SubjectLike, *, at_least: str | None = None
    ) -> list[PolicyView]:
        """The contexts the subject holds beliefs in, each with its policy in force."""
        req = selfmodel_pb2.ListContextsRequest(
            subject=self._req.subject(subject), at_least=at_least or ""
        )
        return policies((await self._call(self._stub.ListContexts, req)).contexts)

    async def self_models(
        self,
        subjects: Sequence[SubjectLike],
        *,
        at_least: str | None = None,
        contexts: Sequence[str] = (),
        min_confidence: float = 0.0,
        include_uncertain: bool = False,
    ) -> tuple[list[SelfModelView], str]:
        """The models of several subjects, in order, and one handoff token covering them all."""
        req = self._req.batch_get(subjects, at_least, contexts, min_confidence, include_uncertain)
        reply = await self._call(self._stub.BatchGetSelfModels, req)
        views = [self._req.remember(view_from_proto(m)) for m in reply.models]
        return views, str(reply.handoff_token)

    async def policy(self, *contexts: str) -> list[PolicyView]:
        """The policy in force for each context (none given: the default, as context "")."""
        req = selfmodel_pb2.GetPolicyRequest(contexts=list(contexts))
        return policies((await self._call(self._stub.GetPolicy, req)).policies)

    async def audit(self, after: str = "", limit: int = 100) -> tuple[list[AuditEntry], str]:
        req = admin_pb2.ListAuditRequest(after=after, limit=limit)
        return _audit_page(await self._call(self._admin.ListAudit, req))

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
