"""tests/faultproxy.py: SELFMODEL_FAULTPROXY=off leaves every link passing."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.faultproxy import OFF_ENV, FaultProxy


@pytest.fixture
def echo() -> tuple[str, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                while data := conn.recv(1024):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[:2]


def roundtrip(proxy: FaultProxy) -> bytes:
    host, port = proxy.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"ping")
        return s.recv(4)


@pytest.mark.parametrize("mode", ["cut", "blackhole", "delay", "drop_answers"])
def test_with_faults_off_a_proxy_forwards_whatever_mode_is_set(
    echo: tuple[str, int], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv(OFF_ENV, "off")
    proxy = FaultProxy(echo)
    try:
        proxy.set(mode, delay_s=30.0)  # type: ignore[arg-type]
        assert (proxy.mode, proxy.delay_s) == ("pass", 0.0)
        assert roundtrip(proxy) == b"ping"
    finally:
        proxy.close()


def test_with_faults_on_a_cut_proxy_refuses(
    echo: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(OFF_ENV, raising=False)
    proxy = FaultProxy(echo)
    try:
        proxy.set("cut")
        assert proxy.mode == "cut"
        try:
            got = roundtrip(proxy)
        except OSError:  # reset by the proxy
            got = b""
        assert got == b"", "a cut proxy forwarded"
    finally:
        proxy.close()


def test_a_proxy_dropping_answers_forwards_the_request_and_discards_the_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(OFF_ENV, raising=False)
    server = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                received.append(conn.recv(4))
                conn.sendall(b"pong")

    serving = threading.Thread(target=serve, daemon=True)
    serving.start()
    proxy = FaultProxy(server.getsockname()[:2])
    try:
        proxy.set("drop_answers")
        host, port = proxy.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"ping")
            serving.join(5)
            assert received == [b"ping"]  # the request went through
            s.settimeout(2.0)
            try:
                got = s.recv(4)  # the end of the connection, the answer never
            except (TimeoutError, OSError):
                got = b""
            assert got == b""
    finally:
        proxy.close()


def test_a_throttled_proxy_forwards_requests_at_its_rate_and_answers_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(OFF_ENV, raising=False)
    server = socket.create_server(("127.0.0.1", 0))
    size, rate = 8000, 16000  # half a second's bytes

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                got = 0
                while got < size and (data := conn.recv(65536)):
                    got += len(data)
                conn.sendall(b"x" * size)

    threading.Thread(target=serve, daemon=True).start()
    proxy = FaultProxy(server.getsockname()[:2])
    try:
        proxy.set("throttle", rate_bps=rate)
        host, port = proxy.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            started = time.monotonic()
            s.sendall(b"y" * size)
            answer = b""
            while len(answer) < size and (data := s.recv(65536)):
                if not answer:
                    sent_s = time.monotonic() - started
                answer += data
            answered_s = time.monotonic() - started - sent_s
        assert len(answer) == size
        assert sent_s >= 0.35, f"{size} bytes at {rate} B/s went through in {sent_s:.2f}s"
        assert answered_s < 0.3, f"the answer was held back {answered_s:.2f}s"
    finally:
        proxy.close()


def test_with_faults_off_a_throttled_proxy_forwards_at_once(
    echo: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(OFF_ENV, "off")
    proxy = FaultProxy(echo)
    try:
        proxy.set("throttle", rate_bps=1)
        assert (proxy.mode, proxy.rate_bps) == ("pass", 0)
        assert roundtrip(proxy) == b"ping"
    finally:
        proxy.close()
