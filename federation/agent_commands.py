"""The commands that call a node as an agent or an operator would (observe, retract, show,
show-many, watch, subjects, contexts, policy, explain, forget, audit, sources), each printing
the node's reply in the proto JSON mapping (watch: one reply per line), and the health check."""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from federation import calls, cluster
from federation.bearer import token_args
from federation.client import Client, parse_subject
from federation.views import DEFAULT_TARGET
from selfmodel import channels
from selfmodel.errors import DeadlineExceeded
from selfmodel.v1 import model_pb2
from sync.codec import EVIDENCE_KINDS, evidence_from_proto
from sync.observation import Evidence, Subject, SubjectKind


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


def _print(msg: Any, indent: int | None = 2) -> None:
    """Every command's answer: its reply message in the proto JSON mapping (lowerCamelCase
    names, enums by name, every field shown, defaults included), as any gRPC JSON tool reads;
    ``indent`` None: on one line."""
    print(
        json_format.MessageToJson(
            msg, indent=indent, ensure_ascii=False, always_print_fields_with_no_presence=True
        ),
        flush=True,
    )


def _run(
    args: argparse.Namespace, describe: Callable[..., calls.Call[Any]], *a: Any, **kw: Any
) -> int:
    """Prints the reply of the call ``describe`` builds (on the client of ``args``)."""
    with _client(args) as client:
        _print(client._run(calls.raw(describe(client._req, *a, **kw))))
    return 0


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be a whole number within [0, 2^32), got {text!r}")
    return value


def positions_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-positions",
        type=_count,
        help="list at most this many supporters and dissenters per belief, the newest (0: their "
        "counts only; default: all)",
    )


def uncertain_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--include-uncertain",
        action="store_true",
        help="also show beliefs below their context's minimum confidence (flagged uncertain)",
    )


def _evidence(texts: list[str] | None) -> list[Evidence]:
    """``--evidence`` values: an Evidence in the proto JSON mapping (``{"kind":
    "EVIDENCE_KIND_TICKET", "ref": "crm://t/1", "quote": "...", "time":
    "2026-01-05T10:00:00Z"}``) or ``kind:ref`` (``ticket:crm://t/1``)."""
    found = []
    for text in texts or []:
        msg = model_pb2.Evidence()
        if text.lstrip().startswith("{"):
            try:
                json_format.Parse(text, msg)
            except json_format.ParseError as exc:
                raise ValueError(f"--evidence {text!r}: {exc}") from exc
        else:
            kind, colon, msg.ref = text.partition(":")
            if not colon or not kind:
                raise ValueError(f"--evidence {text!r}: give kind:ref, or an Evidence in JSON")
            try:
                msg.kind = EVIDENCE_KINDS.number(kind.lower())  # type: ignore[assignment]
            except ValueError as exc:
                raise ValueError(f"--evidence {text!r}: the kind {exc}") from None
        found.append(evidence_from_proto(msg))
    return found


def _subject(args: argparse.Namespace) -> Subject:
    return parse_subject(args.subject, args.tenant)


def _observe(args: argparse.Namespace) -> int:
    return _run(
        args,
        calls.observe,
        _subject(args),
        args.statement,
        confidence=args.confidence,
        context=args.context,
        key=args.key,
        evidence=_evidence(args.evidence),
        idempotency_key=args.idempotency_key,
    )


def _retract(args: argparse.Namespace) -> int:
    return _run(
        args,
        calls.retract,
        _subject(args),
        args.context,
        args.key,
        source=args.source,
        idempotency_key=args.idempotency_key,
    )


def _show(args: argparse.Namespace) -> int:
    return _run(
        args,
        calls.self_model,
        _subject(args),
        include_uncertain=args.include_uncertain,
        contexts=args.context or (),
        at_least=args.at_least,
        page_size=args.page_size,
        page_token=args.page_token,
        max_positions=args.max_positions,
    )


def _show_many(args: argparse.Namespace) -> int:
    return _run(
        args,
        calls.self_models,
        [parse_subject(s, args.tenant) for s in args.subjects],
        include_uncertain=args.include_uncertain,
        contexts=args.context or (),
        at_least=args.at_least,
        max_positions=args.max_positions,
    )


