"""Small rules of cluster files (and of the flags that stand in for them) the command line
relies on."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from federation.cli import main
from federation.cluster import ClusterFileError, dial_address, node_config, parse
from node.server import ConfigError, NodeConfig, start
from sync.bounds import SubjectLimits


@pytest.mark.parametrize(
    ("listen", "dial"),
    [
        ("0.0.0.0:7070", "127.0.0.1:7070"),
        ("[::]:7070", "[::1]:7070"),
        (":7070", "127.0.0.1:7070"),
        ("127.0.0.1:7070", "127.0.0.1:7070"),
        ("[::1]:7070", "[::1]:7070"),
        ("selfmodel-0.selfmodel-peers:7070", "selfmodel-0.selfmodel-peers:7070"),
        ("unix:/run/selfmodel.sock", "unix:/run/selfmodel.sock"),
    ],
)
def test_a_wildcard_listen_address_is_dialed_on_loopback(listen: str, dial: str) -> None:
    assert dial_address(listen) == dial


def _file(cluster_lines: str) -> dict:
    node = 'name = "sales"\naddress = "127.0.0.1:7070"'
    return tomllib.loads(f"[cluster]\n{cluster_lines}\n[[node]]\n{node}\n")


def _limits(lines: str) -> str:
    return f"[cluster.limits]\n{lines}"


def test_cache_mb_reaches_the_node_and_defaults_to_256(tmp_path: Path) -> None:
    assert node_config(parse(_file(""), tmp_path, None), "sales").cache_mb == 256.0
    sized = parse(_file(_limits("cache_mb = 64\nsnapshot_cache_mb = 8")), tmp_path, None)
    assert node_config(sized, "sales").cache_mb == 64.0
    assert node_config(sized, "sales").snapshot_cache_mb == 8.0


@pytest.mark.parametrize("value", ["0", "-1", "true", '"64"', "inf", "nan"])
def test_a_cache_mb_that_is_not_a_positive_number_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ClusterFileError, match="cache_mb must be a number above 0"):
        parse(_file(_limits(f"cache_mb = {value}")), tmp_path, None)


@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan", "lots"])
def test_selfmodel_node_refuses_a_cache_mb_that_is_not_a_positive_number(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["node", "--cache-mb", value])
    assert exit.value.code == 2
    assert f"must be a positive number of MiB, got {value!r}" in capsys.readouterr().err


def test_subject_limits_and_the_message_size_reach_the_node_and_default(tmp_path: Path) -> None:
    default = node_config(parse(_file(""), tmp_path, None), "sales")
    assert default.subject_limits == SubjectLimits()
    assert default.max_message_bytes == 4 * 1024 * 1024
    lines = "\n".join(
        [
            "max_subject_slots = 10",
            "max_subject_observations = 20",
            "max_subject_bytes = 30000",
            "max_message_bytes = 65536",
        ]
    )
    config = node_config(parse(_file(_limits(lines)), tmp_path, None), "sales")
    assert config.subject_limits == SubjectLimits(10, 20, 30000)
    assert config.max_message_bytes == 65536


@pytest.mark.parametrize("key", ["max_subject_slots", "max_subject_bytes", "max_message_bytes"])
@pytest.mark.parametrize("value", ["0", "-1", "true", '"10"', "1.5"])
def test_a_limit_that_is_not_a_positive_whole_number_is_refused(
    tmp_path: Path, key: str, value: str
) -> None:
    with pytest.raises(ClusterFileError, match=f"{key} must be a whole number of at least 1"):
        parse(_file(_limits(f"{key} = {value}")), tmp_path, None)


def test_a_subject_size_over_half_the_message_size_is_refused_at_start(tmp_path: Path) -> None:
    config = NodeConfig(
        data_dir=tmp_path / "data",
        listen="127.0.0.1:0",
        metrics_listen=None,
        subject_limits=SubjectLimits(max_bytes=3 * 1024 * 1024),
    )
    with pytest.raises(ConfigError, match=r"max_subject_bytes .* half of max_message"):
        start(config)
    assert not (tmp_path / "data").exists()  # refused before anything was opened


def test_storage_and_connection_settings_reach_the_node_with_their_defaults(tmp_path: Path) -> None:
    default = node_config(parse(_file(""), tmp_path, None), "sales")
    assert (default.min_free_mb, default.disk_probe_s) == (64.0, 5.0)
    assert (default.max_connections, default.connection_idle_s) == (1024, 300.0)
    assert default.handshake_timeout_s == 10.0
    lines = _limits(
        "min_free_mb = 0\ndisk_probe_s = 0.5\n"
        "max_connections = 100\nconnection_idle_s = 60\nhandshake_timeout_s = 2"
    )
    config = node_config(parse(_file(lines), tmp_path, None), "sales")
    assert (config.min_free_mb, config.disk_probe_s) == (0.0, 0.5)
    assert (config.max_connections, config.connection_idle_s) == (100, 60.0)
    assert config.handshake_timeout_s == 2.0
    assert isinstance(config.max_connections, int)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("min_free = 1", r"unknown \[cluster.limits\] keys \['min_free'\]"),
        ("min_free_mb = -1", r"min_free_mb must be a number of at least 0, got -1"),
        ("max_connections = 0", r"\[cluster.limits\] max_connections must be a whole number"),
        ('connection_idle_s = "5"', r"connection_idle_s must be a number above 0"),
        ("disk_probe_s = 0", r"disk_probe_s must be a number above 0, got 0"),
        ("max_connections = true", r"max_connections must be a whole number"),
        ("max_connections = 2.5", r"max_connections must be a whole number of at least 1"),
    ],
)
def test_a_bad_storage_or_connection_setting_is_refused_naming_it(
    tmp_path: Path, lines: str, message: str
) -> None:
    with pytest.raises(ClusterFileError, match=message):
        parse(_file(_limits(lines)), tmp_path, None)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("cache_mb = 64", r"\[cluster\]: cache_mb is now \[cluster.limits\] cache_mb"),
        ("max_subject_slots = 9", r"max_subject_slots is now \[cluster.limits\] max_subject"),
        ("[cluster.storage]\nprobe_s = 1", r"probe_s is now \[cluster.limits\] disk_probe_s"),
        ("[cluster.connections]\nmax = 9", r"max is now \[cluster.limits\] max_connections"),
        ("[cluster.connections]\nidle = 9", r"unknown \[cluster\] keys \['connections'\]"),
        ("[cluster.disk]\nmin_free_mb = 9", r"unknown \[cluster\] keys \['disk'\]"),
    ],
)
def test_a_limit_outside_cluster_limits_is_refused_naming_where_it_goes(
    tmp_path: Path, lines: str, message: str
) -> None:
    with pytest.raises(ClusterFileError, match=message):
        parse(_file(lines), tmp_path, None)


def test_cluster_limits_reach_the_node_and_default_to_the_node_limits(tmp_path: Path) -> None:
    plain = node_config(parse(_file(""), tmp_path, None), "sales")
    assert plain.limits.max_handoff_lead == 100_000 and plain.max_watchers == 256
    lines = "[cluster.limits]\nmax_handoff_lead = 3\nmax_batch = 7\nmax_watchers = 9"
    config = node_config(parse(_file(lines), tmp_path, None), "sales")
    assert config.limits.max_handoff_lead == 3
    assert config.limits.max_batch == 7
    assert config.max_watchers == 9


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("max_handoff_lead = 0", "max_handoff_lead must be a whole number above 0, got 0"),
        ("max_handoff_lead = 2.5", "max_handoff_lead must be a whole number above 0, got 2.5"),
        ("max_handoff_lead = true", "max_handoff_lead must be a whole number above 0, got True"),
        ("idempotency_window_s = -1", "idempotency_window_s must be a number above 0, got -1"),
        ("max_waits = 3", "unknown [cluster.limits] keys ['max_waits']"),
        # The handoff wait bounds are gone with the waits (a read never waits in the node).
        ("max_handoff_waits = 3", "unknown [cluster.limits] keys ['max_handoff_waits']"),
    ],
)
def test_a_bad_cluster_limit_is_refused_naming_it(tmp_path: Path, line: str, says: str) -> None:
    with pytest.raises(ClusterFileError) as refused:
        parse(_file(f"[cluster.limits]\n{line}"), tmp_path, None)
    assert says in str(refused.value)


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        ("[cluster.sync]\nbatch_size = 0", "[cluster.sync] batch_size must be a whole number of"),
        (
            "[cluster.sync]\nanti_entropy_s = 0",
            "[cluster.sync] anti_entropy_s must be a number above 0",
        ),
        (
            '[cluster.sync]\nretention_s = "1h"',
            "[cluster.sync] retention_s must be a number above 0",
        ),
        (
            "[cluster.sync]\nlinger_s = -0.01",
            "[cluster.sync] linger_s must be a number of at least 0",
        ),
        ("[cluster.sync]\nbatch = 5", "unknown [cluster.sync] keys ['batch']"),
        (
            '[cluster.tls]\nca = "a"\ncert = "b"\nkey = "c"\nagent = true',
            "unknown [cluster.tls] keys ['agent']",
        ),
    ],
)
def test_a_bad_sync_or_tls_setting_is_refused_naming_it(
    tmp_path: Path, lines: str, says: str
) -> None:
    with pytest.raises(ClusterFileError) as refused:
        parse(_file(lines), tmp_path, None)
    assert says in str(refused.value)


def test_sync_settings_reach_the_node_with_their_types(tmp_path: Path) -> None:
    lines = "[cluster.sync]\nbatch_size = 8\nanti_entropy_s = 2\nclaim_wait_s = 0\nlinger_s = 0"
    config = node_config(parse(_file(lines), tmp_path, None), "sales")
    assert (config.sync.batch_size, config.sync.anti_entropy_s) == (8, 2.0)
    assert config.sync.linger_s == 0.0
    assert isinstance(config.sync.anti_entropy_s, float) and config.sync.claim_wait_s == 0.0


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--max-connections", "0", "max_connections must be a whole number of at least 1, got 0"),
        ("--disk-probe-s", "0", "disk_probe_s must be a number above 0, got 0"),
        ("--max-subject-slots", "1.5", "max_subject_slots must be a whole number of at least 1"),
        ("--min-free-mb", "nan", "min_free_mb must be a number of at least 0, got nan"),
    ],
)
def test_selfmodel_node_options_take_the_bounds_of_their_cluster_limits_key(
    option: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["node", option, value])
    assert exit.value.code == 2
    assert says in capsys.readouterr().err
