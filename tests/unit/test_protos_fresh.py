"""The checked-in generated modules must be exactly what `make protos` produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "protos" / "selfmodel" / "v1"


def test_generated_code_matches_the_proto_files(tmp_path: Path):
    subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh = {
        p.relative_to(tmp_path / "selfmodel" / "v1"): p.read_bytes()
        for p in (tmp_path / "selfmodel" / "v1").iterdir()
    }
    assert fresh, "protoc generated nothing"
    stale = [
        str(name)
        for name, content in sorted(fresh.items())
        if not (GENERATED / name).exists() or (GENERATED / name).read_bytes() != content
    ]
    assert not stale, f"stale generated files {stale}: run `make protos` and commit the result"
