"""``selfmodel token create|revoke|list``: edits a node's token file.

A new token is printed once and only its SHA-256 hash is stored. Every change is also appended
to an audit file next to the token file (``tokens.toml`` → ``tokens.audit.jsonl``, JSON lines),
since token changes happen outside any node. Writers hold a lock file and replace the token
file atomically, so a node reloading it never reads half a file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import fcntl
import getpass
import json
import os
import re
import secrets
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from node.auth import (
    ROLES,
    TokenEntry,
    TokenFileError,
    find,
    hash_token,
    load_tokens,
    parse_tokens,
    render_tokens,
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+\-]{0,127}")
_GLOB = re.compile(r"[A-Za-z0-9_.:@+\-*?\[\]!]{1,128}")
MIN_ID_PREFIX = 6


def audit_path(token_file: Path) -> Path:
    return token_file.with_name(f"{token_file.stem}.audit.jsonl")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid:{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


@contextlib.contextmanager
def _locked(token_file: Path) -> Iterator[None]:
    token_file.parent.mkdir(parents=True, exist_ok=True)
    with open(token_file.with_name(token_file.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(token_file: Path) -> list[TokenEntry]:
    return list(load_tokens(token_file)) if token_file.exists() else []


def _write(token_file: Path, entries: Sequence[TokenEntry]) -> None:
    text = render_tokens(entries)
    parse_tokens(text, str(token_file))  # never write a file a node could not load
    fd, tmp = tempfile.mkstemp(prefix=f".{token_file.name}.", dir=token_file.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, token_file)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dirfd = os.open(token_file.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def _audit(token_file: Path, action: str, entry: TokenEntry) -> None:
    line = json.dumps(
        {
            "time": _now(),
            "action": action,
            "by": _who(),
            "token_file": str(token_file),
            "id": entry.id,
            "agent": entry.agent,
            "tenant": entry.tenant,
            "role": entry.role,
            "write": list(entry.write),
            "domains": list(entry.domains),
        },
        sort_keys=True,
    )
    fd = os.open(audit_path(token_file), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _check(value: str, what: str, pattern: re.Pattern[str]) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not valid: use letters, digits and _ . : @ + -")
    return value


def create(
    token_file: Path,
    agent: str,
    tenant: str,
    role: str = "agent",
    write: Sequence[str] = (),
    domains: Sequence[str] = ("*",),
    members: bool = False,
) -> tuple[str, TokenEntry]:
    """Adds a new token for a principal; returns the plain token (shown once) and its entry."""
    _check(agent, "agent", _NAME)
    _check(tenant, "tenant", _NAME)
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    for g in [*write, *domains]:
        _check(g, "glob", _GLOB)
    with _locked(token_file):
        entries = _read(token_file)
        while True:
            token = secrets.token_urlsafe(32)
            if token.startswith("-"):
                continue  # a command line would read it as an option (`--token -x...`)
            digest = hash_token(token)
            if not find(entries, id=digest[:12]):
                break
        entry = TokenEntry(
            digest, agent, tenant, role, tuple(write), tuple(domains) or ("*",), created=_now(),
            members=members,
        )  # fmt: skip
        _write(token_file, [*entries, entry])
        _audit(token_file, "token_create", entry)
    return token, entry


def revoke(
    token_file: Path, *, id: str = "", agent: str = "", tenant: str = "", token: str = ""
) -> list[TokenEntry]:
    """Revokes the live tokens matching an id prefix, a plain token, or an agent (and tenant)."""
    if token:
        id = hash_token(token)
    if not id and not agent:
        raise ValueError("name what to revoke: --id ID, --token TOKEN or --agent AGENT")
    if id and len(id) < MIN_ID_PREFIX:
        raise ValueError(
            f"a token id must have at least {MIN_ID_PREFIX} characters (see `token list`)"
        )
    with _locked(token_file):
        entries = load_tokens(token_file)
        doomed = {
            e.sha256 for e in find(entries, id=id, agent=agent, tenant=tenant) if not e.revoked
        }
        if not doomed:
            raise ValueError(f"no live token in {token_file} matches; see `selfmodel token list`")
        when = _now()
        updated = [
            dataclasses.replace(e, revoked=when) if e.sha256 in doomed else e for e in entries
        ]
        _write(token_file, updated)
        revoked = [e for e in updated if e.sha256 in doomed]
        for e in revoked:
            _audit(token_file, "token_revoke", e)
    return revoked


# -- the command line ----------------------------------------------------------------------


def _create(args: argparse.Namespace) -> int:
    token, entry = create(
        Path(args.file), args.agent, args.tenant, args.role, args.write or [],
        args.domain or ["*"], args.members,
    )  # fmt: skip
    print(token)
    scope = ", ".join(entry.write) or "no context (read only)"
    print(
        f"token {entry.id} for {entry.role} {entry.agent} of tenant {entry.tenant} may write "
        f"{scope} on domains {', '.join(entry.domains)}. It is shown only this once: "
        f"{args.file} keeps only its hash.",
        file=sys.stderr,
    )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    revoked = revoke(
        Path(args.file), id=args.id or "", agent=args.agent or "", tenant=args.tenant or "",
        token=args.token or "",
    )  # fmt: skip
    for e in revoked:
        print(f"revoked {e.id} ({e.role} {e.agent} of tenant {e.tenant})")
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = [("ID", "AGENT", "TENANT", "ROLE", "WRITE", "DOMAINS", "CREATED", "STATUS")]
    for e in load_tokens(Path(args.file)):
        status = f"revoked {e.revoked}" if e.revoked else "live"
        rows.append((e.id, e.agent, e.tenant, e.role, ",".join(e.write) or "-",
                     ",".join(e.domains), e.created, status))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except TokenFileError as exc:
            print(f"selfmodel token: {exc}", file=sys.stderr)
            return 2

    return wrapped


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers ``selfmodel token ...`` on the main parser's subcommands."""
    token = sub.add_parser("token", help="create, revoke and list bearer tokens of a token file")
    actions = token.add_subparsers(dest="token_command", required=True)

    def file_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--file", required=True, help="the token file (TOML), e.g. tokens.toml")

    c = actions.add_parser("create", help="add a token; prints it once, stores only its hash")
    file_arg(c)
    c.add_argument("--agent", required=True, help="agent id: the source of its observations")
    c.add_argument("--tenant", required=True, help="the only tenant whose subjects it may use")
    c.add_argument(
        "--role",
        choices=ROLES,
        default="agent",
        help="agent (default); operator (of its tenant: retract for any source, forget, audit); "
        "cluster_operator (an operator who may also change the cluster's policies)",
    )
    c.add_argument(
        "--write",
        action="append",
        metavar="GLOB",
        help="a context glob it may write, e.g. 'purchase_*' (repeatable; none: read only)",
    )
    c.add_argument(
        "--domain",
        action="append",
        metavar="GLOB",
        help="a domain glob of the nodes it may write through (repeatable; default: any)",
    )
    c.add_argument(
        "--members",
        action="store_true",
        help="may add and remove group members (selfmodel members add|remove)",
    )
    c.set_defaults(run=_guarded(_create))

    r = actions.add_parser(
        "revoke", help="revoke tokens; nodes stop accepting them within a second"
    )
    file_arg(r)
    r.add_argument("--id", help="a token id (or a prefix of it) from `token list`")
    r.add_argument("--token", help="the plain token")
    r.add_argument("--agent", help="every live token of this agent")
    r.add_argument("--tenant", help="with --agent: only tokens of this tenant")
    r.set_defaults(run=_guarded(_revoke))

    ls = actions.add_parser("list", help="list the tokens (ids and principals; never secrets)")
    file_arg(ls)
    ls.set_defaults(run=_guarded(_list))


__all__ = ["add_commands", "audit_path", "create", "revoke"]