def _watch(args: argparse.Namespace) -> int:
    """Prints the subject's model now and after every change, one reply per line, until
    ``--count`` replies, ``--timeout`` seconds or an interrupt."""
    with _client(args) as client:
        stream = calls.watch(
            client._req,
            _subject(args),
            contexts=args.context or (),
            include_uncertain=args.include_uncertain,
            timeout_s=args.timeout,
            max_positions=args.max_positions,
            at_least=args.at_least,
        )
        printed = 0
        try:
            for reply in client._follow(dataclasses.replace(stream, item=lambda msg: msg)):
                _print(reply, indent=None)
                printed += 1
                if printed == args.count:
                    break
        except DeadlineExceeded:
            if args.timeout is None:
                raise
        except KeyboardInterrupt:
            pass
    return 0


def _subjects(args: argparse.Namespace) -> int:
    kind = SubjectKind[args.kind.upper()] if args.kind else None
    return _run(
        args,
        calls.subjects,
        kind=kind,
        page_size=args.page_size,
        page_token=args.page_token,
        tenant=args.tenant,
    )


def _contexts(args: argparse.Namespace) -> int:
    return _run(args, calls.contexts, _subject(args))


def _policy(args: argparse.Namespace) -> int:
    return _run(args, calls.policy, *args.contexts)


def _policy_get(args: argparse.Namespace) -> int:
    """The settings in force with where each comes from, of ``--context`` (and the default
    it inherits) if given."""
    with _client(args) as client:
        reply = client._run(calls.raw(calls.settings(client._req)))
    if args.context is not None:
        kept = [s for s in reply.settings if s.context == args.context]
        reliability = [r for r in reply.reliability if r.context in ("", args.context)]
        del reply.settings[:], reply.reliability[:]
        reply.settings.extend(kept)
        reply.reliability.extend(reliability)
    _print(reply)
    return 0


def _policy_set(args: argparse.Namespace) -> int:
    value: str | float = args.value
    if args.field != "policy":
        try:
            value = float(args.value)
        except ValueError:
            raise ValueError(f"{args.field}: takes a number, got {args.value!r}") from None
    return _run(args, calls.set_setting, args.field, value, context=args.context or "")


def _policy_clear(args: argparse.Namespace) -> int:
    return _run(args, calls.clear_setting, args.field, context=args.context or "")


def _reliability_set(args: argparse.Namespace) -> int:
    return _run(args, calls.set_reliability, args.source, args.value, context=args.context or "")


def _reliability_clear(args: argparse.Namespace) -> int:
    return _run(args, calls.clear_reliability, args.source, context=args.context or "")


def _explain(args: argparse.Namespace) -> int:
    return _run(args, calls.explain, _subject(args), args.context, args.key)


def _audit(args: argparse.Namespace) -> int:
    return _run(args, calls.audit, args.after, args.limit)


def _sources_list(args: argparse.Namespace) -> int:
    return _run(
        args,
        calls.source_contributions,
        args.source,
        page_size=args.page_size,
        page_token=args.page_token,
    )


def _sources_withdraw(args: argparse.Namespace) -> int:
    return _run(args, calls.withdraw_source, args.source)


def _sources_lift(args: argparse.Namespace) -> int:
    return _run(args, calls.lift_withdrawal, args.source)


def _forget(args: argparse.Namespace) -> int:
    return _run(args, calls.forget, _subject(args), idempotency_key=args.idempotency_key)


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


def idempotency_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--idempotency-key",
        help="repeat an earlier call's key to retry it safely (default: a new key)",
    )


FIELDS = [w for w in calls.SETTING_FIELDS.value if w]


