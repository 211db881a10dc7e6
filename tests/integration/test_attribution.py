"""The attribution gap, closed, with real node processes: an operator lists what a source
contributed in a tenant (paged, tenant-scoped) and withdraws it across the tenant in one audited
action; its beliefs are gone from every node, including an observation written before the
withdrawal on a node that had not merged it, and watchers see the change."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from federation import calls, tokens
from federation.client import Client, SelfModelView, user, view_from_proto
from node.errors import InvalidArgument, PermissionDenied
from tests.harness import LocalCluster
from tests.integration.test_metrics import values
from tests.nodes import NodeProcess

NODES = ("sales", "support", "billing")
DEADLINE_S = 60.0


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s}s: {what}")


def statement(client: Client, n: int, key: str = "plan") -> str | None:
    belief = client.self_model(user(f"u-{n}")).belief("facts", key)
    return None if belief is None else belief.statement


def sources_of(client: Client, n: int) -> set[str]:
    model = client.self_model(user(f"u-{n}"), include_uncertain=True)
    return {s.source for b in model.all_beliefs for s in (*b.supporters, *b.dissenters)}


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[LocalCluster, dict[str, str]]]:
    file = tmp_path / "tokens.toml"
    made = {
        "bot": tokens.create(file, "bot", "acme", "agent", ["*"], ["*"])[0],
        "sales_agent": tokens.create(file, "sales_agent", "acme", "agent", ["*"], ["*"])[0],
        "ops": tokens.create(file, "ops", "acme", "operator", ["*"], ["*"])[0],
        "other_bot": tokens.create(file, "bot", "other", "agent", ["*"], ["*"])[0],
        "other_ops": tokens.create(file, "other_ops", "other", "operator", ["*"], ["*"])[0],
    }
    cluster = LocalCluster(tmp_path / "cluster", NODES, tokens=file)
    with cluster:
        yield cluster, made


def test_a_withdrawn_source_is_gone_from_every_node_audited_and_watchers_see_it(
    secured: tuple[LocalCluster, dict[str, str]],
) -> None:
    cluster, made = secured

    def as_(name: str, node: str, tenant: str = "acme") -> Client:
        return cluster.client(node, name, tenant=tenant, token=made[name])

    bot_sales, bot_support, bot_billing = (as_("bot", n) for n in NODES)
    honest = as_("sales_agent", "sales")
    honest.observe(user("u-1"), "Pays monthly", context="facts", key="plan", confidence=0.8)
    bot_sales.observe(user("u-1"), "Pays never", context="facts", key="plan", confidence=0.95)
    bot_support.observe(user("u-2"), "Is a robot", context="facts", key="plan", confidence=0.9)
    readers = {n: as_("sales_agent", n) for n in NODES}
    wait_for(
        lambda: all(statement(c, 1) == "Pays never" for c in readers.values()),
        "the bot's statement wins everywhere first",
    )
    wait_for(lambda: statement(readers["billing"], 2) == "Is a robot", "u-2 reached billing")

    # Billing is cut off, and takes a write of the bot that is older than the withdrawal.
    cluster.partition(["sales", "support"], ["billing"])
    bot_billing.observe(user("u-3"), "Loves spam", context="facts", key="plan", confidence=0.9)

    seen: queue.Queue[SelfModelView] = queue.Queue()
    watcher = as_("sales_agent", "support")
    stream = watcher._start(calls.watch(watcher._req, user("u-1")))  # cancellable

    def follow() -> None:
        try:
            for msg in stream:
                seen.put(view_from_proto(msg.snapshot))
        except Exception:  # cancelled at the end
            return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    first = seen.get(timeout=DEADLINE_S)
    assert first.belief("facts", "plan").statement == "Pays never"  # type: ignore[union-attr]

    ops = as_("ops", "sales")
    withdrawn = ops.withdraw_source("bot")
    assert withdrawn.withdrawn_at.ToMilliseconds() > 0 and withdrawn.handoff_token
    assert withdrawn.subjects == 2  # u-1 and u-2 on sales; u-3 is on billing only

    # The watcher on support sees the bot's statement go.
    deadline = time.monotonic() + DEADLINE_S
    while True:
        view = seen.get(timeout=max(0.1, deadline - time.monotonic()))
        belief = view.belief("facts", "plan")
        if belief is not None and belief.statement == "Pays monthly":
            assert [s.source for s in belief.dissenters] == []
            break
    stream.cancel()
    thread.join(timeout=10)

    cluster.heal()
    for node, reader in readers.items():
        wait_for(lambda r=reader: statement(r, 1) == "Pays monthly", f"u-1 on {node}")
        wait_for(lambda r=reader: statement(r, 3) is None, f"u-3's bot belief gone on {node}")
        assert statement(reader, 2) is None
        assert "bot" not in sources_of(reader, 1) | sources_of(reader, 2) | sources_of(reader, 3)

    # A later observation of the source counts again, on every node.
    bot_billing.observe(user("u-4"), "Pays yearly", context="facts", key="plan", confidence=0.9)
    for node, reader in readers.items():
        wait_for(lambda r=reader: statement(r, 4) == "Pays yearly", f"u-4 on {node}")

    entries, _ = ops.audit()
    [entry] = [e for e in entries if e.action == "withdraw_source"]
    assert (entry.actor, entry.actor_role, entry.actor_tenant) == ("ops", "operator", "acme")
    assert entry.detail == "source=bot" and entry.node == "sales"

    # Lifted, the bot's older observations count again, everywhere.
    as_("ops", "support").lift_withdrawal("bot")
    for node, reader in readers.items():
        wait_for(lambda r=reader: statement(r, 1) == "Pays never", f"u-1 restored on {node}")
        wait_for(lambda r=reader: statement(r, 3) == "Loves spam", f"u-3 restored on {node}")


def test_listing_a_sources_contributions_pages_and_is_tenant_scoped(
    secured: tuple[LocalCluster, dict[str, str]],
) -> None:
    cluster, made = secured
    bot = cluster.client("sales", "bot", token=made["bot"])
    other_bot = cluster.client("sales", "bot", tenant="other", token=made["other_bot"])
    for n in range(5):
        bot.observe(user(f"u-{n}"), f"Plan {n}", context="facts", key="plan", confidence=0.8)
    other_bot.observe(user("o-1"), "Elsewhere", context="facts", key="plan", confidence=0.8)
    ops = cluster.client("sales", "ops", token=made["ops"])

    listed = []
    token = ""
    for _ in range(10):
        page = ops.source_contributions("bot", page_size=2, page_token=token)
        assert len(page.contributions) <= 2
        listed += [(c.subject.id, c.context, c.key, c.withdrawn) for c in page.contributions]
        assert all(c.observed_at.ToMilliseconds() > 0 for c in page.contributions)
        token = page.next_page_token
        if not token:
            break
    assert listed == [(f"u-{n}", "facts", "plan", False) for n in range(5)]

    other_ops = cluster.client("sales", "other_ops", tenant="other", token=made["other_ops"])
    mine = other_ops.source_contributions("bot")
    assert [(c.subject.tenant, c.subject.id) for c in mine.contributions] == [("other", "o-1")]
    with pytest.raises(PermissionDenied):
        other_ops.source_contributions("bot", tenant="acme")
    with pytest.raises(PermissionDenied):
        other_ops.withdraw_source("bot", tenant="acme")
    with pytest.raises(PermissionDenied):  # an agent is not an operator
        bot.source_contributions("bot")
    # The tenant's own subject of withdrawals is never listed as a subject.
    ops.withdraw_source("nobody")
    assert [s.id for s in ops.subjects().subjects] == [f"u-{n}" for n in range(5)]
    # A token of acme's listing is refused for other's.
    first = ops.source_contributions("bot", page_size=2)
    with pytest.raises(InvalidArgument, match="another listing"):
        other_ops.source_contributions("bot", page_token=first.next_page_token)


def test_model_quality_metrics_move_with_a_contradiction_and_a_winner_change(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node("sales")
    context = "mood"

    def scraped(name: str) -> float:
        found = values(node.metrics(), name, context=context)
        return found[0] if found else 0.0

    with Client(node.address, agent="first", tenant="acme") as first:
        first.observe(user("u-1"), "Happy", context=context, key="now", confidence=0.6)
        first.self_model(user("u-1"))  # resolved, and kept: its changes are followed
        assert scraped("selfmodel_beliefs_kept") == 1
        assert scraped("selfmodel_belief_contradiction_ratio") == 0
        assert scraped("selfmodel_belief_winner_changes_total") == 0
        assert 0 <= scraped("selfmodel_belief_staleness_seconds") < 60
        with Client(node.address, agent="second", tenant="acme") as second:
            second.observe(user("u-1"), "Sad", context=context, key="now", confidence=0.9)
        # No read since: the kept model followed the write.
        wait_for(lambda: scraped("selfmodel_belief_winner_changes_total") == 1, "the winner change")
        assert scraped("selfmodel_belief_contradiction_ratio") == 1  # "Happy" dissents
        first.observe(user("u-2"), "Calm", context=context, key="now", confidence=0.1)
        first.self_model(user("u-2"))
        assert scraped("selfmodel_beliefs_kept") == 2
        assert scraped("selfmodel_belief_contradiction_ratio") == 0.5
        assert scraped("selfmodel_belief_uncertain_ratio") == 0.5  # 0.1 is below the minimum
    scrape = node.metrics()  # neither a subject nor an agent is ever a label's value
    assert '"u-1"' not in scrape and '"first"' not in scrape
