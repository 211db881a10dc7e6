"""A node stops cleanly on SIGTERM or SIGINT whichever of its threads the kernel hands it to.

Python runs signal handlers in the main thread only; a process-directed signal may land on any
thread (gRPC starts many), and then nothing interrupts a main thread blocked in a wait.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

import pytest

from tests.nodes import NodeProcess

# tgkill(2): a signal to one thread of a process, here one that is not the main thread.
TGKILL = {"x86_64": 234, "aarch64": 131}.get(os.uname().machine)


@pytest.mark.skipif(
    TGKILL is None or not sys.platform.startswith("linux"),
    reason="needs Linux on x86_64 or aarch64 (the tgkill system call's number)",
)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_on_any_thread_stops_the_node_cleanly(
    start_node: Callable[..., NodeProcess], sig: signal.Signals
) -> None:
    node = start_node("signalled")
    assert node.proc is not None
    pid = node.proc.pid
    others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert others, "a serving node runs more threads than its main one"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(TGKILL, pid, others[-1], int(sig)) == 0, os.strerror(ctypes.get_errno())
    assert node.proc.wait(timeout=10) == 0
    assert f"signal {int(sig)}: shutting down" in node.log()
    assert "stopped" in node.log()
