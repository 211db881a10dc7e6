"""A node that cannot create or open its data directory says so in one line and exits non-zero."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.processes import node_command
from tests.nodes import free_port


def run_node(data: Path) -> subprocess.CompletedProcess[str]:
    command = node_command("lonely", data_dir=data, listen=f"127.0.0.1:{free_port()}", metrics="")
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@contextlib.contextmanager
def unwritable(parent: Path) -> Iterator[str]:
    """Makes ``parent`` unwritable for the node; yields the cause the node should name.

    Permissions do not stop root, so as root the parent is a read-only tmpfs instead.
    """
    parent.mkdir()
    if os.geteuid() != 0:
        parent.chmod(0o555)
        try:
            yield "Permission denied"
        finally:
            parent.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(parent)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"as root, cannot mount a read-only parent: {mounted.stderr.strip()}")
    try:
        yield "Read-only file system"
    finally:
        subprocess.run(["umount", "-l", str(parent)], check=False, timeout=30)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("selfmodel node:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_a_data_directory_under_an_unwritable_parent_is_one_line_naming_path_and_cause(
    tmp_path: Path,
):
    data = tmp_path / "parent" / "new" / "data"
    with unwritable(tmp_path / "parent") as cause:
        line = one_line_error(run_node(data))
    assert str(data) in line and cause in line, line


def test_a_data_directory_under_a_file_is_one_line_naming_path_and_cause(tmp_path: Path):
    (tmp_path / "afile").write_text("not a directory")
    data = tmp_path / "afile" / "data"
    line = one_line_error(run_node(data))
    assert str(data) in line and "Not a directory" in line, line


def test_a_data_directory_rocksdb_cannot_open_is_one_line_naming_path_and_cause(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "CURRENT").mkdir()  # where RocksDB expects a file
    line = one_line_error(run_node(data))
    assert str(data) in line and "RocksDB" in line, line
