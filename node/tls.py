"""Mutual TLS between nodes: credentials from PEM files and the verified peer's name."""

from __future__ import annotations

from pathlib import Path

import grpc


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FileNotFoundError(f"cannot read TLS file {path}: {exc}") from exc


def server_credentials(ca: Path, cert: Path, key: Path) -> grpc.ServerCredentials:
    """Requires and verifies a client certificate signed by the cluster's CA."""
    return grpc.ssl_server_credentials(
        [(_read(key), _read(cert))], root_certificates=_read(ca), require_client_auth=True
    )


def channel_credentials(ca: Path, cert: Path, key: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca), private_key=_read(key), certificate_chain=_read(cert)
    )


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The CN of the caller's verified certificate (a node name), or None without one."""
    names = context.auth_context().get("x509_common_name")
    if not names:
        return None
    return bytes(names[0]).decode()
