"""Sync serves authenticated peers only: every method refuses a caller without peer credentials,
on the agents' port and on the peers' port, and leaves the node's data as it was."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from federation import tokens
from federation.certs import channel_credentials, create_cluster_certs
from federation.client import user
from node.engine import Engine
from node.peers import NODE_HEADER, TOKEN_HEADER, PeerAuth, peer_token, read_secrets
from node.replication import EngineReplica, GrpcPeerLink
from node.store import BUCKETS, Store
from selfmodel.errors import from_rpc_error
from selfmodel.sync.v1 import sync_pb2, sync_pb2_grpc
from selfmodel.v1 import model_pb2
from sync.crdt import SubjectState
from sync.hlc import pack, physical_ms, wall_ms
from sync.observation import Subject, SubjectKind
from tests.harness import LocalCluster

METHODS = ("Replicate", "GetBuckets", "GetDigests", "ExchangeStates", "ClaimRun")
REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
VICTIM = model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id="victim")
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
def agent_tokens(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    file = tmp_path / "tokens.toml"
    made = {
        "writer": tokens.create(file, "writer", "acme", "agent", ["*"])[0],
        "operator": tokens.create(file, "acme_ops", "acme", "operator", ["*"])[0],
    }
    return file, made


def forged_state(node: str, erase: bool, observe: bool) -> sync_pb2.SubjectState:
    actor = f"{node}.1.f00d"
    state = sync_pb2.SubjectState(subject=VICTIM)
    if erase:  # erases every observation written before now
        state.erased.hlc = pack(wall_ms())
    state.context.vector.add(actor=actor, counter=1)
    if observe:
        o = state.observations.add(
            context="facts", key="forged", source="victim_agent", statement="Forged",
            confidence=1.0, hlc=1, origin=node,
        )  # fmt: skip
        o.dot.actor, o.dot.counter = actor, 1
    return state


def request(method: str, claimed: str) -> Any:
    """A request of ``method`` that would change or reveal the node's data if it were served."""
    if method == "Replicate":
        batch = sync_pb2.ReplicateRequest(origin=claimed, first_seq=1, last_seq=1)
        batch.deltas.append(forged_state(claimed, erase=False, observe=True))
        batch.deltas[0].events.add(actor=f"{claimed}.1.f00d", counter=1)
        return batch
    if method == "GetBuckets":
        return sync_pb2.GetBucketsRequest()
    if method == "GetDigests":
        return sync_pb2.GetDigestsRequest(buckets=range(BUCKETS))
    if method == "ExchangeStates":  # an erase: the subject with an erase bound at the present
        return sync_pb2.ExchangeStatesRequest(
            states=[forged_state(claimed, erase=True, observe=False)]
        )
    return sync_pb2.ClaimRunRequest(previous=0, run=7, incarnation=1_000)


def call(
    channel: grpc.Channel,
    method: str,
    metadata: Metadata,
    claimed: str,
    reasons: set[str] | None = None,
) -> grpc.StatusCode:
    """The status of ``method``; the ErrorInfo reason of a refusal is added to ``reasons``."""
    path = f"/selfmodel.sync.v1.SyncService/{method}"
    msg = request(method, claimed)
    try:
        if method == "Replicate":
            stream = channel.stream_stream(
                path,
                request_serializer=sync_pb2.ReplicateRequest.SerializeToString,
                response_deserializer=sync_pb2.ReplicateResponse.FromString,
            )
            for _ in stream(iter([msg]), timeout=5, metadata=metadata):
                break
        else:
            channel.unary_unary(path, request_serializer=type(msg).SerializeToString)(
                msg, timeout=5, metadata=metadata
            )
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        if reasons is not None:
            reasons.add(from_rpc_error(exc).reason)
        return exc.code()  # type: ignore[no-any-return]


def credential_sets(cluster: LocalCluster, bearer: str) -> dict[str, Metadata]:
    """What a caller without `support`'s peer credentials may send, claiming to be `support`."""
    sets: dict[str, Metadata] = {
        "no credentials": (),
        "an agent's token": (("authorization", f"Bearer {bearer}"),),
        "a forged node header": ((NODE_HEADER, "support"),),
        "a forged node header and an agent's token": (
            (NODE_HEADER, "support"),
            ("authorization", f"Bearer {bearer}"),
        ),
        "another cluster's peer token": (
            (NODE_HEADER, "support"),
            (TOKEN_HEADER, peer_token(b"another cluster's secret" * 2, "support")),
        ),
    }
    if cluster.peer_secret is not None:
        [secret] = read_secrets(cluster.peer_secret)
        sets["another node's peer token"] = (
            (NODE_HEADER, "support"),
            (TOKEN_HEADER, peer_token(secret, "sales")),
        )
        sets["the node's own name and token"] = cluster.peer_metadata("sales")
    return sets


def snapshot(cluster: LocalCluster, made: Mapping[str, str]) -> tuple[object, ...]:
    """What the attacks must leave unchanged: the victim's model, sales's digests, audit log."""
    with (
        cluster.client("sales", "writer", token=made["writer"]) as writer,
        cluster.client("sales", "ops", token=made["operator"]) as ops,
    ):
        model = writer.self_model(user("victim"), include_uncertain=True)
        statements = sorted(b.statement for b in model.beliefs())
        audit, _ = ops.audit()
    return statements, cluster.bucket_hashes("sales"), [e.action for e in audit]


