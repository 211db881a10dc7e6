"""Small rules of cluster files (and of the flags that stand in for them) the command line
relies on."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from federation.cli import main
from federation.cluster import ClusterFileError, dial_address, node_config, parse


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


def test_cache_mb_reaches_the_node_and_defaults_to_256(tmp_path: Path) -> None:
    assert node_config(parse(_file(""), tmp_path, None), "sales").cache_mb == 256.0
    sized = parse(_file("cache_mb = 64"), tmp_path, None)
    assert node_config(sized, "sales").cache_mb == 64.0


@pytest.mark.parametrize("value", ["0", "-1", "true", '"64"', "inf", "nan"])
def test_a_cache_mb_that_is_not_a_positive_number_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ClusterFileError, match="cache_mb must be a positive number"):
        parse(_file(f"cache_mb = {value}"), tmp_path, None)


@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan", "lots"])
def test_selfmodel_node_refuses_a_cache_mb_that_is_not_a_positive_number(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["node", "--cache-mb", value])
    assert exit.value.code == 2
    assert f"must be a positive number of MiB, got {value!r}" in capsys.readouterr().err


def test_cluster_limits_reach_the_node_and_default_to_the_node_limits(tmp_path: Path) -> None:
    plain = node_config(parse(_file(""), tmp_path, None), "sales")
    assert plain.limits.max_handoff_waits == 32 and plain.max_watchers == 256
    lines = "[cluster.limits]\nmax_handoff_waits = 3\nmax_handoff_wait_s = 2.5\nmax_watchers = 9"
    config = node_config(parse(_file(lines), tmp_path, None), "sales")
    assert config.limits.max_handoff_waits == 3
    assert config.limits.max_handoff_wait_s == 2.5
    assert config.max_watchers == 9


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("max_handoff_waits = 0", "max_handoff_waits must be a positive int, got 0"),
        ("max_handoff_waits = 2.5", "max_handoff_waits must be a positive int, got 2.5"),
        ("max_handoff_waits = true", "max_handoff_waits must be a positive int, got True"),
        ("max_handoff_wait_s = -1", "max_handoff_wait_s must be a positive float, got -1"),
        ("max_waits = 3", "unknown [cluster.limits] keys ['max_waits']"),
    ],
)
def test_a_bad_cluster_limit_is_refused_naming_it(tmp_path: Path, line: str, says: str) -> None:
    with pytest.raises(ClusterFileError) as refused:
        parse(_file(f"[cluster.limits]\n{line}"), tmp_path, None)
    assert says in str(refused.value)
