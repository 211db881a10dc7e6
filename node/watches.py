"""Who watches which subject: the open WatchSelfModel streams and their wake-ups.

A change to a subject sets the event of every subscription to it; the stream then reads the
subject's snapshot again (node.snapshots) and sends it if the beliefs it shows differ. At most
``max_watchers`` subscriptions are open at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from node import metrics
from node.errors import QuotaViolation, Reason, ResourceExhausted
from sync.observation import Subject


@dataclass(slots=True)
class Subscription:
    subject: Subject
    changed: threading.Event = field(default_factory=threading.Event)
    closed: bool = False


class Watches:
    """The subscriptions of one node (thread-safe)."""

    def __init__(self, node: str, max_watchers: int) -> None:
        self.node = node
        self.max_watchers = max_watchers
        self._watchers: dict[Subject, list[Subscription]] = {}
        self._lock = threading.Lock()
        self._count = 0

    def subscribe(self, subject: Subject) -> Subscription:
        with self._lock:
            if self._count >= self.max_watchers:
                limit = f"at most {self.max_watchers} watches (setting max_watchers)"
                raise ResourceExhausted(
                    f"node {self.node} serves {limit}; close one first, or watch on another node",
                    reason=Reason.WATCHES_EXHAUSTED,
                    metadata={"limit": self.max_watchers, "setting": "max_watchers"},
                    quota=[QuotaViolation(f"node {self.node}", f"serves {limit}")],
                )
            sub = Subscription(subject)
            self._watchers.setdefault(subject, []).append(sub)
            self._count += 1
            metrics.WATCHES.set(self._count)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._watchers.get(sub.subject, [])
            if sub in subs:
                subs.remove(sub)
                self._count -= 1
                if not subs:
                    del self._watchers[sub.subject]
            sub.closed = True
            sub.changed.set()
            metrics.WATCHES.set(self._count)

    def wake_all(self) -> None:
        """Wakes every watch at once (its stream then checks its caller's token again)."""
        for sub in self._all():
            sub.changed.set()

    def wake_tenant(self, tenant: str) -> None:
        """Wakes the watches of ``tenant``'s subjects (its book in force changed)."""
        for sub in self._all():
            if sub.subject.tenant == tenant:
                sub.changed.set()

    def close_all(self) -> None:
        for sub in self._all():
            self.unsubscribe(sub)

    def notify(self, subject: Subject) -> None:
        """Wakes the watches of ``subject`` (after a change to it)."""
        subs = self._watchers.get(subject)
        if subs:
            for sub in list(subs):
                sub.changed.set()

    def _all(self) -> list[Subscription]:
        with self._lock:
            return [s for group in self._watchers.values() for s in group]


__all__ = ["Subscription", "Watches"]
