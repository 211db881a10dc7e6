"""Engine.put: a register in a node's own slot, set and cleared on any node, converges."""

from __future__ import annotations

from pathlib import Path

from node.engine import Engine
from node.store import Store
from sync.crdt import register
from sync.delivery import Delta
from sync.observation import Subject, SubjectKind

BOOK = Subject("_cluster", SubjectKind.ORG, "_governance")


def engines(tmp_path: Path) -> tuple[Engine, Engine]:
    return (
        Engine(Store(tmp_path / "n1", "n1", fsync=False)),
        Engine(Store(tmp_path / "n2", "n2", fsync=False)),
    )


def exchange(a: Engine, b: Engine) -> None:
    a.merge_remote([Delta(b.state(BOOK))])
    b.merge_remote([Delta(a.state(BOOK))])


def value(engine: Engine) -> str | None:
    found = register(engine.state(BOOK), "budget", "policy")
    return None if found is None else found.statement


def test_a_put_replaces_what_its_node_held_and_concurrent_puts_agree_on_the_newer(
    tmp_path: Path,
) -> None:
    a, b = engines(tmp_path)
    a.put(BOOK, "budget", "policy", "latest", "boss")
    a.put(BOOK, "budget", "policy", "weighted", "boss")
    assert value(a) == "weighted" and len(a.state(BOOK).observations) == 1
    b.put(BOOK, "budget", "policy", "latest", "ops")  # concurrent: both kept
    exchange(a, b)
    assert a.state(BOOK) == b.state(BOOK)
    both = sorted(a.state(BOOK).observations.values(), key=lambda o: (o.hlc, o.dot))
    assert [o.source for o in both] in (["boss", "ops"], ["ops", "boss"])
    assert value(a) == value(b) == both[-1].statement  # the newer by (timestamp, dot)
    a.put(BOOK, "budget", "policy", "weighted", "boss")  # after seeing both: replaces both
    exchange(a, b)
    assert value(b) == "weighted" and len(b.state(BOOK).observations) == 1


def test_a_clear_removes_what_its_node_held_and_a_concurrent_put_survives(
    tmp_path: Path,
) -> None:
    a, b = engines(tmp_path)
    a.put(BOOK, "budget", "policy", "latest", "boss")
    exchange(a, b)
    a.put(BOOK, "budget", "policy", "weighted", "boss")  # not yet on b
    b.put(BOOK, "budget", "policy", None, "ops")  # clears what b held: "latest" only
    exchange(a, b)
    assert value(a) == value(b) == "weighted"
    b.put(BOOK, "budget", "policy", None, "ops")
    exchange(a, b)
    assert value(a) is value(b) is None
