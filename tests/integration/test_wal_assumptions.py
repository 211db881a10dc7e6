"""The group commit syncs RocksDB's WAL files itself (node.store.wal): each thing it assumes about
RocksDB, broken, stops the store from opening with an error naming it, instead of leaving
acknowledged writes unsynced."""

from __future__ import annotations

import gc
import os
import re
from pathlib import Path

import pytest
import rocksdict

from node.store import Store, StoreError, tables
from node.store import store as store_module
from node.store.wal import WalAssumptionBroken, check_assumptions, unsynced_writes


def without_wal() -> rocksdict.WriteOptions:
    opts = unsynced_writes()
    setattr(opts, "disable_wal", True)  # noqa: B010 (a property; rocksdict's stubs say a method)
    return opts


def test_a_wal_outside_the_data_directory_stops_the_store_from_opening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    elsewhere = tmp_path / "elsewhere"
    made = tables.db_options

    def wal_elsewhere(strict: bool) -> rocksdict.Options:
        opts = made(strict)
        opts.set_wal_dir(str(elsewhere))
        return opts

    monkeypatch.setattr(tables, "db_options", wal_elsewhere)
    named = f"assumes the WAL in the data directory.*{re.escape(str(elsewhere))}"
    with pytest.raises(StoreError, match=named):
        Store(tmp_path / "db", "sales")


def test_manual_wal_flush_stops_the_store_from_opening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # rocksdict has no setter for it: RocksDB loads it from an options file of its own format.
    template = tmp_path / "template"
    db = rocksdict.Rdict(str(template), tables.db_options(strict=True))
    db.close()
    del db
    gc.collect()
    [options_file] = template.glob("OPTIONS-*")
    text = options_file.read_text()
    assert "manual_wal_flush=false" in text
    options_file.write_text(text.replace("manual_wal_flush=false", "manual_wal_flush=true"))

    def manual_flush(strict: bool) -> rocksdict.Options:
        opts, _ = rocksdict.Options.load_latest(str(template))
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        return opts

    monkeypatch.setattr(tables, "db_options", manual_flush)
    with pytest.raises(StoreError, match=r"assumes manual_wal_flush=false.*manual_wal_flush=true"):
        Store(tmp_path / "db", "sales")


def test_writes_that_skip_the_wal_stop_the_store_from_opening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(store_module, "unsynced_writes", without_wal)
    with pytest.raises(StoreError, match=r"writes go through the WAL.*disable_wal"):
        Store(tmp_path / "db", "sales")


def test_live_wal_files_not_named_dot_log_fail_the_check(tmp_path: Path):
    db = rocksdict.Rdict(str(tmp_path), tables.db_options(strict=True))
    try:
        check_assumptions(str(tmp_path), [db], unsynced_writes())  # as RocksDB runs by default
        for name in os.listdir(tmp_path):
            if name.endswith(".log"):
                os.rename(tmp_path / name, tmp_path / name.replace(".log", ".wal"))
        with pytest.raises(WalAssumptionBroken, match=r"live WAL files named \*\.log"):
            check_assumptions(str(tmp_path), [db], unsynced_writes())
    finally:
        db.close()


def test_a_column_family_without_a_super_version_number_fails_the_check(tmp_path: Path):
    class NoSuperVersion:
        def property_int_value(self, name: str) -> int | None:
            return None

    db = rocksdict.Rdict(str(tmp_path), tables.db_options(strict=True))
    try:
        with pytest.raises(WalAssumptionBroken, match="current-super-version-number"):
            check_assumptions(str(tmp_path), [db, NoSuperVersion()], unsynced_writes())
    finally:
        db.close()
