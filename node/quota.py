"""Per-connection quotas: how many watch streams one client connection may hold open."""

from __future__ import annotations

import threading
from collections.abc import Callable

from node.errors import QuotaViolation, Reason, ResourceExhausted


class ConnectionQuota:
    """Counts open streams by peer (``context.peer()``: one address and port per connection).

    The node-wide bound is the engine's ``max_watchers``; this one keeps a single client from
    taking all of them.
    """

    def __init__(
        self, per_peer: int, what: str = "watches", setting: str = "max_watches_per_connection"
    ) -> None:
        self.per_peer = per_peer
        self.what = what
        self.setting = setting
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, peer: str) -> Callable[[], None]:
        """Takes one slot for ``peer`` or raises ResourceExhausted; returns its release.

        The release is idempotent, so a stream may call it from both its cancel callback and
        its own cleanup.
        """
        with self._lock:
            held = self._open.get(peer, 0)
            if held >= self.per_peer:
                limit = f"at most {self.per_peer} open {self.what} (setting {self.setting})"
                raise ResourceExhausted(
                    f"a connection may hold {limit}; close one first",
                    reason=Reason.CONNECTION_WATCHES_EXHAUSTED,
                    metadata={"limit": self.per_peer, "setting": self.setting},
                    quota=[QuotaViolation("connection", f"a connection may hold {limit}")],
                )
            self._open[peer] = held + 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                left = self._open.get(peer, 1) - 1
                if left > 0:
                    self._open[peer] = left
                else:
                    self._open.pop(peer, None)

        return release

    def held(self, peer: str) -> int:
        with self._lock:
            return self._open.get(peer, 0)
