"""docs/operating.md describes the cluster file the parser reads: its example parses, shows every
key of every table but [cluster.limits], and its limits table lists exactly the keys
[cluster.limits] takes, each with the default the code has."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from federation.cluster import AUTH_KEYS, CLUSTER_KEYS, NODE_KEYS, TLS_KEYS, parse
from federation.settings import LEARNING, LIMITS, SYNC, apply
from node.config import NodeConfig

DOC = (Path(__file__).parents[2] / "docs" / "operating.md").read_text()


def _example() -> str:
    section = DOC.split("## The cluster file", 1)[1]
    found = re.search(r"```toml\n(.*?)```", section, re.S)
    assert found, "docs/operating.md has no toml example under 'The cluster file'"
    return found.group(1)


def _limit_rows() -> dict[str, str]:
    """The rows of the limits table set under [cluster.limits]: key -> default cell."""
    section = DOC.split("## Limits and settings", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[3].startswith("`[cluster.limits]`"):
            key = re.fullmatch(r"`([a-z_]+)`", cells[0])
            assert key, f"a [cluster.limits] row names its key alone: {line}"
            rows[key.group(1)] = cells[1]
    return rows


def test_the_example_is_a_cluster_file_the_parser_takes(tmp_path: Path) -> None:
    # With the two peers the example's node names (the example shows one node).
    others = "".join(
        f'\n[[node]]\nname = "{n}"\naddress = "127.0.0.1:{p}"\n'
        f'peer_address = "127.0.0.1:{p + 100}"\n'
        for n, p in (("support", 7071), ("billing", 7072))
    )
    cluster = parse(tomllib.loads(_example() + others), tmp_path, None)
    config = NodeConfig()
    apply(config, cluster.limits)
    assert config.max_message_bytes == 4194304 and config.limits.max_page_size == 1000


@pytest.mark.parametrize(
    ("table", "accepted"),
    [
        ("cluster", CLUSTER_KEYS),
        ("sync", set(SYNC)),
        ("learning", {*LEARNING, "enabled"}),
        ("tls", TLS_KEYS),
        ("auth", AUTH_KEYS),
        ("node", NODE_KEYS),
    ],
)
def test_the_example_shows_every_key_of_each_table(table: str, accepted: frozenset[str]) -> None:
    raw = tomllib.loads(_example())
    shown = raw["node"][0] if table == "node" else raw["cluster"]
    shown = shown if table in ("cluster", "node") else shown[table]
    assert set(shown) == set(accepted)


def test_the_limits_table_lists_every_limit_and_no_other() -> None:
    assert set(_limit_rows()) == set(LIMITS)


def test_the_limits_table_gives_each_limit_the_code_s_default() -> None:
    for key, cell in _limit_rows().items():
        number = re.match(r"[0-9][0-9,]*(\.[0-9]+)?", cell)
        assert number, f"{key}: its default cell {cell!r} starts with no number"
        assert float(number.group(0).replace(",", "")) == LIMITS[key].default, key


def test_every_limit_in_the_example_is_one_the_parser_takes() -> None:
    shown = tomllib.loads(_example())["cluster"]["limits"]
    assert set(shown) <= set(LIMITS)
    for key, value in shown.items():
        assert value == LIMITS[key].default, f"the example's {key} is not its default"
