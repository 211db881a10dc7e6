"""A node's subject limits at work: what each write, retract and merge would make a subject
hold (sync.bounds), refused with the limit it passes, counted and logged once per subject.

A subject already past the limits (lowered since it grew) may still take what does not grow it.
The footprints of subjects' latest states are kept, so a write counts only its change.
"""

from __future__ import annotations

from collections.abc import Sequence

from node import metrics
from node.errors import too_large
from sync.bounds import (
    Excess,
    Footprint,
    Footprints,
    SubjectLimits,
    excess,
    grown_excess,
    head_bytes,
)
from sync.crdt import SubjectState
from sync.observation import Observation, Subject


class SubjectSizes:
    def __init__(self, limits: SubjectLimits) -> None:
        self.limits = limits
        self._footprints = Footprints()  # of subjects' latest states: a write counts its change
        # Subjects whose refused merges were logged: once each (bounded like _footprints).
        self._refused_logged: set[Subject] = set()

    def footprint(self, state: SubjectState) -> Footprint:
        """What ``state`` holds as the subject limits count it (kept for the next write)."""
        return self._footprints.of(state)

    def remember(self, state: SubjectState, footprint: Footprint) -> None:
        self._footprints.remember(state, footprint)

    def check_write(
        self,
        old: SubjectState,
        new: SubjectState,
        gone: Sequence[Observation],
        added: Sequence[Observation],
    ) -> Footprint:
        """``new``'s footprint, ``old`` written to it (``gone`` out, ``added`` in); refused when
        it grows the subject past a limit."""
        previous = self.footprint(old)
        footprint = previous.changed(gone, added)
        found = grown_excess(new, previous, footprint, self.limits)
        if found is not None:
            metrics.SUBJECT_LIMIT_REFUSED.labels("write", found.limit).inc()
            raise too_large(
                new.subject,
                found,
                "nothing of this request was written (retract or forget some of its "
                "observations first)",
            )
        return footprint

    def check_withdrawal(self, old: SubjectState, new: SubjectState) -> None:
        """Refuses a retract whose new withdrawal (recorded even where nothing is withdrawn)
        would grow the subject past its size limit."""
        if len(new.withdrawals) <= len(old.withdrawals):
            return
        gone = [o for d, o in old.observations.items() if d not in new.observations]
        before = self.footprint(old)
        after = before.changed(gone, [])
        found = excess(new, after, self.limits)
        if found is None or head_bytes(new) + after.observation_bytes <= (
            head_bytes(old) + before.observation_bytes
        ):
            return
        metrics.SUBJECT_LIMIT_REFUSED.labels("retract", found.limit).inc()
        raise too_large(
            new.subject,
            found,
            "the retract was not recorded (forget the subject, or retract where its "
            "observations are)",
        )

    def past_limits(self, old: SubjectState, new: SubjectState) -> Excess | None:
        """The limit (logged once per subject, counted) a merge would take ``old`` past, growing
        it, to ``new``: a peer with larger limits sent it. A subject already past them (limits
        lowered since) may still take merges that do not grow it."""
        before = self.footprint(old)
        # Dots are never reused (an erase keeps the context), so the change is the difference.
        removed = [old.observations[d] for d in old.observations.keys() - new.observations.keys()]
        added = [new.observations[d] for d in new.observations.keys() - old.observations.keys()]
        after = before.changed(removed, added)
        found = grown_excess(new, before, after, self.limits)
        if found is None:
            self.remember(new, after)
            return None
        metrics.SUBJECT_LIMIT_REFUSED.labels("merge", found.limit).inc()
        if new.subject not in self._refused_logged:
            if len(self._refused_logged) > 10_000:
                self._refused_logged.clear()
            self._refused_logged.add(new.subject)
            metrics.log.warning(
                "refused to merge a peer's state of %s: it %s", new.subject, found.describe()
            )
        return found


__all__ = ["SubjectSizes"]
