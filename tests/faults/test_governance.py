"""Governance that replicates, on real clusters: a policy set through Admin on one node changes
how every node resolves the same slot, concurrent changes on both sides of a partition resolve
the same way everywhere once it heals, a node whose cluster file disagrees says so, watchers see
the new resolution, and agents cannot change the settings."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from federation import tokens
from federation.client import Client, user
from federation.views import SelfModelView
from selfmodel.admin.v1 import admin_pb2, admin_pb2_grpc
from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from tests.harness import LocalCluster
from tests.nodes import NEVER_FADE, wait_until

pytestmark = pytest.mark.faults

NODES = ("sales", "support", "billing")
U = user("u-7")
# Two independent sources agree, a third says otherwise later: weighted keeps the two, latest
# takes the newer.
AGREED, NEWER = "ten thousand", "fifty thousand"
WRITERS = (("sales_agent", AGREED, 0.8), ("support_agent", AGREED, 0.8), ("bot", NEWER, 0.9))


def make_tokens(root: Path) -> tuple[Path, dict[str, str]]:
    root.mkdir(parents=True, exist_ok=True)
    file = root / "tokens.toml"
    made = {}
    for agent, *_ in WRITERS:
        made[agent], _ = tokens.create(file, agent, "acme", "agent", ["*"], ["*"])
    made["ops"], _ = tokens.create(file, "acme_ops", "acme", "cluster_operator", ["*"], ["*"])
    made["tenant_ops"], _ = tokens.create(file, "acme_admin", "acme", "operator", ["*"], ["*"])
    return file, made


def admin(cluster: LocalCluster, node: str, token: str) -> Callable[[str, object], object]:
    """Calls AdminService.<method>(request) on ``node`` with ``token``."""

    def call(method: str, request: object) -> object:
        with grpc.insecure_channel(cluster.address(node)) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            md = (("authorization", f"Bearer {token}"),)
            return getattr(stub, method)(request, metadata=md, timeout=10)

    return call


def connected(cluster: LocalCluster, node: str, token: str) -> bool:
    """Whether ``node``'s delta stream to every peer is up."""
    status = admin(cluster, node, token)("GetStatus", admin_pb2.GetStatusRequest())
    assert isinstance(status, admin_pb2.GetStatusResponse)
    return all(p.connected for p in status.peers)


def winner(client: Client) -> str | None:
    found = client.self_model(U, include_uncertain=True).belief("budget", "amount")
    return None if found is None else found.statement


def all_resolve(clients: dict[str, Client], statement: str, names: tuple[str, ...] = NODES) -> bool:
    return all(winner(clients[n]) == statement for n in names)


def set_policy(policy: int, context: str = "budget") -> admin_pb2.SetSettingRequest:
    return admin_pb2.SetSettingRequest(
        context=context, field=admin_pb2.SETTING_FIELD_POLICY, policy=policy
    )


def policy_setting(call: Callable[[str, object], object], context: str) -> admin_pb2.Setting:
    reply = call("GetSettings", admin_pb2.GetSettingsRequest())
    assert isinstance(reply, admin_pb2.GetSettingsResponse)
    [found] = [
        s
        for s in reply.settings
        if s.context == context and s.field == admin_pb2.SETTING_FIELD_POLICY
    ]
    return found


