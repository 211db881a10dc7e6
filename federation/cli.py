"""The ``selfmodel`` command line: run nodes and clusters, write and inspect beliefs."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from federation import agent_commands, certs, cluster, member_commands, node_command, tokens
from federation.bearer import bearer_token, token_args
from node.errors import SelfModelError


def _peer_secret_create(args: argparse.Namespace) -> int:
    from node import peers

    path = Path(args.file)
    if not args.add and path.exists():
        raise ValueError(
            f"{path} exists: pass --add to add a secret to it (a rotation), or choose a new file"
        )
    peers.create_secret(path, add=args.add)
    count = len(peers.read_secrets(path))
    print(
        f"{'added a secret to' if args.add else 'wrote'} {path} (mode 600, {count} secret(s)); "
        "name it in the cluster file: [cluster.auth] peer_secret"
    )
    return 0


def _peer_secret_promote(args: argparse.Namespace) -> int:
    """Moves the last secret of the file (the one added) first: nodes sign with it from their
    next start; or, ``--retire``, keeps the first alone."""
    from node import peers

    path = Path(args.file)
    found = peers.read_secrets(path)
    kept = found[:1] if args.retire else found[-1:] + found[:-1]
    path.write_text("".join(s.decode() + "\n" for s in kept))
    print(f"{path}: {len(kept)} secret(s) verify, the first signs")
    return 0


def _cluster_up(args: argparse.Namespace) -> int:
    from federation import launcher

    if args.tls and args.config:
        raise ValueError("--tls applies to the embedded default; a cluster file has [cluster.tls]")
    config = cluster.load(Path(args.config) if args.config else None, tls=args.tls)
    if args.tls:
        certs_dir = config.nodes[0].data.parent / "certs"
        certs.create_cluster_certs(certs_dir, config.names())
        print(f"mutual TLS between nodes, certificates in {certs_dir}/")
    if config.peer_secret is not None and not config.peer_secret.exists():
        from node import peers

        peers.create_secret(config.peer_secret)
        print(f"created the cluster's peer secret {config.peer_secret}")
    return launcher.up(config, token=bearer_token(args.token, args.token_file))


def _cluster_status(args: argparse.Namespace) -> int:
    from federation import launcher

    config = cluster.load(Path(args.config) if args.config else None)
    rows = launcher.status_rows(config, bearer_token(args.token, args.token_file))
    print(launcher.format_table(rows))
    return 0 if all(r[3] == "serving" for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfmodel", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)
    node_command.add_commands(sub)

    clus = sub.add_parser("cluster", help="run or inspect a whole cluster")
    clus_sub = clus.add_subparsers(dest="cluster_command", required=True)
    up = clus_sub.add_parser("up", help="start every node of the cluster file; Ctrl-C stops them")
    up.add_argument("--config", help="cluster file (default: the embedded three-node cluster)")
    token_args(up, "operator token for the status queries")
    up.add_argument(
        "--tls", action="store_true", help="embedded default with mutual TLS between the nodes"
    )
    up.set_defaults(run=_cluster_up)
    status = clus_sub.add_parser("status", help="every node's peers, outbox depth and lag")
    status.add_argument("--config", help="cluster file (default: the embedded three-node cluster)")
    token_args(status, "operator token")
    status.set_defaults(run=_cluster_status)
    agent_commands.add_commands(sub)
    member_commands.add_commands(sub)
    bench = sub.add_parser(
        "bench",
        help="run a benchmark of this checkout's benchmarks/ (load, handoff, chaos, replication, "
        "node_latency) from the checkout's root; its own --help lists its options",
    )
    bench.add_argument("name", choices=BENCHMARKS)
    bench.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")
    bench.set_defaults(run=_bench)
    secret = sub.add_parser(
        "peer-secret", help="the secret that proves each node's name to its peers (no TLS)"
    )
    secret_sub = secret.add_subparsers(dest="secret_command", required=True)
    create = secret_sub.add_parser("create", help="write a new random secret (mode 600)")
    create.add_argument("file")
    create.add_argument(
        "--add", action="store_true", help="add it after the file's secrets (rotation, step 1)"
    )
    create.set_defaults(run=_peer_secret_create)
    promote = secret_sub.add_parser(
        "promote", help="the secret added last signs from now on (rotation, step 2)"
    )
    promote.add_argument("file")
    promote.add_argument(
        "--retire",
        action="store_true",
        help="instead keep the signing secret only, dropping the others (rotation, step 3)",
    )
    promote.set_defaults(run=_peer_secret_promote)
    tokens.add_commands(sub)
    certs.add_commands(sub)
    return parser


BENCHMARKS = ("load", "handoff", "chaos", "replication", "node_latency")


def _bench(args: argparse.Namespace) -> int:
    """Runs ``python -m benchmarks.NAME`` in the checkout: benchmarks use the tests' harness,
    which comes with a checkout, not with the package."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / f"{args.name}.py").exists():
        raise ValueError(f"no benchmarks/ in {root}: the benchmarks come with a checkout")
    return subprocess.call(
        [sys.executable, "-m", f"benchmarks.{args.name}", *args.options], cwd=root
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code = args.run(args)
    except SelfModelError as exc:
        print(f"selfmodel {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    except ValueError as exc:
        print(f"selfmodel {args.command}: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)
