"""Reading at scale: a tenant's subjects and a subject's beliefs, a bounded page at a time.

Subjects are listed in storage order (``Subject.storage_key``: tenant, kind, then id, bytewise),
by a prefix scan of the tenant's (and kind's) key range that starts after the previous page's
last key: a page costs its own rows, never a walk over the tenant. A page token is the position
after which the next page starts, together with the listing it belongs to (tenant and kind, or
subject): a token is refused for any other listing, so a token of tenant A never lists, pages or
reads tenant B's subjects, whatever it holds. Tokens are opaque to clients (base64url of JSON)
and stay valid while the data changes: a page continues after the last item sent.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from node.errors import InvalidArgument, Reason
from node.resolution import Belief
from sync.crdt import SubjectState
from sync.observation import Subject, SubjectKind

DEFAULT_PAGE = 100
# Keys read per ListSubjects call, per subject asked for: forgotten subjects (no observation
# left) are skipped, and a page may come back short, with a token, rather than scan without end.
SCAN_FACTOR = 4


class KeyScan(Protocol):
    def scan_keys(self, cf: str, prefix: bytes, after: bytes, limit: int) -> list[bytes]: ...


def _token(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).decode()


def _untoken(token: str, field: str, kind: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error, RecursionError):
        value = None  # RecursionError: JSON nested past the decoder's depth
    if not isinstance(value, dict) or value.get("v") != 1 or value.get("of") != kind:
        raise InvalidArgument(
            field,
            f"is not a page token of {kind}: pass the next_page_token of its last page",
            reason=Reason.PAGE_TOKEN_INVALID,
        )
    return value


def page_size(requested: int, field: str, maximum: int, default: int = DEFAULT_PAGE) -> int:
    """``requested``, or ``default`` for 0; more than ``maximum`` is refused, naming it."""
    if requested > maximum:
        raise InvalidArgument(
            field,
            f"must be at most {maximum} (the node's max_page_size), got {requested}",
            metadata={"limit": maximum, "setting": "max_page_size"},
        )
    return requested or min(default, maximum)


def subjects_page(
    store: KeyScan,
    holds_observations: Callable[[Subject], bool],
    tenant: str,
    kind: SubjectKind | None,
    token: str,
    size: int,
) -> tuple[list[Subject], str]:
    """Up to ``size`` subjects of ``tenant`` (of ``kind``, if given) holding an observation,
    after the position of ``token``; and the token of the next page ("" after the last)."""
    listing = [tenant, int(kind or 0)]
    prefix = tenant.encode() + b"\x00" + (bytes([kind]) if kind else b"")
    after = b""
    if token:
        value = _untoken(token, "page_token", "ListSubjects")
        if value.get("listing") != listing:
            raise InvalidArgument(
                "page_token",
                "was issued for another listing (another tenant or kind): list again without it",
            )
        try:
            after = bytes.fromhex(value.get("after", ""))
        except (TypeError, ValueError):
            raise InvalidArgument(
                "page_token",
                "is not a page token of ListSubjects",
                reason=Reason.PAGE_TOKEN_INVALID,
            ) from None
    found: list[Subject] = []
    last = after
    budget = size * SCAN_FACTOR
    while len(found) < size and budget > 0:
        want = min(budget, size - len(found))
        keys = store.scan_keys("state", prefix, last, want)
        budget -= len(keys)
        for key in keys:
            subject = Subject.from_storage_key(key)
            # A node's own subjects (``_``-named: a tenant's withdrawals) are never listed.
            if not subject.id.startswith("_") and holds_observations(subject):
                found.append(subject)
        if len(keys) < want:  # the end of the range
            return found, ""
        last = keys[-1]
    if not store.scan_keys("state", prefix, last, 1):
        return found, ""
    return found, _token({"v": 1, "of": "ListSubjects", "listing": listing, "after": last.hex()})


def beliefs_page(
    subject: Subject, beliefs: Sequence[Belief], token: str, size: int
) -> tuple[list[Belief], str]:
    """Up to ``size`` of ``beliefs`` (in (context, key) order, as resolution gives them) after
    the slot of ``token``; and the token of the next page ("" after the last belief)."""
    after: tuple[str, str] | None = None
    if token:
        value = _untoken(token, "page_token", "GetSelfModel")
        if value.get("subject") != list(subject):
            raise InvalidArgument(
                "page_token",
                f"was issued for another subject's read, not {subject}",
                reason=Reason.PAGE_TOKEN_INVALID,
            )
        slot = value.get("after")
        if not (isinstance(slot, list) and len(slot) == 2 and _strings(slot)):
            raise InvalidArgument(
                "page_token",
                "is not a page token of GetSelfModel",
                reason=Reason.PAGE_TOKEN_INVALID,
            )
        after = (slot[0], slot[1])
    rest = [b for b in beliefs if after is None or (b.context, b.key) > after]
    page = rest[:size]
    if len(rest) <= size:
        return page, ""
    last = page[-1]
    value = {"v": 1, "of": "GetSelfModel", "subject": list(subject)}
    return page, _token({**value, "after": [last.context, last.key]})


def members_page(
    group: Subject, members: Iterable[Subject], token: str, size: int
) -> tuple[list[Subject], str]:
    """Up to ``size`` of a group's ``members`` by id, after the id of ``token``; and the token
    of the next page ("" after the last)."""
    after = ""
    if token:
        value = _untoken(token, "page_token", "ListMembers")
        if value.get("group") != list(group):
            raise InvalidArgument(
                "page_token",
                f"was issued for another group's members, not {group}",
                reason=Reason.PAGE_TOKEN_INVALID,
            )
        found = value.get("after")
        if not isinstance(found, str):
            raise InvalidArgument(
                "page_token", "is not a page token of ListMembers", reason=Reason.PAGE_TOKEN_INVALID
            )
        after = found
    rest = sorted(m for m in members if m.id > after)
    page = rest[:size]
    if len(rest) <= size:
        return page, ""
    return page, _token({"v": 1, "of": "ListMembers", "group": list(group), "after": page[-1].id})


def position_token(kind: str, listing: list[str], after: bytes) -> str:
    """The page token of ``kind``'s ``listing`` continuing after the row key ``after``."""
    return _token({"v": 1, "of": kind, "listing": listing, "after": after.hex()})


