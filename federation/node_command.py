"""``selfmodel node``: its options, and the node configuration they assemble (over a cluster
file's when one is given)."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from federation import cluster
from federation import settings as numeric
from federation.processes import PARENT_ENV, die_with_parent
from federation.views import DEFAULT_TARGET
from selfmodel import channels


def _positive_mb(text: str) -> float:
    try:
        mb = cluster.positive_mb(float(text))
    except ValueError:
        mb = None
    if mb is None:
        raise argparse.ArgumentTypeError(f"must be a positive number of MiB, got {text!r}")
    return mb


def _limit(option: str) -> Any:
    """The argparse type of an option setting the [cluster.limits] key of its name: a number
    within that key's bounds (federation.settings.LIMITS)."""
    name = option.removeprefix("--").replace("-", "_")
    setting = numeric.LIMITS[name]

    def parse(text: str) -> int | float:
        try:
            value: Any = setting.kind(text)
        except ValueError:
            value = text
        try:
            return setting.check("cluster.limits", name, value)
        except numeric.SettingError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("[cluster.limits] ")) from None

    return parse


# Options that set the [cluster.limits] key of their name over the cluster file's, and their help.
NODE_SETTINGS: tuple[tuple[str, str], ...] = (
    (
        "--max-message-bytes",
        "the largest gRPC message the node sends or takes, from agents and peers alike "
        "(default: 4194304, or the cluster file's; at least twice --max-subject-bytes)",
    ),
    (
        "--min-free-mb",
        "suspend writes while the data directory's disk has less free space than this "
        "(default: 64, or the cluster file's [cluster.limits] min_free_mb)",
    ),
    (
        "--disk-probe-s",
        "how often a node whose writes are suspended checks for room again (default: 5)",
    ),
    (
        "--max-connections",
        "TCP connections the node accepts at once, across its ports (default: 1024, or "
        "the cluster file's [cluster.limits] max_connections)",
    ),
    (
        "--connection-idle-s",
        "close a connection without calls after this many seconds (default: 300)",
    ),
    (
        "--handshake-timeout-s",
        "close a connection that has not finished its HTTP/2 handshake after this many "
        "seconds (default: 10)",
    ),
)  # fmt: skip
SUBJECT_OPTIONS = (
    "--max-subject-slots",
    "--max-subject-observations",
    "--max-subject-bytes",
    "--max-group-members",
)
LIMIT_OPTIONS = tuple(
    o.removeprefix("--").replace("-", "_")
    for o in (
        "--cache-mb",
        "--snapshot-cache-mb",
        "--rocksdb-cache-mb",
        *SUBJECT_OPTIONS,
        *(s[0] for s in NODE_SETTINGS),
    )
)


def _node(args: argparse.Namespace) -> int:
    from node.auth import TokenBook, TokenFileError
    from node.config import ConfigError, NodeConfig
    from node.governance import NO_SEED, Seed
    from node.peers import PeerAuthError
    from node.server import serve
    from node.store import StoreError

    parent = os.environ.get(PARENT_ENV)
    if parent and parent.isdigit():
        die_with_parent(int(parent))
    try:
        if args.cluster:
            spec = cluster.load(Path(args.cluster))
            config = cluster.node_config(spec, args.name)
            tokens_file = args.tokens or spec.tokens
        else:
            policies = NO_SEED
            if args.policies:
                with open(args.policies, "rb") as f:
                    policies = Seed.from_config(tomllib.load(f).get("policies", {}))
            config = NodeConfig(
                name=args.name,
                domain=args.domain,
                data_dir=Path(args.data),
                listen=args.listen,
                metrics_listen=args.metrics or None,
                policies=policies,
            )
            tokens_file = args.tokens
        if args.no_fsync:
            config.fsync = False
        config.accept_saved_clock = args.accept_saved_clock
        # Each option sets the [cluster.limits] setting of its name over the cluster file's.
        given = {name: getattr(args, name) for name in LIMIT_OPTIONS}
        numeric.apply(config, {k: v for k, v in given.items() if v is not None})
        if bool(args.tls_cert) != bool(args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        if args.tls_cert:
            config.server_credentials = channels.agent_server_credentials(
                Path(args.tls_cert), Path(args.tls_key)
            )
        if tokens_file:
            config.tokens = TokenBook(Path(tokens_file))
        serve(config)
    except (
        ConfigError,
        StoreError,
        TokenFileError,
        PeerAuthError,
        cluster.ClusterFileError,
        FileNotFoundError,
    ) as exc:
        print(f"selfmodel node: {exc}", file=sys.stderr)
        return 2
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = sub.add_parser("node", help="run one node until SIGTERM or Ctrl-C")
    node.add_argument("--name", default="local", help="node name (default: local)")
    node.add_argument("--data", default="data/local", help="data directory (default: data/local)")
    node.add_argument(
        "--listen", default=DEFAULT_TARGET, help=f"gRPC address (default: {DEFAULT_TARGET})"
    )
    node.add_argument(
        "--metrics",
        default="127.0.0.1:9470",
        help="Prometheus HTTP address ('' to disable; loopback only without --tokens)",
    )
    node.add_argument(
        "--no-fsync", action="store_true", help="do not fsync each group commit (WAL stays on)"
    )
    node.add_argument("--policies", help="TOML file with a [policies] table")
    node.add_argument(
        "--cache-mb",
        type=_positive_mb,
        help="memory for subject states kept in memory (default: 256, or the cluster file's)",
    )
    node.add_argument(
        "--snapshot-cache-mb",
        type=_positive_mb,
        help="memory for resolved snapshots and their replies (default: 64, or the cluster file's)",
    )
    node.add_argument(
        "--rocksdb-cache-mb",
        type=_positive_mb,
        help="memory for RocksDB's cached blocks and memtables (default: 128, or the cluster "
        "file's)",
    )
    for option, default, what in (
        ("--max-subject-slots", "1000", "slots"),
        ("--max-subject-observations", "2000", "observations"),
        ("--max-subject-bytes", "1048576", "bytes of encoded state"),
        ("--max-group-members", "1000", "members of a team or organization"),
    ):
        node.add_argument(
            option,
            type=_limit(option),
            help=f"at most this many {what} per subject; a write past it is refused with "
            f"RESOURCE_EXHAUSTED (default: {default}, or the cluster file's)",
        )
    for option, what in NODE_SETTINGS:
        node.add_argument(option, type=_limit(option), help=what)
    node.add_argument(
        "--cluster",
        help="cluster file: run its node --name (its settings replace --data, --listen, "
        "--metrics, --domain and --policies)",
    )
    node.add_argument("--domain", default="", help="the domain this node serves, e.g. sales")
    node.add_argument("--tokens", help="token file: authenticate every call (else loopback only)")
    node.add_argument("--tls-cert", help="PEM certificate: serve the agents' port over TLS")
    node.add_argument("--tls-key", help="PEM private key of --tls-cert")
    node.add_argument(
        "--accept-saved-clock",
        action="store_true",
        help="take writes at once even when the clock saved by the previous run is further "
        "ahead of the wall clock than max_clock_offset_ms (peers hold the new deltas back "
        "until their clocks allow them); without it the node refuses writes until the wall "
        "clock catches up (see docs/operating.md)",
    )
    node.set_defaults(run=_node)


__all__ = ["add_commands"]