def seed(cluster: LocalCluster, made: Mapping[str, str]) -> None:
    with cluster.client("sales", "writer", token=made["writer"]) as writer:
        writer.observe(user("victim"), "Prefers email", confidence=0.9, context="facts", key="k")
    cluster.wait_converged()


def assert_peers_replicate(cluster: LocalCluster, made: Mapping[str, str]) -> None:
    with (
        cluster.client("sales", "writer", token=made["writer"]) as sales,
        cluster.client("support", "writer", token=made["writer"]) as support,
    ):
        written = sales.observe(user("after"), "Still replicated", confidence=0.9, context="f")
        model = support.self_model(user("after"), at_least=written.token, timeout_s=20)
        assert [b.statement for b in model.beliefs("f")] == ["Still replicated"]


def assert_all_refused(
    target: str, sets: Mapping[str, Metadata], open_channel: Callable[[str], grpc.Channel]
) -> None:
    with open_channel(target) as channel:
        for name, metadata in sets.items():
            for method in METHODS:
                reasons: set[str] = set()
                code = call(channel, method, metadata, "support", reasons)
                assert code in REFUSED, f"{target} {method} with {name}: {code}"
                wanted = {
                    grpc.StatusCode.UNAUTHENTICATED: "PEER_UNAUTHENTICATED",
                    grpc.StatusCode.PERMISSION_DENIED: "PEER_DENIED",
                }[code]
                assert reasons == {wanted}, f"{target} {method} with {name}: {reasons}"


@pytest.mark.parametrize("own_peer_port", [False, True], ids=["shared port", "peers' port"])
def test_without_tls_every_sync_method_refuses_a_caller_without_a_peer_token(
    make_cluster: Callable[..., LocalCluster],
    agent_tokens: tuple[Path, dict[str, str]],
    tmp_path: Path,
    own_peer_port: bool,
) -> None:
    file, made = agent_tokens
    cluster = make_cluster(("sales", "support"), tokens=file, peer_ports=own_peer_port)
    assert cluster.peer_secret is not None  # a cluster with tokens gets a secret
    seed(cluster, made)
    before = snapshot(cluster, made)
    sets = credential_sets(cluster, made["writer"])
    targets = {cluster.address("sales"), f"127.0.0.1:{cluster.peer_ports['sales']}"}
    for target in sorted(targets):
        assert_all_refused(target, sets, grpc.insecure_channel)
    assert snapshot(cluster, made) == before
    assert_peers_replicate(cluster, made)
    scraped = cluster.nodes["sales"].metrics()
    for reason in ("no_credentials", "bad_token", "unknown_node"):
        assert f'selfmodel_peers_refused_total{{reason="{reason}"}}' in scraped
    if own_peer_port:
        assert 'selfmodel_peers_refused_total{reason="agents_port"}' in scraped


def test_with_tls_every_sync_method_refuses_a_caller_without_a_cluster_certificate(
    make_cluster: Callable[..., LocalCluster],
    agent_tokens: tuple[Path, dict[str, str]],
    tmp_path: Path,
) -> None:
    file, made = agent_tokens
    cluster = make_cluster(("sales", "support"), tls=True, tokens=file)
    assert cluster.certs is not None
    seed(cluster, made)
    before = snapshot(cluster, made)
    sets = credential_sets(cluster, made["writer"])
    # the plaintext agents' port serves no Sync at all
    assert_all_refused(cluster.address("sales"), sets, grpc.insecure_channel)
    peers_port = f"127.0.0.1:{cluster.peer_ports['sales']}"
    other = create_cluster_certs(tmp_path / "other", ["support"])
    create_cluster_certs(cluster.certs, ["intruder"])
    certs = cluster.certs

    def with_cert(ca: Path, cert: Path, key: Path) -> Callable[[str], grpc.Channel]:
        return lambda target: grpc.secure_channel(target, channel_credentials(ca, cert, key))

    # served, then refused: a certificate of the cluster's CA naming no other node of the file
    for node in ("intruder", "sales"):
        creds = with_cert(certs / "ca.pem", certs / f"{node}.pem", certs / f"{node}.key")
        assert_all_refused(peers_port, sets, creds)
    # refused in the handshake, before any handler runs: another CA's certificate, or none
    strangers = {
        "another cluster's certificate": with_cert(
            other.ca, other.nodes["support"].cert, other.nodes["support"].key
        ),
        "no certificate": lambda target: grpc.secure_channel(
            target, grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes())
        ),
    }
    for name, open_channel in strangers.items():
        with open_channel(peers_port) as channel:
            for method in METHODS:
                code = call(channel, method, sets["a forged node header"], "support")
                assert code == grpc.StatusCode.UNAVAILABLE, f"{method} with {name}: {code}"
    assert snapshot(cluster, made) == before
    assert_peers_replicate(cluster, made)


