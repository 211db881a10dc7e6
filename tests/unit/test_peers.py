"""Peer authentication: which settings a node may start with, and who its Sync service serves."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from federation import cluster
from federation.cli import main
from node.config import ConfigError, NodeConfig, peer_auth
from node.peers import (
    MIN_SECRET_CHARS,
    NODE_HEADER,
    TOKEN_HEADER,
    PeerAuth,
    PeerAuthError,
    PeerRefused,
    PeerSecretError,
    create_secret,
    decide,
    peer_token,
    read_secrets,
)
from node.replication import PeerConfig
from sync.receiver import actor_node, foreign_actors

SECRET = b"s" * MIN_SECRET_CHARS
OTHER_SECRET = b"o" * MIN_SECRET_CHARS
OTHERS = frozenset({"support", "billing"})


class Context:
    """What PeerAuth reads of a call: its metadata and, under TLS, the verified certificate."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = (), cn: str | None = None) -> None:
        self.metadata = metadata
        self.cn = cn

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        if self.cn is None:
            return {}
        return {"transport_security_type": [b"ssl"], "x509_common_name": [self.cn.encode()]}


def refused(auth: PeerAuth, context: Context) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(PeerRefused) as caught:
        auth.authenticate(context)  # type: ignore[arg-type]
    return caught.value.status, caught.value.reason


# -- which settings a node may start with ---------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "exposed"), [(True, False), (False, True), (True, True)], ids=str
)
def test_a_node_with_peers_and_tokens_or_a_public_address_needs_peer_authentication(
    tokens: bool, exposed: bool
) -> None:
    with pytest.raises(PeerAuthError) as caught:
        decide("sales", OTHERS, tls=False, secrets=(), tokens=tokens, exposed=exposed)
    message = str(caught.value)
    assert "\n" not in message
    assert "[cluster.auth] peer_secret" in message and "[cluster.tls]" in message
    # either setting lets it start
    assert decide("sales", OTHERS, tls=True, secrets=(), tokens=tokens, exposed=exposed).tls
    assert decide("sales", OTHERS, tls=False, secrets=(SECRET,), tokens=tokens, exposed=exposed)


def test_loopback_development_without_tokens_trusts_the_node_header() -> None:
    auth = decide("sales", OTHERS, tls=False, secrets=(), tokens=False, exposed=False)
    assert auth.trust_header
    assert auth.authenticate(Context(((NODE_HEADER, "support"),))) == "support"  # type: ignore[arg-type]


def test_a_node_without_other_members_starts_anywhere_and_serves_sync_to_nobody() -> None:
    auth = decide("solo", frozenset(), tls=False, secrets=(), tokens=True, exposed=True)
    assert not auth.trust_header
    assert refused(auth, Context(((NODE_HEADER, "support"),))) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "no_peers",
    )


def test_a_node_config_with_tokens_and_peers_but_no_peer_authentication_is_refused() -> None:
    config = NodeConfig(
        name="sales",
        peers=(PeerConfig("support", "127.0.0.1:1"),),
        identify=lambda context, limits: None,  # type: ignore[arg-type,return-value]
    )
    with pytest.raises(ConfigError, match="peer_secret"):
        peer_auth(config)
    config.peer_secrets = (SECRET,)
    assert peer_auth(config).members == {"support"}
    # a public peers' port without tokens is refused too
    public = NodeConfig(name="sales", members=frozenset({"sales", "support"}))
    public.peer_listen = "0.0.0.0:7170"
    with pytest.raises(ConfigError, match="peer_secret"):
        peer_auth(public)


# -- who the Sync service serves ------------------------------------------------------------


def test_a_secret_proves_a_name_and_nothing_else_does() -> None:
    auth = PeerAuth("sales", OTHERS, secrets=(SECRET,))
    good = ((NODE_HEADER, "support"), (TOKEN_HEADER, peer_token(SECRET, "support")))
    assert auth.authenticate(Context(good)) == "support"  # type: ignore[arg-type]
    assert PeerAuth("support", OTHERS, secrets=(SECRET,)).metadata() == (
        (NODE_HEADER, "support"),
        (TOKEN_HEADER, peer_token(SECRET, "support")),
    )
    cases = {
        "no credentials": (),
        "a header alone": ((NODE_HEADER, "support"),),
        "another node's token": (
            (NODE_HEADER, "support"),
            (TOKEN_HEADER, peer_token(SECRET, "billing")),
        ),
        "another cluster's token": (
            (NODE_HEADER, "support"),
            (TOKEN_HEADER, peer_token(OTHER_SECRET, "support")),
        ),
        "an agent's bearer token": (("authorization", "Bearer sm_abc"),),
    }
    for name, metadata in cases.items():
        status, _ = refused(auth, Context(metadata))
        assert status == grpc.StatusCode.UNAUTHENTICATED, name
    # a valid token of a name outside the cluster file, or of the node itself
    for name in ("intruder", "sales"):
        md = ((NODE_HEADER, name), (TOKEN_HEADER, peer_token(SECRET, name)))
        assert refused(auth, Context(md)) == (grpc.StatusCode.PERMISSION_DENIED, "unknown_node")


