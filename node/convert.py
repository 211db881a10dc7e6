"""Domain values to their protobuf replies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from node.audit import AuditEntry
from node.policy import DAY_S, ContextPolicy, PolicyBook
from node.reads import ModelView
from node.reliability import Learned
from node.resolution import Belief, Explanation, LeftOut, Support, left_out, select
from node.snapshots import Snapshots
from selfmodel.admin.v1 import admin_pb2
from selfmodel.v1 import model_pb2, selfmodel_pb2
from sync.codec import POLICIES, EnumWords, evidence_to_proto, subject_to_proto
from sync.hlc import physical_ms
from sync.observation import Subject

AUDIT_ACTIONS = EnumWords(admin_pb2.AuditAction)
NONE_LEFT_OUT = LeftOut(0, 0)


def _support(p: Support, msg: model_pb2.Support) -> None:
    msg.source = p.source
    msg.statement = p.statement
    msg.confidence = p.confidence
    msg.observed_at.FromMilliseconds(p.observed_ms)
    msg.weight = p.weight
    msg.reliability = p.reliability
    msg.recency = p.recency
    msg.evidence_factor = p.evidence_factor
    msg.counted = p.counted
    msg.learned_weight = p.learned


def belief_to_proto(b: Belief, msg: model_pb2.Belief, max_positions: int | None = None) -> None:
    """``b`` into ``msg``, with at most ``max_positions`` supporters and as many dissenters
    (None: all), their counts always."""
    msg.context = b.context
    msg.key = b.key
    msg.statement = b.statement
    msg.confidence = b.confidence
    msg.uncertain = b.uncertain
    msg.policy = POLICIES.number(b.policy)  # type: ignore[assignment]
    msg.changed_at.FromMilliseconds(b.changed_ms)
    msg.supporter_count = len(b.supporters)
    msg.dissenter_count = len(b.dissenters)
    for p in b.supporters[:max_positions]:
        _support(p, msg.supporters.add())
    for p in b.dissenters[:max_positions]:
        _support(p, msg.dissenters.add())


def snapshot(
    subject: Subject,
    beliefs: Iterable[Belief],
    token: str,
    resolved_ms: int,
    node: str,
    max_positions: int | None = None,
    omitted: LeftOut = NONE_LEFT_OUT,
    minimums: Mapping[str, float] | None = None,
) -> model_pb2.SelfModelSnapshot:
    msg = model_pb2.SelfModelSnapshot(
        handoff_token=token,
        node=node,
        uncertain_omitted=omitted.uncertain,
        below_min_confidence_omitted=omitted.below_min_confidence,
    )
    subject_to_proto(subject, msg.subject)
    msg.resolved_at.FromMilliseconds(resolved_ms)
    for b in beliefs:
        belief_to_proto(b, msg.beliefs.add(), max_positions)
    for context, minimum in sorted((minimums or {}).items()):
        msg.context_min_confidence[context] = minimum
    return msg


def context_minimums(
    beliefs: Iterable[Belief], contexts: frozenset[str], book: PolicyBook
) -> dict[str, float]:
    """The minimum confidence of each context read: those named, else those of the beliefs."""
    read = contexts or {b.context for b in beliefs}
    return {c: book.for_context(c).min_confidence for c in read}


def as_snapshot_field(snapshot: bytes) -> bytes:
    """A serialized SelfModelSnapshot as the serialized GetSelfModelResponse (and
    WatchSelfModelResponse) holding it: both carry it as field 1, length-delimited."""
    header = bytearray(b"\x0a")  # field 1, wire type 2
    n = len(snapshot)
    while n > 0x7F:
        header.append(n & 0x7F | 0x80)
        n >>= 7
    header.append(n)
    return bytes(header) + snapshot


class Filter(NamedTuple):
    """What a read asked for (GetSelfModelRequest, WatchSelfModelRequest)."""

    contexts: frozenset[str] = frozenset()
    min_confidence: float = 0.0
    include_uncertain: bool = False
    max_positions: int | None = None  # None: every supporter and dissenter


class SnapshotReplies:
    """GetSelfModel and WatchSelfModel replies, serialized once per snapshot and filter.

    Building and serializing the protobuf of a model (50 beliefs: about 12 KB) costs several
    times what the rest of a read does. A snapshot (node.snapshots) stays the same while its
    subject does, and nothing in it depends on the read instant, so the serialized beliefs,
    subject, token and node are kept with it, per filter (``Snapshots.add_reply``: bounded and
    counted with the snapshots), and dropped with it at the subject's next change; only
    ``resolved_at`` is encoded per call and appended. Protobuf parses concatenated encodings as
    one message, and ``resolved_at`` is absent from the kept part, so the reply reads exactly as
    one built from scratch. Watches share the whole reply too (``shared``). Replies are
    GetSelfModelResponse (and WatchSelfModelResponse: the same encoding) holding the snapshot.
    """

    def __init__(self, snapshots: Snapshots) -> None:
        self.snapshots = snapshots

    def reply(self, subject: Subject, view: ModelView, want: Filter, node: str) -> bytes:
        """The serialized GetSelfModelResponse."""
        return as_snapshot_field(self.snapshot(subject, view, want, node))

    def snapshot(self, subject: Subject, view: ModelView, want: Filter, node: str) -> bytes:
        """The serialized SelfModelSnapshot alone (as BatchGetSelfModels holds each)."""
        return self._body(subject, view, want, node) + self.stamp(view.resolved_ms)

    def page(
        self, subject: Subject, view: ModelView, beliefs: list[Belief], want: Filter, node: str
    ) -> model_pb2.SelfModelSnapshot:
        """A snapshot of some of the beliefs the filter selects (a page), saying as a whole
        reply does what the read left out and each context's minimum."""
        return snapshot(
            subject, beliefs, view.token, view.resolved_ms, node, want.max_positions,
            *self._left_out(view, want),
        )  # fmt: skip

    def _left_out(self, view: ModelView, want: Filter) -> tuple[LeftOut, dict[str, float]]:
        omitted = left_out(view.beliefs, want.contexts, want.min_confidence, want.include_uncertain)
        # Each context's minimum as the snapshot was resolved under (node.governor may move it).
        return omitted, context_minimums(view.beliefs, want.contexts, view.snapshot.policies)

    def shared(
        self, subject: Subject, view: ModelView, want: Filter, node: str
    ) -> tuple[list[Belief], bytes]:
        """The beliefs the filter selects and the reply, with the ``resolved_at`` of the first
        view it was built for: the same bytes for every caller of one snapshot and filter, so
        the watches of a subject hold one copy of a snapshot between them, not one each."""
        beliefs = select(view.beliefs, want.contexts, want.min_confidence, want.include_uncertain)
        key = ("whole", want)
        whole = view.snapshot.replies.get(key)
        if whole is None:
            whole = as_snapshot_field(
                self._body(subject, view, want, node) + self.stamp(view.resolved_ms)
            )
            self.snapshots.add_reply(view.snapshot, key, whole)
        return beliefs, whole

    def _body(self, subject: Subject, view: ModelView, want: Filter, node: str) -> bytes:
        found = view.snapshot.replies.get(want)
        if found is not None:
            return found
        beliefs = select(view.beliefs, want.contexts, want.min_confidence, want.include_uncertain)
        msg = snapshot(
            subject, beliefs, view.token, 0, node, want.max_positions, *self._left_out(view, want)
        )
        msg.ClearField("resolved_at")
        body = msg.SerializeToString()
        self.snapshots.add_reply(view.snapshot, want, body)
        return body

    @staticmethod
    def stamp(resolved_ms: int) -> bytes:
        """The ``resolved_at`` field of a reply, appended to its body."""
        stamp = model_pb2.SelfModelSnapshot()
        stamp.resolved_at.FromMilliseconds(resolved_ms)
        return stamp.SerializeToString()


