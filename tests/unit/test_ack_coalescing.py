"""The delta stream's receiver over a real engine and store, on a clock the test moves: one
acknowledgement per interval, and at once when the sender asks (sync.receiver)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.engine import Engine
from node.refusals import Refusals
from node.store import Store
from node.syncports import EngineReplica
from node.validation import Limits
from selfmodel.sync.v1 import sync_pb2
from sync.hlc import HybridClock
from sync.receiver import ACK_INTERVAL_S, DeltaReceiver
from tests.integration.test_replicate_acks import SUBJECT, batch


class Clock:
    """The receiver's monotonic clock: what the test sets."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[DeltaReceiver, Engine, Clock]]:
    clock = Clock()
    store = Store(tmp_path / "db", "sales", fsync=False, outbox=True)
    engine = Engine(store)
    screen = Refusals("sales", Limits())
    yield (
        DeltaReceiver(EngineReplica(engine), screen, engine.clock.wall, monotonic=clock.monotonic),
        engine,
        clock,
    )
    store.close()
    del engine, store
    gc.collect()


def test_acknowledgements_coalesce_within_an_interval_and_an_ask_is_answered_at_once(
    receiver: tuple[DeltaReceiver, Engine, Clock],
) -> None:
    deltas, engine, clock = receiver
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

    acks = deltas.receive("support", requests())
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
    state = engine.state(SUBJECT)
    assert [o.statement for o in state.observations.values()] == ["fact 43"]
