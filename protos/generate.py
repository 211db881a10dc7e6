"""Regenerates the Python modules and mypy stubs of the contracts, next to the .proto files.

Run by `make protos`; tests/unit/test_protos_fresh.py runs it into a temporary folder and fails
when the checked-in modules differ, so the generated code can never drift from the contracts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def generate(out: Path) -> None:
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "selfmodel").rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    bindir = Path(sys.executable).parent
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    # protoc resolves the file names against -I, so run from the root.
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        code = protoc.main(args)
    finally:
        os.chdir(cwd)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=ROOT, help="where to write (default: next to the .proto files)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    generate(args.out.resolve())
    print(f"generated into {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
