"""The Dockerfile's HEALTHCHECK command, run as Docker would, against a real node."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.nodes import NodeProcess
from tests.unit.test_deploy import healthcheck_command


def _run_healthcheck(target: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [*healthcheck_command(), *extra]
    assert command[0] == "selfmodel"
    executable = Path(sys.executable).with_name("selfmodel")  # the environment's console script
    env = {**os.environ, "SELFMODEL_HEALTH_TARGET": target}
    return subprocess.run(
        [str(executable), *command[1:]], env=env, capture_output=True, text=True, timeout=30
    )


def test_docker_healthcheck_passes_while_the_node_serves_and_fails_once_it_stopped(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node()
    serving = _run_healthcheck(node.address)
    assert serving.returncode == 0, serving.stderr
    assert serving.stdout.strip() == f"{node.address}: SERVING"
    unknown = _run_healthcheck(node.address, "--service", "no.such.Service")
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stderr
    node.stop()
    stopped = _run_healthcheck(node.address)
    assert stopped.returncode == 1
    assert "UNAVAILABLE" in stopped.stderr
