"""SelfModelService, the agents' calls: read the request, call the engine, build the reply.
Nothing else (AdminService is node.adminservice's).

Domain errors become gRPC status codes in one place (``node.errors.map_errors``, which every
servicer uses).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from node import convert, idempotency, listing, metrics, validation
from node.audit import AuditRecord
from node.auth import Principal, TokenBook
from node.engine import Engine
from node.errors import (
    HandoffPending,
    InvalidArgument,
    PermissionDenied,
    SelfModelError,
    Unauthenticated,
    abort,
    aborted,
    internal,
    map_errors,
)
from node.groupreads import RollupReads
from node.handoff import MAX_RETRY_S, MIN_RETRY_S
from node.identity import identify_by_header
from node.quota import ConnectionQuota
from node.resolution import Belief, select
from node.validation import Limits
from selfmodel.errors import LAST_ASK_S
from selfmodel.v1 import selfmodel_pb2, selfmodel_pb2_grpc
from sync.codec import encode_token, subject_to_proto
from sync.observation import Subject

log = logging.getLogger("selfmodel.node")

T = TypeVar("T")


def _positions(request: Any) -> int | None:
    """A read's ``max_positions``: None (unset) lists every supporter and dissenter."""
    return request.max_positions if request.HasField("max_positions") else None


