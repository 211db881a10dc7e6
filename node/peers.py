"""Who may call a node's Sync service: peer authentication by certificate or by cluster secret.

A caller is served as peer ``P`` only when it proves ``P``: by the common name of a client
certificate of the cluster's CA (mutual TLS, ``[cluster.tls]``), or, where TLS is off, by the
per-node peer token ``HMAC-SHA256(secret, "selfmodel-peer:" + P)`` sent beside the name in the
call's metadata (``[cluster.auth] peer_secret``), compared in constant time. ``P`` must then be
another member of the cluster file. A header alone names a peer only in a loopback development
cluster without tokens (``trust_header``), as agents' ``x-agent-id`` does there.

The secret file holds one or more secrets, one per line: the first signs this node's calls,
every one verifies a caller's (a rotation adds the new secret second, then moves it first,
then removes the old, each step rolled through the nodes). It must be readable by its owner
only and each secret at least ``MIN_SECRET_CHARS`` characters.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import grpc

from node.errors import PermissionDenied, Reason, SelfModelError, Unauthenticated
from node.tls import PEERS_REFUSED, peer_common_name

NODE_HEADER = "x-selfmodel-node"
TOKEN_HEADER = "x-selfmodel-peer-token"
MIN_SECRET_CHARS = 32
SECRET_BYTES = 32  # of randomness in a secret `selfmodel peer-secret create` writes (hex)


class PeerAuthError(ValueError):
    """A node that could not authenticate its peers; the message names the setting to add."""


class PeerSecretError(PeerAuthError):
    """A peer secret file that cannot be used; the message names the file and the fix."""


class PeerRefused(Exception):
    """A Sync call from a caller that is not an authenticated peer; ``reason`` labels the count."""

    def __init__(self, status: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    def error(self) -> SelfModelError:
        """The refusal as the caller is told it (ErrorInfo ``cause``: the counted reason)."""
        if self.status == grpc.StatusCode.UNAUTHENTICATED:
            return Unauthenticated(
                str(self), reason=Reason.PEER_UNAUTHENTICATED, metadata={"cause": self.reason}
            )
        return PermissionDenied(
            str(self), reason=Reason.PEER_DENIED, metadata={"cause": self.reason}
        )


def peer_token(secret: bytes, node: str) -> str:
    """The token that proves ``node``'s name to the members of a cluster sharing ``secret``."""
    return hmac.new(secret, b"selfmodel-peer:" + node.encode(), hashlib.sha256).hexdigest()


