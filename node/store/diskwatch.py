"""Watches the disk under a node's store: writes stop before it fills and resume once it has room.

Writes are suspended (the store answers them UNAVAILABLE, naming the data directory) when a
write fails for lack of space or on an I/O error, and when the disk's free space drops below
``min_free_bytes``; every ``probe_s`` seconds a suspended store is given its writes back once
the disk has that much room again and a synced probe write succeeds (Store.resume_writes).
While suspended, the SelfModel service answers health checks NOT_SERVING (reads go on, Sync
too), ``selfmodel_store_writable`` is 0 and Admin.GetStatus shows the reason. Each change is
one log line (the store's), never a traceback per refused call.
"""

from __future__ import annotations

import logging
import shutil
import threading

from grpc_health.v1 import health, health_pb2

from node import metrics
from node.store.store import Store

log = logging.getLogger("selfmodel.node")

WRITE_SERVICE = "selfmodel.v1.SelfModelService"


class DiskWatch:
    def __init__(
        self,
        store: Store,
        health_servicer: health.HealthServicer,
        *,
        min_free_bytes: int,
        probe_s: float,
    ) -> None:
        self.store = store
        self.health = health_servicer
        self.min_free_bytes = min_free_bytes
        self.probe_s = probe_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="diskwatch", daemon=True)
        store.on_suspension = self._show
        store.retry_after_s = probe_s  # writes may resume at the next probe

    def start(self) -> None:
        self.check()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.probe_s + 5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.probe_s):
            try:
                self.check()
            except Exception:  # never end the watch: the next probe tries again
                log.exception("checking the disk under %s failed", self.store.path)

    def check(self) -> None:
        """Suspends writes when free space is under the floor; resumes them when it is back."""
        try:
            free = shutil.disk_usage(self.store.path).free
        except OSError as exc:
            self.store.suspend("I/O error", f"cannot read its free space: {exc.strerror}")
            return
        metrics.STORE_FREE_BYTES.set(free)
        if free < self.min_free_bytes:
            if self.store.suspended is None:
                self.store.suspend(
                    "low space",
                    f"{free / 2**20:.1f} MiB free, under min_free_mb "
                    f"{self.min_free_bytes / 2**20:g}",
                )
        elif self.store.suspended is not None and free >= self.store.room_needed():
            self.store.resume_writes()

    def _show(self, reason: str | None) -> None:
        """Health of the write service: NOT_SERVING while writes are suspended."""
        status = health_pb2.HealthCheckResponse
        self.health.set(WRITE_SERVICE, status.SERVING if reason is None else status.NOT_SERVING)
