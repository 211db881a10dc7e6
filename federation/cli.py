"""The ``selfmodel`` command line: run nodes and clusters, write and inspect beliefs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import tomllib
from pathlib import Path
from typing import Any

from node import transport

transport.configure()  # before anything imports gRPC, which reads it once (see node.transport)

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402

from federation import certs, cluster, tokens  # noqa: E402
from federation.client import Client, parse_subject  # noqa: E402
from federation.launcher import PARENT_ENV, die_with_parent  # noqa: E402
from node.errors import SelfModelError  # noqa: E402

DEFAULT_TARGET = "127.0.0.1:7070"


def _positive_mb(text: str) -> float:
    try:
        mb = cluster.positive_mb(float(text))
    except ValueError:
        mb = None
    if mb is None:
        raise argparse.ArgumentTypeError(f"must be a positive number of MiB, got {text!r}")
    return mb


def _node(args: argparse.Namespace) -> int:
    from node import tls
    from node.auth import TokenBook, TokenFileError
    from node.policy import PolicyBook
    from node.server import (
        ConfigError,
        NodeConfig,
        parse_cpus,
        pin_to_cpus,
        schedule_as_batch,
        serve,
    )
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
            policies = PolicyBook()
            if args.policies:
                with open(args.policies, "rb") as f:
                    policies = PolicyBook.from_config(tomllib.load(f).get("policies", {}))
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
        if args.cache_mb is not None:
            config.cache_mb = args.cache_mb
        if bool(args.tls_cert) != bool(args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        if args.tls_cert:
            config.server_credentials = tls.agent_server_credentials(
                Path(args.tls_cert), Path(args.tls_key)
            )
        if tokens_file:
            config.identify = TokenBook(Path(tokens_file)).identify
        if args.cpus:
            pin_to_cpus(parse_cpus(args.cpus))
        if args.sched_batch:
            schedule_as_batch()
        serve(config)
    except (
        ConfigError,
        StoreError,
        TokenFileError,
        cluster.ClusterFileError,
        FileNotFoundError,
    ) as exc:
        print(f"selfmodel node: {exc}", file=sys.stderr)
        return 2
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
    return launcher.up(config, token=args.token)


def _cluster_status(args: argparse.Namespace) -> int:
    from federation import launcher

    config = cluster.load(Path(args.config) if args.config else None)
    rows = launcher.status_rows(config, args.token)
    print(launcher.format_table(rows))
    return 0 if all(r[3] == "serving" for r in rows) else 1


def _client(args: argparse.Namespace) -> Client:
    credentials = None
    if args.ca:
        from node import tls

        credentials = tls.agent_channel_credentials(Path(args.ca))
    return Client(
        args.target, agent=args.agent, token=args.token, tenant=args.tenant, credentials=credentials
    )


def _print(msg: Any) -> None:
    print(json.dumps(json_format.MessageToDict(msg), indent=2, ensure_ascii=False))


def _observe(args: argparse.Namespace) -> int:
    with _client(args) as client:
        written = client.observe(
            parse_subject(args.subject, args.tenant),
            args.statement,
            confidence=args.confidence,
            context=args.context,
            key=args.key,
        )
    print(json.dumps({"observation_id": written.observation_id, "key": written.key,
                      "handoff_token": written.token}, indent=2))  # fmt: skip
    return 0


def _show(args: argparse.Namespace) -> int:
    from selfmodel.v1 import selfmodel_pb2

    with _client(args) as client:
        req = selfmodel_pb2.GetSelfModelRequest(
            subject=client._req.subject(parse_subject(args.subject, args.tenant)),
            include_uncertain=True,
            contexts=args.context or [],
            at_least=args.at_least or "",
        )
        _print(client._call(client._stub.GetSelfModel, req))
    return 0


def _explain(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client.explain(parse_subject(args.subject, args.tenant), args.context, args.key))
    return 0


def _audit(args: argparse.Namespace) -> int:
    from selfmodel.v1 import admin_pb2

    with _client(args) as client:
        req = admin_pb2.ListAuditRequest(after=args.after, limit=args.limit)
        _print(client._call(client._admin.ListAudit, req))
    return 0


def _forget(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(client.forget(parse_subject(args.subject, args.tenant)))
    return 0


def _health(args: argparse.Namespace) -> int:
    """grpc.health.v1 Check of one node: exit 0 only while it answers SERVING.

    With ``--cluster`` the cluster file says where the node listens, whether its agents' port
    speaks TLS and which CA to trust; the node is ``--name``, else this machine's hostname (a
    StatefulSet pod's or a compose service's), so one probe command serves every node.
    """
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from node import tls

    target, credentials, server_name = args.target, None, args.server_name
    try:
        if args.cluster:
            spec = cluster.load(Path(args.cluster))
            name = args.name or socket.gethostname()
            if name not in spec.names():
                raise ValueError(
                    f"{args.cluster} has no node named {name!r} (pass --name; nodes: "
                    f"{', '.join(spec.names())})"
                )
            target = cluster.dial_address(spec.node(name).address)
            server_name = server_name or name
            credentials = spec.agent_credentials()
        elif args.ca:
            credentials = tls.agent_channel_credentials(Path(args.ca))
    except OSError as exc:  # the cluster file itself is a ClusterFileError
        raise ValueError(f"cannot read the CA certificate: {exc}") from exc
    options = []
    if credentials is not None and server_name:
        # Dialed by address (loopback, in a probe): check the certificate against the node's name.
        options.append(("grpc.ssl_target_name_override", server_name))
    request = health_pb2.HealthCheckRequest(service=args.service)
    with tls.open_channel(target, credentials, options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            failure = f"{exc.code().name}: {exc.details()}"
            print(f"selfmodel health: {target}: {failure}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfmodel", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    node = sub.add_parser("node", help="run one node until SIGTERM or Ctrl-C")
    node.add_argument("--name", default="local", help="node name (default: local)")
    node.add_argument("--data", default="data/local", help="data directory (default: data/local)")
    node.add_argument(
        "--listen", default=DEFAULT_TARGET, help=f"gRPC address (default: {DEFAULT_TARGET})"
    )
    node.add_argument(
        "--metrics", default="127.0.0.1:9470", help="Prometheus HTTP address ('' to disable)"
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
        "--cluster",
        help="cluster file: run its node --name (its settings replace --data, --listen, "
        "--metrics, --domain and --policies)",
    )
    node.add_argument("--domain", default="", help="the domain this node serves, e.g. sales")
    node.add_argument("--tokens", help="token file: authenticate every call (else loopback only)")
    node.add_argument("--tls-cert", help="PEM certificate: serve the agents' port over TLS")
    node.add_argument("--tls-key", help="PEM private key of --tls-cert")
    node.add_argument(
        "--cpus",
        help="run the node on these CPUs only, e.g. 1 or 0-1 (one CPU per node serves the most "
        "calls: see the README)",
    )
    node.add_argument(
        "--sched-batch",
        action="store_true",
        help="run the node's threads under Linux's SCHED_BATCH policy: fewer context switches "
        "and about 7%% more calls served; for a node with a CPU of its own (see the README)",
    )
    node.add_argument(
        "--accept-saved-clock",
        action="store_true",
        help="take writes at once even when the clock saved by the previous run is further "
        "ahead of the wall clock than max_clock_offset_ms (peers hold the new deltas back "
        "until their clocks allow them); without it the node refuses writes until the wall "
        "clock catches up (see docs/operating.md)",
    )
    node.set_defaults(run=_node)

    clus = sub.add_parser("cluster", help="run or inspect a whole cluster")
    clus_sub = clus.add_subparsers(dest="cluster_command", required=True)
    up = clus_sub.add_parser("up", help="start every node of the cluster file; Ctrl-C stops them")
    up.add_argument("--config", help="cluster file (default: the embedded three-node cluster)")
    up.add_argument("--token", help="operator token for the status queries")
    up.add_argument(
        "--tls", action="store_true", help="embedded default with mutual TLS between the nodes"
    )
    up.set_defaults(run=_cluster_up)
    status = clus_sub.add_parser("status", help="every node's peers, outbox depth and lag")
    status.add_argument("--config", help="cluster file (default: the embedded three-node cluster)")
    status.add_argument("--token", help="operator token")
    status.set_defaults(run=_cluster_status)

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--target", default=DEFAULT_TARGET, help=f"node address (default: {DEFAULT_TARGET})"
        )
        p.add_argument(
            "--agent", default="cli", help="agent id for development nodes (default: cli)"
        )
        p.add_argument("--token", help="bearer token")
        p.add_argument("--ca", help="PEM CA certificate: connect over TLS, trusting only it")
        p.add_argument(
            "--tenant", default="default", help="tenant of kind:id subjects (default: default)"
        )

    obs = sub.add_parser("observe", help="record an observation")
    obs.add_argument("subject", help="tenant/kind/id or kind:id, e.g. user:u-42")
    obs.add_argument("statement")
    obs.add_argument("--context", required=True)
    obs.add_argument("--confidence", type=float, required=True)
    obs.add_argument("--key", default="")
    client_args(obs)
    obs.set_defaults(run=_observe)

    show = sub.add_parser("show", help="print a subject's resolved self-model (uncertain included)")
    show.add_argument("subject")
    show.add_argument("--context", action="append", help="only this context (repeatable)")
    show.add_argument("--at-least", help="a handoff token to wait for")
    client_args(show)
    show.set_defaults(run=_show)

    explain = sub.add_parser("explain", help="every observation of a slot and why the winner won")
    explain.add_argument("subject")
    explain.add_argument("context")
    explain.add_argument("key")
    client_args(explain)
    explain.set_defaults(run=_explain)

    forget = sub.add_parser("forget", help="erase a subject on every node")
    forget.add_argument("subject")
    client_args(forget)
    forget.set_defaults(run=_forget)

    audit = sub.add_parser("audit", help="the node's log of operator actions (operators only)")
    audit.add_argument("--after", default="", help="continue after this cursor (next_cursor)")
    audit.add_argument("--limit", type=int, default=100, help="at most this many (max 1000)")
    client_args(audit)
    audit.set_defaults(run=_audit)

    health = sub.add_parser(
        "health", help="grpc.health.v1 check of a node: exit 0 only while it is SERVING"
    )
    health.add_argument(
        "--target",
        default=os.environ.get("SELFMODEL_HEALTH_TARGET", DEFAULT_TARGET),
        help="node address (default: $SELFMODEL_HEALTH_TARGET, else %(default)s)",
    )
    health.add_argument("--ca", help="PEM CA certificate: connect over TLS, trusting only it")
    health.add_argument(
        "--server-name", help="the name to check the node's certificate against (TLS)"
    )
    health.add_argument(
        "--cluster",
        help="cluster file: check its node --name at its address, over TLS when its agents' "
        "port is (overrides --target and --ca)",
    )
    health.add_argument("--name", help="node of --cluster (default: this machine's hostname)")
    health.add_argument("--service", default="", help="service to check (default: the node)")
    health.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait (default: %(default)s)"
    )
    health.set_defaults(run=_health)
    tokens.add_commands(sub)
    certs.add_commands(sub)
    return parser


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