def read_secrets(path: Path) -> tuple[bytes, ...]:
    """The secrets of a peer secret file, first the one that signs; PeerSecretError if unfit."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise PeerSecretError(
            f"cannot read the peer secret file {path}: {exc.strerror}; create one with "
            f"`selfmodel peer-secret create {path}`"
        ) from exc
    if stat.S_IMODE(mode) & 0o077:
        raise PeerSecretError(
            f"the peer secret file {path} is readable by others (mode "
            f"{stat.S_IMODE(mode):o}): chmod 600 it"
        )
    found = tuple(line.strip().encode() for line in text.splitlines() if line.strip())
    if not found:
        raise PeerSecretError(f"the peer secret file {path} holds no secret")
    for i, secret in enumerate(found):
        if len(secret) < MIN_SECRET_CHARS:
            raise PeerSecretError(
                f"the peer secret file {path}: secret {i + 1} has {len(secret)} characters, "
                f"fewer than {MIN_SECRET_CHARS}; create one with `selfmodel peer-secret create`"
            )
    return found


def create_secret(path: Path, *, add: bool = False) -> None:
    """Writes a new random secret to ``path`` (mode 600); ``add``: after the secrets it holds,
    for a rotation, else a new file (an existing one is refused)."""
    line = secrets.token_hex(SECRET_BYTES) + "\n"
    if add:
        read_secrets(path)  # only a usable file is extended
        with open(path, "a") as f:
            f.write(line)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(line)


def metadata_value(context: grpc.ServicerContext, key: str) -> str | None:
    for k, value in context.invocation_metadata():
        if k == key:
            return str(value)
    return None


@dataclass(frozen=True, slots=True)
class PeerAuth:
    """How this node authenticates the callers of its Sync service, and proves itself to peers.

    ``members``: the other nodes of the cluster file, the only names served. With none, every
    call is refused (a node without peers serves Sync to nobody).
    """

    node: str
    members: frozenset[str]
    tls: bool = False
    secrets: tuple[bytes, ...] = ()
    trust_header: bool = False
    refuse: tuple[str, str] | None = None  # (reason, message): every caller is refused

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What this node sends beside each call to a peer."""
        md: tuple[tuple[str, str], ...] = ((NODE_HEADER, self.node),)
        if self.secrets:
            md += ((TOKEN_HEADER, peer_token(self.secrets[0], self.node)),)
        return md

    def authenticate(self, context: grpc.ServicerContext) -> str:
        """The calling peer's name, or PeerRefused (counted by reason)."""
        try:
            name = self._name(context)
            if name not in self.members:
                raise PeerRefused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "unknown_node",
                    f"caller {name!r} is not a peer of node {self.node} in the cluster file",
                )
            return name
        except PeerRefused as refused:
            PEERS_REFUSED.labels(refused.reason).inc()
            raise

    def _name(self, context: grpc.ServicerContext) -> str:
        if self.refuse is not None:
            raise PeerRefused(grpc.StatusCode.PERMISSION_DENIED, *self.refuse)
        if not self.members:
            raise PeerRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                "no_peers",
                f"node {self.node} has no peers in the cluster file: it serves Sync to nobody",
            )
        stated = metadata_value(context, NODE_HEADER)
        if self.tls:
            name = peer_common_name(context)
            if name is None:
                raise PeerRefused(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "no_certificate",
                    "node-to-node calls need mutual TLS: connect with a certificate of the "
                    "cluster's CA",
                )
            if self.secrets:
                self._check_token(context, name)
            return name
        if self.secrets:
            if stated is None:
                raise PeerRefused(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "no_credentials",
                    f"Sync calls name their node in {NODE_HEADER} and prove it with "
                    f"{TOKEN_HEADER} (derived from [cluster.auth] peer_secret)",
                )
            self._check_token(context, stated)
            return stated
        if self.trust_header and stated is not None:
            return stated
        raise PeerRefused(
            grpc.StatusCode.UNAUTHENTICATED,
            "no_credentials",
            f"Sync calls name their node in {NODE_HEADER}",
        )

    def _check_token(self, context: grpc.ServicerContext, name: str) -> None:
        token = (metadata_value(context, TOKEN_HEADER) or "").encode()
        if not any(hmac.compare_digest(token, peer_token(s, name).encode()) for s in self.secrets):
            raise PeerRefused(
                grpc.StatusCode.UNAUTHENTICATED,
                "bad_token",
                f"no valid peer token for node {name!r}: the nodes of a cluster share "
                "[cluster.auth] peer_secret",
            )


def decide(
    node: str,
    others: frozenset[str],
    *,
    tls: bool,
    secrets: tuple[bytes, ...],
    tokens: bool,
    exposed: bool,
) -> PeerAuth:
    """How a node with these settings authenticates peers, or PeerAuthError when it may not start.

    ``others``: the other members of its cluster; ``tokens``: it has a token file; ``exposed``:
    it listens (agents' or peers' port) on an address other than loopback. A node with other
    members authenticates them by certificate or secret, except in a loopback development
    cluster without tokens, where the node header is trusted.
    """
    if tls or secrets or not others:
        return PeerAuth(node, others, tls=tls, secrets=secrets)
    if tokens or exposed:
        why = "a token file" if tokens else "a non-loopback address"
        raise PeerAuthError(
            f"node {node}: refusing to start with peers and {why} but no peer authentication: "
            'add [cluster.auth] peer_secret = "FILE" (create FILE with `selfmodel '
            "peer-secret create FILE`) or a [cluster.tls] section to the cluster file"
        )
    return PeerAuth(node, others, trust_header=True)


def refusing(node: str, reason: str, message: str) -> PeerAuth:
    """A PeerAuth that refuses every caller (the agents' port of a node with a peers' port)."""
    return PeerAuth(node, frozenset(), refuse=(reason, message))


__all__ = [
    "MIN_SECRET_CHARS",
    "NODE_HEADER",
    "TOKEN_HEADER",
    "PeerAuth",
    "PeerAuthError",
    "PeerRefused",
    "PeerSecretError",
    "create_secret",
    "decide",
    "peer_token",
    "read_secrets",
    "refusing",
]
