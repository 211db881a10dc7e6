"""Durability of one real node: kill -9, graceful SIGTERM, and forgetting down to the files."""

from __future__ import annotations

import re
import signal
import threading
import time
import uuid
from pathlib import Path

from federation.client import Client, user
from node.errors import SelfModelError
from sync.observation import Evidence
from tests.nodes import NodeProcess, node_status

TENANT = "acme"
WRITERS = 4
ACKED_BEFORE_KILL = 200  # acknowledged writes to wait for before kill -9
WAIT_S = 20.0


def incarnation(node: NodeProcess) -> tuple[int, str]:
    """The node's incarnation and the actor naming its dots."""
    status = node_status(node.address)
    assert status.node == node.name
    # node.incarnation.random: the incarnation that took the actor (a later one may resume it)
    assert re.fullmatch(rf"{node.name}\.[0-9]+\.[0-9a-f]{{8}}", status.actor)
    return int(status.incarnation), status.actor


WINDOW = 12


def secret() -> str:
    """Random text: compressed SST blocks keep it literal, since nothing in a block repeats it."""
    return uuid.uuid4().hex + uuid.uuid4().hex


def files_holding(root: Path, needle: str) -> list[str]:
    """Files under ``root`` (SST, WAL *.log, MANIFEST, ...) holding any 12-byte piece of ``needle``.

    Pieces, not only the whole: block compression may turn a repeated run into a back-reference,
    so the absence of the whole needle would prove nothing.
    """
    raw = needle.encode()
    pieces = [raw[i : i + WINDOW] for i in range(len(raw) - WINDOW + 1)]
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if any(piece in data for piece in pieces):
                found.append(str(path.relative_to(root)))
    return found