def policy_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``policy show|get|set|clear|reliability``: the policy in force, and the cluster's
    replicated settings (operators)."""
    policy = sub.add_parser("policy", help="the policy in force, and the cluster's settings")
    verbs = policy.add_subparsers(dest="verb", required=True, metavar="VERB")
    show = verbs.add_parser("show", help="the policy in force for contexts (none: the default)")
    show.add_argument("contexts", nargs="*")
    show.set_defaults(run=_policy)
    get = verbs.add_parser(
        "get", help="every setting in force and where it comes from (operators only)"
    )
    get.set_defaults(run=_policy_get)
    set_ = verbs.add_parser("set", help="set a policy field on every node (operators only)")
    set_.add_argument("field", choices=FIELDS)
    set_.add_argument("value", help="latest|weighted for policy, else a number")
    set_.set_defaults(run=_policy_set)
    clear = verbs.add_parser(
        "clear", help="hand a field back to each node's cluster file (operators only)"
    )
    clear.add_argument("field", choices=FIELDS)
    clear.set_defaults(run=_policy_clear)
    reliability = verbs.add_parser(
        "reliability", help="set a source's reliability on every node (operators only)"
    )
    reliability.add_argument("source")
    reliability.add_argument("value", type=float, help="within [0, 1]")
    reliability.set_defaults(run=_reliability_set)
    unreliability = verbs.add_parser(
        "clear-reliability",
        help="hand a source's reliability back to each node's cluster file (operators only)",
    )
    unreliability.add_argument("source")
    unreliability.set_defaults(run=_reliability_clear)
    for verb in (get, set_, clear, reliability, unreliability):
        verb.add_argument(
            "--context", help="the context (default: every context's default)", default=None
        )
    for verb in (show, get, set_, clear, reliability, unreliability):
        client_args(verb)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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

    show = sub.add_parser(
        "show", help="print a subject's resolved self-model (as GetSelfModel: uncertain left out)"
    )
    show.add_argument("subject")
    uncertain_arg(show)
    show.add_argument("--context", action="append", help="only this context (repeatable)")
    show.add_argument("--at-least", help="a handoff token to wait for")
    show.add_argument("--page-size", type=int, default=0, help="beliefs per page (0: all)")
    show.add_argument("--page-token", default="", help="the nextPageToken of the last page")
    positions_arg(show)
    client_args(show)
    show.set_defaults(run=_show)

    many = sub.add_parser("show-many", help="the self-models of several subjects, read together")
    many.add_argument("subjects", nargs="+")
    uncertain_arg(many)
    many.add_argument("--context", action="append", help="only this context (repeatable)")
    many.add_argument("--at-least", help="a handoff token to wait for")
    positions_arg(many)
    client_args(many)
    many.set_defaults(run=_show_many)

    watch = sub.add_parser(
        "watch", help="print a subject's model now and after every change, one JSON per line"
    )
    watch.add_argument("subject")
    uncertain_arg(watch)
    watch.add_argument("--context", action="append", help="only this context (repeatable)")
    watch.add_argument("--at-least", help="a handoff token the first model waits for")
    positions_arg(watch)
    watch.add_argument(
        "--count", type=_count, default=0, help="stop after this many models (0: never)"
    )
    watch.add_argument(
        "--timeout", type=float, help="stop after this many seconds (default: never)"
    )
    client_args(watch)
    watch.set_defaults(run=_watch)

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

    policy_commands(sub)

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

    sources = sub.add_parser(
        "sources", help="what a source contributed in a tenant; withdraw it (operators only)"
    )
    sources_sub = sources.add_subparsers(dest="sources_command", required=True)
    listed = sources_sub.add_parser(
        "list", help="the observations a source holds in the tenant, a page at a time"
    )
    listed.add_argument("source")
    listed.add_argument("--page-size", type=int, default=0, help="at most this many (0: 100)")
    listed.add_argument("--page-token", default="", help="continue (next_page_token)")
    client_args(listed)
    listed.set_defaults(run=_sources_list)
    withdraw = sources_sub.add_parser(
        "withdraw", help="leave a source's observations out across the tenant, on every node"
    )
    withdraw.add_argument("source")
    client_args(withdraw)
    withdraw.set_defaults(run=_sources_withdraw)
    lift = sources_sub.add_parser("lift", help="lift a source's withdrawal in the tenant")
    lift.add_argument("source")
    client_args(lift)
    lift.set_defaults(run=_sources_lift)

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
