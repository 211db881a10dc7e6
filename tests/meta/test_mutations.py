"""tests/mutations.py: each one-line mutant of a silent rule is caught by its named tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import mutations

ROOT = Path(__file__).resolve().parents[2]


def test_every_mutant_line_stands_exactly_once_where_it_is_looked_for() -> None:
    """Cheap, in every run: a mutated line that moved fails here, not only in the meta run."""
    mutations.check_lines()
    assert {m.path for m in mutations.MUTANTS} >= {
        "node/auth.py", "node/validation.py", "node/resolution.py", "sync/crdt.py"
    }  # fmt: skip


def test_a_line_that_moved_stops_the_check_naming_it(tmp_path: Path) -> None:
    moved = mutations.Mutant("moved", "x.py", "    return 1", "    return 2", ("t",))
    (tmp_path / "x.py").write_text("def f():\n    return  1\n")
    with pytest.raises(mutations.MutationError, match=r"'    return 1' 0 times"):
        mutations.check_lines(tmp_path, [moved])
    (tmp_path / "x.py").write_text("def f():\n    return 1\n\ndef g():\n    return 1\n")
    with pytest.raises(mutations.MutationError, match="2 times"):
        mutations.check_lines(tmp_path, [moved])


@pytest.mark.meta
@pytest.mark.timeout(600)
def test_every_mutant_is_caught_by_its_named_tests() -> None:
    done = subprocess.run(
        [sys.executable, "tests/mutations.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=560,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    caught = [line for line in done.stdout.splitlines() if line.startswith("caught")]
    assert len(caught) == len(mutations.MUTANTS), done.stdout