class SelfModelServicer(selfmodel_pb2_grpc.SelfModelServiceServicer):
    def __init__(
        self,
        engine: Engine,
        limits: Limits,
        identify: Callable[[grpc.ServicerContext, Limits], Principal] = identify_by_header,
        *,
        domain: str = "",
        tokens: TokenBook | None = None,
    ) -> None:
        self.engine = engine
        self.limits = limits
        self.identify = identify
        self.domain = domain  # the node's domain, which a principal's domain globs must match
        self.tokens = tokens  # whose reloads open watches check their caller against again
        self.watches = ConnectionQuota(limits.max_watches_per_connection)
        self._replies = convert.SnapshotReplies(engine.snapshots)
        self._rollups = RollupReads(  # of groups
            engine.groups.rollup, engine.groups.holders, limits.max_rollup_bytes
        )

    def _caller_and_subject(
        self, request: Any, context: grpc.ServicerContext
    ) -> tuple[Principal, Subject]:
        """Who calls, and the subject it names, refused unless it is of the caller's tenant.

        Checked before anything is read, so the answer never depends on the subject existing.
        """
        who = self.identify(context, self.limits)
        subject = validation.subject(
            request.subject, "subject", self.limits, request.HasField("subject")
        )
        who.check_tenant(subject.tenant)
        return who, subject

    def _slot(self, request: Any, action: str) -> tuple[str, str]:
        """The (context, key) a request names; the key is required to name one slot."""
        ctx = validation.context_name(request.context, "context", self.limits)
        key = validation.slot_key(request.key, "key", self.limits)
        if not key:
            raise InvalidArgument("key", f"is required: name the slot to {action}")
        return ctx, key

    def _at_position(self, context: grpc.ServicerContext, read: Callable[[], T]) -> T:
        """``read()``; a HANDOFF_POSITION_PENDING answer that leaves the caller's deadline less
        than its retry delay plus LAST_ASK_S is marked ``final`` and counted as a handoff
        timeout: the caller asks no more (federation.retries)."""
        try:
            return read()
        except HandoffPending as exc:
            metrics.HANDOFF_PENDING.inc()
            remaining = context.time_remaining()
            if remaining is not None and remaining <= (exc.retry_after_s or 0.0) + LAST_ASK_S:
                metrics.HANDOFF_TIMEOUTS.inc()
                exc.metadata["final"] = "true"
            raise

    def _request(self, who: Principal, tenant: str, request: Any) -> idempotency.Request | None:
        """The call's idempotency key (None without one), scoped to the caller, with the
        fingerprint of the rest of the request."""
        key = validation.request_key(request.idempotency_key, "idempotency_key")
        if not key:
            return None
        rest = type(request)()
        rest.CopyFrom(request)
        rest.ClearField("idempotency_key")
        fingerprint = idempotency.fingerprint(rest.SerializeToString(deterministic=True))
        window_ms = int(self.limits.idempotency_window_s * 1000)
        return idempotency.Request(who.tenant or tenant, who.agent, key, fingerprint, window_ms)

    def _audit(self, who: Principal, action: str, subject: Subject) -> AuditRecord:
        return AuditRecord(who.agent, who.role, action, subject, actor_tenant=who.tenant or "")

    @map_errors
    def Observe(
        self, request: selfmodel_pb2.ObserveRequest, context: grpc.ServicerContext
    ) -> selfmodel_pb2.ObserveResponse:
        who = self.identify(context, self.limits)
        item = validation.observation(request, "", self.limits)
        who.check_tenant(item.subject.tenant)
        who.check_write(item.context, self.domain)
        keyed = self._request(who, item.subject.tenant, request)
        result = self.engine.observe(who.agent, [item], keyed)
        w = result.written[0]
        return selfmodel_pb2.ObserveResponse(
            observation_id=w.observation_id, key=w.key, handoff_token=result.token
        )

    @map_errors
    def ObserveBatch(
        self, request: selfmodel_pb2.ObserveBatchRequest, context: grpc.ServicerContext
    ) -> selfmodel_pb2.ObserveBatchResponse:
        who = self.identify(context, self.limits)
        if not request.observations:
            raise InvalidArgument("observations", "must hold at least one observation")
        validation.too_long(
            "observations",
            self.limits.max_batch,
            len(request.observations),
            "max_batch",
            "observations",
        )
        items = [
            validation.observation(o, f"observations[{i}]", self.limits)
            for i, o in enumerate(request.observations)
        ]
        for i, o in enumerate(request.observations):
            if o.idempotency_key:
                raise InvalidArgument(
                    f"observations[{i}].idempotency_key",
                    "must be empty: set the batch's idempotency_key instead",
                )
        named = len({item.subject for item in items})
        if named > self.limits.max_batch_subjects:
            raise InvalidArgument(
                "observations",
                f"may name at most {self.limits.max_batch_subjects} subjects, got {named} "
                "(setting max_batch_subjects)",
                metadata={"limit": self.limits.max_batch_subjects, "setting": "max_batch_subjects"},
            )
        for item in items:
            who.check_tenant(item.subject.tenant)
            who.check_write(item.context, self.domain)
        keyed = self._request(who, items[0].subject.tenant, request)
        result = self.engine.observe(who.agent, items, keyed)
        reply = selfmodel_pb2.ObserveBatchResponse(handoff_token=result.token)
        for w in result.written:
            reply.results.add(
                observation_id=w.observation_id, key=w.key, handoff_token=result.token
            )
        return reply

    @map_errors
    def Retract(
        self, request: selfmodel_pb2.RetractRequest, context: grpc.ServicerContext
    ) -> selfmodel_pb2.RetractResponse:
        who, subject = self._caller_and_subject(request, context)
        ctx, key = self._slot(request, "retract")
        source = who.agent
        audit = None
        if request.source and request.source != who.agent:
            who.check_source(request.source)
            source = validation.source(request.source, "source", self.limits)
            audit = self._audit(who, "retract_on_behalf", subject)
        else:
            who.check_write(ctx, self.domain)
        keyed = self._request(who, subject.tenant, request)
        count, token = self.engine.retract(subject, ctx, key, source, audit, keyed)
        return selfmodel_pb2.RetractResponse(retracted=count, handoff_token=token, recorded=True)

    @map_errors
    def GetSelfModel(  # type: ignore[override]
        self, request: selfmodel_pb2.GetSelfModelRequest, context: grpc.ServicerContext
    ) -> bytes:
        """The serialized GetSelfModelResponse (see SerializedReplies, convert.SnapshotReplies)."""
        _, subject = self._caller_and_subject(request, context)
        contexts = validation.contexts(request.contexts, "contexts", self.limits)
        floor = validation.unit_interval(request.min_confidence, "min_confidence")
        positions = validation.handoff_token(request.at_least, "at_least", self.limits)
        limit = _positions(request)
        paged = bool(request.page_size or request.page_token)
        size = listing.page_size(request.page_size, "page_size", self.limits.max_page_size)
        asked = validation.page_token(request.page_token, "page_token", self.limits)
        view = self._at_position(context, lambda: self.engine.model(subject, positions))
        if paged:
            chosen = select(view.beliefs, contexts, floor, request.include_uncertain)
            page, token = listing.beliefs_page(subject, chosen, asked, size)
            want = convert.Filter(contexts, floor, request.include_uncertain, limit)
            msg = self._replies.page(subject, view, page, want, self.engine.node)
            if not asked:  # a group's roll-up comes with the first page
                msg.MergeFromString(self._rollups.part(subject, want))
            msg.next_page_token = token
            return convert.as_snapshot_field(msg.SerializeToString())
        want = convert.Filter(contexts, floor, request.include_uncertain, limit)
        reply = self._replies.reply(subject, view, want, self.engine.node)
        return reply + self._rollups.field(subject, want)

    @map_errors
    def ExplainBelief(
        self, request: selfmodel_pb2.ExplainBeliefRequest, context: grpc.ServicerContext
    ) -> selfmodel_pb2.ExplainBeliefResponse:
        _, subject = self._caller_and_subject(request, context)
        ctx, key = self._slot(request, "explain")
        positions = validation.handoff_token(request.at_least, "at_least", self.limits)
        found, token = self._at_position(
            context, lambda: self.engine.explain(subject, ctx, key, positions)
        )
        policy = self.engine.policies.for_context(ctx)
        reply = convert.explanation(subject, ctx, key, found, token, policy)
        self._rollups.explain(subject, ctx, key, reply)
        return reply

    def WatchSelfModel(  # type: ignore[override]
        self, request: selfmodel_pb2.WatchSelfModelRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """Serialized WatchSelfModelResponses (see SerializedReplies): the model, then each change.

        With ``at_least``, the first model waits until the node has merged the token's
        positions (a watch holds its thread while open anyway), looking again as the subject
        changes or after the retry delay a read would be told, doubled each time up to
        MAX_RETRY_S; a token a read refuses ends the stream before any model.

        A watcher that falls behind skips to the latest model: a stream holds at most the one
        snapshot being sent, and every watcher of a subject shares one resolution and one
        encoding of each change (Engine.model, convert.SnapshotReplies). When the token file
        is reloaded the stream checks its caller's token again, and ends UNAUTHENTICATED
        (revoked or removed) or PERMISSION_DENIED (narrowed to another tenant).
        """
        try:
            _, subject = self._caller_and_subject(request, context)
            contexts = validation.contexts(request.contexts, "contexts", self.limits)
            floor = validation.unit_interval(request.min_confidence, "min_confidence")
            want = convert.Filter(contexts, floor, request.include_uncertain, _positions(request))
            positions = validation.handoff_token(request.at_least, "at_least", self.limits)
            release = self.watches.acquire(context.peer())
            try:
                sub = self.engine.subscribe(subject)
            except SelfModelError:
                release()
                raise
        except SelfModelError as exc:
            abort(context, exc)

        def on_end() -> None:
            self.engine.unsubscribe(sub)
            release()

        context.add_callback(on_end)
        tokens_seen = self.tokens.version if self.tokens is not None else 0
        node = self.engine.node
        try:
            last: tuple[list[Belief], bytes] | None = None
            waited_s = 0.0  # doubles, from the delay a read is told, while the first model waits
            while context.is_active() and not sub.closed:
                sub.changed.clear()
                if self.tokens is not None and self.tokens.version != tokens_seen:
                    tokens_seen = self.tokens.version
                    self._still_allowed(request, context)
                try:
                    view = self.engine.model(subject, positions)
                except HandoffPending as exc:  # the first model waits for the token's positions
                    waited_s = min(max(2 * waited_s, exc.retry_after_s or MIN_RETRY_S), MAX_RETRY_S)
                    sub.changed.wait(waited_s)
                    continue
                positions = None
                beliefs, whole = self._replies.shared(subject, view, want, node)
                rollup = self._rollups.field(subject, want)  # a group's: fires as it moves
                if (beliefs, rollup) != last:
                    last = (beliefs, rollup)
                    yield whole + rollup
                sub.changed.wait(1.0)
        except SelfModelError as exc:
            abort(context, exc)
        except Exception:
            if aborted(context):
                raise
            # A failure inside the stream must end it with a status, never kill the node.
            log.exception("WatchSelfModel of %s failed", subject)
            abort(context, internal("WatchSelfModel"))
        finally:
            on_end()

    def _still_allowed(self, request: Any, context: grpc.ServicerContext) -> None:
        """Checks an open watch's caller again (after a token file reload); counts an end."""
        try:
            self._caller_and_subject(request, context)
        except (Unauthenticated, PermissionDenied) as exc:
            metrics.WATCHES_ENDED.labels("revoked").inc()
            raise type(exc)(
                f"watch ended: {exc}", reason=exc.reason, metadata=exc.metadata
            ) from None

    @map_errors
    def ForgetSubject(
        self, request: selfmodel_pb2.ForgetSubjectRequest, context: grpc.ServicerContext
    ) -> selfmodel_pb2.ForgetSubjectResponse:
        who, subject = self._caller_and_subject(request, context)
        who.check_operator("forget a subject")
        keyed = self._request(who, subject.tenant, request)
        token = self.engine.forget(subject, self._audit(who, "forget", subject), keyed)
        return selfmodel_pb2.ForgetSubjectResponse(handoff_token=token)

    @map_errors
    def ListSubjects(
        self, request: selfmodel_pb2.ListSubjectsRequest, context: grpc.ServicerContext
    ) -> selfmodel_pb2.ListSubjectsResponse:
        who = self.identify(context, self.limits)
        tenant = request.tenant or who.tenant
        if not tenant:
            raise InvalidArgument("tenant", "is required on a node without tokens")
        validation.identifier(tenant, "tenant", self.limits.max_id)
        who.check_tenant(tenant)
        kind = validation.subject_kind(request.kind, "kind", required=False)
        size = listing.page_size(request.page_size, "page_size", self.limits.max_page_size)
        asked = validation.page_token(request.page_token, "page_token", self.limits)
        store = self.engine.store
        subjects, token = listing.subjects_page(
            store, store.holds_observations, tenant, kind, asked, size
        )
        reply = selfmodel_pb2.ListSubjectsResponse(next_page_token=token)
        for subject in subjects:
            subject_to_proto(subject, reply.subjects.add())
        return reply

    @map_errors
    def ListContexts(
        self, request: selfmodel_pb2.ListContextsRequest, context: grpc.ServicerContext
    ) -> selfmodel_pb2.ListContextsResponse:
        _, subject = self._caller_and_subject(request, context)
        positions = validation.handoff_token(request.at_least, "at_least", self.limits)
        view = self._at_position(context, lambda: self.engine.model(subject, positions))
        reply = selfmodel_pb2.ListContextsResponse(handoff_token=view.token)
        for name in listing.contexts(view.state):
            policy = self.engine.policies.for_context(name)
            convert.policy_to_proto(name, policy, reply.contexts.add())
        return reply

    @map_errors
    def BatchGetSelfModels(
        self, request: selfmodel_pb2.BatchGetSelfModelsRequest, context: grpc.ServicerContext
    ) -> selfmodel_pb2.BatchGetSelfModelsResponse:
        who = self.identify(context, self.limits)
        most = self.limits.max_batch_read
        if not request.subjects or len(request.subjects) > most:
            raise InvalidArgument(
                "subjects",
                f"must name 1 to {most} subjects (the node's max_batch_read), "
                f"got {len(request.subjects)}",
            )
        subjects = listing.distinct(
            validation.subject(s, f"subjects[{i}]", self.limits)
            for i, s in enumerate(request.subjects)
        )
        for subject in subjects:
            who.check_tenant(subject.tenant)
        contexts = validation.contexts(request.contexts, "contexts", self.limits)
        floor = validation.unit_interval(request.min_confidence, "min_confidence")
        positions = validation.handoff_token(request.at_least, "at_least", self.limits) or {}
        wanted_of = {s: self.engine.positions_of(s, positions) for s in subjects}
        if positions and not any(wanted_of.values()):
            raise InvalidArgument(
                "at_least",
                "names none of the subjects (nor a member of a team or organization among "
                "them): pass a token of a write or read of one",
            )
        reply = selfmodel_pb2.BatchGetSelfModelsResponse()
        read = {}
        want = convert.Filter(contexts, floor, request.include_uncertain, _positions(request))
        for subject in subjects:
            wanted = wanted_of[subject]
            view = self._at_position(context, functools.partial(self.engine.model, subject, wanted))
            reply.models.add().MergeFromString(
                self._replies.snapshot(subject, view, want, self.engine.node)
            )
            read[subject] = view.state.context
        for msg, part in zip(reply.models, self._rollups.parts(subjects, want), strict=True):
            msg.MergeFromString(part)  # the batch's roll-ups share one max_rollup_bytes
        reply.handoff_token = encode_token(read)
        return reply

    @map_errors
    def GetPolicy(
        self, request: selfmodel_pb2.GetPolicyRequest, context: grpc.ServicerContext
    ) -> selfmodel_pb2.GetPolicyResponse:
        self.identify(context, self.limits)
        validation.contexts(request.contexts, "contexts", self.limits)
        reply = selfmodel_pb2.GetPolicyResponse()
        policies = self.engine.policies
        if not request.contexts:
            convert.policy_to_proto("", policies.default, reply.policies.add())
        for name in request.contexts:
            convert.policy_to_proto(name, policies.for_context(name), reply.policies.add())
        return reply


__all__ = ["SelfModelServicer"]
