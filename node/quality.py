"""Model quality on /metrics, per context: contradiction, churn, uncertainty and staleness of the
beliefs this node keeps resolved.

A snapshot (node.snapshots) carries its tally per context (``Tally``: beliefs, those with a
dissenter, those uncertain, the sum of their ``changed_ms``), built from the snapshot it was
advanced from by the slots that changed, and the winner changes per context since that snapshot.
``Quality`` adds the tally of each snapshot kept and takes away that of each one replaced or
dropped, and counts the winner changes of each snapshot that replaces its predecessor; the node
advances a kept snapshot on every change of its subject (node.engine), so the figures follow
every change without a scan. They cover the models kept resolved (the snapshot cache, within
``snapshot_cache_mb``): the subjects in use.

Exposed at scrape time (``QualityCollector``) as gauges per context, the staleness computed then
(the mean age of the newest observation behind each belief). Contexts are labels, never users
or agents; the node's own contexts (``_``-named) are left out, and past ``MAX_CONTEXTS``
contexts the rest are counted under ``_other``.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from node.resolution import Belief, normalize_statement

# Contexts given a label of their own; the rest share OTHER.
MAX_CONTEXTS = 256
OTHER = "_other"

WINNER_CHANGES = Counter(
    "selfmodel_belief_winner_changes_total",
    "Winner changes of the beliefs kept resolved, per context (belief churn: rate over 1h "
    "x 3600 is winner changes per hour).",
    ["context"],
)


class Tally(NamedTuple):
    beliefs: int = 0
    dissent: int = 0  # beliefs with at least one dissenter: the slot is contradicted
    uncertain: int = 0
    changed_ms: int = 0  # the sum of their changed_ms (the newest observation's time)

    def plus(self, b: Belief, sign: int = 1) -> Tally:
        return Tally(
            self.beliefs + sign,
            self.dissent + sign * bool(b.dissenters),
            self.uncertain + sign * b.uncertain,
            self.changed_ms + sign * b.changed_ms,
        )

    def add(self, other: Tally, sign: int = 1) -> Tally:
        return Tally(*(a + sign * b for a, b in zip(self, other, strict=True)))


Tallies = Mapping[str, Tally]
NO_TALLIES: Tallies = {}


def tracked(context: str) -> bool:
    return not context.startswith("_")


def moved(
    tallies: Tallies, changes: Iterable[tuple[Belief | None, Belief | None]]
) -> tuple[dict[str, Tally], dict[str, int]]:
    """``tallies`` after each slot's belief went from the first to the second of a pair, and the
    winner changes among them per context (a belief whose statement changed)."""
    out = dict(tallies)
    flips: dict[str, int] = {}
    for old, new in changes:
        if old is not None and tracked(old.context):
            out[old.context] = out.get(old.context, Tally()).plus(old, -1)
            if not out[old.context].beliefs:
                del out[old.context]
        if new is not None and tracked(new.context):
            out[new.context] = out.get(new.context, Tally()).plus(new)
        if (
            old is not None
            and new is not None
            and tracked(new.context)
            and normalize_statement(old.statement) != normalize_statement(new.statement)
        ):
            flips[new.context] = flips.get(new.context, 0) + 1
    return out, flips


class Quality:
    """The tallies of the snapshots kept, per context. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_context: dict[str, Tally] = {}
        self._labels: dict[str, str] = {}
        _LIVE.add(self)

    def replaced(self, old: Tallies, new: Tallies, flips: Mapping[str, int] | None = None) -> None:
        """A kept snapshot of tallies ``old`` (NO_TALLIES: none) replaced by one of ``new``,
        with ``flips`` winner changes between them."""
        with self._lock:
            for context, tally in old.items():
                self._move(context, tally, -1)
            for context, tally in new.items():
                self._move(context, tally, 1)
            labelled = [(self._label(c), n) for c, n in (flips or {}).items()]
        for label, count in labelled:
            WINNER_CHANGES.labels(label).inc(count)

    def _move(self, context: str, tally: Tally, sign: int) -> None:
        label = self._label(context)
        now = self._by_context.get(label, Tally()).add(tally, sign)
        if now.beliefs:
            self._by_context[label] = now
        else:
            self._by_context.pop(label, None)

    def _label(self, context: str) -> str:
        """A context's label, the same for as long as the node runs (so what was added under
        it is taken away under it): its own for the first MAX_CONTEXTS contexts seen."""
        label = self._labels.get(context)
        if label is None:
            label = context if len(self._labels) < MAX_CONTEXTS else OTHER
            if label != OTHER:
                self._labels[context] = label
        return label

    def tallies(self) -> dict[str, Tally]:
        with self._lock:
            return dict(self._by_context)


_LIVE: weakref.WeakSet[Quality] = weakref.WeakSet()


class QualityCollector(Collector):
    """The gauges of every live ``Quality`` (one per node), computed at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        total: dict[str, Tally] = {}
        for quality in list(_LIVE):
            for context, tally in quality.tallies().items():
                total[context] = total.get(context, Tally()).add(tally)
        now_ms = time.time_ns() // 1_000_000
        beliefs = GaugeMetricFamily(
            "selfmodel_beliefs_kept",
            "Beliefs of the models kept resolved, per context.",
            labels=["context"],
        )
        dissent = GaugeMetricFamily(
            "selfmodel_belief_contradiction_ratio",
            "Share of the beliefs kept resolved whose slot has a dissenter, per context.",
            labels=["context"],
        )
        uncertain = GaugeMetricFamily(
            "selfmodel_belief_uncertain_ratio",
            "Share of the beliefs kept resolved that are uncertain, per context.",
            labels=["context"],
        )
        stale = GaugeMetricFamily(
            "selfmodel_belief_staleness_seconds",
            "Mean age of the newest observation behind each belief kept resolved, per context.",
            labels=["context"],
        )
        for context, t in sorted(total.items()):
            beliefs.add_metric([context], t.beliefs)
            dissent.add_metric([context], t.dissent / t.beliefs)
            uncertain.add_metric([context], t.uncertain / t.beliefs)
            stale.add_metric([context], max(0.0, (now_ms - t.changed_ms / t.beliefs) / 1000.0))
        yield from (beliefs, dissent, uncertain, stale)


REGISTRY.register(QualityCollector())

__all__ = [
    "MAX_CONTEXTS",
    "NO_TALLIES",
    "OTHER",
    "WINNER_CHANGES",
    "Quality",
    "QualityCollector",
    "Tallies",
    "Tally",
    "moved",
]
