"""Reconnect backoffs at their maximum for one node process, for tests
(tests/faults/test_delta_stream.py).

Python imports ``sitecustomize`` at start-up from PYTHONPATH. With
``SELFMODEL_TEST_FULL_BACKOFF=<node name>`` in the environment, the process of that node (its
command line holds ``--name <node name>``) waits every full-jitter backoff out at its maximum
instead of a random fraction of it: the worst case, every time, so a test can rely on a
reconnect coming only when something cuts the wait short. Every other process is left as it is.
"""

from __future__ import annotations

import os
from typing import Any


def _install(name: str) -> None:
    with open("/proc/self/cmdline", "rb") as f:
        argv = f.read().decode(errors="replace").split("\0")
    if "--name" not in argv or argv[argv.index("--name") + 1 :][:1] != [name]:
        return
    import tenacity

    class AtMaximum(tenacity.wait_random_exponential):
        def __call__(self, retry_state: Any) -> float:
            return float(self.max)

    tenacity.wait_random_exponential = AtMaximum  # before sync.sender and sync.resend import it


_NAME = os.environ.get("SELFMODEL_TEST_FULL_BACKOFF")
if _NAME:
    _install(_NAME)
