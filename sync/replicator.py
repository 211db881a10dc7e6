"""Streams the outbox to every peer, trims it, and runs anti-entropy.

One sender thread per peer streams batches from the peer's last acknowledgement; the peer
merges each batch and acknowledges it. Sessions that fail reconnect with full-jitter exponential
backoff (tenacity), so a restarted cluster does not reconnect in lockstep. The outbox is trimmed
to the lowest acknowledgement of the peers still within retention; a peer that falls further
behind is dropped from it and caught up by anti-entropy when it returns. Anti-entropy also runs
on every (re)connect and periodically, so convergence never depends on a delta getting through.

Batches and anti-entropy chunks stay under a quarter of the message limit; a delta too large to
stream (over half of it) is left to anti-entropy, which splits it. A peer that refuses a subject
or a whole session is behind: its lag counts from when it last took everything anti-entropy
offered, so it grows while the peer cannot catch up, and its failed sessions are counted.

A peer may refuse a delta without ending the stream: for now (a timestamp ahead of its clock
bound: ``deferred``) or for good (a delta breaking a rule: ``rejected``). A deferred delta is not
delivered: the outbox is trimmed only below it, and it is sent again, alone, with full-jitter
backoff that grows while the peer keeps deferring it; the deltas after it flow meanwhile. A
rejected one cannot be merged by sending it again: it is counted and logged once. Both show per
peer in the metrics and in ``PeerState``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tenacity import RetryCallState, wait_random_exponential

from sync import metrics
from sync.antientropy import Round, reconcile
from sync.observation import Subject
from sync.ports import Ack, Batch, DeltaLog, PeerLink, Replica

log = logging.getLogger("selfmodel.sync")


class OutboxGap(Exception):
    """The outbox was trimmed past the peer's position while streaming to it."""


@dataclass(frozen=True, slots=True)
class SyncSettings:
    batch_size: int = 256
    retention_entries: int = 100_000
    retention_s: float = 3600.0
    anti_entropy_s: float = 10.0
    backoff_max_s: float = 5.0
    # Idle this long with deltas unacknowledged, the stream asks the peer for its ack.
    ack_request_s: float = 0.02
    # At start, how long a node that may resume its previous run's actor keeps asking peers it
    # cannot reach yet to vouch for that run (node.replication.claim_run): peers started at the
    # same moment need this long to serve. Writes wait for the answer; reads and Sync too.
    claim_wait_s: float = 5.0


MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Errors of a session that say the peer could not be reached, not that it refused something.
_UNREACHABLE = frozenset({"UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED"})


@dataclass(frozen=True, slots=True)
class PeerState:
    name: str
    connected: bool
    acked: int
    lag_s: float
    dropped: bool
    failing_sessions: int = 0
    skipped_subjects: int = 0
    pending: int = 0  # deltas the peer deferred and has not merged yet
    refused_clock: int = 0  # deltas the peer deferred, since this node started
    refused_invalid: int = 0  # deltas the peer rejected, since this node started
    last_refusal: str = ""


# Deltas the peer deferred, sent again per round; the rest wait for the next round.
RESEND_BATCH = 64


