"""A slow disk for one node process, for tests (tests/integration/test_cluster.py).

Python imports ``sitecustomize`` at start-up from PYTHONPATH. With
``SELFMODEL_TEST_SLOW_FDATASYNC=<node name>=<seconds>`` in the environment, the process of that
node (its command line holds ``--name <node name>``) sleeps that long before every
``os.fdatasync``: the WAL syncs of its group commits take that much longer. Every other process
is left as it is.
"""

from __future__ import annotations

import os
import time


def _install(spec: str) -> None:
    name, _, seconds = spec.partition("=")
    with open("/proc/self/cmdline", "rb") as f:
        argv = f.read().decode(errors="replace").split("\0")
    if "--name" not in argv or argv[argv.index("--name") + 1 :][:1] != [name]:
        return
    delay = float(seconds)
    fdatasync = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        time.sleep(delay)
        fdatasync(fd)

    os.fdatasync = slow_fdatasync


_SPEC = os.environ.get("SELFMODEL_TEST_SLOW_FDATASYNC")
if _SPEC:
    _install(_SPEC)
