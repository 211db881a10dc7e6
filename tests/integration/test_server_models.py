"""benchmarks/server_models.py serves every model and workload, and prints their ratios."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
def test_a_short_run_measures_threaded_and_asyncio_servers_bare_and_durable():
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "server_models.py"),
         "--rounds", "1", "--duration", "0.3", "--clients", "2"],
        capture_output=True, text=True, timeout=170, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = re.findall(r"^(threaded|asyncio) (echo|durable) +(\d) +(\d+) ", run.stdout, re.M)
    assert sorted((k, w, c) for k, w, c, _ in rows) == sorted(
        (k, w, c) for k in ("threaded", "asyncio") for w in ("echo", "durable") for c in "12"
    )
    assert all(int(calls) > 0 for *_, calls in rows)
    for workload in ("echo", "durable"):
        for clients in (1, 2):
            assert re.search(rf"^{workload}, {clients} client\(s\) +\d+\.\d\d +\d+\.\d\d$",
                             run.stdout, re.M)  # fmt: skip
    for kind in ("threaded", "asyncio"):
        line = rf"^{kind}: durable / echo calls/s with 2 clients \d+\.\d\d$"
        assert re.search(line, run.stdout, re.M)
