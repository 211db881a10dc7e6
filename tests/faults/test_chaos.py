"""A short run of benchmarks/chaos.py: random faults under write load, then heal and audit."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import chaos

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SEED = 20261124


@pytest.mark.timeout(300)
def test_a_short_chaos_run_loses_no_acknowledged_write_and_no_forgotten_subject_comes_back(
    tmp_path: Path,
) -> None:
    args = chaos.parse_args(
        ["--nodes", "3", "--duration", "30", "--seed", str(SEED), "--converge-timeout", "60",
         "--data", str(tmp_path), "--quiet"]
    )  # fmt: skip
    report = chaos.run(args)
    print(report.render())
    replay = f"(replay: python -m benchmarks.chaos --nodes 3 --duration 30 --seed {SEED})"
    assert report.converged, f"no convergence within 60 s after heal {replay}"
    assert report.lost == 0, f"lost {report.lost} writes, e.g. {report.lost_examples} {replay}"
    assert report.resurrected == 0, f"came back: {report.resurrected_examples} {replay}"
    assert report.retracted_back == 0, f"retracted writes came back {replay}"
    assert report.retract_missed == 0, f"a retract missed its own write {replay}"
    assert len(report.faults) >= 4 and report.forgets >= 2
    assert report.acknowledged > 1000 and report.forgotten > 0 and report.retracted > 0
    assert report.after_forget > 0  # writes after a forget were checked present (lost == 0)
