"""Domain values to their protobuf replies."""

from __future__ import annotations

from collections.abc import Iterable

from node.audit import AuditEntry
from node.resolution import Belief, Explanation, Position
from selfmodel.v1 import admin_pb2, model_pb2, selfmodel_pb2
from sync.codec import evidence_to_proto, subject_to_proto
from sync.hlc import physical_ms
from sync.observation import Subject


def _position(p: Position, msg: model_pb2.Support) -> None:
    msg.source = p.source
    msg.statement = p.statement
    msg.confidence = p.confidence
    msg.observed_at.FromMilliseconds(p.observed_ms)


def belief_to_proto(b: Belief, msg: model_pb2.Belief) -> None:
    msg.context = b.context
    msg.key = b.key
    msg.statement = b.statement
    msg.confidence = b.confidence
    msg.uncertain = b.uncertain
    msg.policy = b.policy
    msg.changed_at.FromMilliseconds(b.changed_ms)
    for p in b.supporters:
        _position(p, msg.supporters.add())
    for p in b.dissenters:
        _position(p, msg.dissenters.add())


def snapshot(
    subject: Subject, beliefs: Iterable[Belief], token: str, resolved_ms: int, node: str
) -> model_pb2.SelfModelSnapshot:
    msg = model_pb2.SelfModelSnapshot(handoff_token=token, node=node)
    msg.subject.CopyFrom(subject_to_proto(subject))
    msg.resolved_at.FromMilliseconds(resolved_ms)
    for b in beliefs:
        belief_to_proto(b, msg.beliefs.add())
    return msg


def explanation(
    subject: Subject, context: str, key: str, found: Explanation | None, token: str
) -> selfmodel_pb2.Explanation:
    msg = selfmodel_pb2.Explanation(context=context, key=key, handoff_token=token)
    msg.subject.CopyFrom(subject_to_proto(subject))
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
        )
        item.observed_at.FromMilliseconds(physical_ms(o.hlc))
        for ev in o.evidence:
            evidence_to_proto(ev, item.evidence.add())
    for c in found.candidates:
        cand = msg.candidates.add(statement=c.statement, support=c.support, sources=c.sources)
        cand.newest.FromMilliseconds(physical_ms(c.newest_hlc))
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
            action=r.action,
            detail=r.detail,
        )
        item.time.FromMilliseconds(e.time_ms)
        item.subject.CopyFrom(subject_to_proto(r.subject))
    return msg