def test_every_acknowledged_write_survives_kill_9_mid_stream(start_node):
    node = start_node("durable")
    first, first_actor = incarnation(node)
    assert first == 1
    acked: list[list[tuple[str, str, str]]] = [[] for _ in range(WRITERS)]
    failures: list[BaseException] = []
    stop = threading.Event()

    def write(w: int) -> None:
        # One attempt per call: a write is acknowledged only when the node answered OK.
        with Client(node.address, agent=f"writer_{w}", tenant=TENANT, attempts=1, timeout_s=5) as c:
            for n in range(100_000):
                if stop.is_set():
                    return
                key, statement = f"k-{n}", f"Statement {w}-{n}"
                try:
                    written = c.observe(
                        user(f"u-durable-{w}"),
                        statement,
                        confidence=0.7,
                        context="durability",
                        key=key,
                    )
                except SelfModelError:
                    return  # the node is gone: this write was never acknowledged
                except BaseException as exc:
                    failures.append(exc)
                    return
                acked[w].append((key, statement, written.observation_id))

    threads = [threading.Thread(target=write, args=(w,), daemon=True) for w in range(WRITERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + WAIT_S
    while sum(map(len, acked)) < ACKED_BEFORE_KILL:
        assert time.monotonic() < deadline, f"only {sum(map(len, acked))} writes acknowledged"
        assert not failures, failures
        time.sleep(0.01)
    node.kill()  # mid-stream: the writers are still sending
    stop.set()
    for t in threads:
        t.join(WAIT_S)
        assert not t.is_alive(), "a writer did not notice the node was gone"
    assert not failures, failures
    total = sum(map(len, acked))
    assert total >= ACKED_BEFORE_KILL

    node.start()  # same data directory, same port
    # After kill -9 a new actor: counters handed out but not on disk must never come again.
    second, second_actor = incarnation(node)
    assert second == 2, "every start is a new incarnation"
    assert second_actor != first_actor
    with Client(node.address, agent="auditor", tenant=TENANT) as auditor:
        for w in range(WRITERS):
            model = auditor.self_model(user(f"u-durable-{w}"), include_uncertain=True)
            present = {(b.key, b.statement) for b in model.all_beliefs}
            missing = [(k, s) for k, s, _ in acked[w] if (k, s) not in present]
            assert not missing, (
                f"writer {w}: {len(missing)} acknowledged writes lost: {missing[:5]}"
            )
            assert all(oid.startswith(f"{first_actor}:") for _, _, oid in acked[w])
        after = auditor.observe(user("u-durable-0"), "After restart", confidence=0.7, context="x")
        assert after.observation_id.startswith(f"{second_actor}:"), after.observation_id


def test_graceful_sigterm_exits_zero_and_the_data_persists(start_node):
    node = start_node("graceful")
    before = incarnation(node)
    with Client(node.address, agent="sales_agent", tenant=TENANT) as client:
        for i in range(20):
            client.observe(user("u-graceful"), f"Fact {i}", confidence=0.8, context="facts")
    assert node.stop() == 0
    assert "stopped" in node.log()

    node.start()
    # A clean stop and no peer to vouch against it: the actor goes on (tests/faults/
    # test_actor_resume has the rules with peers).
    assert incarnation(node) == (2, before[1])
    with Client(node.address, agent="support_agent", tenant=TENANT) as client:
        model = client.self_model(user("u-graceful"))
    assert {b.statement for b in model.all_beliefs} == {f"Fact {i}" for i in range(20)}


def test_sigterm_ends_open_watches_and_exits_zero_promptly(start_node):
    node = start_node("watched")
    with Client(node.address, agent="sales_agent", tenant=TENANT) as client:
        client.observe(user("u-watched"), "Prefers email", confidence=0.8, context="style")
        views = client.watch(user("u-watched"), timeout_s=WAIT_S)
        first = next(views)
        assert [b.statement for b in first.all_beliefs] == ["Prefers email"]
        assert node.proc is not None
        started = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        rest = list(views)  # the node ends the stream itself; no deadline needed to get out
        assert time.monotonic() - started < 5.0, "an open watch held up the shutdown"
        assert rest == []
    assert node.stop() == 0


def test_forget_removes_the_subject_and_its_bytes_from_every_file(start_node):
    node = start_node("forget")
    statement, other_statement, quote = secret(), secret(), secret()
    kept = secret()
    with Client(node.address, agent="sales_agent", tenant=TENANT) as sales:
        sales.observe(user("u-forget"), statement, confidence=0.9, context="budget", key="a")
        sales.observe(user("u-forget"), other_statement, confidence=0.6, context="budget", key="b")
        sales.observe(user("u-keep"), kept, confidence=0.9, context="style", key="channel")
    with Client(node.address, agent="support_agent", tenant=TENANT) as support:
        support.observe(
            user("u-forget"),
            "Confirmed budget",
            confidence=0.8,
            context="budget",
            key="b",
            evidence=[Evidence("call", "gong://9", quote)],
        )
    erased = (statement, other_statement, quote)
    # The checks below can fail: before the forget the bytes are on disk, in WAL and SST alike.
    assert all(files_holding(node.data_dir, s) for s in erased)
    assert node.stop() == 0
    for needle in erased:
        assert any(f.endswith(".sst") for f in files_holding(node.data_dir, needle))
    node.start()

    with Client(node.address, agent="operator", tenant=TENANT) as operator:
        operator.forget(user("u-forget"))
        assert operator.self_model(user("u-forget"), include_uncertain=True).all_beliefs == ()
        for needle in erased:
            assert files_holding(node.data_dir, needle) == [], "erased bytes left on disk"
    assert node.stop() == 0
    for needle in erased:
        assert files_holding(node.data_dir, needle) == [], "erased bytes back after a stop"

    node.start()
    with Client(node.address, agent="operator", tenant=TENANT) as operator:
        assert operator.self_model(user("u-forget"), include_uncertain=True).all_beliefs == ()
        [belief] = operator.self_model(user("u-keep")).all_beliefs
        assert belief.statement == kept, "forgetting one subject leaves the others alone"
    assert files_holding(node.data_dir, kept), "the kept subject is still on disk"


def test_a_write_issued_before_forget_does_not_reappear_after_kill_9(start_node):
    node = start_node("reappear")
    before = secret()
    with Client(node.address, agent="sales_agent", tenant=TENANT) as sales:
        sales.observe(user("u-erased"), before, confidence=0.9, context="budget", key="amount")
        assert files_holding(node.data_dir, before), "the write is in the WAL before the forget"
        sales.forget(user("u-erased"))
        sales.observe(user("u-erased"), "After forget", confidence=0.8, context="budget")
        assert files_holding(node.data_dir, before) == []
    node.kill()

    node.start()
    with Client(node.address, agent="support_agent", tenant=TENANT) as support:
        model = support.self_model(user("u-erased"), include_uncertain=True)
        assert [b.statement for b in model.all_beliefs] == ["After forget"]
        assert list(support.explain(user("u-erased"), "budget", "amount").observations) == []
    assert files_holding(node.data_dir, before) == []
