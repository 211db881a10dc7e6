"""Who is calling and what it may do: principals, the token file, and the bearer-token check.

The token file (TOML) maps SHA-256 hashes of bearer tokens, never the tokens themselves, to
principals. A node loads it at start and reloads it when it changes (checked at most once per
second on the request path), so a token created or revoked with ``selfmodel token`` takes effect
without a restart. Every security decision of a call is made here: ``TokenBook.identify`` turns
call metadata into a ``Principal`` (or ``Unauthenticated``), and the ``Principal.check_*``
methods are the authorization step the servicer runs before touching any state.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import Counter

from node.errors import PermissionDenied, Reason, Unauthenticated

if TYPE_CHECKING:  # node.validation imports the engine; the CLI's token commands need neither
    from node.validation import Limits

log = logging.getLogger("selfmodel.node")

# An operator acts on its tenant's subjects (retracts, forgets, audit, members, sources); a
# cluster operator also changes what governs every tenant (the cluster's policies).
ROLES = ("agent", "operator", "cluster_operator")
OPERATORS = frozenset({"operator", "cluster_operator"})
TOKEN_FILE_VERSION = 1
MAX_TOKEN_CHARS = 512
RELOAD_INTERVAL_S = 1.0
WATCH_PERIOD_S = 0.2  # how often a node's own thread looks for a changed token file

_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+\-]{0,127}")
_GLOB = re.compile(r"[A-Za-z0-9_.:@+\-*?\[\]!]{1,128}")
_BEARER = re.compile(rf"[Bb]earer ([\x21-\x7e]{{1,{MAX_TOKEN_CHARS}}})")

# Metrics of refusals, by reason only (never by agent or tenant).
AUTH_REFUSED = Counter(
    "selfmodel_auth_refused_total",
    "Calls refused UNAUTHENTICATED, by reason (missing, malformed, unknown, revoked).",
    ["reason"],
)
PERMISSION_REFUSED = Counter(
    "selfmodel_permission_refused_total",
    "Calls refused PERMISSION_DENIED, by rule (tenant, context, domain, operator, "
    "cluster_operator, source).",
    ["rule"],
)
TOKEN_RELOADS = Counter(
    "selfmodel_token_file_reloads_total", "Token file reloads, by result (ok, failed).", ["result"]
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the source of its observations, and what it may do.

    ``tenant is None`` is the development principal of a node without a token file (loopback
    only): it may use any tenant and act as an operator of it.
    """

    agent: str
    role: str = "agent"  # one of ROLES
    tenant: str | None = None
    write: tuple[str, ...] = ("*",)  # context globs it may write
    domains: tuple[str, ...] = ("*",)  # domain globs of the nodes it may write through
    token_id: str = ""
    members: bool = False  # may add and remove group members (AddMember, RemoveMember)

    @property
    def is_operator(self) -> bool:
        return self.role in OPERATORS or self.tenant is None

    def check_tenant(self, tenant: str) -> None:
        """Refuses a subject of another tenant, before anything about it is looked up.

        The answer depends only on the principal and the tenant named in the request, never on
        whether the subject exists, so it tells the caller nothing about another tenant's data.
        """
        if self.tenant is not None and self.tenant != tenant:
            PERMISSION_REFUSED.labels("tenant").inc()
            raise PermissionDenied(
                f"agent {self.agent} of tenant {self.tenant!r} may not use subjects of tenant "
                f"{tenant!r}: use a token of that tenant",
                reason=Reason.TENANT_DENIED,
                metadata={"agent": self.agent, "tenant": tenant, "token_tenant": self.tenant},
            )

    def check_write(self, context: str, domain: str) -> None:
        """Refuses a context outside the principal's write globs, or a node outside its domains."""
        if not _matches_any(context, self.write):
            PERMISSION_REFUSED.labels("context").inc()
            allowed = ", ".join(self.write) or "no context"
            raise PermissionDenied(
                f"agent {self.agent} may not write context {context!r}: its token allows "
                f"{allowed}; ask an operator for a token that covers it",
                reason=Reason.CONTEXT_DENIED,
                metadata={"agent": self.agent, "context": context, "allowed": allowed},
            )
        self.check_domain(domain)

    def check_domain(self, domain: str) -> None:
        """Refuses a node outside the principal's domains: where its agent may write."""
        if not _matches_any(domain, self.domains):
            PERMISSION_REFUSED.labels("domain").inc()
            allowed = ", ".join(self.domains) or "none"
            raise PermissionDenied(
                f"agent {self.agent} may not write through this node (domain {domain!r}): its "
                f"token allows domains {allowed}; write through a node of one of them",
                reason=Reason.DOMAIN_DENIED,
                metadata={"agent": self.agent, "domain": domain, "allowed": allowed},
            )

    def check_operator(self, action: str) -> None:
        if not self.is_operator:
            PERMISSION_REFUSED.labels("operator").inc()
            raise PermissionDenied(
                f"only an operator may {action}, not agent {self.agent}: use an operator token",
                reason=Reason.OPERATOR_REQUIRED,
                metadata={"agent": self.agent, "action": action},
            )

    def check_members(self, action: str) -> None:
        """Operators, and agents whose token has the membership permission, change groups."""
        if not (self.is_operator or self.members):
            PERMISSION_REFUSED.labels("members").inc()
            raise PermissionDenied(
                f"agent {self.agent} may not {action}: its token lacks the membership "
                "permission; use an operator token or one created with --members",
                reason=Reason.MEMBERSHIP_DENIED,
                metadata={"agent": self.agent, "action": action},
            )

    def check_cluster_operator(self, action: str) -> None:
        """What governs every tenant is changed by a cluster operator only: an operator of one
        tenant may not change how another tenant's beliefs resolve."""
        self.check_operator(action)
        if self.role != "cluster_operator" and self.tenant is not None:
            PERMISSION_REFUSED.labels("cluster_operator").inc()
            raise PermissionDenied(
                f"only a cluster operator may {action}, not operator {self.agent} of tenant "
                f"{self.tenant!r}: the cluster's settings govern every tenant; use a token "
                "of role cluster_operator",
                reason=Reason.OPERATOR_REQUIRED,
                metadata={"agent": self.agent, "action": action, "role": self.role},
            )

    def check_source(self, source: str) -> None:
        """An agent retracts only its own observations; an operator may name any source."""
        if source != self.agent and self.role not in OPERATORS:
            PERMISSION_REFUSED.labels("source").inc()
            raise PermissionDenied(
                f"agent {self.agent} may retract only its own observations, not {source!r}'s: "
                "ask an operator to retract on its behalf",
                reason=Reason.SOURCE_DENIED,
                metadata={"agent": self.agent, "source": source},
            )


