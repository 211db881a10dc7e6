"""Client-side values of the reading calls: pages of subjects, batches of models, policies."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from selfmodel.v1 import selfmodel_pb2
from sync.codec import POLICIES
from sync.observation import Subject, SubjectKind


def new_idempotency_key() -> str:
    """A fresh key for one logical write, reused by every retry of it (node.idempotency)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class SubjectsPage:
    """One page of ListSubjects; pass ``next_page_token`` for the next ("" after the last)."""

    subjects: tuple[Subject, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class PolicyView:
    """The resolution settings in force for a context ("" names the default)."""

    context: str
    policy: str
    min_confidence: float
    half_life_s: float | None  # None: no decay
    evidence_discount: float
    max_observations: int


def subjects_page(reply: selfmodel_pb2.ListSubjectsResponse) -> SubjectsPage:
    subjects = tuple(Subject(s.tenant, SubjectKind(s.kind), s.id) for s in reply.subjects)
    return SubjectsPage(subjects, reply.next_page_token)


def policies(items: Iterable[selfmodel_pb2.ContextPolicy]) -> list[PolicyView]:
    """From the repeated ContextPolicy of GetPolicy or ListContexts."""
    return [
        PolicyView(
            p.context,
            POLICIES.of(p.policy),
            p.min_confidence,
            p.half_life_seconds or None,
            p.evidence_discount,
            p.max_observations,
        )
        for p in items
    ]


__all__ = ["PolicyView", "SubjectsPage", "new_idempotency_key", "policies", "subjects_page"]
