"""A TCP proxy that injects faults on one directed link between two nodes.

Modes: ``pass`` forwards; ``delay`` forwards after a delay; ``blackhole`` keeps connections open
but silently discards everything (a stalled network); ``drop_answers`` forwards what the client
sends and discards what comes back (a request taken, its answer lost); ``cut`` closes every
connection and refuses new ones (a partition that the sender notices); ``throttle`` forwards what
the client sends at most ``rate_bps`` bytes a second over all its connections, and what comes
back at once (a slow link or peer that still answers). Used by the fault tests
and benchmarks/chaos.py; it listens on loopback only.

``SELFMODEL_FAULTPROXY=off`` in the environment makes every proxy pass everything through,
whatever mode is set: a fault test run that way must fail, which proves the test depends on its
fault (tests/faults/test_fault_off.py).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from typing import Literal

Mode = Literal["pass", "delay", "blackhole", "drop_answers", "cut", "throttle"]
OFF_ENV = "SELFMODEL_FAULTPROXY"  # "off": every proxy only forwards


def faults_off() -> bool:
    return os.environ.get(OFF_ENV, "").lower() == "off"


class FaultProxy:
    def __init__(self, target: tuple[str, int], listen_host: str = "127.0.0.1") -> None:
        self.target = target
        self._server = socket.create_server((listen_host, 0))
        self.address = f"{listen_host}:{self._server.getsockname()[1]}"
        self.mode: Mode = "pass"
        self.delay_s = 0.0
        self.rate_bps = 0
        self._next_send = 0.0  # monotonic: when the throttled link may send its next bytes
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closed = False
        self._off = faults_off()
        threading.Thread(target=self._accept, name=f"proxy-{self.address}", daemon=True).start()

    def set(self, mode: Mode, delay_s: float = 0.0, rate_bps: int = 0) -> None:
        if self._off and not self._closed:
            mode, delay_s, rate_bps = "pass", 0.0, 0
        if mode == "throttle" and rate_bps <= 0:
            raise ValueError(f"throttle needs rate_bps above 0, got {rate_bps}")
        with self._lock:
            self.mode = mode
            self.delay_s = delay_s
            self.rate_bps = rate_bps
            doomed = list(self._conns) if mode == "cut" else []
        for s in doomed:
            _close(s)

    def close(self) -> None:
        self._closed = True
        self.set("cut")
        _close(self._server)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.mode == "cut":
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2.0)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for src, dst, answers in ((client, upstream, False), (upstream, client, True)):
                pump = threading.Thread(target=self._pump, args=(src, dst, answers), daemon=True)
                pump.start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool = False) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                mode, delay = self.mode, self.delay_s
                if mode == "cut":
                    break
                if mode == "blackhole" or (mode == "drop_answers" and answers):
                    continue
                if mode == "delay" and delay > 0:
                    time.sleep(delay)
                if mode == "throttle" and not answers:
                    self._throttled(data, dst)
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            _close(src)
            _close(dst)

    def _throttled(self, data: bytes, dst: socket.socket) -> None:
        """Sends ``data`` in slices of a tenth of a second's bytes, each when the link's rate
        allows (one schedule for every connection); the rest at once if the mode changes."""
        start = 0
        while start < len(data):
            with self._lock:
                throttled, rate = self.mode == "throttle", self.rate_bps
                size = max(1, rate // 10) if throttled else len(data) - start
                now = time.monotonic()
                at = max(now, self._next_send) if throttled else now
                if throttled:
                    self._next_send = at + size / rate
            time.sleep(at - now)
            dst.sendall(data[start : start + size])
            start += size


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