# -- the token file ------------------------------------------------------------------------


def _matches_any(name: str, globs: tuple[str, ...]) -> bool:
    """Whether a glob matches ``name``; "*" (the usual grant) matches any name without fnmatch."""
    return "*" in globs or any(fnmatchcase(name, g) for g in globs)


class TokenFileError(Exception):
    """The token file is missing or breaks a rule; the message names the entry and the field."""


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One row of the token file: a hashed token and the principal it stands for."""

    sha256: str
    agent: str
    tenant: str
    role: str = "agent"
    write: tuple[str, ...] = ()
    domains: tuple[str, ...] = ("*",)
    created: str = ""
    revoked: str = ""  # when it was revoked (ISO 8601); empty while valid
    members: bool = False  # the membership permission (Principal.members)

    @property
    def id(self) -> str:
        """A short, non-secret name of the token (a prefix of its hash) for lists and revokes."""
        return self.sha256[:12]

    def principal(self) -> Principal:
        return Principal(
            self.agent,
            self.role,
            self.tenant,
            self.write,
            self.domains,
            token_id=self.id,
            members=self.members,
        )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _strings(raw: Any, where: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise TokenFileError(f"{where} must be a list of strings")
    for v in raw:
        if not pattern.fullmatch(v):
            raise TokenFileError(f"{where}: {v!r} is not a valid glob")
    return tuple(raw)


def _entry(raw: Any, where: str) -> TokenEntry:
    if not isinstance(raw, dict):
        raise TokenFileError(f"{where} must be a table")
    unknown = set(raw) - {"id", "sha256", "agent", "tenant", "role", "write", "domains",
                          "created", "revoked", "members"}  # fmt: skip
    if unknown:
        raise TokenFileError(f"{where} has unknown fields {sorted(unknown)}")
    for name in ("sha256", "agent", "tenant"):
        if not isinstance(raw.get(name), str):
            raise TokenFileError(f"{where}.{name} is required and must be a string")
    if not _SHA256.fullmatch(raw["sha256"]):
        raise TokenFileError(f"{where}.sha256 must be 64 lowercase hex digits (a SHA-256 hash)")
    for name in ("agent", "tenant"):
        if not _NAME.fullmatch(raw[name]):
            raise TokenFileError(f"{where}.{name}: {raw[name]!r} is not a valid id")
    role = raw.get("role", "agent")
    if role not in ROLES:
        raise TokenFileError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
    for name in ("created", "revoked"):
        if not isinstance(raw.get(name, ""), str):
            raise TokenFileError(f"{where}.{name} must be a string")
    if not isinstance(raw.get("members", False), bool):
        raise TokenFileError(f"{where}.members must be true or false")
    return TokenEntry(
        sha256=raw["sha256"],
        agent=raw["agent"],
        tenant=raw["tenant"],
        role=role,
        write=_strings(raw.get("write", []), f"{where}.write", _GLOB),
        domains=_strings(raw.get("domains", ["*"]), f"{where}.domains", _GLOB),
        created=raw.get("created", ""),
        revoked=raw.get("revoked", ""),
        members=raw.get("members", False),
    )


def parse_tokens(text: str, origin: str = "token file") -> tuple[TokenEntry, ...]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokenFileError(f"{origin} is not valid TOML: {exc}") from exc
    version = doc.get("version", TOKEN_FILE_VERSION)
    if version != TOKEN_FILE_VERSION:
        raise TokenFileError(
            f"{origin} has version {version!r}; this build reads {TOKEN_FILE_VERSION}"
        )
    rows = doc.get("tokens", [])
    if not isinstance(rows, list):
        raise TokenFileError(f"{origin}: tokens must be an array of tables ([[tokens]])")
    entries = tuple(_entry(raw, f"{origin}: tokens[{i}]") for i, raw in enumerate(rows))
    seen: set[str] = set()
    for i, e in enumerate(entries):
        if e.sha256 in seen:
            raise TokenFileError(f"{origin}: tokens[{i}] repeats the hash of an earlier token")
        seen.add(e.sha256)
    return entries


def load_tokens(path: Path) -> tuple[TokenEntry, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise TokenFileError(
            f"token file {path} does not exist: create it with "
            f"`selfmodel token create --file {path} --agent ... --tenant ...`"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc}") from exc
    return parse_tokens(text, str(path))


def _toml_str(value: str) -> str:
    # JSON string escapes (ASCII only) are valid TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=True)


def render_tokens(entries: Iterable[TokenEntry]) -> str:
    lines = [
        "# selfmodel token file: SHA-256 hashes of bearer tokens, never the tokens themselves.",
        "# Change it with `selfmodel token create|revoke|list --file <this file>`; nodes reload",
        "# it within a second of a change.",
        f"version = {TOKEN_FILE_VERSION}",
    ]
    for e in entries:
        lines += [
            "",
            "[[tokens]]",
            f"id = {_toml_str(e.id)}",
            f"sha256 = {_toml_str(e.sha256)}",
            f"agent = {_toml_str(e.agent)}",
            f"tenant = {_toml_str(e.tenant)}",
            f"role = {_toml_str(e.role)}",
            f"write = [{', '.join(_toml_str(g) for g in e.write)}]",
            f"domains = [{', '.join(_toml_str(g) for g in e.domains)}]",
            f"created = {_toml_str(e.created)}",
        ]
        if e.revoked:
            lines.append(f"revoked = {_toml_str(e.revoked)}")
        if e.members:
            lines.append("members = true")
    return "\n".join(lines) + "\n"


# -- identification on the request path ----------------------------------------------------


def bearer_token(context: grpc.ServicerContext) -> str:
    """The token of the call's single ``authorization: Bearer <token>`` metadata entry."""
    values = [v for k, v in context.invocation_metadata() if k == "authorization"]
    if not values:
        AUTH_REFUSED.labels("missing").inc()
        raise Unauthenticated(
            "missing bearer token: send call metadata 'authorization: Bearer <token>' "
            "(an operator creates tokens with `selfmodel token create`)",
            reason=Reason.TOKEN_MISSING,
        )
    match = (
        _BEARER.fullmatch(values[0]) if len(values) == 1 and isinstance(values[0], str) else None
    )
    if match is None:
        AUTH_REFUSED.labels("malformed").inc()
        raise Unauthenticated(
            "malformed authorization metadata: send exactly one 'authorization: Bearer <token>'",
            reason=Reason.TOKEN_MALFORMED,
        )
    return match.group(1)


