"""benchmarks/ab_observe.py runs two nodes of given checkouts, balanced, and reports ratios."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
def test_a_short_run_against_this_checkout_measures_every_round_in_both_start_orders():
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ab_observe.py"), str(ROOT),
         "--rounds", "4", "--duration", "0.3", "--writers", "1",
         "--base-env", "GRPC_EXPERIMENTS="],
        capture_output=True, text=True, timeout=170, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "this started first:" in out and "base started first:" in out
    built = r"\((compiled|pure Python)"
    assert len(re.findall(rf"  this  {re.escape(str(ROOT))}  {built}\)", out)) == 2
    assert (
        len(re.findall(rf"  base  {re.escape(str(ROOT))}  {built}, GRPC_EXPERIMENTS=''\)", out))
        == 2
    )
    rounds = re.findall(r"round +(\d+) .* CPU base/this (\d+\.\d+)", out)
    assert [int(r) for r, _ in rounds] == [1, 2, 3, 4] and all(float(x) > 0 for _, x in rounds)
    assert re.search(r"CPU per call, base / this +mean \d+\.\d+", out)
    assert re.search(r"by half \(this first, base first\): \d+\.\d+ \d+\.\d+", out)


def test_an_environment_setting_without_a_value_is_refused():
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ab_observe.py"), str(ROOT),
         "--this-env", "GRPC_EXPERIMENTS"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 2 and "--this-env takes KEY=VALUE" in run.stderr


def test_a_directory_that_is_no_checkout_is_refused(tmp_path: Path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ab_observe.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 2 and "is not a selfmodel checkout" in run.stderr
