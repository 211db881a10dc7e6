"""Learned reliability's outcomes saved at a clean stop, with the fingerprint of what they were
judged from, and read back at start in place of judging every stored slot again.

The outcomes a node keeps (node.outcomes) are a function of its stored state, the operators'
book they were judged against and the window and margin that bound them. A clean stop
(node.server), once every writer has stopped and every change is judged, writes them to the
store's meta row ``learning`` with the fingerprint of all three: of the state, a hash of the
anti-entropy bucket hashes (node.store.digests: each the XOR of its subjects' digests, written
in the same batch as every state change, so a crash cannot tear them from the state).

At start a node reads them back only when the fingerprint is that of what it holds then: the
same state (its digests: what anti-entropy takes to say two replicas hold the same state), the
same book, the same window and margin. Its weights are then those judging every stored slot
would give, on this node as on any other holding that state, and it serves without judging.
In any other case, a stop by kill -9 after writes included (the state moved on from the
fingerprint) or a changed book, the row is ignored and every stored slot is judged, as
without it. A row whose fingerprint no longer matches stays until the next clean stop
replaces it: it is never read for anything else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from node.outcomes import Key, SlotId
from node.policy import PolicyBook
from node.reliability import Outcome
from sync.causal import Dot
from sync.observation import Subject, SubjectKind

ROW = b"learning"  # in the meta column family
FORMAT = 2

Held = list[tuple[Key, bool, list[tuple[SlotId, Outcome]]]]  # per key: whole, newest outcomes


def fingerprint(
    buckets: Sequence[bytes], book: PolicyBook, window: int, margin: int
) -> dict[str, Any]:
    """What saved outcomes were judged from: the state (its bucket hashes), the book, the
    bound."""
    return {
        "format": FORMAT,
        "state": hashlib.blake2b(b"".join(buckets), digest_size=16).hexdigest(),
        "book": hashlib.blake2b(
            json.dumps(book.canonical(), separators=(",", ":")).encode(), digest_size=16
        ).hexdigest(),
        "window": window,
        "margin": margin,
    }


def encode(judged_from: Mapping[str, Any], held: Held) -> bytes:
    keys = [
        [
            *key,
            whole,
            [
                [
                    o.hlc,
                    o.dot.actor,
                    o.dot.counter,
                    int(s.subject.kind),
                    s.subject.id,
                    s.key,
                    o.agreed,
                ]
                for s, o in found
            ],
        ]
        for key, whole, found in held
    ]
    return json.dumps({**judged_from, "keys": keys}, separators=(",", ":")).encode()


def decode(raw: bytes | None, judged_from: Mapping[str, Any]) -> Held | None:
    """The outcomes saved in ``raw`` if they were judged from ``judged_from`` (None: not, or
    none saved, or a row this build cannot read)."""
    if raw is None:
        return None
    try:
        saved = json.loads(raw)
        if not isinstance(saved, dict) or any(saved.get(k) != v for k, v in judged_from.items()):
            return None
        held: Held = []
        for tenant, source, context, whole, found in saved["keys"]:
            outcomes = [
                (
                    SlotId(Subject(tenant, SubjectKind(kind), subject), context, key),
                    Outcome(source, context, bool(agreed), int(hlc), Dot(actor, int(counter))),
                )
                for hlc, actor, counter, kind, subject, key, agreed in found
            ]
            held.append(((tenant, source, context), bool(whole), outcomes))
        return held
    except (ValueError, TypeError, KeyError):  # another build's row: judged again instead
        return None


__all__ = ["FORMAT", "ROW", "Held", "decode", "encode", "fingerprint"]