def test_every_secret_of_the_file_verifies_and_the_first_signs() -> None:
    auth = PeerAuth("sales", OTHERS, secrets=(SECRET, OTHER_SECRET))
    for secret in (SECRET, OTHER_SECRET):
        md = ((NODE_HEADER, "billing"), (TOKEN_HEADER, peer_token(secret, "billing")))
        assert auth.authenticate(Context(md)) == "billing"  # type: ignore[arg-type]
    assert auth.metadata()[1] == (TOKEN_HEADER, peer_token(SECRET, "sales"))


def test_under_tls_the_certificate_names_the_caller_not_the_header() -> None:
    auth = PeerAuth("sales", OTHERS, tls=True)
    assert auth.authenticate(Context(((NODE_HEADER, "billing"),), cn="support")) == "support"  # type: ignore[arg-type]
    assert refused(auth, Context(((NODE_HEADER, "support"),))) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "no_certificate",
    )
    assert refused(auth, Context(cn="intruder"))[1] == "unknown_node"


# -- the secret file ------------------------------------------------------------------------


def test_the_secret_file_must_be_private_and_long_enough(tmp_path: Path) -> None:
    path = tmp_path / "peer.secret"
    create_secret(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    [secret] = read_secrets(path)
    assert len(secret) >= MIN_SECRET_CHARS
    with pytest.raises(FileExistsError):
        create_secret(path)
    create_secret(path, add=True)
    assert read_secrets(path)[0] == secret and len(read_secrets(path)) == 2

    path.chmod(0o644)
    with pytest.raises(PeerSecretError, match="chmod 600"):
        read_secrets(path)
    short = tmp_path / "short.secret"
    short.write_text("too short\n")
    short.chmod(0o600)
    with pytest.raises(PeerSecretError, match=f"fewer than {MIN_SECRET_CHARS}"):
        read_secrets(short)
    with pytest.raises(PeerSecretError, match="peer-secret create"):
        read_secrets(tmp_path / "missing")


def test_the_cli_creates_and_rotates_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "peer.secret"
    with pytest.raises(SystemExit) as done:
        main(["peer-secret", "create", str(path)])
    assert done.value.code == 0
    [old] = read_secrets(path)
    with pytest.raises(SystemExit) as done:
        main(["peer-secret", "create", str(path)])  # never overwrites
    assert done.value.code == 2 and read_secrets(path) == (old,)
    for argv in (["create", str(path), "--add"], ["promote", str(path)]):
        with pytest.raises(SystemExit) as done:
            main(["peer-secret", *argv])
        assert done.value.code == 0
    new, kept = read_secrets(path)
    assert kept == old and new != old
    with pytest.raises(SystemExit):
        main(["peer-secret", "promote", str(path), "--retire"])
    assert read_secrets(path) == (new,)
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_the_cluster_file_names_the_secret_and_node_config_reads_it(tmp_path: Path) -> None:
    secret = tmp_path / "peer.secret"
    create_secret(secret)
    text = (
        '[cluster.auth]\npeer_secret = "peer.secret"\n'
        '[[node]]\nname = "a"\naddress = "127.0.0.1:1"\n'
        '[[node]]\nname = "b"\naddress = "127.0.0.1:2"\n'
    )
    (tmp_path / "c.toml").write_text(text)
    spec = cluster.load(tmp_path / "c.toml")
    assert spec.peer_secret == secret
    assert cluster.node_config(spec, "a").peer_secrets == read_secrets(secret)
    (tmp_path / "bad.toml").write_text(text.replace("peer_secret", "peer_secrets"))
    with pytest.raises(cluster.ClusterFileError, match="peer_secrets"):
        cluster.load(tmp_path / "bad.toml")


# -- what a delta stream may carry ----------------------------------------------------------


def test_a_peer_owns_the_actors_named_after_it_only() -> None:
    assert actor_node("support.3.0a1b2c3d") == "support"
    assert actor_node("eu.support.3.0a1b2c3d") == "eu.support"
    assert actor_node("support.3") == ""
    assert foreign_actors({"support.1.aa", "support.2.bb"}, "support") == []
    assert foreign_actors({"support.1.aa", "sales.1.cc", "support.1"}, "support") == [
        "sales.1.cc",
        "support.1",
    ]
    assert foreign_actors({"eu.support.1.aa"}, "eu") == ["eu.support.1.aa"]


def test_cluster_up_creates_the_peer_secret_the_cluster_file_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from federation import launcher

    started: list[cluster.Cluster] = []

    def up(spec: cluster.Cluster, token: str | None = None) -> int:
        started.append(spec)
        return 0

    monkeypatch.setattr(launcher, "up", up)
    (tmp_path / "c.toml").write_text(
        '[cluster.auth]\npeer_secret = "secrets/peer.secret"\n'
        '[[node]]\nname = "a"\naddress = "127.0.0.1:1"\n'
    )
    with pytest.raises(SystemExit) as done:
        main(["cluster", "up", "--config", str(tmp_path / "c.toml")])
    assert done.value.code == 0 and len(started) == 1
    [secret] = read_secrets(tmp_path / "secrets" / "peer.secret")
    with pytest.raises(SystemExit):
        main(["cluster", "up", "--config", str(tmp_path / "c.toml")])
    assert read_secrets(tmp_path / "secrets" / "peer.secret") == (secret,)  # kept as it was
