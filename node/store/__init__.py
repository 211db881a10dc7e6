"""The node's RocksDB store: subject states, outbox, peer sequences, digests and meta.

One module per concern; ``Store`` (store) stacks them:

- tables: the column families, opening and closing RocksDB, damage found at open;
- wal: the group commit's WAL sync, and the RocksDB behaviour it checks at open;
- identity: the node a directory belongs to, each run's incarnation, run and actor;
- rows: a subject as a head row and a row per observation, and migrating one-value states;
- cache: the subject state cache;
- digests: anti-entropy's per-subject digests and bucket hashes;
- outbox: the deltas to replicate (sync.ports.DeltaLog);
- suspension: refusing writes after a disk failure, reopening RocksDB to resume;
- commit: group commit, a subject's changed rows + outbox + digest in one batch;
- reads: reads, peer sequences and the quarantine of corrupt states;
- diskwatch: suspends writes before the disk fills, resumes them once it has room.
"""

from node.store.cache import cache_cost
from node.store.commit import Change
from node.store.digests import BUCKETS, bucket_of
from node.store.outbox import OUTBOX_TAIL, Outbox, OutboxEntry
from node.store.store import Store
from node.store.tables import COLUMN_FAMILIES, SCHEMA_VERSION, StoreError

__all__ = [
    "BUCKETS",
    "COLUMN_FAMILIES",
    "OUTBOX_TAIL",
    "SCHEMA_VERSION",
    "Change",
    "Outbox",
    "OutboxEntry",
    "Store",
    "StoreError",
    "bucket_of",
    "cache_cost",
]
