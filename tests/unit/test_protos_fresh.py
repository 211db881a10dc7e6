"""The checked-in generated modules must be exactly what `make protos` produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"


def test_generated_code_matches_the_proto_files(tmp_path: Path):
    subprocess.run(
        [sys.executable, str(PROTOS / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert fresh, "protoc generated nothing"
    stale = [
        str(name)
        for name, content in sorted(fresh.items())
        if not (PROTOS / name).exists() or (PROTOS / name).read_bytes() != content
    ]
    assert not stale, f"stale generated files {stale}: run `make protos` and commit the result"
    # Every generated module has its contract: none is left behind by a moved or removed file.
    kept = {
        p.relative_to(PROTOS)
        for p in (PROTOS / "selfmodel").rglob("*_pb2*")
        if p.suffix in (".py", ".pyi")
    }
    assert kept <= set(fresh), (
        f"generated files without a .proto: {sorted(map(str, kept - set(fresh)))}"
    )
