"""Where the command line and the client library take a bearer token from (besides --token)."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation import cli
from federation.bearer import TOKEN_ENV, TOKEN_FILE_ENV, bearer_token
from federation.client import Client


def test_an_explicit_token_then_a_file_then_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_text("from-file\n")
    other = tmp_path / "other"
    other.write_text("from-env-file")
    env = {TOKEN_ENV: "from-env", TOKEN_FILE_ENV: str(other)}
    assert bearer_token("given", file, env) == "given"
    assert bearer_token(None, file, env) == "from-file"
    assert bearer_token(None, None, env) == "from-env"
    assert bearer_token(None, None, {TOKEN_FILE_ENV: str(other)}) == "from-env-file"
    assert bearer_token(None, None, {}) is None
    assert bearer_token(None, None, {TOKEN_ENV: ""}) is None


def test_a_token_file_is_read_to_its_first_line_without_surrounding_space(
    tmp_path: Path,
) -> None:
    file = tmp_path / "token"
    file.write_text("  abc-DEF_123  \r\nsecond line ignored\n")
    assert bearer_token(token_file=file, environ={}) == "abc-DEF_123"


@pytest.mark.parametrize(
    ("content", "says"),
    [("", "holds no bearer token"), ("two words\n", "holds no bearer token")],
)
def test_an_unusable_token_file_names_the_file(tmp_path: Path, content: str, says: str) -> None:
    file = tmp_path / "token"
    file.write_text(content)
    with pytest.raises(ValueError, match=f"token file {file} {says}"):
        bearer_token(token_file=file, environ={})


def test_a_missing_token_file_names_it_and_the_variable_it_came_from(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=f"token file {missing}: cannot read it"):
        bearer_token(token_file=missing, environ={})
    with pytest.raises(ValueError, match=rf"\${TOKEN_FILE_ENV} {missing}: cannot read it"):
        bearer_token(environ={TOKEN_FILE_ENV: str(missing)})
    with pytest.raises(ValueError, match=rf"\${TOKEN_ENV} holds no bearer token"):
        bearer_token(environ={TOKEN_ENV: "has space"})


def test_the_client_sends_the_token_it_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "token"
    file.write_text("t0k3n\n")
    with Client("127.0.0.1:1", token_file=file) as client:
        assert ("authorization", "Bearer t0k3n") in client._md
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    with Client("127.0.0.1:1") as client:
        assert ("authorization", "Bearer from-env") in client._md
    monkeypatch.delenv(TOKEN_ENV)
    with Client("127.0.0.1:1", agent="dev") as client:
        assert client._md == (("x-agent-id", "dev"),)


@pytest.mark.parametrize("command", [["show", "user:u-1"], ["cluster", "status"]])
def test_every_command_that_sends_a_token_takes_a_file_and_says_so(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = cli.build_parser()
    args = parser.parse_args([*command, "--token-file", str(tmp_path / "t")])
    assert args.token_file == str(tmp_path / "t") and args.token is None
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--token-file" in help_text and f"${TOKEN_ENV}" in help_text
    assert f"${TOKEN_FILE_ENV}" in help_text


def test_the_command_line_reports_an_unreadable_token_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SystemExit) as exit:
        cli.main(["show", "user:u-1", "--target", "127.0.0.1:1", "--token-file", str(missing)])
    assert exit.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"selfmodel show: token file {missing}: cannot read it")
