"""Which modules run compiled, and the guard that never lets a stale build run.

`make` compiles the modules of COMPILED with mypyc (tools/build_native.py) where a C compiler
is available. The extensions land beside their sources, and Python imports an extension before
a source of the same name. So an extension built from older sources would run code that is no
longer in the tree: `git checkout`, or an edit followed by a bare `pytest`, would test the wrong
code without a word.

`sync/__init__.py` calls `choose()` before it imports anything else (and `node` imports `sync`
first), so it decides for the whole process, once. The build is used only when it is whole and
no source of `node/` or `sync/` is newer than any of its extensions. Otherwise every module of
those packages is imported from its source, with a warning that says how to rebuild: all or
nothing, because compiled modules call each other directly, never through the module attributes
an interpreted one would replace. `SELFMODEL_PURE_PYTHON=1` asks for the sources outright.

This module imports nothing from the project: the build script loads it by path.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# Every module a call runs through, from the handler wrappers to the store: the whole Observe
# handler costs about 16% less CPU compiled; sync/ alone gains about 1% (benchmarks/RESULTS.md,
# ninth and eighth sessions).
COMPILED = (
    "sync.causal",
    "sync.crdt",
    "sync.observation",
    "sync.codec",
    "sync.hlc",
    "sync.delivery",
    "node.engine",
    "node.store",
    "node.validation",
    "node.servicer",
    "node.interceptors",
    "node.metrics",
    "node.decoding",
    "node.auth",
    "node.audit",
    "node.quota",
    "node.convert",
    "node.resolution",
    "node.policy",
)

# mypyc puts the code of all the modules in one shared library named after the group (here
# sync/native__mypyc, inside a package so that it imports wherever the packages do); each
# module's own extension is a small shim that loads it.
GROUP = "sync.native"
LIBRARY = f"{GROUP}__mypyc"
PACKAGES = ("node", "sync")
ROOT = Path(__file__).resolve().parent.parent

ASK_FOR_SOURCES = "SELFMODEL_PURE_PYTHON"

_chosen: bool | None = None


def source_of(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def built(root: Path = ROOT) -> dict[str, Path]:
    """Every extension in the compiled packages by module name, listed or not, LIBRARY too."""
    return {
        f"{package}.{path.name.split('.', 1)[0]}": path
        for package in PACKAGES
        for path in sorted((root / package).glob("*.so"))
    }


def why_not_compiled(root: Path = ROOT, modules: Sequence[str] = COMPILED) -> str | None:
    """Why the build beside the sources must not run (None when it may); '' when there is none."""
    extensions = built(root)
    if not extensions:
        return ""
    if set(extensions) != {*modules, LIBRARY}:
        return "the build is incomplete"
    oldest = min(path.stat().st_mtime for path in extensions.values())
    for package in PACKAGES:
        for source in sorted((root / package).glob("*.py")):
            if source.stat().st_mtime > oldest:
                return f"{source.relative_to(root)} changed since the build"
    return None


class _FromSource(importlib.abc.MetaPathFinder):
    """Imports every module of the compiled packages from its .py file, never from an extension
    beside it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in PACKAGES:
            return None
        source = source_of(fullname)
        if source.exists():
            return importlib.util.spec_from_file_location(fullname, source)
        if any(source.parent.glob(f"{source.stem}.*.so")):  # built once, its source gone since
            raise ModuleNotFoundError(f"No module named {fullname!r} (only a build of it)")
        return None  # a package (its __init__.py is a source already), or nothing of ours


def choose() -> bool:
    """Decides, once per process, whether the compiled build runs; True when it does."""
    global _chosen
    if _chosen is not None:
        return _chosen
    reason = why_not_compiled()
    if os.environ.get(ASK_FOR_SOURCES) == "1":
        reason = reason or f"{ASK_FOR_SOURCES}=1"
    elif reason:
        warnings.warn(
            f"selfmodel runs as pure Python: {reason}; `make` rebuilds the compiled modules",
            RuntimeWarning,
            stacklevel=2,
        )
    if reason is not None:  # whatever was built, none of it loads
        sys.meta_path.insert(0, _FromSource())
    _chosen = reason is None
    return _chosen


def described() -> str:
    """What this process runs, in words: "compiled by mypyc" or "pure Python"."""
    return "compiled by mypyc" if choose() else "pure Python"
