"""What learned reliability (node.learning) costs a node, in process: the engine's time per
write with learning off and on (each write lands in a slot where three sources speak), the
recomputation that judges the slots written (one resolution each, off the write path) and
recomputes the weights, the memory per judged position kept, and the memory kept for many
positions under the default window (at most window + margin positions per source and context);
then, on a store of ``--slots`` slots of three sources (default window): one source's positions
read again from the store (what a node does when removals take those it keeps below the
window), and a start's two ways to its weights: judging every slot, or reading back what a
clean stop saved.

    .venv/bin/python -m benchmarks.learning [--writes 3000] [--rounds 5] [--slots 10000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

from node.engine import Engine
from node.learning import Learning, Outcomes, SlotId
from node.reliability import LearningSettings, Outcome
from node.store import Store
from node.writes import ObservationInput
from sync.causal import Dot
from sync.observation import Subject, SubjectKind

SOURCES = ("a", "b", "c")
STATEMENTS = ("yes", "yes", "no")


def writes_per_s(root: Path, name: str, writes: int, learning: bool) -> tuple[float, float]:
    """Observe calls per second, and the time of one recomputation of the weights (0 off)."""
    engine = Engine(Store(root / name, name, fsync=False))
    follow = Learning(engine, LearningSettings(enabled=True)) if learning else None
    if follow is not None:
        engine.listeners.append(follow.follow)
    try:
        items = [
            (
                SOURCES[i % 3],
                ObservationInput(
                    Subject("acme", SubjectKind.USER, f"u-{i // 30}"),
                    "plan",
                    f"k{(i // 3) % 10}",
                    STATEMENTS[i % 3],
                    0.8,
                ),
            )
            for i in range(writes)
        ]
        start = time.perf_counter()
        for source, item in items:
            engine.observe(source, [item])
        rate = writes / (time.perf_counter() - start)
        refresh = 0.0
        if follow is not None:
            start = time.perf_counter()
            follow.refresh()
            refresh = time.perf_counter() - start
        return rate, refresh
    finally:
        engine.store.close()


def outcomes_memory(count: int, window: int, margin: int) -> tuple[int, int]:
    """Memory ``Outcomes(window, margin)`` takes after ``count`` judged positions, three a slot
    (one per source, one context): bytes and positions kept."""
    outcomes = Outcomes(window, margin)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(count // 3):
        slot = SlotId(Subject("acme", SubjectKind.USER, f"u-{i // 10}"), "plan", f"k{i % 10}")
        found = [
            Outcome(s, "plan", s != "c", 1_000_000 + 3 * i + j, Dot("n1.1", 3 * i + j + 1))
            for j, s in enumerate(SOURCES)
        ]
        outcomes.replace(slot, found)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used, len(outcomes)


def store_figures(root: Path, slots: int) -> dict[str, float]:
    """Milliseconds of one source's rebuild, of ``save``, of ``restore`` and of ``load`` on a
    store of ``slots`` slots where three sources speak; the saved row's bytes."""
    engine = Engine(Store(root / "store", "store", fsync=False))
    follow = Learning(engine, LearningSettings(enabled=True))
    engine.listeners.append(follow.follow)
    try:
        for i in range(slots):
            subject = Subject("acme", SubjectKind.USER, f"u-{i // 10}")
            for source, statement in zip(SOURCES, STATEMENTS, strict=True):
                item = ObservationInput(subject, "plan", f"k{i % 10}", statement, 0.8)
                engine.observe(source, [item])
        follow.refresh()
        found: dict[str, float] = {}
        start = time.perf_counter()
        follow._rebuild(("acme", "a", "plan"))
        found["rebuild"] = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        assert follow.save()
        found["save"] = (time.perf_counter() - start) * 1e3
        found["row"] = len(engine.store.get_meta("meta", b"learning") or b"")
        start = time.perf_counter()
        assert Learning(engine, follow.settings).restore()
        found["restore"] = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        Learning(engine, follow.settings).load(engine.store.subjects())
        found["load"] = (time.perf_counter() - start) * 1e3
        return found
    finally:
        engine.store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slots", type=int, default=10_000)
    args = parser.parse_args()
    offs, ons, refreshes = [], [], []
    with tempfile.TemporaryDirectory() as root:
        for i in range(args.rounds):  # alternated, the best of each: this machine drifts
            offs.append(writes_per_s(Path(root), f"off{i}", args.writes, learning=False)[0])
            on, refresh = writes_per_s(Path(root), f"on{i}", args.writes, learning=True)
            ons.append(on)
            refreshes.append(refresh)
    off, on, refresh = max(offs), max(ons), min(refreshes)
    print(f"writes/s, learning off: {off:.0f}")
    print(f"writes/s, learning on:  {on:.0f} ({on / off:.2f} of off)")
    print(f"per write, added: {1e6 / on - 1e6 / off:.0f} us")
    slots = args.writes // 3
    print(f"recomputation judging {slots} slots: {refresh * 1e3:.0f} ms", end=" ")
    print(f"({refresh * 1e6 / slots:.0f} us per slot)")
    used, kept = outcomes_memory(30_000, 30_000, 0)  # room for every one: the cost of each
    print(f"memory per judged position kept: {used / kept:.0f} bytes")
    window = LearningSettings().window
    used, kept = outcomes_memory(300_000, window, window)
    print(f"300,000 positions of 3 sources, window {window}: {kept} kept, {used / 1e3:.0f} kB")
    with tempfile.TemporaryDirectory() as root:
        found = store_figures(Path(root), args.slots)
    print(
        f"{args.slots} slots of 3 sources: one source's positions read again from the store:",
        end=" ",
    )
    print(f"{found['rebuild']:.0f} ms")
    print(f"start: judging every slot {found['load']:.0f} ms; reading back the saved", end=" ")
    print(
        f"positions {found['restore']:.0f} ms (saved at the stop in {found['save']:.0f} ms,",
        end=" ",
    )
    print(f"{found['row'] / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
