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
