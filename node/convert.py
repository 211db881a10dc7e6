"""Domain values to their protobuf replies."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from node.audit import AuditEntry
from node.policy import ContextPolicy
from node.reads import ModelView
from node.resolution import Belief, Explanation, Position, select
from node.snapshots import Snapshots
from selfmodel.v1 import admin_pb2, model_pb2, selfmodel_pb2
from sync.codec import evidence_to_proto, subject_to_proto
from sync.hlc import physical_ms
from sync.observation import Subject


def _position(p: Position, msg: model_pb2.Support) -> None:
    msg.source = p.source
    msg.statement = p.statement
    msg.confidence = p.confidence
    msg.observed_at.FromMilliseconds(p.observed_ms)


def belief_to_proto(b: Belief, msg: model_pb2.Belief, max_positions: int | None = None) -> None:
    """``b`` into ``msg``, with at most ``max_positions`` supporters and as many dissenters
    (None: all), their counts always."""
    msg.context = b.context
    msg.key = b.key
    msg.statement = b.statement
    msg.confidence = b.confidence
    msg.uncertain = b.uncertain
    msg.policy = b.policy
    msg.changed_at.FromMilliseconds(b.changed_ms)
    msg.supporter_count = len(b.supporters)
    msg.dissenter_count = len(b.dissenters)
    for p in b.supporters[:max_positions]:
        _position(p, msg.supporters.add())
    for p in b.dissenters[:max_positions]:
        _position(p, msg.dissenters.add())


def snapshot(
    subject: Subject,
    beliefs: Iterable[Belief],
    token: str,
    resolved_ms: int,
    node: str,
    max_positions: int | None = None,
) -> model_pb2.SelfModelSnapshot:
    msg = model_pb2.SelfModelSnapshot(handoff_token=token, node=node)
    subject_to_proto(subject, msg.subject)
    msg.resolved_at.FromMilliseconds(resolved_ms)
    for b in beliefs:
        belief_to_proto(b, msg.beliefs.add(), max_positions)
    return msg


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
    one built from scratch. Watches share the whole reply too (``shared``).
    """

    def __init__(self, snapshots: Snapshots) -> None:
        self.snapshots = snapshots

    def reply(self, subject: Subject, view: ModelView, want: Filter, node: str) -> bytes:
        return self._body(subject, view, want, node) + self.stamp(view.resolved_ms)

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
            whole = self._body(subject, view, want, node) + self.stamp(view.resolved_ms)
            self.snapshots.add_reply(view.snapshot, key, whole)
        return beliefs, whole

    def _body(self, subject: Subject, view: ModelView, want: Filter, node: str) -> bytes:
        found = view.snapshot.replies.get(want)
        if found is not None:
            return found
        beliefs = select(view.beliefs, want.contexts, want.min_confidence, want.include_uncertain)
        msg = snapshot(subject, beliefs, view.token, 0, node, want.max_positions)
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
    subject: Subject, context: str, key: str, found: Explanation | None, token: str
) -> selfmodel_pb2.Explanation:
    msg = selfmodel_pb2.Explanation(context=context, key=key, handoff_token=token)
    subject_to_proto(subject, msg.subject)
    if found is None:
        return msg
    msg.policy = found.belief.policy
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
    msg.policy = policy.policy
    msg.min_confidence = policy.min_confidence
    msg.half_life_seconds = policy.half_life_s or 0.0
    msg.evidence_discount = policy.evidence_discount
    msg.max_observations = policy.max_observations


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
            action=r.action,
            detail=r.detail,
        )
        item.time.FromMilliseconds(e.time_ms)
        subject_to_proto(r.subject, item.subject)
    return msg
