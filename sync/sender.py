"""One peer, from this node's side: the delta stream to it and the anti-entropy rounds with it.

The stream sends batches from the peer's last acknowledgement; the peer merges each and
acknowledges it (sync.receiver). A session that fails reconnects with full-jitter exponential
backoff (tenacity), so a restarted cluster does not reconnect in lockstep. Anti-entropy runs on
every (re)connect and periodically, so convergence never depends on a delta getting through.

Batches and anti-entropy chunks stay under a quarter of the message limit; a delta too large to
stream (over half of it) is left to anti-entropy, which splits it. A peer that refuses a subject
or a whole session is behind: its lag counts from when it last took everything anti-entropy
offered, so it grows while the peer cannot catch up, and its failed sessions are counted.

A peer may refuse a delta without ending the stream: for now (a timestamp ahead of its clock
bound: ``deferred``, sent again until merged: sync.resend) or for good (a delta breaking a rule:
``rejected``, counted and logged once). Both show per peer in the metrics and in ``PeerState``.
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
from sync.admission import Stream
from sync.antientropy import Round, reconcile
from sync.observation import Subject
from sync.ports import Ack, Batch, DeltaLog, PeerLink, Replica
from sync.resend import Resends
from sync.settings import MAX_MESSAGE_BYTES, MAX_YIELDED_ROUNDS, SyncSettings

log = logging.getLogger("selfmodel.sync")

# Errors of a session that say the peer could not be reached, not that it refused something.
_UNREACHABLE = frozenset({"UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED"})


class OutboxGap(Exception):
    """The outbox was trimmed past the peer's position while streaming to it."""


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


class PeerReplicator:
    """The delta stream to one peer and the anti-entropy rounds with it, each on a thread."""

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
        self._yielded = 0  # anti-entropy rounds put off in a row (see yields_round)
        self._streamed = False  # the current session got as far as streaming deltas
        self._acked_at: float | None = None  # when this session's ack last moved (monotonic)
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
        # Refusals (see the module docstring): the deltas deferred, and the counts of both kinds.
        self.resends = Resends(settings.backoff_max_s)
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
            self.resends.pending(),
            self.refused_clock,
            self.refused_invalid,
            self.last_refusal,
        )

    @property
    def delivered(self) -> int:
        """The position the peer holds everything up to: its acknowledgement, but below the
        oldest delta it deferred (what the outbox may be trimmed to)."""
        return self.resends.below(self.acked)

    def lag_s(self) -> float:
        lag = self._age_after_s(self.delivered)
        behind = self._behind_since
        return lag if behind is None else max(lag, time.monotonic() - behind)

    def _age_after_s(self, position: int) -> float:
        """The age of the oldest outbox delta after ``position`` (0 when there is none)."""
        oldest = self._outbox.oldest_unacked_ms(position)
        return 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000.0)

    def stream(self) -> Stream:
        """The delta stream as admission sees it (sync.admission): its lag is the age of the
        oldest delta after the acknowledged position, deferred deltas and refused subjects
        aside (a peer refusing is not a peer overloaded)."""
        lag = self._age_after_s(self.acked)
        head = self._outbox.last_seq()
        at = self._acked_at
        since = float("inf") if at is None else time.monotonic() - at
        return Stream(self.peer, self.connected, self.dropped, self.acked, head, lag, since)

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
                self.resends.unanswered()  # sent again by the next session
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
            self._acked_at = None
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
        taken = self.resends.take(ack)
        newly, pending = taken.newly, taken.pending
        if ack.acked_seq > self.acked:
            self._acked_at = time.monotonic()
            self.acked = ack.acked_seq
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

    def _resends(self, session: int) -> Iterator[Batch]:
        return self.resends.due(self._outbox, self._max_bytes, session)

    def _batches(self, position: int) -> Iterator[Batch]:
        """The stream of a session starting now, from ``position``: it ends once the session
        has ended (the transport may draw from it once more meanwhile; see sync.resend)."""
        return self._stream(position, self.resends.begin())

    def _stream(self, position: int, session: int) -> Iterator[Batch]:
        asked = self.acked  # the position an acknowledgement was last asked for
        deltas_sent = metrics.DELTAS_SENT.labels(self.peer)
        bytes_sent = metrics.BYTES_SENT.labels(self.peer)
        last_sent = float("-inf")  # when the last batch of deltas went (monotonic seconds)
        while not self._stop.is_set() and self.resends.current(session):
            resent = False
            for again in self._resends(session):
                resent = True
                deltas_sent.inc(1)
                yield again
            if resent:
                asked = -1  # the resent deltas need an answer, too
            batch = self._outbox.read(position, self._settings.batch_size, self._max_bytes)
            if batch is None:
                due = self.resends.due_in()
                idle_s = 0.5 if due is None else min(0.5, due)
                answered = self.resends.answered()
                if asked >= position or (self.acked >= position and answered):
                    self._outbox.wait(position, idle_s)
                elif not self._outbox.wait(position, min(idle_s, self._settings.ack_request_s)):
                    # Idle with deltas unacknowledged: the receiver acknowledges on its own only
                    # every so often, so ask (a batch without deltas is answered at once).
                    asked = position
                    yield Batch(position + 1, position, [], 0)
                continue
            linger = last_sent + self._settings.linger_s - time.monotonic()
            if linger > 0 and len(batch.deltas) < self._settings.batch_size:
                # Sent one moments ago: what is written while this one lingers goes with it.
                self._stop.wait(linger)
                batch = self._outbox.read(position, self._settings.batch_size, self._max_bytes)
                if batch is None:  # trimmed meanwhile: the check below cannot pass
                    raise OutboxGap(f"outbox no longer holds entry {position + 1}")
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
            last_sent = time.monotonic()
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

    def yields_round(self) -> bool:
        """Whether the next anti-entropy round is put off (counted as a round with result
        "yielded"): the delta stream is connected and behind on deltas the outbox holds for the
        peer, the oldest more than ``anti_entropy_yield_lag_s`` old, with nothing refused or
        trimmed past it (the peer is not behind for a reason the outbox does not show: then,
        as after a delta too large to stream, the round always runs). A round then would ship
        the whole states of the very subjects whose deltas are on their way, when the node has
        the least CPU to spare. At most MAX_YIELDED_ROUNDS in a row, so a peer is compared at
        least every (1 + MAX_YIELDED_ROUNDS) periods."""
        if (
            self.connected
            and self._behind_since is None
            and self._yielded < MAX_YIELDED_ROUNDS
            and self.lag_s() > self._settings.anti_entropy_yield_lag_s
        ):
            self._yielded += 1
            metrics.ANTI_ENTROPY_ROUNDS.labels(self.peer, "yielded").inc()
            return True
        self._yielded = 0
        return False

    def _anti_entropy_forever(self) -> None:
        period = self._settings.anti_entropy_s
        while not self._stop.is_set():
            self._wake_anti_entropy.wait(period * random.uniform(0.8, 1.2))
            self._wake_anti_entropy.clear()
            if self._stop.is_set():
                return
            if self.yields_round():
                continue
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


__all__ = ["OutboxGap", "PeerReplicator", "PeerState"]
