"""The ``selfmodel`` command line: run nodes and clusters, write and inspect beliefs."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from federation import certs, cluster, tokens
from federation.bearer import TOKEN_ENV, TOKEN_FILE_ENV, bearer_token
from federation.client import Client, parse_subject
from federation.launcher import PARENT_ENV, die_with_parent
from node.errors import SelfModelError
from selfmodel.v1 import admin_pb2, model_pb2, selfmodel_pb2
from sync.codec import evidence_from_proto
from sync.observation import Evidence, SubjectKind

DEFAULT_TARGET = "127.0.0.1:7070"


def _positive_mb(text: str) -> float:
    try:
        mb = cluster.positive_mb(float(text))
    except ValueError:
        mb = None
    if mb is None:
        raise argparse.ArgumentTypeError(f"must be a positive number of MiB, got {text!r}")
    return mb


def _at_least(minimum: float, kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be a number of at least {minimum}, got {text!r}"
            )
        return value

    return parse


def _node(args: argparse.Namespace) -> int:
    from node import tls
    from node.auth import TokenBook, TokenFileError
    from node.peers import PeerAuthError
    from node.policy import PolicyBook
    from node.server import ConfigError, NodeConfig, serve
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
        config.subject_limits = cluster.subject_limits(
            config.subject_limits,
            max_subject_slots=args.max_subject_slots,
            max_subject_observations=args.max_subject_observations,
            max_subject_bytes=args.max_subject_bytes,
        )
        if args.max_message_bytes is not None:
            config.max_message_bytes = args.max_message_bytes
        for setting in (
            "min_free_mb",
            "disk_probe_s",
            "max_connections",
            "connection_idle_s",
            "handshake_timeout_s",
        ):
            if getattr(args, setting) is not None:
                setattr(config, setting, getattr(args, setting))
        if bool(args.tls_cert) != bool(args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        if args.tls_cert:
            config.server_credentials = tls.agent_server_credentials(
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


def _client(args: argparse.Namespace) -> Client:
    credentials = None
    if args.ca:
        from node import tls

        credentials = tls.agent_channel_credentials(Path(args.ca))
    return Client(
        args.target,
        agent=args.agent,
        token=args.token,
        token_file=args.token_file,
        tenant=args.tenant,
        credentials=credentials,
    )


def _print(msg: Any) -> None:
    """Every command's answer: its reply message in the proto JSON mapping (lowerCamelCase
    names, enums by name, every field shown, defaults included), as any gRPC JSON tool reads."""
    print(
        json_format.MessageToJson(
            msg, indent=2, ensure_ascii=False, always_print_fields_with_no_presence=True
        )
    )


def _evidence(texts: list[str] | None) -> list[Evidence]:
    """``--evidence`` values: an Evidence in the proto JSON mapping (``{"kind": "ticket",
    "ref": "crm://t/1", "quote": "...", "time": "2026-01-05T10:00:00Z"}``) or ``kind:ref``."""
    found = []
    for text in texts or []:
        msg = model_pb2.Evidence()
        if text.lstrip().startswith("{"):
            try:
                json_format.Parse(text, msg)
            except json_format.ParseError as exc:
                raise ValueError(f"--evidence {text!r}: {exc}") from exc
        else:
            msg.kind, colon, msg.ref = text.partition(":")
            if not colon or not msg.kind:
                raise ValueError(f"--evidence {text!r}: give kind:ref, or an Evidence in JSON")
        found.append(evidence_from_proto(msg))
    return found


def _observe(args: argparse.Namespace) -> int:
    with _client(args) as client:
        written = client.observe(
            parse_subject(args.subject, args.tenant),
            args.statement,
            confidence=args.confidence,
            context=args.context,
            key=args.key,
            evidence=_evidence(args.evidence),
            idempotency_key=args.idempotency_key,
        )
    _print(
        selfmodel_pb2.ObserveResponse(
            observation_id=written.observation_id, key=written.key, handoff_token=written.token
        )
    )
    return 0


def _retract(args: argparse.Namespace) -> int:
    with _client(args) as client:
        done = client.retract(
            parse_subject(args.subject, args.tenant),
            args.context,
            args.key,
            source=args.source,
            idempotency_key=args.idempotency_key,
        )
    _print(
        selfmodel_pb2.RetractResponse(
            retracted=done.count, handoff_token=done.token, recorded=done.recorded
        )
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        req = selfmodel_pb2.GetSelfModelRequest(
            subject=client._req.subject(parse_subject(args.subject, args.tenant)),
            include_uncertain=True,
            contexts=args.context or [],
            at_least=args.at_least or "",
            page_size=args.page_size,
            page_token=args.page_token,
        )
        _print(client._call(client._stub.GetSelfModel, req))
    return 0


def _show_many(args: argparse.Namespace) -> int:
    with _client(args) as client:
        req = selfmodel_pb2.BatchGetSelfModelsRequest(
            subjects=[client._req.subject(parse_subject(s, args.tenant)) for s in args.subjects],
            include_uncertain=True,
            contexts=args.context or [],
            at_least=args.at_least or "",
        )
        _print(client._call(client._stub.BatchGetSelfModels, req))
    return 0


def _subjects(args: argparse.Namespace) -> int:
    with _client(args) as client:
        req = selfmodel_pb2.ListSubjectsRequest(
            tenant=args.tenant,
            kind=SubjectKind[args.kind.upper()] if args.kind else 0,  # type: ignore[arg-type]
            page_size=args.page_size,
            page_token=args.page_token,
        )
        _print(client._call(client._stub.ListSubjects, req))
    return 0


def _contexts(args: argparse.Namespace) -> int:
    with _client(args) as client:
        req = selfmodel_pb2.ListContextsRequest(
            subject=client._req.subject(parse_subject(args.subject, args.tenant))
        )
        _print(client._call(client._stub.ListContexts, req))
    return 0


def _policy(args: argparse.Namespace) -> int:
    with _client(args) as client:
        req = selfmodel_pb2.GetPolicyRequest(contexts=args.contexts)
        _print(client._call(client._stub.GetPolicy, req))
    return 0


def _explain(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client.explain(parse_subject(args.subject, args.tenant), args.context, args.key))
    return 0


def _audit(args: argparse.Namespace) -> int:
    with _client(args) as client:
        req = admin_pb2.ListAuditRequest(after=args.after, limit=args.limit)
        _print(client._call(client._admin.ListAudit, req))
    return 0


def _forget(args: argparse.Namespace) -> int:
    with _client(args) as client:
        token = client.forget(
            parse_subject(args.subject, args.tenant), idempotency_key=args.idempotency_key
        )
    _print(selfmodel_pb2.ForgetSubjectResponse(handoff_token=token))
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


def idempotency_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--idempotency-key",
        help="repeat an earlier call's key to retry it safely (default: a new key)",
    )


def token_args(p: argparse.ArgumentParser, what: str) -> None:
    """--token and --token-file; without either, $SELFMODEL_TOKEN or $SELFMODEL_TOKEN_FILE."""
    p.add_argument(
        "--token",
        help=f"{what} (visible in ps and shell history: prefer --token-file or ${TOKEN_ENV})",
    )
    p.add_argument(
        "--token-file",
        help=f"file whose first line is the {what}; without --token or --token-file, "
        f"${TOKEN_ENV} holds the token or ${TOKEN_FILE_ENV} names its file",
    )


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
    for option, default, what in (
        ("--max-subject-slots", "1000", "slots"),
        ("--max-subject-observations", "2000", "observations"),
        ("--max-subject-bytes", "1048576", "bytes of encoded state"),
    ):
        node.add_argument(
            option,
            type=_at_least(1, int),
            help=f"at most this many {what} per subject; a write past it is refused with "
            f"RESOURCE_EXHAUSTED (default: {default}, or the cluster file's)",
        )
    node.add_argument(
        "--max-message-bytes",
        type=_at_least(1, int),
        help="the largest gRPC message the node sends or takes, from agents and peers alike "
        "(default: 4194304, or the cluster file's; at least twice --max-subject-bytes)",
    )
    node.add_argument(
        "--min-free-mb",
        type=_at_least(0.0, float),
        help="suspend writes while the data directory's disk has less free space than this "
        "(default: 64, or the cluster file's [cluster.storage] min_free_mb)",
    )
    node.add_argument(
        "--disk-probe-s",
        type=_at_least(0.01, float),
        help="how often a node whose writes are suspended checks for room again (default: 5)",
    )
    node.add_argument(
        "--max-connections",
        type=_at_least(1, int),
        help="TCP connections the node accepts at once, across its ports (default: 1024, or "
        "the cluster file's [cluster.connections] max)",
    )
    node.add_argument(
        "--connection-idle-s",
        type=_at_least(0.01, float),
        help="close a connection without calls after this many seconds (default: 300)",
    )
    node.add_argument(
        "--handshake-timeout-s",
        type=_at_least(0.01, float),
        help="close a connection that has not finished its HTTP/2 handshake after this many "
        "seconds (default: 10)",
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
    token_args(up, "operator token for the status queries")
    up.add_argument(
        "--tls", action="store_true", help="embedded default with mutual TLS between the nodes"
    )
    up.set_defaults(run=_cluster_up)
    status = clus_sub.add_parser("status", help="every node's peers, outbox depth and lag")
    status.add_argument("--config", help="cluster file (default: the embedded three-node cluster)")
    token_args(status, "operator token")
    status.set_defaults(run=_cluster_status)

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--target", default=DEFAULT_TARGET, help=f"node address (default: {DEFAULT_TARGET})"
        )
        p.add_argument(
            "--agent", default="cli", help="agent id for development nodes (default: cli)"
        )
        token_args(p, "bearer token")
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
    obs.add_argument(
        "--evidence",
        action="append",
        help='what it rests on (repeatable): kind:ref, or JSON {"kind": ..., "ref": ..., '
        '"quote": ..., "time": ...}',
    )
    idempotency_arg(obs)
    client_args(obs)
    obs.set_defaults(run=_observe)

    retract = sub.add_parser("retract", help="withdraw a source's observations in a slot")
    retract.add_argument("subject")
    retract.add_argument("context")
    retract.add_argument("key", help="the slot's key (the key observe printed)")
    retract.add_argument("--source", default="", help="another source's (operators only)")
    idempotency_arg(retract)
    client_args(retract)
    retract.set_defaults(run=_retract)

    show = sub.add_parser("show", help="print a subject's resolved self-model (uncertain included)")
    show.add_argument("subject")
    show.add_argument("--context", action="append", help="only this context (repeatable)")
    show.add_argument("--at-least", help="a handoff token to wait for")
    show.add_argument("--page-size", type=int, default=0, help="beliefs per page (0: all)")
    show.add_argument("--page-token", default="", help="the nextPageToken of the last page")
    client_args(show)
    show.set_defaults(run=_show)

    many = sub.add_parser("show-many", help="the self-models of several subjects, read together")
    many.add_argument("subjects", nargs="+")
    many.add_argument("--context", action="append", help="only this context (repeatable)")
    many.add_argument("--at-least", help="a handoff token to wait for")
    client_args(many)
    many.set_defaults(run=_show_many)

    subjects = sub.add_parser("subjects", help="list the tenant's subjects, a page at a time")
    subjects.add_argument("--kind", choices=["user", "team", "org"], help="only this kind")
    subjects.add_argument("--page-size", type=int, default=0, help="subjects per page (0: 100)")
    subjects.add_argument("--page-token", default="", help="the nextPageToken of the last page")
    client_args(subjects)
    subjects.set_defaults(run=_subjects)

    contexts = sub.add_parser("contexts", help="a subject's contexts, each with its policy")
    contexts.add_argument("subject")
    client_args(contexts)
    contexts.set_defaults(run=_contexts)

    policy = sub.add_parser("policy", help="the policy in force for contexts (none: the default)")
    policy.add_argument("contexts", nargs="*")
    client_args(policy)
    policy.set_defaults(run=_policy)

    explain = sub.add_parser("explain", help="every observation of a slot and why the winner won")
    explain.add_argument("subject")
    explain.add_argument("context")
    explain.add_argument("key")
    client_args(explain)
    explain.set_defaults(run=_explain)

    forget = sub.add_parser("forget", help="erase a subject on every node")
    forget.add_argument("subject")
    idempotency_arg(forget)
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
    bench = sub.add_parser(
        "bench",
        help="run a benchmark of this checkout's benchmarks/ (load, handoff, chaos, replication, "
        "node_latency); its own --help lists its options",
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
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{args.name}.py"
    if not script.exists():
        raise ValueError(f"no {script}: the benchmarks come with a checkout, not the package")
    return subprocess.call([sys.executable, str(script), *args.options])


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
