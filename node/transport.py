"""Which of gRPC's two TCP servers a node runs on: chosen before gRPC is imported.

grpcio 1.85 carries two implementations of a server's listener and of the connections it
accepts: EventEngine's, the default, whose own threads read and write the sockets and hand each
event to the thread polling the completion queue, and iomgr's, where that polling thread
(gRPC-Python's serving loop) reads and writes the sockets itself. A node under load is bound by
the one CPU its GIL lets it use, and each handoff between threads costs it a wake-up and a turn
at the GIL. With iomgr's listener a durable ``Observe`` makes about 11 context switches instead
of 13.5, and costs the node about 6% less CPU, measured with ``benchmarks/ab_observe.py``
(RESULTS.md, "Eleventh session"); the echo floor gains about 3% from it.

gRPC reads its experiments from ``GRPC_EXPERIMENTS`` once, when ``grpc`` is imported, so
``configure`` must run first: the ``selfmodel`` command line calls it before it imports gRPC
(which is why ``federation/__init__.py`` imports the client library lazily). An operator's own
``GRPC_EXPERIMENTS`` is left as it is; set it empty for gRPC's defaults.

This module imports nothing from gRPC, and nothing that does.
"""

from __future__ import annotations

import os
import sys

ENV = "GRPC_EXPERIMENTS"
# The experiment's name in grpcio 1.85 (src/core/lib/experiments/experiments.yaml): "Use
# EventEngine listeners instead of iomgr's grpc_tcp_server". A later grpcio that drops it logs
# "Unknown experiment" and runs EventEngine's; tests/unit/test_transport.py then fails.
NODE_EXPERIMENTS = "-event_engine_listener"

_configured_in_time: bool | None = None  # None: configure was not called in this process


def configure() -> None:
    """Asks gRPC for iomgr's listener, unless ``GRPC_EXPERIMENTS`` is set already.

    Only effective before ``grpc`` is imported; ``described`` says whether it was."""
    global _configured_in_time
    given = ENV in os.environ  # by the environment this process started with, gRPC read it
    os.environ.setdefault(ENV, NODE_EXPERIMENTS)
    _configured_in_time = given or "grpc" not in sys.modules


def experiments() -> str:
    """The experiments a node started from this process's environment asks gRPC for."""
    return os.environ.get(ENV, NODE_EXPERIMENTS)


def described() -> str:
    """What this process's gRPC was asked for, in words, for the node's start log."""
    asked = os.environ.get(ENV)
    if _configured_in_time is False:
        return f"gRPC imported before {ENV} was set: gRPC's default listener"
    if not asked:
        return "gRPC's default listener"
    if asked == NODE_EXPERIMENTS:
        return "iomgr's listener"
    return f"{ENV}={asked}"