def position_of(token: str, field: str, kind: str, listing: list[str]) -> bytes:
    """The row key a ``position_token`` continues after (empty for no token), refused when it
    belongs to another listing (another tenant or source, say)."""
    if not token:
        return b""
    value = _untoken(token, field, kind)
    if value.get("listing") != listing:
        raise InvalidArgument(
            field,
            f"was issued for another listing of {kind} (another tenant or source): list again "
            "without it",
            reason=Reason.PAGE_TOKEN_INVALID,
        )
    try:
        return bytes.fromhex(value.get("after", ""))
    except (TypeError, ValueError):
        raise InvalidArgument(
            field, f"is not a page token of {kind}", reason=Reason.PAGE_TOKEN_INVALID
        ) from None


def _strings(values: list[Any]) -> bool:
    return all(isinstance(v, str) for v in values)


def contexts(state: SubjectState) -> list[str]:
    """The contexts the subject holds an observation in, in name order, but a node's own
    (node.validation.reserved: a leading "_")."""
    return sorted({o.context for o in state.observations.values() if not o.context.startswith("_")})


def distinct(subjects: Iterable[Subject]) -> list[Subject]:
    """``subjects``, refused if one repeats (field ``subjects``)."""
    listed: list[Subject] = []
    seen: set[Subject] = set()
    for i, subject in enumerate(subjects):
        if subject in seen:
            raise InvalidArgument(f"subjects[{i}]", f"repeats {subject}: name each subject once")
        seen.add(subject)
        listed.append(subject)
    return listed


__all__ = [
    "beliefs_page",
    "contexts",
    "distinct",
    "members_page",
    "page_size",
    "position_of",
    "position_token",
    "subjects_page",
]
