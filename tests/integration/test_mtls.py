"""Mutual TLS helpers: a server of the cluster's CA accepts only clients with a cert of that CA."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from federation.certs import (
    channel_credentials,
    create_cluster_certs,
    peer_common_name,
    require_peer,
    server_credentials,
)
from federation.cli import main
from node.errors import PermissionDenied

WHOAMI = "/test.Peer/WhoAmI"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    ours = tmp_path_factory.mktemp("ours")
    theirs = tmp_path_factory.mktemp("theirs")
    create_cluster_certs(ours, ["sales", "support", "intruder"])
    create_cluster_certs(theirs, ["support"])
    return ours, theirs


@pytest.fixture
def server(certs: tuple[Path, Path]) -> Iterator[int]:
    """A tiny threaded server with TLS from the 'sales' cert: health, and who-am-I."""
    ours, _ = certs
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, srv)

    def who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            return require_peer(context, {"sales", "support"}).encode()
        except PermissionDenied as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))

    srv.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(
            "test.Peer", {"WhoAmI": grpc.unary_unary_rpc_method_handler(who_am_i)})]
    )  # fmt: skip
    port = srv.add_secure_port(
        "127.0.0.1:0", server_credentials(ours / "ca.pem", ours / "sales.pem", ours / "sales.key")
    )
    srv.start()
    yield port
    srv.stop(0)


def call(port: int, creds: grpc.ChannelCredentials, target_host: str = "localhost") -> str:
    with grpc.secure_channel(f"{target_host}:{port}", creds) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        reply: bytes = channel.unary_unary(WHOAMI)(b"", timeout=5)
        return reply.decode()


def test_certs_name_the_node_in_cn_and_san_and_keep_keys_private(certs: tuple[Path, Path]) -> None:
    ours, _ = certs
    cert = x509.load_pem_x509_certificate((ours / "support.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "support"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"support", "localhost"} <= set(san.get_values_for_type(x509.DNSName))
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for key in ("ca.key", "sales.key", "support.key"):
        assert stat.S_IMODE((ours / key).stat().st_mode) == 0o600


def test_a_client_with_a_cert_of_the_same_ca_is_accepted_and_named(
    certs: tuple[Path, Path], server: int
) -> None:
    ours, _ = certs
    creds = channel_credentials(ours / "ca.pem", ours / "support.pem", ours / "support.key")
    assert call(server, creds) == "support"
    assert call(server, creds, "127.0.0.1") == "support"


def test_a_client_with_a_cert_of_another_ca_or_none_is_refused(
    certs: tuple[Path, Path], server: int
) -> None:
    ours, theirs = certs
    # Trusts our CA (so the server is verified) but presents a cert of another CA.
    foreign = channel_credentials(ours / "ca.pem", theirs / "support.pem", theirs / "support.key")
    anonymous = grpc.ssl_channel_credentials(root_certificates=(ours / "ca.pem").read_bytes())
    for creds in (foreign, anonymous):
        with pytest.raises(grpc.RpcError) as refused:
            call(server, creds)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake failed
    # And a client of the right CA refuses a server of another CA.
    distrustful = channel_credentials(theirs / "ca.pem", ours / "support.pem", ours / "support.key")
    with pytest.raises(grpc.RpcError):
        call(server, distrustful)


def test_a_node_of_the_ca_that_is_not_in_the_cluster_is_refused_by_name(
    certs: tuple[Path, Path], server: int
) -> None:
    ours, _ = certs
    creds = channel_credentials(ours / "ca.pem", ours / "intruder.pem", ours / "intruder.key")
    with pytest.raises(grpc.RpcError) as refused:
        call(server, creds)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'intruder', which is not in the cluster file" in refused.value.details()


def test_peer_common_name_is_none_on_a_plaintext_call() -> None:
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    seen: list[str | None] = []

    def who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(peer_common_name(context))
        return b""

    srv.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(
            "test.Peer", {"WhoAmI": grpc.unary_unary_rpc_method_handler(who_am_i)})]
    )  # fmt: skip
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            channel.unary_unary(WHOAMI)(b"", timeout=5)
    finally:
        srv.stop(0)
    assert seen == [None]


def test_certs_create_command_reuses_the_ca_to_add_a_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for nodes in (["sales", "support"], ["billing"]):
        args = ["certs", "create", "--out", str(tmp_path)]
        for n in nodes:
            args += ["--node", n]
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code == 0
    assert "node billing" in capsys.readouterr().out
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    for node in ("sales", "support", "billing"):
        cert = x509.load_pem_x509_certificate((tmp_path / f"{node}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
    with pytest.raises(SystemExit) as done:
        main(["certs", "create", "--out", str(tmp_path), "--node", "Bad_Name"])
    assert done.value.code == 2
