from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.auth import (
    Principal,
    TokenBook,
    TokenEntry,
    TokenFileError,
    hash_token,
    parse_tokens,
    render_tokens,
)
from node.errors import PermissionDenied, Unauthenticated
from node.validation import Limits


class FakeContext:
    def __init__(self, *metadata: tuple[str, str]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


def entry(token: str, agent: str = "sales_agent", **kw: object) -> TokenEntry:
    fields: dict[str, object] = {"tenant": "acme", "write": ("purchase_*",), **kw}
    return TokenEntry(hash_token(token), agent, **fields)  # type: ignore[arg-type]


def write(path: Path, *entries: TokenEntry) -> None:
    path.write_text(render_tokens(entries))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_file_round_trips_and_holds_no_plain_token(tmp_path: Path) -> None:
    entries = (
        entry("secret-one"),
        entry("secret-two", "boss", role="operator", write=("*",), domains=("sales", "sup*")),
        entry("secret-three", "old", revoked="2024-01-01T00:00:00Z"),
    )
    text = render_tokens(entries)
    assert "secret" not in text
    assert parse_tokens(text) == entries


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (
            'version = 1\n[[tokens]]\nsha256 = "abc"\nagent = "a"\ntenant = "t"\n',
            "64 lowercase hex",
        ),
        (f'[[tokens]]\nsha256 = "{"a" * 64}"\nagent = "a"\ntenant = "t"\nrole = "root"\n', "role"),
        (f'[[tokens]]\nsha256 = "{"a" * 64}"\nagent = "a b"\ntenant = "t"\n', "agent"),
        (f'[[tokens]]\nsha256 = "{"a" * 64}"\ntenant = "t"\n', "agent is required"),
        (f'[[tokens]]\nsha256 = "{"a" * 64}"\nagent = "a"\ntenant = "t"\nwrite = "x"\n', "list"),
        (
            f'[[tokens]]\nsha256 = "{"a" * 64}"\nagent = "a"\ntenant = "t"\nsecret = "x"\n',
            "unknown",
        ),
        ("version = 2\n", "version"),
        ("tokens = [", "not valid TOML"),
    ],
)
def test_a_broken_token_file_is_refused_with_the_entry_and_field(text: str, complaint: str) -> None:
    with pytest.raises(TokenFileError, match=complaint):
        parse_tokens(text)


def test_duplicate_hashes_are_refused() -> None:
    with pytest.raises(TokenFileError, match="repeats"):
        parse_tokens(render_tokens([entry("same"), entry("same", "other")]))


def test_missing_token_file_names_the_command_that_creates_it(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="selfmodel token create"):
        TokenBook(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("metadata", "complaint"),
    [
        ((), "missing bearer token"),
        ((("authorization", "Basic abc"),), "malformed"),
        ((("authorization", "Bearer "),), "malformed"),
        ((("authorization", "Bearer a b"),), "malformed"),
        ((("authorization", "Bearer " + "x" * 600),), "malformed"),
        ((("authorization", "Bearer good"), ("authorization", "Bearer good")), "malformed"),
        ((("authorization", "Bearer wrong"),), "unknown bearer token"),
        ((("authorization", "Bearer gone"),), "was revoked"),
        ((("x-agent-id", "sales_agent"),), "missing bearer token"),
    ],
)
def test_identify_refuses_missing_malformed_unknown_and_revoked_tokens(
    tmp_path: Path, metadata: tuple[tuple[str, str], ...], complaint: str
) -> None:
    path = tmp_path / "tokens.toml"
    write(path, entry("good"), entry("gone", "old", revoked="2024-01-01T00:00:00Z"))
    book = TokenBook(path)
    with pytest.raises(Unauthenticated, match=complaint):
        book.identify(FakeContext(*metadata), Limits())  # type: ignore[arg-type]


