"""TLS on the agents' port: a real node serving --tls-cert/--tls-key, and agents that verify it."""

from __future__ import annotations

import json
import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation import cluster
from federation.certs import ClusterCerts, create_cluster_certs
from federation.cli import main
from federation.client import Client, user
from node.errors import Unavailable
from node.replication import PeerConfig
from node.server import ConfigError, NodeConfig, start
from selfmodel.channels import agent_channel_credentials, agent_server_credentials
from tests.nodes import NodeProcess
from tests.unit.test_deploy import agents_tls_probe_command


def cli(*argv: str) -> int | str | None:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    return done.value.code


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ClusterCerts:
    return create_cluster_certs(tmp_path_factory.mktemp("certs"), ["local"])


@pytest.fixture(scope="module")
def tls_node(
    tmp_path_factory: pytest.TempPathFactory, certs: ClusterCerts
) -> Iterator[NodeProcess]:
    """A node serving its agents' port over TLS with the CA's 'local' certificate; stopped."""
    root = tmp_path_factory.mktemp("tls_node")
    local = certs.nodes["local"]
    node = NodeProcess(
        "local",
        root / "local" / "data",
        ("--tls-cert", str(local.cert), "--tls-key", str(local.key)),
        credentials=agent_channel_credentials(certs.ca),
    )
    try:
        yield node.start()
    finally:
        node.stop()


def test_an_agent_trusting_the_ca_writes_and_reads_over_tls(
    tls_node: NodeProcess, certs: ClusterCerts
) -> None:
    creds = agent_channel_credentials(certs.ca)
    with (
        Client(tls_node.address, agent="sales_agent", tenant="acme", credentials=creds) as sales,
        Client(tls_node.address, agent="support_agent", tenant="acme", credentials=creds) as sup,
    ):
        written = sales.observe(
            user("u-tls"), "Wants SSO", confidence=0.9, context="requirements", key="sso"
        )
        model = sup.self_model(user("u-tls"), at_least=written.token)
        [belief] = model.beliefs(context="requirements")
        assert belief.statement == "Wants SSO"
        assert [s.source for s in belief.supporters] == ["sales_agent"]


def test_a_plaintext_agent_or_one_trusting_another_ca_gets_no_answer(
    tls_node: NodeProcess, tmp_path: Path
) -> None:
    other = create_cluster_certs(tmp_path / "other", ["local"])
    for creds in (None, agent_channel_credentials(other.ca)):
        with (
            Client(
                tls_node.address,
                agent="a",
                tenant="acme",
                credentials=creds,
                attempts=1,
                timeout_s=3,
            ) as client,
            pytest.raises(Unavailable),
        ):
            client.self_model(user("u-tls"))


def test_the_command_line_connects_with_ca(
    tls_node: NodeProcess, certs: ClusterCerts, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--target", tls_node.address, "--ca", str(certs.ca), "--tenant", "acme"]
    assert cli("observe", *target, "user:u-cli", "Pays yearly", "--context", "billing",
               "--confidence", "0.7", "--key", "cycle") == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["key"] == "cycle"
    assert cli("show", *target, "user:u-cli") == 0
    shown = json.loads(capsys.readouterr().out)
    assert [b["statement"] for b in shown["snapshot"]["beliefs"]] == ["Pays yearly"]


def test_a_certificate_without_its_key_is_refused_at_start(
    certs: ClusterCerts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli("node", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
               "--metrics", "", "--tls-cert", str(certs.nodes["local"].cert))  # fmt: skip
    assert code == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


def test_tls_on_the_agents_port_needs_sync_on_a_port_of_its_own(
    certs: ClusterCerts, tmp_path: Path
) -> None:
    local = certs.nodes["local"]
    config = NodeConfig(
        data_dir=tmp_path / "data",
        listen="127.0.0.1:0",
        metrics_listen=None,
        peers=(PeerConfig("support", "127.0.0.1:1"),),
        server_credentials=agent_server_credentials(local.cert, local.key),
    )
    with pytest.raises(ConfigError, match="Sync needs a port of its own"):
        start(config)
    assert not (tmp_path / "data").exists()  # refused before the store was opened


def cluster_text(certs: ClusterCerts, agents: str) -> str:
    return f"""
[cluster.tls]
ca = "{certs.ca}"
cert = "{certs.nodes["local"].cert}"
key = "{certs.nodes["local"].key}"
agents = {agents}
[[node]]
name = "local"
address = "127.0.0.1:7070"
peer_address = "127.0.0.1:7170"
"""


def test_the_cluster_file_turns_agents_tls_on_per_cluster(
    certs: ClusterCerts, tmp_path: Path
) -> None:
    on = cluster.parse(tomllib.loads(cluster_text(certs, "true")), tmp_path, None)
    assert cluster.node_config(on, "local").server_credentials is not None
    assert on.agent_credentials() is not None
    off = cluster.parse(tomllib.loads(cluster_text(certs, "false")), tmp_path, None)
    assert cluster.node_config(off, "local").server_credentials is None
    assert off.agent_credentials() is None
    with pytest.raises(cluster.ClusterFileError, match="agents must be true or false"):
        cluster.parse(tomllib.loads(cluster_text(certs, '"yes"')), tmp_path, None)


def test_health_checks_a_tls_node_by_address_or_through_the_cluster_file(
    tls_node: NodeProcess,
    certs: ClusterCerts,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    address, ca = tls_node.address, str(certs.ca)
    assert cli("health", "--target", address, "--ca", ca) == 0
    assert capsys.readouterr().out.strip() == f"{address}: SERVING"
    assert cli("health", "--target", address, "--ca", ca, "--server-name", "local") == 0
    # Its certificate names local, localhost and 127.0.0.1; plaintext gets no answer either.
    assert cli("health", "--target", address, "--ca", ca, "--server-name", "billing") == 1
    assert cli("health", "--target", address, "--timeout", "2") == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert cli("health", "--target", address, "--ca", str(tmp_path / "missing.pem")) == 2
    assert "cannot read the CA certificate" in capsys.readouterr().err

    # The agents-tls component's probe, in a pod whose hostname is the node's name.
    file = tmp_path / "cluster.toml"
    file.write_text(cluster_text(certs, "true").replace("127.0.0.1:7070", address))
    probe = agents_tls_probe_command()
    argv = probe[1:]
    argv[argv.index("--cluster") + 1] = str(file)
    monkeypatch.setattr(socket, "gethostname", lambda: "local")
    assert cli(*argv) == 0
    monkeypatch.setattr(socket, "gethostname", lambda: "selfmodel-7")
    assert cli(*argv) == 2
    assert "no node named 'selfmodel-7'" in capsys.readouterr().err
    assert cli(*argv, "--name", "local") == 0
    # With agents TLS off in the file, the probe speaks plaintext, which this node refuses.
    file.write_text(cluster_text(certs, "false").replace("127.0.0.1:7070", address))
    assert cli(*argv, "--name", "local", "--timeout", "2") == 1
