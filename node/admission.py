"""The write path's side of admission by replication lag (sync.admission).

An agent write (Observe, ObserveBatch, Retract, ForgetSubject) asks ``WriteAdmission.check``
before it changes anything: while admission holds writes back for a peer falling behind, the
write is refused UNAVAILABLE (REPLICATION_BEHIND, with a RetryInfo delay) and records nothing.
The check reads one attribute the sync housekeeping sets: no lock, no I/O. Writes of operators
(governance, memberships, withdrawn sources) and of peers (deltas, anti-entropy) are never
held back: they are few, and an operator may need them to relieve the overload.
"""

from __future__ import annotations

from node import metrics
from node.errors import replication_behind
from sync import metrics as sync_metrics
from sync.admission import Admission


class WriteAdmission:
    """Refuses an agent write while ``admission`` holds writes back."""

    def __init__(self, admission: Admission, node: str) -> None:
        self._admission = admission
        self._node = node

    def check(self) -> None:
        held = self._admission.held
        if held is not None:
            metrics.WRITES_REFUSED.labels("replication_behind").inc()
            sync_metrics.WRITES_REFUSED_BEHIND.labels(held.peer).inc()
            raise replication_behind(self._node, held)


def admit_every_write() -> None:
    """The check of a node without peers: nothing to fall behind."""


__all__ = ["WriteAdmission", "admit_every_write"]
