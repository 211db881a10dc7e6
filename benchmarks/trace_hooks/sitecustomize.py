"""Stage timestamps inside node processes, for benchmarks/trace_replication.py.

Python imports ``sitecustomize`` at start-up from PYTHONPATH. In a ``selfmodel node`` process
(its command line holds ``node`` and ``--name``) and with ``SELFMODEL_TRACE_DIR`` set, this
wraps a few functions of the node once ``node.server`` is imported and appends one line per
event to ``<dir>/<node name>.trace``: ``<time.monotonic()> <event> [detail]``. Events:

- ``obs_in`` / ``obs_out``: an Observe call enters / leaves the servicer;
- ``commit`` / ``commit_in``: a group commit with / without outbox entries is written (the
  former when RocksDB has it, before its WAL sync; the latter after the sync); ``synced``: a
  WAL sync returned;
- ``send <peer>``: the delta stream to a peer takes a batch;
- ``recv <peer>``: the Sync servicer has a batch from a peer; ``merged <peer>``: it yields an ack;
- ``notify``: watches of a subject are woken; ``wyield``: a watch yields a snapshot;
- ``gc <generation> <ms>``: a garbage collection and its duration.

It relies on internal names (Store._write_group, PeerReplicator._batches, ...): a profiling aid,
not an interface. Nothing happens in any other process, or without the variable.
"""

from __future__ import annotations

import builtins
import gc
import os
import threading
import time
from typing import Any

_DIR = os.environ.get("SELFMODEL_TRACE_DIR")


def _argv() -> list[str]:
    with open("/proc/self/cmdline", "rb") as f:
        return f.read().decode(errors="replace").split("\0")


def _install(directory: str, name: str) -> None:
    out = open(os.path.join(directory, f"{name}.trace"), "a", buffering=1)  # noqa: SIM115
    lock = threading.Lock()

    def rec(event: str, detail: str = "") -> None:
        line = f"{time.monotonic():.6f} {event} {detail}\n"
        with lock:
            out.write(line)

    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            rec("gc", f"{info['generation']} {(time.perf_counter() - started[0]) * 1e3:.3f}")

    gc.callbacks.append(on_gc)

    def patch() -> None:
        from node import engine, replication, servicer, store
        from sync import replicator

        write_group = store.Store._write_group
        sync_wal = store.Store._sync_wal
        traced_seq = [0]

        def committed(self: Any) -> None:
            # Once per group with outbox entries, when RocksDB has it: the delta streams may
            # ship it from then on, while the WAL syncs.
            if self.outbox_seq != traced_seq[0]:
                traced_seq[0] = self.outbox_seq
                rec("commit")

        def _sync_wal(self: Any) -> Any:
            committed(self)
            try:
                return sync_wal(self)
            finally:
                rec("synced")

        def _write_group(self: Any, group: Any) -> Any:
            before = self.outbox_seq
            written = write_group(self, group)
            if self.outbox_seq == before:
                rec("commit_in")
            else:
                committed(self)  # without fsync: nothing recorded it yet
            return written

        batches = replicator.PeerReplicator._batches

        def _batches(self: Any, position: int) -> Any:
            for batch in batches(self, position):
                rec("send", self.peer)
                yield batch

        replicate = replication.SyncServicer._replicate

        def _replicate(self: Any, peer: str, requests: Any, context: Any) -> Any:
            def received() -> Any:
                for request in requests:
                    rec("recv", peer)
                    yield request

            for ack in replicate(self, peer, received(), context):
                rec("merged", peer)
                yield ack

        notify = engine.Engine._notify

        def _notify(self: Any, subject: Any) -> Any:
            rec("notify")
            return notify(self, subject)

        watch = servicer.SelfModelServicer.WatchSelfModel

        def watch_self_model(self: Any, request: Any, context: Any) -> Any:
            for snapshot in watch(self, request, context):
                rec("wyield")
                yield snapshot

        observe = servicer.SelfModelServicer.Observe

        def observe_call(self: Any, request: Any, context: Any) -> Any:
            rec("obs_in")
            try:
                return observe(self, request, context)
            finally:
                rec("obs_out")

        store.Store._write_group = _write_group  # type: ignore[method-assign]
        store.Store._sync_wal = _sync_wal  # type: ignore[method-assign]
        replicator.PeerReplicator._batches = _batches  # type: ignore[method-assign]
        replication.SyncServicer._replicate = _replicate  # type: ignore[method-assign, assignment]
        engine.Engine._notify = _notify  # type: ignore[method-assign]
        servicer.SelfModelServicer.WatchSelfModel = watch_self_model  # type: ignore[method-assign]
        servicer.SelfModelServicer.Observe = observe_call  # type: ignore[method-assign]

    original_import = builtins.__import__
    done = threading.Event()

    def hooked(name: str, *args: Any, **kwargs: Any) -> Any:
        module = original_import(name, *args, **kwargs)
        if name == "node.server" and not done.is_set():
            done.set()
            patch()
        return module

    builtins.__import__ = hooked


if _DIR:
    _args = _argv()
    if "node" in _args and "--name" in _args:
        _install(_DIR, _args[_args.index("--name") + 1])