class PeerReplicator:
    def __init__(
        self,
        peer: str,
        outbox: DeltaLog,
        replica: Replica,
        connect: Callable[[], PeerLink],
        settings: SyncSettings,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.peer = peer
        self._max_bytes = max_message_bytes // 4  # a batch or an anti-entropy chunk
        self._max_delta = max_message_bytes // 2  # a delta the stream may carry
        # Sessions (stream or anti-entropy) failed since one last succeeded; the subjects the
        # last round could not replicate (each logged once); since when the peer is behind
        # for a reason the outbox does not show (monotonic seconds), or None.
        self.failing_sessions = 0
        self.skipped: tuple[tuple[Subject, str], ...] = ()
        self._logged: set[Subject] = set()
        self._behind_since: float | None = None
        self._streamed = False  # the current session got as far as streaming deltas
        self._outbox = outbox
        self._replica = replica
        self._connect = connect
        self._settings = settings
        self._stop = threading.Event()
        self._wake_anti_entropy = threading.Event()
        self._retry = threading.Event()  # cuts a reconnect backoff short (see wake)
        self.connected = False
        metrics.PEER_CONNECTED.labels(peer).set(0)  # exported from the start, not first change
        metrics.FAILING_SESSIONS.labels(peer).set(0)
        metrics.SKIPPED_SUBJECTS.labels(peer).set(0)
        self._link: PeerLink | None = None
        self._ae_link: PeerLink | None = None
        # Clamped to the outbox's end: entries are shipped while their WAL syncs (node.store).
        # Should a machine crash take entries a recorded acknowledgement names, the new entries
        # that reuse their numbers would be skipped; anti-entropy would catch the peer up, but
        # a stream that starts from the end skips nothing to begin with.
        self.acked = min(replica.acked(peer), outbox.last_seq())
        # The acknowledgement last written to the replica: the outbox is trimmed to it, never
        # past, so a restart after a crash resumes the peer from an entry still kept.
        self.persisted = self.acked
        self.dropped = False
        # Refusals (see the module docstring), guarded by _refusals_lock: the stream's request
        # iterator (gRPC's thread) resends, the session's thread reads the acknowledgements.
        self._refusals_lock = threading.Lock()
        self.deferred: set[int] = set()
        self._in_flight: set[int] = set()  # resent, not yet answered
        self._resend_round = 0
        self._resend_at = 0.0
        self._resend_wait = wait_random_exponential(multiplier=0.1, max=settings.backoff_max_s)
        self.refused_clock = 0
        self.refused_invalid = 0
        self.last_refusal = ""
        self._threads = [
            threading.Thread(target=self._stream_forever, name=f"sync-{peer}", daemon=True),
            threading.Thread(target=self._anti_entropy_forever, name=f"ae-{peer}", daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._retry.set()
        self._wake_anti_entropy.set()
        for link in (self._link, self._ae_link):
            if link is not None:
                link.close()
        for t in self._threads:
            t.join(timeout_s)

    def wake(self) -> None:
        """The peer just opened a session with this node, so it is reachable again: if the
        delta stream to it is waiting out a reconnect backoff, it retries now rather than up
        to backoff_max_s later. Only a wake during the wait counts, so a peer that reaches us
        while we cannot reach it does not turn the backoff into a busy loop."""
        if not self.connected:
            self._retry.set()

    def state(self) -> PeerState:
        return PeerState(
            self.peer,
            self.connected,
            self.delivered,
            self.lag_s(),
            self.dropped,
            self.failing_sessions,
            len(self.skipped),
            len(self.deferred),
            self.refused_clock,
            self.refused_invalid,
            self.last_refusal,
        )

    @property
    def delivered(self) -> int:
        """The position the peer holds everything up to: its acknowledgement, but below the
        oldest delta it deferred (what the outbox may be trimmed to)."""
        with self._refusals_lock:
            oldest = min(self.deferred, default=None)
        return self.acked if oldest is None else min(self.acked, oldest - 1)

    def lag_s(self) -> float:
        oldest = self._outbox.oldest_unacked_ms(self.delivered)
        lag = 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000.0)
        behind = self._behind_since
        return lag if behind is None else max(lag, time.monotonic() - behind)

    def _failed(self, exc: BaseException) -> None:
        """A session ended in ``exc``: counted; a refusal (not a peer out of reach) means the
        peer is behind until an anti-entropy round gets everything through."""
        self.failing_sessions += 1
        metrics.FAILING_SESSIONS.labels(self.peer).set(self.failing_sessions)
        if _code(exc) not in _UNREACHABLE and not isinstance(exc, ConnectionError):
            self._fell_behind()

    def _fell_behind(self) -> None:
        if self._behind_since is None:
            self._behind_since = time.monotonic()

    # -- delta stream ----------------------------------------------------------------------

    def _stream_forever(self) -> None:
        wait = wait_random_exponential(multiplier=0.1, max=self._settings.backoff_max_s)
        failures = 0
        last_error = ""
        while not self._stop.is_set():
            started, acked = time.monotonic(), self.acked
            self._streamed = False
            try:
                self._session()
                failures = 0
            except Exception as exc:  # any failure ends the session; we reconnect
                # Back off by the failures since the last session that did some good: one
                # the peer acknowledged deltas in, or that stayed up for longer than the
                # longest backoff. A session that connects and then fails at once (a peer that
                # ends every stream) is one more failure, so its backoff grows.
                useful = (
                    self.acked > acked or time.monotonic() - started > self._settings.backoff_max_s
                )
                failures = 1 if useful else failures + 1
                metrics.REPLICATION_ERRORS.labels(self.peer).inc()
                self._failed(exc)
                error = _describe(exc)
                # Once per cause, not once per retry: a stream that was up and ended is news.
                if error != last_error or useful or self._streamed:
                    log.info("delta stream to %s ended: %s", self.peer, error)
                last_error = error
            finally:
                with self._refusals_lock:
                    self._in_flight.clear()  # unanswered: sent again by the next session
                self._set_connected(False)
            state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
            state.attempt_number = max(1, failures)
            self._retry.clear()
            if not self._stop.is_set():
                self._retry.wait(wait(state))

    def _session(self) -> None:
        link = self._connect()
        self._link = link
        try:
            self.run_anti_entropy(link)
            first = self._outbox.first_seq()
            if self.acked < first - 1:
                # Trimmed past the peer while it was away: the round above shipped every
                # subject it lacked, so it may resume from the oldest delta still kept.
                log.info(
                    "peer %s was behind the outbox retention; caught up by anti-entropy", self.peer
                )
                self.acked = first - 1
                self.persist()
            self.dropped = False
            self._set_connected(True)
            self._streamed = True
            for ack in link.replicate(self._batches(self.acked)):
                # Only in memory here: persist() writes it down, then the outbox is trimmed.
                self._acknowledged(ack)
                if self._stop.is_set():
                    break
        finally:
            self._link = None
            link.close()

    def _acknowledged(self, ack: Ack) -> None:
        """Takes in a peer's acknowledgement: its position, and what it refused or merged."""
        with self._refusals_lock:
            for seq in ack.merged:
                self.deferred.discard(seq)
                self._in_flight.discard(seq)
            newly = [seq for seq in ack.deferred if seq not in self.deferred]
            for seq in ack.deferred:
                self._in_flight.discard(seq)
                self.deferred.add(seq)
            for seq in ack.rejected:
                self._in_flight.discard(seq)
                self.deferred.discard(seq)
            if newly and self._resend_round == 0:
                self._schedule_resend()
            if not self.deferred:
                self._resend_round = 0
            pending = len(self.deferred)
        self.acked = max(self.acked, ack.acked_seq)
        if ack.reason:
            self.last_refusal = ack.reason
        if newly:
            self.refused_clock += len(newly)
            metrics.DELTAS_REFUSED_BY_PEER.labels(self.peer, "clock").inc(len(newly))
            if pending == len(newly):  # the peer started refusing: said once, not per resend
                log.warning(
                    "peer %s refused %d deltas for now (sent again until merged): %s",
                    self.peer,
                    len(newly),
                    ack.reason,
                )
        if ack.rejected:
            self.refused_invalid += len(ack.rejected)
            metrics.DELTAS_REFUSED_BY_PEER.labels(self.peer, "invalid").inc(len(ack.rejected))
            log.error(
                "peer %s rejected deltas %s for good (not sent again): %s",
                self.peer,
                ", ".join(map(str, ack.rejected)),
                ack.reason,
            )
        if ack.merged and not pending:
            log.info("peer %s merged every delta it had refused", self.peer)
        metrics.DELTAS_PENDING.labels(self.peer).set(pending)

    def _schedule_resend(self) -> None:
        """Sets when deferred deltas go again: full jitter, growing with each round they stay
        deferred. Called with _refusals_lock held."""
        self._resend_round += 1
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = self._resend_round
        self._resend_at = time.monotonic() + self._resend_wait(state)

    def _resends(self) -> Iterator[Batch]:
        """The deferred deltas due to go again, each alone (the peer may defer it again)."""
        with self._refusals_lock:
            if self._in_flight or not self.deferred or time.monotonic() < self._resend_at:
                return
            due = sorted(self.deferred)[:RESEND_BATCH]
            self._in_flight.update(due)
            self._schedule_resend()
        for seq in due:
            batch = self._outbox.read(seq - 1, 1, self._max_bytes)
            if batch is None or batch.first_seq != seq:  # trimmed: left to anti-entropy
                with self._refusals_lock:
                    self.deferred.discard(seq)
                    self._in_flight.discard(seq)
                continue
            yield Batch(seq, seq, batch.deltas[:1], batch.oldest_ms, resent=True)

    def _resend_due_in(self) -> float | None:
        with self._refusals_lock:
            if self._in_flight or not self.deferred:
                return None
            return max(0.0, self._resend_at - time.monotonic())

    def _batches(self, position: int) -> Iterator[Batch]:
        asked = self.acked  # the position an acknowledgement was last asked for
        deltas_sent = metrics.DELTAS_SENT.labels(self.peer)
        bytes_sent = metrics.BYTES_SENT.labels(self.peer)
        while not self._stop.is_set():
            resent = False
            for again in self._resends():
                resent = True
                deltas_sent.inc(1)
                yield again
            if resent:
                asked = -1  # the resent deltas need an answer, too
            batch = self._outbox.read(position, self._settings.batch_size, self._max_bytes)
            if batch is None:
                due = self._resend_due_in()
                idle_s = 0.5 if due is None else min(0.5, due)
                with self._refusals_lock:
                    answered = not self._in_flight
                if asked >= position or (self.acked >= position and answered):
                    self._outbox.wait(position, idle_s)
                elif not self._outbox.wait(position, min(idle_s, self._settings.ack_request_s)):
                    # Idle with deltas unacknowledged: the receiver acknowledges on its own only
                    # every so often, so ask (a batch without deltas is answered at once).
                    asked = position
                    yield Batch(position + 1, position, [], 0)
                continue
            if batch.first_seq != position + 1:
                raise OutboxGap(f"outbox starts at {batch.first_seq}, peer needs {position + 1}")
            if len(batch.deltas) == 1 and len(batch.deltas[0]) > self._max_delta:
                # Too large for the peer to take in one message: anti-entropy ships the
                # subject in parts instead. The empty batch moves the peer past it.
                log.warning(
                    "a delta of %d bytes is too large to stream to %s; left to anti-entropy",
                    len(batch.deltas[0]),
                    self.peer,
                )
                self._fell_behind()
                self._wake_anti_entropy.set()
                batch = Batch(batch.first_seq, batch.last_seq, [], batch.oldest_ms)
            deltas_sent.inc(len(batch.deltas))
            bytes_sent.inc(sum(len(d) for d in batch.deltas))
            yield batch
            position = batch.last_seq

    def _set_connected(self, up: bool) -> None:
        if up != self.connected:
            self.connected = up
            metrics.PEER_CONNECTED.labels(self.peer).set(1 if up else 0)
        self.report()

    def persist(self) -> None:
        """Writes the peer's latest acknowledgement down (before the outbox is trimmed to it).

        Done once a second, not per acknowledgement: a position lost in a crash only makes
        the restarted node resend deltas the peer has merged, which changes nothing there.
        """
        acked = self.delivered
        if acked != self.persisted:
            self._replica.set_acked(self.peer, acked)
            self.persisted = acked

    def report(self) -> None:
        """Exports the peer's lag and outbox depth."""
        metrics.REPLICATION_LAG.labels(self.peer).set(self.lag_s())
        metrics.OUTBOX_DEPTH.labels(self.peer).set(max(0, self._outbox.last_seq() - self.delivered))

    # -- anti-entropy ----------------------------------------------------------------------

    def run_anti_entropy(self, link: PeerLink) -> Round:
        started = time.monotonic()
        try:
            result = reconcile(self._replica, link, max_bytes=self._max_bytes, source=self.peer)
        except Exception:
            metrics.ANTI_ENTROPY_ROUNDS.labels(self.peer, "error").inc()
            raise
        metrics.ANTI_ENTROPY_ROUNDS.labels(self.peer, "ok").inc()
        if result.repaired_here:
            metrics.ANTI_ENTROPY_REPAIRED.labels(self.peer).inc(result.repaired_here)
            log.info("anti-entropy with %s repaired %d subjects", self.peer, result.repaired_here)
        self._round_done(result, started)
        return result

    def _round_done(self, result: Round, started: float) -> None:
        """A round went through: the peer has everything but what it refused."""
        self.failing_sessions = 0
        metrics.FAILING_SESSIONS.labels(self.peer).set(0)
        self.skipped = tuple(result.skipped)
        metrics.SKIPPED_SUBJECTS.labels(self.peer).set(len(self.skipped))
        if self.skipped:
            metrics.SUBJECTS_REFUSED.labels(self.peer).inc(len(self.skipped))
            self._fell_behind()
            if len(self._logged) > 10_000:
                self._logged.clear()
            for subject, reason in self.skipped:
                if subject not in self._logged:
                    self._logged.add(subject)
                    log.warning(
                        "peer %s refused subject %s; replicating the others: %s",
                        self.peer,
                        subject,
                        reason,
                    )
        elif self._behind_since is not None and self._behind_since <= started:
            self._behind_since = None  # what it lacked when the round began, it now has
            self._logged.clear()

    def trigger_anti_entropy(self) -> None:
        self._wake_anti_entropy.set()

    def _anti_entropy_forever(self) -> None:
        period = self._settings.anti_entropy_s
        while not self._stop.is_set():
            self._wake_anti_entropy.wait(period * random.uniform(0.8, 1.2))
            self._wake_anti_entropy.clear()
            if self._stop.is_set():
                return
            try:
                link = self._connect()
                self._ae_link = link
                try:
                    self.run_anti_entropy(link)
                finally:
                    self._ae_link = None
                    link.close()
            except Exception as exc:
                log.debug("anti-entropy with %s failed: %s", self.peer, _describe(exc))
                self._failed(exc)
            self.report()


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
        """Once a second: persists the peers' acknowledgements, trims the outbox to them and
        reports lag and depth (kept off the delta stream, which only sends and counts acks)."""
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


def _code(exc: BaseException) -> str | None:
    """The gRPC status code's name of ``exc``, if it has one (sync/ does not import gRPC)."""
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            return str(code().name)
        except Exception:
            return None
    return None


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            return f"{code().name}: {exc.details()}"  # type: ignore[attr-defined]
        except Exception:
            pass
    return f"{type(exc).__name__}: {exc}"