@pytest.fixture
def secured(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> Iterator[tuple[LocalCluster, dict[str, str], dict[str, Client]]]:
    file, made = make_tokens(tmp_path / "auth")
    # The cluster file says weighted for budget: a replicated `latest` disagrees with it.
    policies = {**NEVER_FADE, "contexts.budget": {"policy": "weighted"}}
    cluster = make_cluster(NODES, tokens=file, policies=policies)
    clients = {n: cluster.client(n, "sales_agent", token=made["sales_agent"]) for n in NODES}
    try:
        for (agent, statement, confidence), node in zip(WRITERS, NODES, strict=True):
            with cluster.client(node, agent, token=made[agent]) as writer:
                writer.observe(U, statement, confidence=confidence, context="budget", key="amount")
        cluster.wait_converged(60)  # every node holds the three observations
        assert all_resolve(clients, AGREED)
        yield cluster, made, clients
    finally:
        for c in clients.values():
            c.close()


def test_a_policy_set_on_one_node_changes_the_slot_on_every_node_and_its_watchers(
    secured: tuple[LocalCluster, dict[str, str], dict[str, Client]],
) -> None:
    cluster, made, clients = secured
    seen: list[SelfModelView] = []
    changed = threading.Event()
    watcher = cluster.client("billing", "sales_agent", token=made["sales_agent"])

    def watch() -> None:
        try:
            for view in watcher.watch(U, contexts=["budget"]):
                seen.append(view)
                if [b.statement for b in view.beliefs("budget")] == [NEWER]:
                    changed.set()
                    return
        except grpc.RpcError:
            pass  # cancelled at the end

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    wait_until(lambda: seen, "the watch's first model", 15)
    assert [b.statement for b in seen[0].beliefs("budget")] == [AGREED]

    ops = admin(cluster, "support", made["ops"])
    reply = ops("SetSetting", set_policy(model_pb2.POLICY_LATEST))
    assert isinstance(reply, admin_pb2.SetSettingResponse) and reply.handoff_token

    wait_until(lambda: all_resolve(clients, NEWER), "every node resolves latest", 30)
    assert changed.wait(15), "the watcher on billing never saw the new resolution"
    watcher.close()
    thread.join(10)
    for node in NODES:
        with grpc.insecure_channel(cluster.address(node)) as channel:
            policy = selfmodel_pb2_grpc.SelfModelServiceStub(channel).GetPolicy(
                selfmodel_pb2.GetPolicyRequest(contexts=["budget"]),
                metadata=(("authorization", f"Bearer {made['bot']}"),),
                timeout=10,
            )
        assert [p.policy for p in policy.policies] == [model_pb2.POLICY_LATEST], node
        found = policy_setting(admin(cluster, node, made["ops"]), "budget")
        assert (found.policy, found.origin) == (
            model_pb2.POLICY_LATEST,
            admin_pb2.SETTING_ORIGIN_REPLICATED,
        )
        assert (found.write.set_by, found.write.node) == ("acme_ops", "support")

    # Each node's file says weighted: each says so, in its log and on its metrics page.
    for name, node in cluster.nodes.items():
        wait_until(
            lambda node=node: (
                "policy disagreement: policies for context 'budget', policy: the "
                "cluster file says 'weighted', the cluster's replicated setting says 'latest'"
                in node.log()
            ),
            f"{name} logs the disagreement",
        )
        assert disagreements(node.metrics()) == 1, name
    # ... and again at start.
    billing = cluster.nodes["billing"]
    billing.stop()
    logged = billing.log().count("policy disagreement")
    billing.start()
    assert billing.log().count("policy disagreement") > logged
    assert disagreements(billing.metrics()) == 1

    # Handed back to the file: weighted again everywhere, no disagreement left.
    ops("ClearSetting", admin_pb2.ClearSettingRequest(context="budget", field=1))
    wait_until(lambda: all_resolve(clients, AGREED), "every node resolves weighted again", 30)
    for name, node in cluster.nodes.items():
        wait_until(lambda node=node: disagreements(node.metrics()) == 0, f"{name}'s gauge")


def disagreements(page: str) -> float:
    found = re.search(r'^selfmodel_policy_disagreements\{kind="setting"\} (\S+)$', page, re.M)
    assert found, "no selfmodel_policy_disagreements gauge"
    return float(found.group(1))


def test_an_agent_or_a_tenant_operator_token_is_refused_on_every_governance_change(
    secured: tuple[LocalCluster, dict[str, str], dict[str, Client]],
) -> None:
    cluster, made, clients = secured
    agent = admin(cluster, "sales", made["bot"])
    calls = [
        ("GetSettings", admin_pb2.GetSettingsRequest()),
        ("SetSetting", set_policy(model_pb2.POLICY_LATEST)),
        ("ClearSetting", admin_pb2.ClearSettingRequest(context="budget", field=1)),
        ("SetReliability", admin_pb2.SetReliabilityRequest(source="bot", reliability=0.1)),
        ("ClearReliability", admin_pb2.ClearReliabilityRequest(source="bot")),
    ]
    for method, request in calls:
        with pytest.raises(grpc.RpcError) as refused:
            agent(method, request)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
        assert "only an operator may" in refused.value.details(), method
    tenant_ops = admin(cluster, "sales", made["tenant_ops"])
    tenant_ops("GetSettings", admin_pb2.GetSettingsRequest())  # an operator reads them
    for method, request in calls[1:]:  # an operator of one tenant changes none of them
        with pytest.raises(grpc.RpcError) as refused:
            tenant_ops(method, request)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
        assert "only a cluster operator may" in refused.value.details(), method
    ops = admin(cluster, "sales", made["ops"])
    with pytest.raises(grpc.RpcError) as bad:
        ops(
            "SetSetting",
            admin_pb2.SetSettingRequest(
                context="budget", field=admin_pb2.SETTING_FIELD_MIN_CONFIDENCE, number=1.5
            ),
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.value.details() == "number: min_confidence must be within [0, 1], got 1.5"
    assert winner(clients["sales"]) == AGREED  # nothing changed


@pytest.mark.proxy
def test_two_concurrent_policy_changes_resolve_the_same_way_everywhere_after_the_heal(
    secured: tuple[LocalCluster, dict[str, str], dict[str, Client]],
) -> None:
    cluster, made, clients = secured
    cluster.partition(["sales"], ["support", "billing"])
    admin(cluster, "sales", made["ops"])("SetSetting", set_policy(model_pb2.POLICY_LATEST))
    first = policy_setting(admin(cluster, "sales", made["ops"]), "budget").write.time
    # Later by the hybrid clock (written after the first one's millisecond: within it, the
    # nodes' logical counters would order them), on the other side: it wins everywhere, though
    # sales merges it after its own and support and billing merge sales's after theirs.
    wait_until(lambda: time.time_ns() // 1_000_000 > first.ToMilliseconds(), "the next ms")
    admin(cluster, "support", made["ops"])("SetSetting", set_policy(model_pb2.POLICY_WEIGHTED))
    wait_until(lambda: winner(clients["sales"]) == NEWER, "sales resolves its own latest")
    assert all_resolve(clients, AGREED, ("support", "billing"))
    with pytest.raises(TimeoutError):  # the cut holds: neither side has the other's change
        cluster.wait_converged(timeout_s=1.0)
    assert policy_setting(admin(cluster, "sales", made["ops"]), "budget").write.node == "sales"
    assert winner(clients["sales"]) == NEWER

    cluster.heal()
    wait_until(lambda: all(connected(cluster, n, made["ops"]) for n in NODES), "links up", 30)
    cluster.wait_converged(60)
    wait_until(lambda: all_resolve(clients, AGREED), "every node resolves weighted", 30)
    for node in NODES:
        found = policy_setting(admin(cluster, node, made["ops"]), "budget")
        assert (found.policy, found.write.node) == (model_pb2.POLICY_WEIGHTED, "support"), node
