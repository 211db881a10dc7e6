"""The sync ports over this node's storage: the replica (sync.ports.Replica: merges through the
engine, digests and peer sequences from the store). The outbox is one itself (node.store.Outbox)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from node.engine import Engine
from node.store import Store
from sync.crdt import SubjectState
from sync.delivery import Delta
from sync.observation import Subject
from sync.ports import DeltasMerged, Merged


class EngineReplica:
    """sync.ports.Replica over the engine (merges) and the store (digests, peer sequences)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store

    def merge(self, states: Iterable[SubjectState], source: str = "") -> Merged:
        outcome = self.engine.merge_remote((Delta(s) for s in states), source=source)
        return Merged(outcome.merged, outcome.held_back + len(outcome.limited))

    def states(self, subjects: Iterable[Subject]) -> list[SubjectState]:
        return [s for s in (self.store.load(subject) for subject in subjects) if s is not None]

    def bucket_hashes(self) -> list[bytes]:
        return self.store.bucket_hashes()

    def bucket_digests(self, bucket: int) -> list[tuple[Subject, bytes]]:
        return self.store.bucket_digests(bucket)

    def acked(self, peer: str) -> int:
        return self.store.peer_seq("acked", peer)

    def set_acked(self, peer: str, seq: int) -> None:
        self.store.set_peer_seq("acked", peer, seq)

    def merge_deltas(
        self, deltas: Sequence[Delta], source: str, applied: int | None
    ) -> DeltasMerged:
        extra = [] if applied is None else [Store.peer_seq_row("applied", source, applied)]
        outcome = self.engine.merge_remote(deltas, extra=extra, durable=False, source=source)
        if outcome.refused:
            reason = outcome.reason
        elif outcome.limited:
            reason = outcome.reasons[0][1]
        else:
            reason = ""
        return DeltasMerged(outcome.refused, outcome.limited, reason)

    def make_durable(self) -> None:
        self.store.sync_written()


__all__ = ["EngineReplica"]