@dataclass
class TokenBook:
    """The token file as the node sees it: loaded at start, reloaded when the file changes.

    A reload that fails (a hand edit that broke the file) keeps the previous tokens, logs an
    error and counts it; the next change to the file is tried again. ``version`` counts the
    reloads; ``watch`` reloads on a thread of its own and tells a listener (the node ends the
    open watches of a revoked token that way, without waiting for a call).
    """

    path: Path
    interval_s: float = RELOAD_INTERVAL_S
    clock: Callable[[], float] = time.monotonic
    _entries: tuple[TokenEntry, ...] = ()
    _stamp: tuple[int, int, int] | None = None
    _next_check: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    version: int = 0

    def __post_init__(self) -> None:
        self._stamp = self._stat()
        self._entries = load_tokens(self.path)
        self._next_check = self.clock() + self.interval_s
        live = sum(1 for e in self._entries if not e.revoked)
        log.info(
            "token file %s: %d tokens (%d revoked)", self.path, live, len(self._entries) - live
        )

    @property
    def entries(self) -> tuple[TokenEntry, ...]:
        return self._entries

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now < self._next_check:
            return
        with self._lock:
            if not force and now < self._next_check:
                return
            self._next_check = now + self.interval_s
            stamp = self._stat()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                entries = load_tokens(self.path)
            except TokenFileError as exc:
                TOKEN_RELOADS.labels("failed").inc()
                log.error("token file not reloaded, keeping the previous tokens: %s", exc)
                return
            self._entries = entries
            self.version += 1
            TOKEN_RELOADS.labels("ok").inc()
            log.info("token file %s reloaded: %d entries", self.path, len(entries))

    def watch(
        self, on_change: Callable[[], None], period_s: float = WATCH_PERIOD_S
    ) -> Callable[[], None]:
        """Looks for a changed file every ``period_s`` on a daemon thread, reloads it and calls
        ``on_change`` after each reload; returns the function that stops the thread."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(period_s):
                seen = self.version
                self.refresh(force=True)
                if self.version != seen:
                    try:
                        on_change()
                    except Exception:
                        log.exception("a token file listener failed")

        threading.Thread(target=run, name="token-file", daemon=True).start()
        return stop.set

    def principal(self, token: str) -> Principal:
        """The principal of a plain token, or Unauthenticated (unknown or revoked)."""
        self.refresh()
        digest = hash_token(token)
        found: TokenEntry | None = None
        # Every entry is compared, in constant time, so timing says nothing about the hashes.
        for entry in self._entries:
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        if found is None:
            AUTH_REFUSED.labels("unknown").inc()
            raise Unauthenticated(
                "unknown bearer token: check it, or ask an operator for a new one",
                reason=Reason.TOKEN_UNKNOWN,
            )
        if found.revoked:
            AUTH_REFUSED.labels("revoked").inc()
            raise Unauthenticated(
                f"bearer token {found.id} was revoked: ask an operator for a new one",
                reason=Reason.TOKEN_REVOKED,
                metadata={"token_id": found.id},
            )
        return found.principal()

    def identify(self, context: grpc.ServicerContext, limits: Limits) -> Principal:
        """The ``identify`` hook of the servicers: the call's bearer token → its principal."""
        return self.principal(bearer_token(context))


def find(
    entries: Sequence[TokenEntry], *, id: str = "", agent: str = "", tenant: str = ""
) -> list[TokenEntry]:
    """Entries matching every given criterion (an id may be given as any prefix of the hash)."""
    return [
        e
        for e in entries
        if (not id or e.sha256.startswith(id))
        and (not agent or e.agent == agent)
        and (not tenant or e.tenant == tenant)
    ]


__all__ = [
    "ROLES",
    "Principal",
    "TokenBook",
    "TokenEntry",
    "TokenFileError",
    "bearer_token",
    "find",
    "hash_token",
    "load_tokens",
    "parse_tokens",
    "render_tokens",
]