def test_identify_returns_the_tokens_principal_whatever_x_agent_id_claims(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    write(path, entry("good", domains=("sales",)))
    ctx = FakeContext(("x-agent-id", "mallory"), ("authorization", "bearer good"))
    who = TokenBook(path).identify(ctx, Limits())  # type: ignore[arg-type]
    assert who == Principal(
        "sales_agent", "agent", "acme", ("purchase_*",), ("sales",), hash_token("good")[:12]
    )


def test_token_book_reloads_a_changed_file_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    write(path, entry("good"))
    clock = Clock()
    book = TokenBook(path, interval_s=1.0, clock=clock)
    assert book.principal("good").agent == "sales_agent"

    write(path, entry("good", revoked="2024-01-01T00:00:00Z"), entry("new", "new_agent"))
    os.utime(path, ns=(1, 1))  # a different mtime, whatever the file system's granularity
    clock.now = 0.5
    assert book.principal("good").agent == "sales_agent"  # not checked yet
    clock.now = 1.1
    with pytest.raises(Unauthenticated, match="revoked"):
        book.principal("good")
    assert book.principal("new").agent == "new_agent"


def test_a_broken_reload_keeps_the_previous_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    write(path, entry("good"))
    clock = Clock()
    book = TokenBook(path, interval_s=1.0, clock=clock)
    path.write_text("tokens = [ broken")
    clock.now = 2.0
    assert book.principal("good").agent == "sales_agent"
    write(path, entry("fixed", "fixed_agent"))
    os.utime(path, ns=(5, 5))
    clock.now = 4.0
    assert book.principal("fixed").agent == "fixed_agent"
    with pytest.raises(Unauthenticated):
        book.principal("good")


AGENT = Principal("sales_agent", "agent", "acme", ("purchase_*", "budget"), ("sales",))
OPERATOR = Principal("boss", "operator", "acme", ("*",), ("*",))
DEVELOPMENT = Principal("anyone")


def test_a_principal_uses_only_its_own_tenant() -> None:
    AGENT.check_tenant("acme")
    DEVELOPMENT.check_tenant("globex")
    for who in (AGENT, OPERATOR):
        with pytest.raises(PermissionDenied, match="tenant 'acme' may not use subjects of tenant"):
            who.check_tenant("globex")


# Tenants a prefix, suffix, case or look-alike match would confuse with "acme".
NEAR_ACME = ("acme2", "acm", "ACME", "", "\u0430cme", "acme\u200b", "acme ")  # Cyrillic a; ZWSP


@pytest.mark.parametrize("other", NEAR_ACME)
def test_a_tenant_is_matched_exactly_never_by_prefix_case_or_look_alike(other: str) -> None:
    for who in (AGENT, OPERATOR):
        with pytest.raises(PermissionDenied, match="may not use subjects of tenant"):
            who.check_tenant(other)
        near = Principal(who.agent, who.role, other, who.write, who.domains)
        with pytest.raises(PermissionDenied, match="may not use subjects of tenant 'acme'"):
            near.check_tenant("acme")


@pytest.mark.parametrize("tenant", ["", "\u0430cme", "acme\u200b", "ac me"])
def test_a_token_file_naming_a_tenant_no_subject_could_have_is_refused(tenant: str) -> None:
    text = f'[[tokens]]\nsha256 = "{"a" * 64}"\nagent = "a"\ntenant = "{tenant}"\n'
    with pytest.raises(TokenFileError, match="tenant"):
        parse_tokens(text)


def test_a_principal_writes_only_contexts_of_its_globs_through_nodes_of_its_domains() -> None:
    AGENT.check_write("purchase_motivation", "sales")
    AGENT.check_write("budget", "sales")
    with pytest.raises(PermissionDenied, match="may not write context 'budgets'"):
        AGENT.check_write("budgets", "sales")
    with pytest.raises(PermissionDenied, match="domain 'support'"):
        AGENT.check_write("budget", "support")
    with pytest.raises(PermissionDenied, match="no context"):
        Principal("reader", tenant="acme", write=()).check_write("budget", "")


def test_only_operators_act_for_others() -> None:
    OPERATOR.check_operator("forget a subject")
    OPERATOR.check_source("sales_agent")
    DEVELOPMENT.check_operator("forget a subject")
    AGENT.check_source("sales_agent")
    with pytest.raises(PermissionDenied, match="only an operator may forget"):
        AGENT.check_operator("forget a subject")
    with pytest.raises(PermissionDenied, match="only its own observations"):
        AGENT.check_source("support_agent")
