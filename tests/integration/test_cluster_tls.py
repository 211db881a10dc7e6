"""Mutual TLS between nodes: replication works with cluster certificates, strangers are refused."""

from __future__ import annotations

import re

import grpc
import pytest

from federation.certs import channel_credentials, create_cluster_certs
from federation.client import user
from federation.cluster import load as load_cluster
from federation.launcher import status_rows
from node.errors import HandoffTimeout, Unavailable
from selfmodel.sync.v1 import sync_pb2, sync_pb2_grpc
from tests.nodes import wait_until


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}\{{{want}\}} (\S+)$" if labels else rf"^{name} (\S+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_node_pair_with_mutual_tls_replicates(make_cluster):
    cluster = make_cluster(("sales", "support"), tls=True)
    with (
        cluster.client("sales", "sales_agent") as sales,
        cluster.client("support", "reader") as support,
    ):
        written = sales.observe(
            user("u-tls"), "Prefers calls", confidence=0.9, context="channel_pref"
        )
        model = support.self_model(user("u-tls"), at_least=written.token, timeout_s=20)
        assert [b.statement for b in model.beliefs("channel_pref")] == ["Prefers calls"]
    cluster.wait_converged()


def test_with_agents_tls_agents_and_the_status_table_reach_the_nodes_over_tls(make_cluster):
    cluster = make_cluster(("sales", "support"), tls=True, agents_tls=True)
    with (
        cluster.client("sales", "sales_agent") as sales,
        cluster.client("support", "reader") as support,
    ):
        written = sales.observe(user("u-atls"), "Prefers chat", confidence=0.9, context="channel")
        model = support.self_model(user("u-atls"), at_least=written.token, timeout_s=20)
        assert [b.statement for b in model.beliefs("channel")] == ["Prefers chat"]
    with (
        cluster.client("sales", "plain", credentials=None, attempts=1, timeout_s=3) as plain,
        pytest.raises(Unavailable),
    ):
        plain.self_model(user("u-atls"))
    spec = load_cluster(cluster.file)
    assert spec.agents_tls
    rows = status_rows(spec)
    assert [(r[0], r[3]) for r in rows] == [("sales", "serving"), ("support", "serving")]


def test_sync_refuses_a_certificate_of_another_ca_or_none_and_an_unknown_node(
    make_cluster, tmp_path
):
    cluster = make_cluster(("sales", "support"), tls=True)
    target = f"127.0.0.1:{cluster.peer_ports['sales']}"
    request = sync_pb2.GetBucketsRequest()

    # a certificate of another CA: the handshake fails before any call runs
    other = create_cluster_certs(tmp_path / "other", ["support"])
    creds = channel_credentials(other.ca, other.nodes["support"].cert, other.nodes["support"].key)
    with grpc.secure_channel(target, creds) as channel, pytest.raises(grpc.RpcError) as refused:
        sync_pb2_grpc.SyncServiceStub(channel).GetBuckets(request, timeout=3)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    # no client certificate at all
    ca_only = grpc.ssl_channel_credentials(
        root_certificates=(cluster.certs / "ca.pem").read_bytes()
    )
    with grpc.secure_channel(target, ca_only) as channel, pytest.raises(grpc.RpcError) as refused:
        sync_pb2_grpc.SyncServiceStub(channel).GetBuckets(request, timeout=3)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    # the plaintext agents' port never serves Sync: a node with a peers' port serves it there only
    with (
        grpc.insecure_channel(cluster.address("sales")) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        sync_pb2_grpc.SyncServiceStub(channel).GetBuckets(
            request, timeout=3, metadata=(("x-selfmodel-node", "support"),)
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # a valid certificate of the cluster's CA, for a node not in the cluster file
    create_cluster_certs(cluster.certs, ["intruder"])
    creds = channel_credentials(
        cluster.certs / "ca.pem", cluster.certs / "intruder.pem", cluster.certs / "intruder.key"
    )
    with grpc.secure_channel(target, creds) as channel, pytest.raises(grpc.RpcError) as refused:
        sync_pb2_grpc.SyncServiceStub(channel).GetBuckets(request, timeout=3)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not a peer" in refused.value.details()

    scraped = cluster.nodes["sales"].metrics()
    assert metric(scraped, "selfmodel_peers_refused_total", reason="unknown_node") >= 1
    assert metric(scraped, "selfmodel_peers_refused_total", reason="agents_port") >= 1


def test_a_node_whose_certificate_is_not_of_the_cluster_ca_cannot_replicate(make_cluster, tmp_path):
    cluster = make_cluster(("sales", "support"), tls=True)
    cluster.nodes["support"].stop()
    other = create_cluster_certs(tmp_path / "other", ["support"])
    (cluster.certs / "support.pem").write_bytes(other.nodes["support"].cert.read_bytes())
    (cluster.certs / "support.key").write_bytes(other.nodes["support"].key.read_bytes())
    cluster.nodes["support"].start()
    with (
        cluster.client("sales", "sales_agent") as sales,
        cluster.client("support", "reader") as support,
    ):
        written = sales.observe(user("u-cut"), "Secret", confidence=0.9, context="facts")

        def failed_sessions(node: str, peer: str) -> float:
            text = cluster.nodes[node].metrics()
            return metric(text, "selfmodel_replication_errors_total", peer=peer)

        # Both sides tried again, each at least twice, after the write was in sales' outbox:
        # every session (an anti-entropy round, then the delta stream) failed its handshake.
        since = {n: failed_sessions(n, p) for n, p in (("sales", "support"), ("support", "sales"))}
        for node, peer in (("sales", "support"), ("support", "sales")):
            wait_until(
                lambda n=node, p=peer: failed_sessions(n, p) >= since[n] + 2,
                f"{node} tried to reach {peer} twice more",
            )
        assert support.self_model(user("u-cut")).beliefs() == []
        with pytest.raises(HandoffTimeout):
            support.self_model(user("u-cut"), at_least=written.token, timeout_s=0.5)
