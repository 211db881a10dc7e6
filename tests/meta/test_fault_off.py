"""The fault tests depend on their faults: with every fault proxy forced to pass everything
through (SELFMODEL_FAULTPROXY=off, tests/faultproxy.py), each test marked ``proxy`` fails.

A fault test that passes without its fault proves nothing about the fault; the normal run of the
suite is the other half (there every one of them passes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.faultproxy import OFF_ENV

ROOT = Path(__file__).resolve().parents[2]
# At least these many tests carry the marker; fewer means the selection broke.
MIN_SELECTED = 7

pytestmark = pytest.mark.meta


@pytest.mark.timeout(600)
def test_every_fault_test_fails_with_the_fault_proxies_passing_everything(tmp_path: Path) -> None:
    report = tmp_path / "fault-off.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "proxy", "-q", "-p", "no:cacheprovider",
         "-n", "2", "--dist", "loadfile",
         "--junitxml", str(report), "tests"],
        cwd=ROOT, env={**os.environ, OFF_ENV: "off"}, capture_output=True, text=True,
        timeout=560,
    )  # fmt: skip
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    cases = ET.parse(report).getroot().iter("testcase")
    outcomes = {
        f"{c.get('classname')}::{c.get('name')}": (
            "failed" if c.find("failure") is not None
            else "error" if c.find("error") is not None
            else "skipped" if c.find("skipped") is not None
            else "passed"
        )
        for c in cases
    }  # fmt: skip
    assert len(outcomes) >= MIN_SELECTED, (outcomes, done.stdout[-3000:])
    survivors = {name: outcome for name, outcome in outcomes.items() if outcome != "failed"}
    assert not survivors, (
        "these fault tests did not fail with their faults switched off (an error or skip is "
        f"no failure of the test's own assertions either): {survivors}\n" + done.stdout[-3000:]
    )
