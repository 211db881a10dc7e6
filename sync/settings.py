"""The replication settings a cluster file sets (federation.cluster), and the message limit."""

from __future__ import annotations

from dataclasses import dataclass

# The largest gRPC message a node sends or takes; batches and anti-entropy chunks stay under a
# quarter of it, and a delta over half of it is left to anti-entropy (sync.sender).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Rounds put off in a row at most: a peer is compared at least every (1 + this) rounds' time.
MAX_YIELDED_ROUNDS = 3
# Admission of agent writes (sync.admission): how far back a stream's backlog is compared
# (falling behind or not), and the bounds of the retry delay a refused write is told: at least
# the decision's period (it is sampled once a second), at most a third of the Python client's
# default deadline (10 s), so that its retries span a hold.
ADMISSION_WINDOW_S = 3.0
ADMISSION_RETRY_S = 1.0
ADMISSION_MAX_RETRY_S = 3.0


@dataclass(frozen=True, slots=True)
class SyncSettings:
    batch_size: int = 256
    retention_entries: int = 100_000
    retention_s: float = 3600.0
    anti_entropy_s: float = 10.0
    # A round with a peer is put off while the delta stream to it is connected and this far
    # behind on deltas it holds (sync.sender): those subjects' deltas are on their way.
    anti_entropy_yield_lag_s: float = 1.0
    backoff_max_s: float = 5.0
    # Idle this long with deltas unacknowledged, the stream asks the peer for its ack.
    ack_request_s: float = 0.02
    # A batch sent less than this long after the previous one waits out the rest, so the
    # deltas written meanwhile travel together: a delta after a quiet spell goes at once, and
    # none waits longer than this (the latency a handoff read on a peer may gain).
    linger_s: float = 0.0
    # At start, how long a node that may resume its previous run's actor keeps asking peers it
    # cannot reach yet to vouch for that run (node.runclaim.claim_run): peers started at the
    # same moment need this long to serve. Writes wait for the answer; reads and Sync too.
    claim_wait_s: float = 5.0
    # Agent writes are refused (UNAVAILABLE, REPLICATION_BEHIND) while the delta stream to a
    # connected, acknowledging peer is further behind than this and not catching up
    # (sync.admission); 0 admits every write.
    max_replication_lag_s: float = 5.0


__all__ = [
    "ADMISSION_MAX_RETRY_S",
    "ADMISSION_RETRY_S",
    "ADMISSION_WINDOW_S",
    "MAX_MESSAGE_BYTES",
    "MAX_YIELDED_ROUNDS",
    "SyncSettings",
]
