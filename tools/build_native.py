"""Compiles the hot modules (sync.native.COMPILED) with mypyc, beside their sources.

`make` runs this whenever a source of node/ or sync/ changed. It first removes every extension
a previous build left, so that nothing stale can shadow a source. Where the build cannot be
made (no C compiler, no Python headers, or mypyc refusing a module) it says why, leaves no
extension behind and exits 0: the project then runs as pure Python, with the same behaviour,
only slower. `--require` makes that a failure instead.

    .venv/bin/python tools/build_native.py [--require]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_native() -> ModuleType:
    """sync/native.py by path: importing the sync package would load the extensions rebuilt here."""
    spec = importlib.util.spec_from_file_location("selfmodel_native", ROOT / "sync" / "native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def remove_extensions(native: ModuleType) -> None:
    # Unlinked, never overwritten: a process that has one mapped keeps its copy intact.
    for path in native.built(ROOT).values():
        path.unlink()


def build(native: ModuleType) -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    sources = [str(native.source_of(module, Path("."))) for module in native.COMPILED]
    extensions = mypycify(["--config-file", "pyproject.toml", *sources], group_name=native.GROUP)
    setup(
        name="selfmodel-native",
        ext_modules=extensions,
        script_args=["--quiet", "build_ext", "--inplace", "--build-temp", "build/native"],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--require", action="store_true", help="fail when it cannot be built")
    args = parser.parse_args()
    os.chdir(ROOT)
    native = load_native()
    remove_extensions(native)
    started = time.monotonic()
    try:
        build(native)
    except (Exception, SystemExit) as error:  # mypyc and setuptools report failures by exiting
        remove_extensions(native)
        why = error.code if isinstance(error, SystemExit) else error  # mypyc exits with 1
        if isinstance(why, int):
            why = f"exit status {why}, its errors are above"
        print(f"build_native: not compiled ({why}); runs as pure Python", file=sys.stderr)
        return 1 if args.require else 0
    # setuptools skips compiling C that did not change and copies the extension with its old
    # time; the build is of today's sources all the same, and sync.native goes by the times.
    for path in native.built(ROOT).values():
        os.utime(path)
    print(
        f"build_native: compiled {len(native.COMPILED)} modules with mypyc "
        f"in {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
