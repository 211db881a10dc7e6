from __future__ import annotations

from federation.client import Client, user


def test_sales_agent_writes_and_support_agent_reads_the_same_belief(start_node):
    node = start_node()
    with (
        Client(node.address, agent="sales_agent", tenant="acme") as sales,
        Client(node.address, agent="support_agent", tenant="acme") as support,
    ):
        written = sales.observe(
            user("u-42"),
            "Motivated by quick time-to-value",
            confidence=0.82,
            context="purchase_motivation",
        )
        model = support.self_model(user("u-42"), at_least=written.token)
        [belief] = model.beliefs(context="purchase_motivation")
        assert belief.statement == "Motivated by quick time-to-value"
        assert [s.source for s in belief.supporters] == ["sales_agent"]
        assert belief.supporters[0].confidence == 0.82


def test_a_watch_fed_cache_serves_reads_locally_and_follows_changes(start_node):
    import time

    node = start_node()
    with (
        Client(node.address, agent="sales_agent", tenant="acme") as sales,
        Client(node.address, agent="support_agent", tenant="acme") as support,
    ):
        sales.observe(
            user("u-7"), "Prefers chat", confidence=0.9, context="channel_pref", key="channel"
        )
        with support.cached(user("u-7")) as cache:
            assert cache.get().belief("channel_pref", "channel").statement == "Prefers chat"
            assert cache.live
            sales.observe(
                user("u-7"), "Prefers email", confidence=0.95, context="channel_pref", key="channel"
            )
            deadline = time.monotonic() + 10
            while cache.get().belief("channel_pref", "channel").statement != "Prefers email":
                assert time.monotonic() < deadline, "the cache never saw the change"
                time.sleep(0.01)
            node.stop()
            deadline = time.monotonic() + 10
            while cache.live:
                assert time.monotonic() < deadline, "the cache did not notice its stream ended"
                time.sleep(0.05)
