"""The delta stream's receiver on a clock the test moves: one acknowledgement per interval,
and at once when the sender asks (node/replication.py, SyncServicer)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import replication
from node.engine import Engine
from node.peers import PeerAuth
from node.replication import ACK_INTERVAL_S, SyncServicer
from node.store import Store
from node.validation import Limits
from selfmodel.sync.v1 import sync_pb2
from sync.hlc import HybridClock
from tests.integration.test_replicate_acks import SUBJECT, batch


class Clock:
    """Stands in for the time module inside node.replication: monotonic() is what we set."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def receiver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SyncServicer, Clock]]:
    clock = Clock()
    monkeypatch.setattr(replication, "time", clock)
    store = Store(tmp_path / "db", "sales", sync=False, outbox=True)
    peers = PeerAuth("sales", frozenset({"support"}), trust_header=True)
    servicer = SyncServicer(Engine(store), peers, Limits())
    yield servicer, clock
    store.close()
    del servicer, store
    gc.collect()


def test_acknowledgements_coalesce_within_an_interval_and_an_ask_is_answered_at_once(
    receiver: tuple[SyncServicer, Clock],
) -> None:
    servicer, clock = receiver
    hlc = HybridClock()
    sent: list[tuple[float, sync_pb2.ReplicateRequest]] = []  # (arrival, batch)

    def requests() -> Iterator[sync_pb2.ReplicateRequest]:
        while True:
            assert sent, "the receiver wants another batch where it should have acknowledged"
            clock.now, msg = sent.pop(0)
            yield msg

    def feed(at: float, *msgs: sync_pb2.ReplicateRequest) -> None:
        sent.extend((at, msg) for msg in msgs)

    def ask(seq: int) -> sync_pb2.ReplicateRequest:  # a batch without deltas
        return sync_pb2.ReplicateRequest(origin="support", first_seq=seq + 1, last_seq=seq)

    acks = servicer._replicate("support", requests(), context=None)  # type: ignore[arg-type]
    t = clock.now
    feed(t, batch(1, hlc))
    assert next(acks).acked_seq == 1  # the first batch of a stream: at once
    # 40 more within the same interval: merged, none acknowledged on its own; the sender's
    # ask is answered at once with everything merged.
    feed(t, *(batch(seq, hlc) for seq in range(2, 42)), ask(41))
    assert next(acks).acked_seq == 41 and not sent
    # Half an interval after that ack: not acknowledged; the ask is.
    feed(t + ACK_INTERVAL_S / 2, batch(42, hlc), ask(42))
    assert next(acks).acked_seq == 42 and not sent
    # An interval and more after the last ack: acknowledged on its own.
    feed(t + ACK_INTERVAL_S * 2, batch(43, hlc))
    assert next(acks).acked_seq == 43 and not sent
    state = servicer.engine.state(SUBJECT)
    assert [o.statement for o in state.observations.values()] == ["fact 43"]
