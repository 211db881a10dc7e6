"""The judged outcomes learned reliability keeps (node.learning): per (tenant, source, context)
the newest of them, at most ``window + margin``, and per slot the ones of them it holds.

A key's entries are the newest of its outcomes, all of them when ``whole``: an outcome older
than every entry of a key that is not whole is not kept (older ones, not held, may come
before it), and a removed outcome that is not kept was older than every entry. So the weight
from the entries is exact while they number ``window`` or more, or are whole; below that the
key is ``stale`` and its entries must be ``rebuilt`` from the stored slots (node.learning).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import NamedTuple

from node.reliability import Learned, LearningSettings, Outcome, weight
from sync.causal import Dot
from sync.observation import Subject

Key = tuple[str, str, str]  # (tenant, source, context)


class SlotId(NamedTuple):
    subject: Subject
    context: str
    key: str


class Entry(NamedTuple):
    hlc: int
    dot: Dot
    slot: SlotId  # ties of (hlc, dot) across subjects broken by the slot: a total order
    agreed: bool


class _Kept:
    """One (tenant, source, context)'s newest outcomes, in (hlc, dot, slot) order: all of them
    when ``whole``, else the newest ``len(entries)`` (older ones exist, or may)."""

    __slots__ = ("entries", "whole")

    def __init__(self, entries: list[Entry], whole: bool) -> None:
        self.entries = entries
        self.whole = whole


class Outcomes:
    """Per (tenant, source, context) its newest outcomes, at most ``window + margin`` (the
    tenant: of the slot's subject), and per slot the ones of them it holds (the module's
    docstring says when they give the weights). Not thread-safe: ``Learning`` serializes it."""

    def __init__(self, window: int, margin: int) -> None:
        self.window = window
        self.capacity = window + margin
        self._keys: dict[Key, _Kept] = {}
        self._slots: dict[SlotId, dict[Key, Entry]] = {}  # the entries kept, per slot
        self._by_subject: dict[Subject, set[tuple[str, str]]] = {}  # slots with one
        self._count = 0

    def __len__(self) -> int:
        """Outcomes kept: at most ``window + margin`` per key."""
        return self._count

    def slots_of(self, subject: Subject) -> set[tuple[str, str]]:
        """The slots (context, key) of ``subject`` of which an outcome is kept."""
        return set(self._by_subject.get(subject, ()))

    def replace(self, slot: SlotId, outcomes: Sequence[Outcome]) -> set[Key]:
        """Sets ``slot``'s outcomes (none: it no longer judges); the (tenant, source, context)
        triples whose entries changed."""
        old = self._slots.pop(slot, {})
        for key, entry in old.items():
            self._discard(key, entry)
        new: dict[Key, Entry] = {}
        for o in outcomes:  # one per source: each key once
            key = (slot.subject.tenant, o.source, o.context)
            entry = Entry(o.hlc, o.dot, slot, o.agreed)
            if self._insert(key, entry):
                new[key] = entry
        self._hold(slot, new)
        return {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}

    def _hold(self, slot: SlotId, entries: dict[Key, Entry]) -> None:
        held = self._by_subject.setdefault(slot.subject, set())
        if entries:
            self._slots[slot] = entries
            held.add((slot.context, slot.key))
        else:
            self._slots.pop(slot, None)
            held.discard((slot.context, slot.key))
            if not held:
                del self._by_subject[slot.subject]

    def _insert(self, key: Key, entry: Entry) -> bool:
        """Adds ``entry`` to ``key``'s if it is among its newest held; whether it is kept."""
        kept = self._keys.get(key)
        if kept is None:
            kept = self._keys[key] = _Kept([], True)
        if not kept.whole and (not kept.entries or entry < kept.entries[0]):
            return False  # older outcomes, not held, may come before it
        bisect.insort(kept.entries, entry)
        self._count += 1
        if len(kept.entries) <= self.capacity:
            return True
        oldest = kept.entries.pop(0)
        kept.whole = False
        self._count -= 1
        if oldest == entry:
            return False
        of_slot = self._slots[oldest.slot]
        del of_slot[key]
        self._hold(oldest.slot, of_slot)
        return True

    def _discard(self, key: Key, entry: Entry) -> None:
        kept = self._keys[key]
        at = bisect.bisect_left(kept.entries, entry)
        assert kept.entries[at] == entry  # every entry a slot holds is its key's
        del kept.entries[at]
        self._count -= 1
        if not kept.entries and kept.whole:
            del self._keys[key]

    def stale(self, key: Key) -> bool:
        """Whether ``key``'s entries no longer give its weight: fewer than ``window``, and
        older outcomes not held may exist."""
        kept = self._keys.get(key)
        return kept is not None and not kept.whole and len(kept.entries) < self.window

    def rebuilt(self, key: Key, found: Sequence[tuple[SlotId, Outcome]], whole: bool) -> None:
        """Sets ``key``'s entries from the stored slots: ``found`` its newest outcomes, each
        with its slot (at most ``window + margin``; all of them when ``whole``)."""
        assert self.window <= len(found) <= self.capacity or (whole and len(found) <= self.capacity)
        entries = [Entry(o.hlc, o.dot, slot, o.agreed) for slot, o in found]
        kept = self._keys.pop(key, None)
        for entry in kept.entries if kept is not None else ():
            of_slot = self._slots[entry.slot]
            del of_slot[key]
            self._hold(entry.slot, of_slot)
            self._count -= 1
        if entries or not whole:
            self._keys[key] = _Kept(sorted(entries), whole)
        for entry in entries:
            of_slot = self._slots.get(entry.slot, {})
            of_slot[key] = entry
            self._hold(entry.slot, of_slot)
            self._count += 1

    def learned(self, key: Key, settings: LearningSettings) -> Learned | None:
        """``key``'s weight from its newest ``window`` outcomes (None: it has none); equals
        ``reliability.learn`` of the tenant's outcomes. Not of a ``stale`` key."""
        kept = self._keys.get(key)
        if kept is None:
            return None
        assert kept.whole or len(kept.entries) >= self.window  # not stale
        newest = kept.entries[-self.window :]
        agreed = sum(e.agreed for e in newest)
        return _learned(key, agreed, len(newest), settings)

    def held(self) -> list[tuple[Key, bool, list[tuple[SlotId, Outcome]]]]:
        """Every key's entries, each with its slot, and whether they are all its outcomes."""
        return [
            (
                key,
                kept.whole,
                [(e.slot, Outcome(key[1], key[2], e.agreed, e.hlc, e.dot)) for e in kept.entries],
            )
            for key, kept in sorted(self._keys.items())
        ]

    def keys(self) -> list[Key]:
        return sorted(self._keys)


def _learned(key: Key, agreed: int, judged: int, settings: LearningSettings) -> Learned:
    return Learned(key[1], key[2], weight(agreed, judged, settings), agreed, judged)


__all__ = ["Entry", "Key", "Outcomes", "SlotId"]
