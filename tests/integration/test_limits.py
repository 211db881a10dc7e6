"""Limits on what a client controls: message size, watches, handoff waits, subjects per batch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from federation import tokens
from federation.client import Client, user
from node.auth import TokenBook
from node.errors import ResourceExhausted
from node.server import NodeConfig, RunningNode, start
from node.validation import Limits
from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from sync.causal import CausalContext
from sync.codec import encode_token
from sync.observation import Subject, SubjectKind
from tests.nodes import NodeProcess

SUBJECT = model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id="u-1")


@pytest.fixture
def local_node(tmp_path: Path) -> Iterator[Callable[..., RunningNode]]:
    """An in-process node (a real gRPC server) with the given config overrides."""
    started: list[RunningNode] = []

    def start_node(**overrides: object) -> RunningNode:
        config = NodeConfig(
            name="limits", data_dir=tmp_path / f"data{len(started)}", listen="127.0.0.1:0",
            metrics_listen=None, fsync=False, grace_s=0.5,
        )  # fmt: skip
        for k, v in overrides.items():
            setattr(config, k, v)
        node = start(config)
        started.append(node)
        return node

    yield start_node
    for node in started:
        node.stop(0.5)


def own_connection(address: str) -> grpc.Channel:
    """A channel with its own TCP connection (channels otherwise share subchannels)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def test_an_oversized_message_is_resource_exhausted_on_server_and_client(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node()
    big = "x" * (5 * 1024 * 1024)
    req = selfmodel_pb2.ObserveRequest(subject=SUBJECT, context="c", statement=big, confidence=0.5)
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(node.address, options=options) as channel:
        code, details = code_of(
            lambda: selfmodel_pb2_grpc.SelfModelServiceStub(channel).Observe(req, timeout=10)
        )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    with Client(node.address, agent="a", tenant="acme") as client:
        with pytest.raises(ResourceExhausted):
            client.observe(user("u-1"), big, confidence=0.5, context="c")
        assert client.self_model(user("u-1")).beliefs() == []
    assert node.running


def test_watches_are_bounded_per_connection_and_per_node(
    local_node: Callable[..., RunningNode],
) -> None:
    node = local_node(limits=Limits(max_watches_per_connection=2), max_watchers=3)
    req = selfmodel_pb2.WatchSelfModelRequest(subject=SUBJECT)
    md = (("x-agent-id", "watcher"),)
    first, second = own_connection(node.address), own_connection(node.address)
    streams = []
    try:
        for channel in (first, first):
            stream = selfmodel_pb2_grpc.SelfModelServiceStub(channel).WatchSelfModel(
                req, metadata=md
            )
            next(stream)
            streams.append(stream)
        code, details = code_of(
            lambda: next(
                selfmodel_pb2_grpc.SelfModelServiceStub(first).WatchSelfModel(req, metadata=md)
            )
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "a connection may hold at most 2 open watches" in details

        other = selfmodel_pb2_grpc.SelfModelServiceStub(second)
        stream = other.WatchSelfModel(req, metadata=md)
        next(stream)
        streams.append(stream)
        code, details = code_of(lambda: next(other.WatchSelfModel(req, metadata=md)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "serves at most 3 watches" in details

        streams.pop(0).cancel()  # a closed watch frees its places
        deadline = time.monotonic() + 5
        while True:
            code, _ = code_of(lambda: next(other.WatchSelfModel(req, metadata=md, timeout=5)))
            if code == grpc.StatusCode.OK:
                break
            assert time.monotonic() < deadline, code
            time.sleep(0.05)
    finally:
        for stream in streams:
            stream.cancel()
        first.close()
        second.close()


def test_a_pending_handoff_position_is_answered_at_once_whatever_the_deadline(
    local_node: Callable[..., RunningNode],
) -> None:
    node = local_node()
    # A position this node has not merged, which a peer may yet deliver: a dot of an earlier run
    # of this node (a made-up actor of no node of the cluster is refused at once, not pending).
    ahead = CausalContext({"limits.0.feedbeef": 7})
    future = encode_token({Subject("acme", SubjectKind.USER, "u-1"): ahead})
    req = selfmodel_pb2.GetSelfModelRequest(subject=SUBJECT, at_least=future)
    with grpc.insecure_channel(node.address) as channel:
        started = time.monotonic()
        code, details = code_of(
            lambda: selfmodel_pb2_grpc.SelfModelServiceStub(channel).GetSelfModel(req, timeout=30)
        )
    assert code == grpc.StatusCode.UNAVAILABLE and "has not yet merged" in details
    assert time.monotonic() - started < 3


def test_a_batch_may_name_only_so_many_subjects(local_node: Callable[..., RunningNode]) -> None:
    node = local_node(limits=Limits(max_batch_subjects=3))
    batch = selfmodel_pb2.ObserveBatchRequest()
    for i in range(4):
        batch.observations.add(context="c", statement="s", confidence=0.5).subject.CopyFrom(
            model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id=f"u-{i}")
        )
    with grpc.insecure_channel(node.address) as channel:
        stub = selfmodel_pb2_grpc.SelfModelServiceStub(channel)
        code, details = code_of(lambda: stub.ObserveBatch(batch, timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details == (
            "observations: may name at most 3 subjects, got 4 (setting max_batch_subjects)"
        )
        del batch.observations[3]
        assert stub.ObserveBatch(batch, timeout=5).handoff_token


def test_with_a_token_file_a_node_may_bind_any_address(
    local_node: Callable[..., RunningNode], tmp_path: Path
) -> None:
    file = tmp_path / "tokens.toml"
    token, _ = tokens.create(file, "a", "acme", write=["*"])
    node = local_node(listen="0.0.0.0:0", identify=TokenBook(file).identify)
    with Client(f"127.0.0.1:{node.port}", token=token, tenant="acme") as client:
        assert client.self_model(user("u-1")).beliefs() == []
