"""All peers of one node: one sender each (sync.sender), and the outbox trimming they agree on.

The outbox is trimmed to the lowest acknowledgement of the peers still within retention; a peer
that falls further behind is dropped from it and caught up by anti-entropy when it returns.
The receiving end of the peers' streams is sync.receiver.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sync import metrics
from sync.admission import Admission
from sync.ports import DeltaLog, PeerLink, Replica
from sync.sender import PeerReplicator, PeerState
from sync.settings import MAX_MESSAGE_BYTES, SyncSettings

log = logging.getLogger("selfmodel.sync")


class Replicator:
    """All peers of one node, and the outbox trimming they agree on."""

    def __init__(
        self,
        outbox: DeltaLog,
        replica: Replica,
        peers: dict[str, Callable[[], PeerLink]],
        settings: SyncSettings | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.settings = settings or SyncSettings()
        self._outbox = outbox
        self._trim_lock = threading.Lock()
        self._stopped = threading.Event()
        self.peers = {
            name: PeerReplicator(name, outbox, replica, connect, self.settings, max_message_bytes)
            for name, connect in peers.items()
        }
        # Whether agent writes are admitted (sync.admission), decided at each housekeeping.
        self.admission = Admission(self.settings.max_replication_lag_s)
        metrics.WRITES_ADMITTED.set(1)

    def start(self) -> None:
        for p in self.peers.values():
            p.start()
        threading.Thread(target=self._housekeeping, name="sync-housekeeping", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        for p in self.peers.values():
            p.stop()
        for p in self.peers.values():
            p.persist()

    def _housekeeping(self) -> None:
        """Once a second: persists the peers' acknowledgements, trims the outbox to them,
        reports lag and depth and decides the admission of writes (kept off the delta stream,
        which only sends and counts acks)."""
        while not self._stopped.wait(1.0):
            self.housekeep()

    def housekeep(self) -> None:
        metrics.PEERS_CONNECTED.set(sum(p.connected for p in self.peers.values()))
        try:
            for p in self.peers.values():
                p.persist()
            self.trim()
        except Exception:
            log.exception("outbox trim failed")
        for p in self.peers.values():
            p.report()
        self.admit()

    def admit(self) -> None:
        """Samples the peers' streams for the admission of writes (sync.admission)."""
        was = self.admission.held
        held = self.admission.observe(p.stream() for p in self.peers.values())
        metrics.WRITES_ADMITTED.set(0 if held else 1)
        if (was is None) != (held is None):
            if held is not None:
                log.warning(
                    "refusing agent writes: the delta stream to %s is %.1f s behind and not "
                    "catching up (max_replication_lag_s = %g)",
                    held.peer,
                    held.lag_s,
                    held.max_lag_s,
                )
            else:
                log.info("admitting agent writes again: every delta stream keeps up")

    def trim(self) -> None:
        """Trims to the lowest persisted acknowledgement of the peers still within retention."""
        with self._trim_lock:
            last = self._outbox.last_seq()
            floor = last - self.settings.retention_entries
            keep: list[int] = []
            now_ms = time.time() * 1000
            for p in self.peers.values():
                oldest = self._outbox.oldest_unacked_ms(p.persisted)
                too_old = oldest is not None and now_ms - oldest > self.settings.retention_s * 1000
                if p.persisted < floor or too_old:
                    if not p.dropped:
                        p.dropped = True
                        metrics.PEERS_DROPPED.labels(p.peer).inc()
                        log.warning(
                            "peer %s is behind the outbox retention; dropping it from the outbox "
                            "(anti-entropy will catch it up)",
                            p.peer,
                        )
                    continue
                keep.append(p.persisted)
            upto = min(keep) if keep else last
            self._outbox.trim(upto)

    def peer_seen(self, name: str) -> None:
        """A peer opened a session (a delta stream or an anti-entropy round) with this node."""
        peer = self.peers.get(name)
        if peer is not None:
            peer.wake()

    def states(self) -> list[PeerState]:
        return [p.state() for p in self.peers.values()]


__all__ = [
    "MAX_MESSAGE_BYTES",
    "PeerReplicator",
    "PeerState",
    "Replicator",
    "SyncSettings",
]