def test_a_peer_sends_its_own_dots_only_and_its_erases_are_audited(
    make_cluster: Callable[..., LocalCluster], agent_tokens: tuple[Path, dict[str, str]]
) -> None:
    file, made = agent_tokens
    cluster = make_cluster(("sales", "support"), tokens=file)
    seed(cluster, made)
    support = cluster.peer_metadata("support")
    with grpc.insecure_channel(cluster.address("sales")) as channel:
        # support's own credentials, but a delta of an actor of sales
        batch = request("Replicate", "support")
        batch.deltas[0].CopyFrom(forged_state("sales", erase=False, observe=True))
        batch.deltas[0].events.add(actor="sales.1.f00d", counter=1)
        replicate = channel.stream_stream(
            "/selfmodel.sync.v1.SyncService/Replicate",
            request_serializer=sync_pb2.ReplicateRequest.SerializeToString,
            response_deserializer=sync_pb2.ReplicateResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as refused:
            for _ in replicate(iter([batch]), timeout=5, metadata=support):
                break
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "own actors" in str(refused.value.details())
        error = from_rpc_error(refused.value)
        assert error.reason == "PEER_FOREIGN_WRITE"
        assert error.metadata == {"peer": "support", "actor": "sales.1.f00d"}
        # an erase relayed by the peer is merged, and audited on the receiving node
        assert call(channel, "ExchangeStates", support, "support") == grpc.StatusCode.OK
    with cluster.client("sales", "ops", token=made["operator"]) as ops:
        entries, _ = ops.audit()
        assert ops.self_model(user("victim")).beliefs() == []
    [entry] = entries
    assert (entry.actor, entry.actor_role, entry.action) == ("support", "peer", "forget")
    assert entry.subject.id == "victim" and "peer support" in entry.detail


def test_a_node_with_tokens_and_peers_but_no_peer_authentication_refuses_to_start(
    tmp_path: Path, agent_tokens: tuple[Path, dict[str, str]]
) -> None:
    file, _ = agent_tokens
    cluster = LocalCluster(
        tmp_path / "c", ("sales", "support"), tokens=file, peer_secret=False, proxies=False
    )
    command = cluster.nodes["sales"].command()
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    [line] = [x for x in done.stderr.splitlines() if x.startswith("selfmodel node: ")]
    assert "peer_secret" in line and "[cluster.tls]" in line and "refusing to start" in line


def test_the_attack_script_is_refused_at_every_step_and_the_data_stays(
    make_cluster: Callable[..., LocalCluster], agent_tokens: tuple[Path, dict[str, str]]
) -> None:
    file, made = agent_tokens
    cluster = make_cluster(("sales", "support"), tokens=file)
    seed(cluster, made)
    before = snapshot(cluster, made)
    script = [sys.executable, "-m", "tests.integration.sync_attack", cluster.address("sales")]
    for extra in ([], ["--subject", "acme/user/victim", "--bearer", made["writer"]]):
        done = subprocess.run([*script, *extra], capture_output=True, text=True, timeout=60)
        lines = done.stdout.splitlines()
        assert done.returncode == 0, done.stdout + done.stderr
        assert len(lines) == 6 and all(": REFUSED (" in line for line in lines[:5]), lines
    assert snapshot(cluster, made) == before


class HostilePeer(sync_pb2_grpc.SyncServiceServicer):
    """A peer whose anti-entropy replies carry whatever the test sets."""

    def __init__(self) -> None:
        self.reply = sync_pb2.ExchangeStatesResponse()

    def ExchangeStates(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.reply


def test_anti_entropy_replies_are_validated_and_their_erases_audited(tmp_path: Path) -> None:
    peer = HostilePeer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    sync_pb2_grpc.add_SyncServiceServicer_to_server(peer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    store = Store(tmp_path / "sales", "sales", fsync=False)
    try:
        engine = Engine(store)
        subject = Subject("acme", SubjectKind.USER, "victim")
        auth = PeerAuth("sales", frozenset({"support"}))
        link = GrpcPeerLink(auth, f"127.0.0.1:{port}", None)
        asked = [SubjectState(subject)]
        # a reply no agent could have written: a NaN confidence
        peer.reply = sync_pb2.ExchangeStatesResponse(
            states=[forged_state("support", erase=False, observe=True)]
        )
        peer.reply.states[0].observations[0].confidence = float("nan")
        assert link.exchange(asked).states == []  # left out, the rest of a reply merges
        # a well-formed erase: merged, and audited as the peer's act
        peer.reply = sync_pb2.ExchangeStatesResponse(
            states=[forged_state("support", erase=True, observe=False)]
        )
        states = link.exchange(asked).states
        link.close()
        assert EngineReplica(engine).merge(states, source="support").merged == 1
        [entry], _ = engine.audit.list()
        assert (entry.record.actor, entry.record.role, entry.record.action) == (
            "support",
            "peer",
            "forget",
        )
        bound = physical_ms(states[0].erased.hlc)
        assert entry.record.subject == subject and f"bound 0 -> {bound}" in entry.record.detail
    finally:
        store.close()
        server.stop(0).wait()
