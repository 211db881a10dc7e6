"""Domain values to their protobuf replies."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import NamedTuple

from node.audit import AuditEntry
from node.engine import ModelView
from node.policy import ContextPolicy
from node.resolution import Belief, Explanation, Position, select
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
    subject_to_proto(subject, msg.subject)
    msg.resolved_at.FromMilliseconds(resolved_ms)
    for b in beliefs:
        belief_to_proto(b, msg.beliefs.add())
    return msg


class _Reply(NamedTuple):
    view: ModelView  # the view it was built from
    beliefs: list[Belief]  # the view's beliefs the filter selects
    body: bytes  # the reply without resolved_at
    whole: bytes | None  # the body with the view's resolved_at, once a watch asked for it


class SnapshotReplies:
    """GetSelfModel replies, serialized once per model view and filter, then shared.

    Building and serializing the protobuf of a model (50 beliefs: about 12 KB) costs several
    times what the rest of a read does. The engine hands out the same ``beliefs`` tuple while
    the subject's state stays the same (resolution never depends on the read instant), so the
    serialized beliefs, subject, token and node are kept per (subject, filter) and reused while
    that tuple is; only ``resolved_at`` is encoded per call and appended. Protobuf parses
    concatenated encodings as one message, and ``resolved_at`` is absent from the cached part,
    so the reply reads exactly as one built from scratch. Watches share the whole reply too
    (``shared``).
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[Subject, frozenset[str], float, bool], _Reply] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def reply(
        self,
        subject: Subject,
        view: ModelView,
        contexts: frozenset[str],
        min_confidence: float,
        include_uncertain: bool,
        node: str,
    ) -> bytes:
        entry = self._entry(subject, view, contexts, min_confidence, include_uncertain, node)
        return entry.body + self.stamp(view)

    def shared(
        self,
        subject: Subject,
        view: ModelView,
        contexts: frozenset[str],
        min_confidence: float,
        include_uncertain: bool,
        node: str,
    ) -> tuple[list[Belief], bytes]:
        """The beliefs the filter selects and the reply, with the ``resolved_at`` of the first
        view it was built for: the same objects for every caller of one view and filter, so the
        watches of a subject hold one copy of a snapshot between them, not one each."""
        key = (subject, contexts, min_confidence, include_uncertain)
        entry = self._entry(subject, view, contexts, min_confidence, include_uncertain, node)
        whole = entry.whole
        if whole is None:
            whole = entry.body + self.stamp(entry.view)
            with self._lock:
                if self._entries.get(key) is entry:
                    self._entries[key] = entry._replace(whole=whole)
        return entry.beliefs, whole

    def _entry(
        self,
        subject: Subject,
        view: ModelView,
        contexts: frozenset[str],
        min_confidence: float,
        include_uncertain: bool,
        node: str,
    ) -> _Reply:
        key = (subject, contexts, min_confidence, include_uncertain)
        hit = self._entries.get(key)
        if hit is not None and hit.view.beliefs is view.beliefs and hit.view.token == view.token:
            return hit
        beliefs = select(view.beliefs, contexts, min_confidence, include_uncertain)
        msg = snapshot(subject, beliefs, view.token, view.resolved_ms, node)
        msg.ClearField("resolved_at")
        entry = _Reply(view, beliefs, msg.SerializeToString(), None)
        with self._lock:
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest entry
            self._entries[key] = entry
        return entry

    @staticmethod
    def stamp(view: ModelView) -> bytes:
        """The ``resolved_at`` field of a reply, appended to its body."""
        stamp = model_pb2.SelfModelSnapshot()
        stamp.resolved_at.FromMilliseconds(view.resolved_ms)
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
