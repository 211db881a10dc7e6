"""The compiled build runs only when it is whole and fresh; otherwise every module from source."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from sync import native

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
MODULES = ("node.engine", "sync.crdt")


def tree(root: Path, built: tuple[str, ...] = MODULES, library: bool = True) -> Path:
    """A source tree with node/ and sync/, and extensions for `built` written after them."""
    for package in native.PACKAGES:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").write_text("")
    for module in MODULES:
        native.source_of(module, root).write_text("")
    for module in built:
        extension = native.source_of(module, root).with_suffix(SUFFIX)
        extension.write_bytes(b"")
    if library:
        native.source_of(native.LIBRARY, root).with_suffix(SUFFIX).write_bytes(b"")
    later = max(p.stat().st_mtime for p in root.rglob("*.py")) + 10
    for path in root.rglob(f"*{SUFFIX}"):
        os.utime(path, (later, later))
    return root


def test_without_a_build_the_sources_run_and_nothing_is_said(tmp_path: Path):
    assert native.why_not_compiled(tree(tmp_path, built=(), library=False), MODULES) == ""


def test_a_whole_build_newer_than_every_source_runs(tmp_path: Path):
    assert native.why_not_compiled(tree(tmp_path), MODULES) is None


def edit_after_the_build(source: Path, root: Path) -> None:
    """Gives ``source`` a time a minute after the newest extension under ``root``."""
    build = max(path.stat().st_mtime for path in root.rglob(f"*{SUFFIX}"))
    os.utime(source, (build + 60,) * 2)


def test_a_build_older_than_any_source_of_its_packages_does_not_run(tmp_path: Path):
    root = tree(tmp_path)
    edited = root / "node" / "policy.py"  # not compiled, but compiled against
    edited.write_text("")
    edit_after_the_build(edited, root)
    assert native.why_not_compiled(root, MODULES) == "node/policy.py changed since the build"


@pytest.mark.parametrize(
    ("built", "library"),
    [(("node.engine",), True), (MODULES, False), ((*MODULES, "sync.hlc"), True)],
    ids=["an extension missing", "the shared library missing", "an extension not listed"],
)
def test_an_incomplete_build_does_not_run(tmp_path: Path, built: tuple[str, ...], library: bool):
    if "sync.hlc" in built:
        native.source_of("sync.hlc", tmp_path).parent.mkdir(parents=True)
        native.source_of("sync.hlc", tmp_path).write_text("")
    root = tree(tmp_path, built, library)
    assert native.why_not_compiled(root, MODULES) == "the build is incomplete"


def test_where_a_c_compiler_is_the_hot_modules_run_compiled():
    """`make` builds them before the tests; a silent fall back to Python would fail here."""
    if shutil.which(sysconfig.get_config_var("CC").split()[0]) is None:
        pytest.skip("no C compiler: the modules run as pure Python")
    assert native.choose(), "run the tests through `make test`, which builds the modules"
    import node.engine

    assert node.engine.__file__.endswith(SUFFIX)


def run_in(root: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a Python process importing the packages of ``root``."""
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        env={**os.environ, "PYTHONPATH": f"{root}:{ROOT / 'protos'}", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def imported_from(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    script = "import node.engine, sync.crdt; print(node.engine.__file__); print(sync.crdt.__file__)"
    run = run_in(root, script, **env)
    run.check_returncode()
    return run


def sources(root: Path) -> list[str]:
    return [str(root / "node/engine.py"), str(root / "sync/crdt.py")]


@pytest.fixture
def built_copy(tmp_path: Path) -> Path:
    """A copy of this tree's sources and its build, times kept."""
    if not native.choose():
        pytest.skip("this tree has no compiled build")
    for package in native.PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package)
    return tmp_path


def test_a_process_imports_the_build_and_the_sources_when_asked(built_copy: Path):
    compiled = imported_from(built_copy)
    assert compiled.stdout.split() == [
        str(built_copy / f"node/engine{SUFFIX}"),
        str(built_copy / f"sync/crdt{SUFFIX}"),
    ]
    assert "RuntimeWarning" not in compiled.stderr
    asked = imported_from(built_copy, SELFMODEL_PURE_PYTHON="1")
    assert asked.stdout.split() == sources(built_copy)
    assert "RuntimeWarning" not in asked.stderr


def test_after_an_edit_a_process_imports_every_module_from_source_and_says_so(built_copy: Path):
    edit_after_the_build(built_copy / "sync" / "hlc.py", built_copy)
    stale = imported_from(built_copy)
    assert stale.stdout.split() == sources(built_copy)
    assert "sync/hlc.py changed since the build; `make` rebuilds" in stale.stderr


def test_a_module_whose_source_is_gone_is_not_loaded_from_an_unused_build(built_copy: Path):
    (built_copy / "node" / "quota.py").unlink()
    edit_after_the_build(built_copy / "node" / "policy.py", built_copy)
    gone = run_in(built_copy, "import node.quota")
    assert gone.returncode == 1
    assert "No module named 'node.quota' (only a build of it)" in gone.stderr


@pytest.mark.slow
def test_without_a_c_compiler_the_build_leaves_no_extension_and_the_sources_run(tmp_path: Path):
    for name in (*native.PACKAGES, "protos", "tools"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("*.so"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tmp_path)
    for required in (False, True):
        build = subprocess.run(
            [sys.executable, "tools/build_native.py", *(["--require"] if required else [])],
            cwd=tmp_path,
            env={**os.environ, "CC": "false"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert build.returncode == (1 if required else 0), build.stderr
        assert "not compiled" in build.stderr and "runs as pure Python" in build.stderr
        assert not list(tmp_path.rglob("*.so"))
    assert imported_from(tmp_path).stdout.split() == sources(tmp_path)
