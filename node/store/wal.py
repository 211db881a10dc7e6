"""The group commit's WAL sync: fdatasync of RocksDB's live WAL files, GIL released.

A group's leader writes its batch without sync (RocksDB has then handed the WAL record to the
OS) and syncs the live WAL files itself: the durability of RocksDB's own WAL sync, while the
node's other threads keep queueing batches for the next group (why: docs/performance.md, "Group
commit and the write path"). This holds only while RocksDB runs as assumed, so
``check_assumptions`` verifies at every open, from the OPTIONS file RocksDB wrote and from the
directory, that:

- the WAL lives in the data directory (``wal_dir`` unset or the data directory itself);
- a write without sync has reached the OS when it returns (``manual_wal_flush=false``);
- the group's writes go through the WAL (its write options do not set ``disable_wal``);
- the live WAL files are named ``*.log`` and one exists once RocksDB is open;
- each column family reports its super-version number, whose change tells a memtable switch
  (the only time RocksDB creates a WAL file).

A failed check raises WalAssumptionBroken naming the assumption; the store does not open.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import rocksdict

SUPER_VERSION = "rocksdb.current-super-version-number"


def unsynced_writes() -> rocksdict.WriteOptions:
    """The options of a group's write: through the WAL, not synced (WalSync.sync does that)."""
    opts = rocksdict.WriteOptions()
    opts.sync = False
    return opts


class WalAssumptionBroken(Exception):
    """RocksDB does not run as the WAL sync assumes; the message names the assumption."""


def latest_options(directory: str) -> dict[str, str]:
    """The ``[DBOptions]`` of the newest OPTIONS file RocksDB wrote in ``directory``."""
    numbered = {
        int(n.removeprefix("OPTIONS-")): n
        for n in os.listdir(directory)
        if n.startswith("OPTIONS-") and n.removeprefix("OPTIONS-").isdigit()  # not a .dbtmp
    }
    if not numbered:
        raise WalAssumptionBroken(f"RocksDB wrote no OPTIONS file in {directory}")
    newest = numbered[max(numbered)]
    options: dict[str, str] = {}
    section = ""
    for line in Path(directory, newest).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[DBOptions]" and "=" in line:
            key, _, value = line.partition("=")
            options[key] = value
    return options


def check_assumptions(
    directory: str, column_families: Sequence[Any], writes: rocksdict.WriteOptions
) -> None:
    """Raises WalAssumptionBroken unless RocksDB, open on ``directory`` and written with
    ``writes``, runs as the sync assumes (see the module's doc)."""
    # A property at run time, though rocksdict's stubs declare a method.
    if getattr(writes, "disable_wal") is not False:  # noqa: B009
        raise WalAssumptionBroken(
            "the WAL sync assumes the group's writes go through the WAL, but their write "
            "options set disable_wal"
        )
    options = latest_options(directory)
    wal_dir = options.get("wal_dir", "")
    if wal_dir and os.path.realpath(wal_dir) != os.path.realpath(directory):
        raise WalAssumptionBroken(
            f"the WAL sync assumes the WAL in the data directory {directory}, "
            f"but RocksDB writes it to wal_dir={wal_dir}"
        )
    manual = options.get("manual_wal_flush")
    if manual != "false":
        raise WalAssumptionBroken(
            "the WAL sync assumes manual_wal_flush=false (an unsynced write in the OS's hands "
            f"when it returns), but RocksDB runs with manual_wal_flush={manual}"
        )
    if not any(n.endswith(".log") for n in os.listdir(directory)):
        raise WalAssumptionBroken(
            f"the WAL sync assumes RocksDB's live WAL files named *.log in {directory}, "
            "but none is there"
        )
    for cf in column_families:
        if not isinstance(cf.property_int_value(SUPER_VERSION), int):
            raise WalAssumptionBroken(
                f"the WAL sync assumes RocksDB reports {SUPER_VERSION}, but it does not"
            )


class WalSync:
    """Syncs the live WAL files of the RocksDB in ``directory``; thread-safe.

    Counts the groups written (``written``) and how many a sync covers: one sync covers every
    group written before it started, so concurrent callers share syncs. After a failed sync
    (``failed``) every later one raises ``refusal()``: the kernel may have dropped the dirty
    pages, so a later sync could succeed over a hole.
    """

    def __init__(self, directory: str, refusal: Callable[[], Exception]) -> None:
        self.directory = directory
        self._refusal = refusal
        self._lock = threading.Lock()
        self._files: dict[str, int] = {}  # live WAL file -> descriptor kept to sync it
        self._versions: tuple[int, ...] = ()  # memtable versions when the files were listed
        self.failed: OSError | None = None
        self.written_groups = 0
        self.synced_groups = 0

    def pending(self) -> bool:
        return self.synced_groups < self.written_groups

    def sync(self, column_families: Sequence[Any]) -> None:
        """fdatasyncs every live WAL file, and the directory when a new one appeared.

        Every live WAL is synced, not only the newest, so a WAL switch around the write loses
        nothing; a WAL deleted meanwhile was obsolete, its memtables flushed to synced SST
        files. The files are listed again only when a memtable version changed. Each call that
        blocks releases the GIL and must win it back, so the common case makes one: an
        ``os.fdatasync`` per WAL.
        """
        with self._lock:
            if self.failed is not None:
                raise self._refusal()
            covered = self.written_groups
            if self.synced_groups >= covered:
                return  # a sync that started after our write already finished
            try:
                versions = tuple(cf.property_int_value(SUPER_VERSION) for cf in column_families)
                if versions != self._versions:
                    self._list_files()
                    self._versions = versions
                for fd in self._files.values():
                    os.fdatasync(fd)
            except OSError as exc:
                # Like RocksDB after a failed WAL sync: no further write until RocksDB is
                # reopened (resume_writes), which recovers what is on disk, as a restart does.
                self.failed = exc
                raise
            self.synced_groups = covered

    def _list_files(self) -> None:
        names = {n for n in os.listdir(self.directory) if n.endswith(".log")}
        for gone in self._files.keys() - names:
            os.close(self._files.pop(gone))
        new = False
        for name in sorted(names - self._files.keys()):
            try:
                self._files[name] = os.open(os.path.join(self.directory, name), os.O_RDONLY)
            except FileNotFoundError:
                continue
            new = True
        if new:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def release(self) -> None:
        """Closes the WAL descriptors, so a WAL RocksDB deletes (after a forget) is really gone."""
        with self._lock:
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()
            self._versions = ()

    def reopened(self) -> None:
        """RocksDB was reopened, recovering what its WAL holds: nothing is left to sync."""
        self.synced_groups = self.written_groups