def explanation(
    subject: Subject,
    context: str,
    key: str,
    found: Explanation | None,
    token: str,
    policy: ContextPolicy | None = None,
) -> selfmodel_pb2.ExplainBeliefResponse:
    """``policy``: the context's, whose minimum, evidence discount and half-life it shows."""
    msg = selfmodel_pb2.ExplainBeliefResponse(context=context, key=key, handoff_token=token)
    subject_to_proto(subject, msg.subject)
    if policy is not None:
        msg.min_confidence = policy.min_confidence
        msg.evidence_discount = policy.evidence_discount
        if policy.half_life_s is not None:
            msg.half_life_days = policy.half_life_s / DAY_S
    if found is None:
        return msg
    msg.policy = POLICIES.number(found.belief.policy)  # type: ignore[assignment]
    msg.reason = found.reason
    belief_to_proto(found.belief, msg.belief)
    for w in found.observations:
        o = w.observation
        item = msg.observations.add(
            observation_id=str(o.dot),
            source=o.source,
            statement=o.statement,
            confidence=o.confidence,
            origin_node=o.origin,
            weight=w.weight,
            reliability=w.reliability,
            recency=w.recency,
            evidence_factor=w.evidence_factor,
            below_minimum=w.below_minimum,
            superseded=w.superseded,
            independent=w.independent,
            dependence=w.dependence,
            learned_weight=w.learned,
        )
        item.observed_at.FromMilliseconds(physical_ms(o.hlc))
        for ev in o.evidence:
            evidence_to_proto(ev, item.evidence.add())
    for c in found.candidates:
        cand = msg.candidates.add(statement=c.statement, support=c.support, sources=c.sources)
        cand.newest.FromMilliseconds(physical_ms(c.newest_hlc))
    return msg


def policy_to_proto(context: str, policy: ContextPolicy, msg: selfmodel_pb2.ContextPolicy) -> None:
    """Sets ``msg`` to the policy in force for ``context`` ("" for the default)."""
    msg.context = context
    msg.policy = POLICIES.number(policy.policy)  # type: ignore[assignment]
    msg.min_confidence = policy.min_confidence
    msg.half_life_seconds = policy.half_life_s or 0.0
    msg.evidence_discount = policy.evidence_discount
    msg.max_observations = policy.max_observations


def source_weights(
    enabled: bool, weights: Iterable[tuple[str, Learned]]
) -> admin_pb2.ListSourceWeightsResponse:
    """``weights``: each with its tenant."""
    msg = admin_pb2.ListSourceWeightsResponse(enabled=enabled)
    for tenant, w in weights:
        msg.weights.add(
            tenant=tenant,
            source=w.source,
            context=w.context,
            agreed=w.agreed,
            judged=w.judged,
            weight=w.weight,
        )
    return msg


def audit_page(entries: Iterable[AuditEntry], cursor: str) -> admin_pb2.ListAuditResponse:
    msg = admin_pb2.ListAuditResponse(next_cursor=cursor)
    for e in entries:
        r = e.record
        item = msg.entries.add(
            cursor=e.cursor,
            node=e.node,
            actor=r.actor,
            actor_role=r.role,
            actor_tenant=r.actor_tenant,
            action=AUDIT_ACTIONS.number(r.action),  # type: ignore[arg-type]
            detail=r.detail,
        )
        item.time.FromMilliseconds(e.time_ms)
        subject_to_proto(r.subject, item.subject)
    return msg
