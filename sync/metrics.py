"""Replication metrics. Labels are peer node names only, never subjects or agents."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REPLICATION_LAG = Gauge(
    "selfmodel_replication_lag_seconds",
    "Age of the oldest local delta a peer has not acknowledged, or the time since the peer "
    "last took everything anti-entropy offered it when longer (0 when caught up).",
    ["peer"],
)
OUTBOX_DEPTH = Gauge(
    "selfmodel_outbox_depth", "Deltas in the outbox not yet acknowledged by a peer.", ["peer"]
)
PEER_CONNECTED = Gauge(
    "selfmodel_peer_connected", "1 while the delta stream to a peer is up.", ["peer"]
)
WRITES_ADMITTED = Gauge(
    "selfmodel_writes_admitted",
    "1 while agent writes are admitted; 0 while they are refused because the delta stream to a "
    "connected peer is further behind than max_replication_lag_s and not catching up.",
)
WRITES_REFUSED_BEHIND = Counter(
    "selfmodel_writes_refused_replication_behind_total",
    "Agent writes refused (UNAVAILABLE, REPLICATION_BEHIND) for the peer whose delta stream "
    "was falling behind.",
    ["peer"],
)
PEERS_CONNECTED = Gauge("selfmodel_peers_connected", "Peers whose delta stream is up.")
DELTAS_SENT = Counter("selfmodel_deltas_sent_total", "Deltas streamed to a peer.", ["peer"])
BYTES_SENT = Counter(
    "selfmodel_replication_bytes_sent_total", "Delta bytes streamed to a peer.", ["peer"]
)
DELTAS_RECEIVED = Counter(
    "selfmodel_deltas_received_total", "Deltas received from a peer.", ["peer"]
)
BYTES_RECEIVED = Counter(
    "selfmodel_replication_bytes_received_total", "Delta bytes received from a peer.", ["peer"]
)
ANTI_ENTROPY_ROUNDS = Counter(
    "selfmodel_anti_entropy_rounds_total",
    "Anti-entropy rounds with a peer, by result: ok, error, or yielded (put off while the delta "
    "stream to the peer is behind on deltas it holds).",
    ["peer", "result"],
)
ANTI_ENTROPY_REPAIRED = Counter(
    "selfmodel_anti_entropy_subjects_repaired_total",
    "Subjects changed here by anti-entropy (a delta the stream missed).",
    ["peer"],
)
PEERS_DROPPED = Counter(
    "selfmodel_outbox_peers_dropped_total",
    "Times a peer fell behind the outbox retention and was left to anti-entropy.",
    ["peer"],
)
REPLICATION_ERRORS = Counter(
    "selfmodel_replication_errors_total", "Delta stream sessions that ended in an error.", ["peer"]
)
FAILING_SESSIONS = Gauge(
    "selfmodel_peer_failing_sessions",
    "Sessions with a peer (delta stream or anti-entropy) failed since one last succeeded.",
    ["peer"],
)
SKIPPED_SUBJECTS = Gauge(
    "selfmodel_peer_skipped_subjects",
    "Subjects the last anti-entropy round could not replicate to a peer (it refused them).",
    ["peer"],
)
SUBJECTS_REFUSED = Counter(
    "selfmodel_peer_subjects_refused_total",
    "Subjects a peer refused in anti-entropy rounds (each round counts each again).",
    ["peer"],
)
DELTAS_REFUSED_BY_PEER = Counter(
    "selfmodel_deltas_refused_by_peer_total",
    "This node's deltas a peer refused: clock (a timestamp ahead of the peer's clock bound; "
    "resent until merged) or invalid (never mergeable; left to the operator).",
    ["peer", "reason"],
)
DELTAS_PENDING = Gauge(
    "selfmodel_deltas_pending_at_peer",
    "This node's deltas a peer refused for its clock and has not merged yet (resent with "
    "backoff; the outbox keeps them).",
    ["peer"],
)
DELTAS_REFUSED_FROM_PEER = Counter(
    "selfmodel_deltas_refused_from_peer_total",
    "Deltas received from a peer and refused here: clock (held back until this node's clock "
    "allows them) or invalid.",
    ["peer", "reason"],
)
PEER_CLOCK_OFFSET = Gauge(
    "selfmodel_peer_clock_offset_seconds",
    "How far this node's wall clock is ahead of a peer's (negative: behind), from the peer's "
    "recent replies. Beyond max_clock_offset_ms with most of the cluster, the node refuses writes.",
    ["peer"],
)
