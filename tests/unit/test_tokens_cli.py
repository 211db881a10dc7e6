from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from federation import tokens
from federation.cli import main
from node.auth import TokenBook, hash_token, load_tokens
from node.errors import Unauthenticated


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exit.value.code or 0), out, err


def test_token_create_prints_the_token_once_and_stores_only_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tokens.toml"
    code, out, err = run(
        capsys, "token", "create", "--file", str(path), "--agent", "sales_agent",
        "--tenant", "acme", "--write", "purchase_*", "--domain", "sales",
    )  # fmt: skip
    assert code == 0
    token = out.strip()
    assert len(token) >= 40 and "\n" not in token
    assert "shown only this once" in err
    text = path.read_text()
    assert token not in text and hash_token(token) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    who = TokenBook(path).principal(token)
    assert (who.agent, who.tenant, who.role, who.write, who.domains) == (
        "sales_agent", "acme", "agent", ("purchase_*",), ("sales",),
    )  # fmt: skip


def test_token_revoke_and_list_never_show_a_secret_and_are_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tokens.toml"
    f = ("--file", str(path))
    _, first, _ = run(capsys, "token", "create", *f, "--agent", "a1", "--tenant", "acme")
    _, second, _ = run(capsys, "token", "create", *f, "--agent", "boss", "--tenant", "acme",
                       "--role", "operator", "--write", "*")  # fmt: skip
    code, out, _ = run(capsys, "token", "revoke", *f, "--agent", "a1")
    assert code == 0 and f"revoked {hash_token(first.strip())[:12]}" in out
    code, out, _ = run(capsys, "token", "list", *f)
    assert code == 0
    assert first.strip() not in out and second.strip() not in out
    assert "revoked" in out and "live" in out
    with pytest.raises(Unauthenticated, match="revoked"):
        TokenBook(path).principal(first.strip())

    code, _, err = run(capsys, "token", "revoke", *f, "--agent", "a1")
    assert code == 2 and "no live token" in err
    code, _, err = run(capsys, "token", "revoke", *f, "--id", "ab")
    assert code == 2 and "at least 6" in err
    code, out, _ = run(capsys, "token", "revoke", *f, "--token", second.strip())
    assert code == 0 and "boss" in out

    audit = [
        json.loads(line) for line in (tmp_path / "tokens.audit.jsonl").read_text().splitlines()
    ]
    assert [(a["action"], a["agent"]) for a in audit] == [
        ("token_create", "a1"), ("token_create", "boss"),
        ("token_revoke", "a1"), ("token_revoke", "boss"),
    ]  # fmt: skip
    assert all(first.strip() not in json.dumps(a) for a in audit)
    assert all(len(load_tokens(path)) == 2 for _ in range(1))


def test_token_create_refuses_bad_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "token", "create", "--file", str(tmp_path / "t.toml"),
                       "--agent", "bad agent", "--tenant", "acme")  # fmt: skip
    assert code == 2 and "agent 'bad agent' is not valid" in err
    assert not (tmp_path / "t.toml").exists()


def test_a_token_never_starts_with_a_dash_so_the_command_line_takes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One in 64 URL-safe tokens would start with '-', which `--token -x...` reads as an option."""
    drawn = iter(["-" + "a" * 42, "b" * 43])
    monkeypatch.setattr(tokens.secrets, "token_urlsafe", lambda n: next(drawn))
    f = ("--file", str(tmp_path / "tokens.toml"))
    code, out, _ = run(capsys, "token", "create", *f, "--agent", "a1", "--tenant", "acme")
    assert code == 0 and out.strip() == "b" * 43
    code, out, _ = run(capsys, "token", "revoke", *f, "--token", out.strip())
    assert code == 0 and "a1" in out


def test_a_token_created_with_members_carries_the_membership_permission_through_a_revoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tokens.toml"
    code, out, _ = run(
        capsys, "token", "create", "--file", str(path), "--agent", "hr_agent",
        "--tenant", "acme", "--members",
    )  # fmt: skip
    assert code == 0
    hr = out.strip()
    plain, _ = tokens.create(path, "sales_agent", "acme")
    book = TokenBook(path)
    assert book.principal(hr).members and not book.principal(plain).members
    tokens.revoke(path, agent="sales_agent", tenant="acme")
    assert TokenBook(path).principal(hr).members  # rewriting the file keeps it
