"""The engine's merges of peers' deltas and whole states (sync.delivery's causal order).

What this node's clock refuses or holds back is node.screening's; a subject the merge would take
past this node's subject limits (sync.bounds) is refused for good. An erase merged here is
audited in the same batch as the merge, and its rows purged from disk (node.committing).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from node import metrics
from node.audit import AuditRecord
from node.committing import Committing
from node.screening import screen
from node.store import Change
from sync.crdt import SubjectState
from sync.delivery import CausalBuffer, Delta
from sync.hlc import HybridClock, physical_ms
from sync.observation import Subject


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    """``refused``: the indexes of the input deltas not merged because a timestamp is ahead of
    this node's clock bound (merged once it allows them); ``held_back``: observations left out
    of whole states for the same reason (the rest of each state merged)."""

    merged: int
    refused: tuple[int, ...] = ()
    held_back: int = 0
    reason: str = ""
    # Indexes of the input deltas refused for good: their subject would pass this node's
    # subject limits (sync.bounds).
    limited: tuple[int, ...] = ()
    # The subjects refused or held back (clock, limits), each with why (the first reason).
    reasons: tuple[tuple[Subject, str], ...] = ()


class PeerMerges(Committing):
    """What peers send this node, merged (node.engine.Engine takes it; node.syncports calls it)."""

    clock: HybridClock
    _held: CausalBuffer

    def merge_remote(
        self,
        deltas: Iterable[Delta],
        extra: Sequence[tuple[str, bytes, bytes | None]] = (),
        *,
        durable: bool = True,
        source: str = "",
    ) -> MergeOutcome:
        """Merges deltas or whole states from a peer, in causal order (sync.delivery).

        A delta with a timestamp too far ahead of this node's clock is refused (its index
        reported, counted), whole: a delta is one event. A whole state (``events`` None) with
        such observations merges without them and without their dots, so the rest of the subject
        is repaired and the held-back part arrives once the clock allows it. ``extra`` rows (the
        origin's position) are written in the same batch as the merge. With ``durable=False``
        the merge is shown to readers and watches as soon as RocksDB has it, before its WAL
        sync; the caller then calls ``store.sync_written()`` before acknowledging it. An erase
        merged here (an advanced erase bound) is audited in the same batch, as peer ``source``'s.
        """
        screened = screen(deltas, self.clock)
        accepted, indexes, reasons = screened.accepted, screened.indexes, screened.reasons
        limited: list[int] = []
        merged = 0
        with self._locks.held(accepted):
            changes = []
            erased: list[AuditRecord] = []
            for subject, group in accepted.items():
                state = self.state(subject)
                new = self._held.apply(state, group)
                if new.erased != state.erased:
                    erased.append(_peer_erase(source, state, new))
                if (
                    new.erased != state.erased
                    or new.withdrawals != state.withdrawals
                    or new.keyed_calls != state.keyed_calls
                    or new.context != state.context
                    or new.observations.keys() != state.observations.keys()
                ):
                    found = self.sizes.past_limits(state, new)
                    if found is not None:
                        limited += indexes[subject]
                        reasons.setdefault(subject, f"subject {subject} {found.describe()}")
                        continue
                    changes.append(Change(state, new, None))
                    merged += 1
            metrics.DELTAS_HELD.set(self._held.held)
            if changes or extra:
                with self.audit.appending_all(erased) as rows:
                    self._commit(changes, extra=[*extra, *rows], durable=durable)
                for change in changes:
                    if change.new.erased != change.old.erased:  # type: ignore[union-attr]
                        self._purge(change)
        return MergeOutcome(
            merged,
            tuple(screened.refused),
            screened.held_back,
            screened.reason,
            tuple(limited),
            tuple(reasons.items()),
        )


def _peer_erase(peer: str, old: SubjectState, new: SubjectState) -> AuditRecord:
    """The audit record of an erase that arrived from ``peer``."""
    who = peer or "unknown"
    detail = (
        f"erase received from peer {who}: erase bound {physical_ms(old.erased.hlc)} -> "
        f"{physical_ms(new.erased.hlc)} (ms since the epoch)"
    )
    return AuditRecord(who, "peer", "forget", new.subject, detail)


__all__ = ["MergeOutcome", "PeerMerges"]
