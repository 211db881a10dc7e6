"""What of a peer's deltas this node's clock lets it merge (docs/replication.md).

A delta with a timestamp too far ahead of this node's clock is refused whole (a delta is one
event); so is a whole state whose erase bound or a withdrawal is, as neither can be taken out of
a state without leaving its dot in the context. A whole state with such observations is merged
without them and without their dots, so the rest of the subject is repaired and the held-back
part arrives once the clock allows it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from node import metrics
from sync.crdt import SubjectState
from sync.delivery import Delta
from sync.hlc import ClockSkewError, HybridClock, physical_ms
from sync.holdback import too_new, without
from sync.observation import Observation, Subject


@dataclass(slots=True)
class Screened:
    """The deltas to merge by subject (with their input indexes), and what was refused."""

    accepted: dict[Subject, list[Delta]] = field(default_factory=dict)
    indexes: dict[Subject, list[int]] = field(default_factory=dict)
    refused: list[int] = field(default_factory=list)
    held_back: int = 0
    reason: str = ""  # the first refusal's
    reasons: dict[Subject, str] = field(default_factory=dict)  # the first per subject

    def refuse(self, subject: Subject, skew: ClockSkewError) -> None:
        self.reason = self.reason or str(skew)
        self.reasons.setdefault(subject, f"clock skew: {skew}")


def screen(deltas: Iterable[Delta], clock: HybridClock) -> Screened:
    """The deltas this node's clock accepts, and what it refuses or holds back (counted); the
    clock moves past every accepted timestamp."""
    out = Screened()
    for index, delta in enumerate(deltas):
        subject = delta.state.subject
        marks = _too_new_marks(delta.state, clock)
        if marks is not None:
            out.refuse(subject, marks)
            metrics.CLOCK_SKEW_REFUSED.inc()
            out.refused.append(index)
            continue
        ahead = _too_new(delta.state, clock)
        if ahead:
            out.refuse(subject, _skew(ahead[0].hlc, clock))
            metrics.CLOCK_SKEW_REFUSED.inc(len(ahead))
            if delta.events is not None:
                out.refused.append(index)
                continue
            out.held_back += len(ahead)
            rest = without(delta.state, ahead)
            if rest is None:
                continue
            delta = Delta(rest)
        out.indexes.setdefault(subject, []).append(index)
        out.accepted.setdefault(subject, []).append(delta)
    for group in out.accepted.values():
        for delta in group:
            # Past every merged timestamp, the bound's too: a write made here after the
            # erase is ordered after it on every node, so the erase never reaches it.
            clock.observe(delta.state.erased.hlc)
            for hlc in delta.state.withdrawals.values():
                clock.observe(hlc)
            for obs in delta.state.observations.values():
                clock.observe(obs.hlc)
    return out


def _too_new_marks(state: SubjectState, clock: HybridClock) -> ClockSkewError | None:
    """Why this node's clock refuses the state's erase bound, a withdrawal or a keyed call (never
    later than its withdrawal or bound), if it does."""
    calls = (call.hlc for call in state.keyed_calls.values())
    for hlc in (state.erased.hlc, *state.withdrawals.values(), *calls):
        if physical_ms(hlc) > clock.wall() + clock.max_offset_ms:
            return _skew(hlc, clock)
    return None


def _too_new(state: SubjectState, clock: HybridClock) -> list[Observation]:
    """The state's observations whose timestamps this node's clock refuses, oldest first."""
    return too_new(state, clock.wall() + clock.max_offset_ms)


def _skew(hlc: int, clock: HybridClock) -> ClockSkewError:
    try:
        clock.check(hlc)
    except ClockSkewError as exc:
        return exc
    return ClockSkewError(physical_ms(hlc), clock.wall(), clock.max_offset_ms)


__all__ = ["Screened", "screen"]
