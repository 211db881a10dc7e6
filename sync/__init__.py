"""The sync layer: the per-subject CRDT, hybrid logical clock, replication and anti-entropy.

The CRDT (causal, crdt, hlc, observation) imports neither gRPC nor RocksDB; the delta stream's
two ends (sender, receiver), anti-entropy and the replicator reach storage, peers and the
node's rules only through the Protocols of sync.ports.
"""

from sync.causal import CausalContext, Dot
from sync.crdt import SubjectState, erase_delta, merge, observe_delta, retract_delta
from sync.hlc import ClockSkewError, HybridClock
from sync.observation import Evidence, Observation, Subject, SubjectKind

__all__ = [
    "CausalContext",
    "ClockSkewError",
    "Dot",
    "Evidence",
    "HybridClock",
    "Observation",
    "Subject",
    "SubjectKind",
    "SubjectState",
    "erase_delta",
    "merge",
    "observe_delta",
    "retract_delta",
]
