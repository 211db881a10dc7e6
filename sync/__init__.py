"""The sync layer: the per-subject CRDT, hybrid logical clock, replication and anti-entropy.

The CRDT (causal, crdt, hlc, observation) imports neither gRPC nor RocksDB; the replicator
reaches storage and peers only through the Protocols of sync.ports.
"""

from sync.native import choose

choose()  # compiled or from source, decided before any compiled module can load

from sync.causal import CausalContext, Dot  # noqa: E402
from sync.crdt import SubjectState, erase_delta, merge, observe_delta, retract_delta  # noqa: E402
from sync.hlc import ClockSkewError, HybridClock  # noqa: E402
from sync.observation import Evidence, Observation, Subject, SubjectKind  # noqa: E402

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
