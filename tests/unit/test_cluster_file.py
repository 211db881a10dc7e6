"""Small rules of cluster files that the command line relies on."""

from __future__ import annotations

import pytest

from federation.cluster import dial_address


@pytest.mark.parametrize(
    ("listen", "dial"),
    [
        ("0.0.0.0:7070", "127.0.0.1:7070"),
        ("[::]:7070", "[::1]:7070"),
        (":7070", "127.0.0.1:7070"),
        ("127.0.0.1:7070", "127.0.0.1:7070"),
        ("[::1]:7070", "[::1]:7070"),
        ("selfmodel-0.selfmodel-peers:7070", "selfmodel-0.selfmodel-peers:7070"),
        ("unix:/run/selfmodel.sock", "unix:/run/selfmodel.sock"),
    ],
)
def test_a_wildcard_listen_address_is_dialed_on_loopback(listen: str, dial: str) -> None:
    assert dial_address(listen) == dial
