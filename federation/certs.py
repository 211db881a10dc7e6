"""``selfmodel certs create``: a CA and one certificate per node, for mutual TLS between nodes.

Each node certificate names the node in its CN (how a node recognizes its peer, see
``peer_common_name``) and in its subject alternative names, with ``localhost`` and 127.0.0.1 for
local clusters (``--host`` adds more). Keys are EC P-256 and written readable by the owner only.
Running it again with the same ``--out`` reuses the CA there, so nodes can be added later.

The gRPC credential helpers live in ``selfmodel.channels`` and the peer checks in ``node.tls``
(a node imports nothing from ``federation``); both are re-exported here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.tls import peer_common_name, require_peer
from selfmodel.channels import channel_credentials, server_credentials

_NODE = re.compile(r"[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?")
CA_NAME = "selfmodel cluster CA"


@dataclass(frozen=True, slots=True)
class NodeCert:
    name: str
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class ClusterCerts:
    ca: Path
    ca_key: Path
    nodes: dict[str, NodeCert]


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if private:
        os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "selfmodel"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _load_or_create_ca(
    out: Path, days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path, Path]:
    ca_path, key_path = out / "ca.pem", out / "ca.key"
    if ca_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(
                f"{key_path} is not an EC private key made by `selfmodel certs create`"
            )
        return cert, key, ca_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(ca_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert, key, ca_path, key_path


def _node_cert(
    name: str,
    hosts: Sequence[str],
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans = list(dict.fromkeys([name, "localhost", "127.0.0.1", *hosts]))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in sans]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def create_cluster_certs(
    out_dir: Path | str,
    node_names: Sequence[str],
    *,
    hosts: Sequence[str] = (),
    days: int = 825,
) -> ClusterCerts:
    """Writes ``ca.pem``/``ca.key`` (reused when present) and ``<node>.pem``/``<node>.key``."""
    out = Path(out_dir)
    if not node_names:
        raise ValueError("name at least one node (--node NAME)")
    for name in node_names:
        if not _NODE.fullmatch(name):
            raise ValueError(
                f"node name {name!r} must be a DNS label: lowercase letters, digits and '-'"
            )
    out.mkdir(parents=True, exist_ok=True)
    ca, ca_key, ca_path, ca_key_path = _load_or_create_ca(out, days)
    nodes = {}
    for name in node_names:
        cert, key = _node_cert(name, hosts, ca, ca_key, days)
        cert_path, key_path = out / f"{name}.pem", out / f"{name}.key"
        _write(key_path, _key_pem(key), private=True)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
        nodes[name] = NodeCert(name, cert_path, key_path)
    return ClusterCerts(ca_path, ca_key_path, nodes)


def _create(args: argparse.Namespace) -> int:
    made = create_cluster_certs(args.out, args.node, hosts=args.host or [], days=args.days)
    print(f"CA           {made.ca} (key {made.ca_key}: keep it private)")
    for n in made.nodes.values():
        print(f"node {n.name:<8} {n.cert} (key {n.key})")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers ``selfmodel certs create`` on the main parser's subcommands."""
    certs = sub.add_parser("certs", help="certificates for mutual TLS between nodes")
    actions = certs.add_subparsers(dest="certs_command", required=True)
    c = actions.add_parser("create", help="a CA (reused when present) and one cert per node")
    c.add_argument("--out", required=True, help="directory for ca.pem, ca.key, NODE.pem, NODE.key")
    c.add_argument("--node", action="append", required=True, help="a node name (repeatable)")
    c.add_argument(
        "--host", action="append", help="another DNS name or IP of every node (repeatable)"
    )
    c.add_argument("--days", type=int, default=825, help="validity in days (default: 825)")
    c.set_defaults(run=_create)


__all__ = [
    "ClusterCerts",
    "NodeCert",
    "add_commands",
    "channel_credentials",
    "create_cluster_certs",
    "peer_common_name",
    "require_peer",
    "server_credentials",
]
