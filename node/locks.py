"""Striped subject locks: read-modify-write of one subject runs one at a time.

A stripe is the subject's hash, the same for a subject throughout the process (locks are not
shared with other processes, so the per-process salt of str hashes is harmless). Several
subjects' stripes are taken in index order, so writers never deadlock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from sync.observation import Subject

STRIPES = 256


class SubjectLocks:
    def __init__(self, stripes: int = STRIPES) -> None:
        self._stripes = [threading.Lock() for _ in range(stripes)]

    def of(self, subject: Subject) -> threading.Lock:
        """The lock of ``subject``'s stripe."""
        return self._stripes[hash(subject) % len(self._stripes)]

    def held(self, subjects: Iterable[Subject]) -> Held:
        """A context manager holding the subjects' stripe locks."""
        n = len(self._stripes)
        indexes = sorted({hash(s) % n for s in subjects})
        return Held([self._stripes[i] for i in indexes])


class Held:
    """A context manager over locks: a class, cheaper than a generator on every write."""

    __slots__ = ("_locks",)

    def __init__(self, locks: list[threading.Lock]) -> None:
        self._locks = locks

    def __enter__(self) -> None:
        for lock in self._locks:
            lock.acquire()

    def __exit__(self, *exc: object) -> None:
        for lock in reversed(self._locks):
            lock.release()


__all__ = ["STRIPES", "Held", "SubjectLocks"]
