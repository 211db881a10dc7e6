"""Where a client takes its bearer token from: an argument, a file, or the environment.

A token given on a command line shows in ``ps`` and shell history; one in a file (readable by
its owner only) or in the environment of the agent's process does not.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from pathlib import Path

TOKEN_ENV = "SELFMODEL_TOKEN"
TOKEN_FILE_ENV = "SELFMODEL_TOKEN_FILE"
_TOKEN = re.compile(r"[\x21-\x7e]{1,512}")  # what a node accepts after "Bearer "


def bearer_token(
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> str | None:
    """The bearer token to send: ``token``, else the first line of ``token_file``, else
    ``$SELFMODEL_TOKEN``, else the first line of the file ``$SELFMODEL_TOKEN_FILE``; None if
    none is given. A token in a file or the environment stays out of ``ps`` and shell history.

    ValueError names the source when it cannot be read or holds no valid token.
    """
    if token:
        return _checked(token, "the token given")
    if token_file:
        return _read_token(Path(token_file), "token file")
    if environ.get(TOKEN_ENV):
        return _checked(environ[TOKEN_ENV], f"${TOKEN_ENV}")
    if environ.get(TOKEN_FILE_ENV):
        return _read_token(Path(environ[TOKEN_FILE_ENV]), f"${TOKEN_FILE_ENV}")
    return None


def _read_token(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path}: cannot read it ({exc})") from exc
    lines = text.strip().splitlines()
    return _checked(lines[0] if lines else "", f"{what} {path}")


def _checked(token: str, what: str) -> str:
    token = token.strip()
    if not _TOKEN.fullmatch(token):
        raise ValueError(
            f"{what} holds no bearer token: expected 1 to 512 printable characters without "
            "spaces (as `selfmodel token create` prints)"
        )
    return token


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


__all__ = ["TOKEN_ENV", "TOKEN_FILE_ENV", "bearer_token", "token_args"]
