"""The sync ports over this node's storage: the outbox (sync.ports.DeltaLog) and the replica
(sync.ports.Replica: merges through the engine, digests and positions from the store)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from node.engine import Engine
from node.store import Store
from sync.crdt import SubjectState
from sync.delivery import Delta
from sync.observation import Subject
from sync.ports import Batch, DeltasMerged, Merged


class StoreOutbox:
    """sync.ports.DeltaLog over the store's outbox column family."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def read(self, after: int, limit: int, max_bytes: int) -> Batch | None:
        entries = self.store.outbox(after, limit)
        if not entries:
            return None
        size = len(entries[0].delta)
        for n, entry in enumerate(entries[1:], 1):
            size += len(entry.delta)
            if size > max_bytes:
                entries = entries[:n]
                break
        return Batch(
            entries[0].seq, entries[-1].seq, [e.delta for e in entries], entries[0].written_ms
        )

    def first_seq(self) -> int:
        return self.store.outbox_first()

    def last_seq(self) -> int:
        return self.store.outbox_seq

    def wait(self, after: int, timeout_s: float) -> bool:
        return self.store.wait_outbox(after, timeout_s)

    def trim(self, upto: int) -> None:
        self.store.trim_outbox(upto)

    def oldest_unacked_ms(self, acked: int) -> int | None:
        if acked >= self.store.outbox_seq:
            return None
        entries = self.store.outbox(acked, 1)
        return entries[0].written_ms if entries else None


class EngineReplica:
    """sync.ports.Replica over the engine (merges) and the store (digests, positions)."""

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
        return self.store.position("acked", peer)

    def set_acked(self, peer: str, seq: int) -> None:
        self.store.set_position("acked", peer, seq)

    def merge_deltas(
        self, deltas: Sequence[Delta], source: str, applied: int | None
    ) -> DeltasMerged:
        extra = [] if applied is None else [Store.position_row("applied", source, applied)]
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


__all__ = ["EngineReplica", "StoreOutbox"]
