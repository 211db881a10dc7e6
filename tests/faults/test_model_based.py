"""The real three-node cluster against a sequential reference model of docs/semantics.md.

Random observes, retracts and forgets go to random nodes while the cluster is partitioned and
healed at random; after the last heal every node must show what the model says. The model is
written from the docs alone: events in one total order (each operation starts in a later
millisecond than the previous one was acknowledged, and all nodes share this machine's clock, so
hybrid timestamps order them as they were issued), one position per (slot, source), retract and
forget withdrawing what came before them wherever written, and the weighted resolution.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import pytest

from federation.client import user
from sync.hlc import wall_ms
from tests.nodes import NEVER_FADE

pytestmark = pytest.mark.faults

NODES = ("sales", "support", "billing")
SUBJECTS = ("m-1", "m-2")
SOURCES = ("agent_a", "agent_b", "agent_c")
KEYS = ("size", "plan")
STATEMENTS = ("one", "two", "three")
CONFIDENCES = (0.6, 0.8, 0.95)
CTX = "facts"
NO_EVIDENCE = 0.9  # the default evidence discount: 1 - 0.1 x 0.5^0


# --- the reference model -----------------------------------------------------------------------


@dataclass
class Said:
    seq: int
    source: str
    key: str
    statement: str
    confidence: float


@dataclass
class Model:
    said: dict[str, list[Said]] = field(default_factory=dict)
    seq: int = 0

    def observe(self, subject: str, source: str, key: str, statement: str, conf: float) -> None:
        self.seq += 1
        self.said.setdefault(subject, []).append(Said(self.seq, source, key, statement, conf))

    def retract(self, subject: str, source: str, key: str) -> None:
        self.seq += 1
        kept = [s for s in self.said.get(subject, []) if (s.source, s.key) != (source, key)]
        self.said[subject] = kept

    def forget(self, subject: str) -> None:
        self.seq += 1
        self.said[subject] = []

    def beliefs(self, subject: str) -> dict[str, tuple[str, frozenset[tuple[str, str]]]]:
        """key -> (winning statement, {(source, statement)} of every position)."""
        out = {}
        for key in KEYS:
            newest: dict[str, Said] = {}
            for s in self.said.get(subject, []):
                if s.key == key:
                    newest[s.source] = s  # in order: the last is the newest
            if not newest:
                continue
            candidates: dict[str, tuple[float, int]] = {}
            for s in newest.values():
                miss, seq = candidates.get(s.statement, (1.0, 0))
                candidates[s.statement] = (miss * (1 - s.confidence * NO_EVIDENCE), max(seq, s.seq))
            winner = min(candidates, key=lambda st: (candidates[st][0], -candidates[st][1], st))
            positions = frozenset((s.source, s.statement) for s in newest.values())
            out[key] = (winner, positions)
        return out


# --- the cluster under random operations ------------------------------------------------------


def _after_this_millisecond(acked_ms: int) -> None:
    """Returns once the wall clock has passed ``acked_ms`` (a few ms at most, bounded)."""
    deadline = time.monotonic() + 1.0
    while wall_ms() <= acked_ms:
        assert time.monotonic() < deadline, "the wall clock did not advance"
        time.sleep(0.0005)


@pytest.mark.parametrize("seed", [1, 2])
def test_the_cluster_converges_to_the_reference_model_under_random_operations(
    make_cluster, seed: int
):
    rng = random.Random(seed)
    cluster = make_cluster(policies=NEVER_FADE)
    model = Model()
    clients = {(node, source): cluster.client(node, source) for node in NODES for source in SOURCES}
    try:
        for _ in range(40):
            roll = rng.random()
            node, source = rng.choice(NODES), rng.choice(SOURCES)
            subject, key = rng.choice(SUBJECTS), rng.choice(KEYS)
            client = clients[(node, source)]
            if roll < 0.1:
                alone = rng.choice(NODES)
                cluster.partition({alone}, set(NODES) - {alone})
                continue
            if roll < 0.2:
                cluster.heal()
                continue
            if roll < 0.7:
                statement, conf = rng.choice(STATEMENTS), rng.choice(CONFIDENCES)
                client.observe(user(subject), statement, confidence=conf, context=CTX, key=key)
                model.observe(subject, source, key, statement, conf)
            elif roll < 0.92:
                client.retract(user(subject), CTX, key)
                model.retract(subject, source, key)
            else:
                client.forget(user(subject))
                model.forget(subject)
            _after_this_millisecond(wall_ms())
        cluster.heal()
        cluster.wait_converged(timeout_s=60)
    finally:
        for c in clients.values():
            c.close()
    for node in NODES:
        with cluster.client(node, "auditor") as reader:
            for subject in SUBJECTS:
                view = reader.self_model(user(subject), include_uncertain=True)
                shown = {
                    b.key: (
                        b.statement,
                        frozenset((p.source, p.statement) for p in (*b.supporters, *b.dissenters)),
                    )
                    for b in view.all_beliefs
                }
                assert shown == model.beliefs(subject), (node, subject, seed)
