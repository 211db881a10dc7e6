"""The commands that call a node as an agent or an operator would: observe, show, explain,
forget, audit, and the health check."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from federation import calls, cluster
from federation.bearer import token_args
from federation.client import Client, parse_subject
from federation.views import DEFAULT_TARGET
from selfmodel import channels


def _client(args: argparse.Namespace) -> Client:
    credentials = None
    if args.ca:
        credentials = channels.agent_channel_credentials(Path(args.ca))
    return Client(
        args.target,
        agent=args.agent,
        token=args.token,
        token_file=args.token_file,
        tenant=args.tenant,
        credentials=credentials,
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
    with _client(args) as client:
        call = calls.self_model(
            client._req,
            parse_subject(args.subject, args.tenant),
            include_uncertain=True,
            contexts=args.context or (),
            at_least=args.at_least,
        )
        _print(client._run(calls.raw(call)))
    return 0


def _explain(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client.explain(parse_subject(args.subject, args.tenant), args.context, args.key))
    return 0


def _audit(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client._run(calls.raw(calls.audit(client._req, args.after, args.limit))))
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
            credentials = channels.agent_channel_credentials(Path(args.ca))
    except OSError as exc:  # the cluster file itself is a ClusterFileError
        raise ValueError(f"cannot read the CA certificate: {exc}") from exc
    options = []
    if credentials is not None and server_name:
        # Dialed by address (loopback, in a probe): check the certificate against the node's name.
        options.append(("grpc.ssl_target_name_override", server_name))
    request = health_pb2.HealthCheckRequest(service=args.service)
    with channels.open_channel(target, credentials, options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            failure = f"{exc.code().name}: {exc.details()}"
            print(f"selfmodel health: {target}: {failure}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def client_args(p: argparse.ArgumentParser) -> None:
    """Where the node is and who calls it."""
    p.add_argument(
        "--target", default=DEFAULT_TARGET, help=f"node address (default: {DEFAULT_TARGET})"
    )
    p.add_argument("--agent", default="cli", help="agent id for development nodes (default: cli)")
    token_args(p, "bearer token")
    p.add_argument("--ca", help="PEM CA certificate: connect over TLS, trusting only it")
    p.add_argument(
        "--tenant", default="default", help="tenant of kind:id subjects (default: default)"
    )


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


__all__ = ["add_commands"]
