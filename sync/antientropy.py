"""Anti-entropy: find the subjects two replicas disagree on and ship their whole states.

Compare bucket hashes, then the subject digests inside differing buckets, then exchange the
states of the subjects whose digests differ (in both directions, in one round trip per chunk).
This heals every path the delta stream missed, so convergence never depends on a message
getting through.

A chunk holds at most CHUNK subjects and ``max_bytes`` of states (sync.bounds.state_bytes); a
state larger than that travels alone, split into parts that each fit (sync.bounds.split), each
still a correct delta. The peer may refuse a subject (malformed to it, or past its subject
limits) or a chunk whole: a refused chunk is sent again one subject at a time, and a subject
refused alone is skipped and reported in the round, so one subject never holds up the others.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from sync.bounds import split, state_bytes
from sync.crdt import SubjectState
from sync.observation import Subject
from sync.ports import PeerLink, Replica, StatesRefused

CHUNK = 128
MAX_BYTES = 1024 * 1024  # a request's states, well under a 4 MiB message


@dataclass(frozen=True, slots=True)
class Round:
    buckets_differing: int
    subjects_differing: int
    repaired_here: int
    # The subjects the peer refused, with its reasons: not replicated to it by this round.
    skipped: Sequence[tuple[Subject, str]] = field(default=())


def reconcile(
    replica: Replica,
    link: PeerLink,
    chunk: int = CHUNK,
    max_bytes: int = MAX_BYTES,
    source: str = "",
) -> Round:
    mine = replica.bucket_hashes()
    theirs = link.buckets()
    if len(mine) != len(theirs):
        raise ValueError(f"peer has {len(theirs)} digest buckets, this node {len(mine)}")
    differing = [b for b, (x, y) in enumerate(zip(mine, theirs, strict=True)) if x != y]
    if not differing:
        return Round(0, 0, 0)
    subjects: list[Subject] = []
    for start in range(0, len(differing), 64):
        buckets = differing[start : start + 64]
        remote = dict(link.digests(buckets))
        local: dict[Subject, bytes] = {}
        for b in buckets:
            local.update(replica.bucket_digests(b))
        for subject in sorted(set(remote) | set(local)):
            if remote.get(subject) != local.get(subject):
                subjects.append(subject)
    repaired = 0
    skipped: dict[Subject, str] = {}
    for start in range(0, len(subjects), chunk):
        part = subjects[start : start + chunk]
        have = {s.subject: s for s in replica.states(part)}
        outgoing = [have.get(s, SubjectState(s)) for s in part]
        for batch in chunks(outgoing, chunk, max_bytes):
            repaired += _exchange(replica, link, batch, skipped, source)
    return Round(len(differing), len(subjects), repaired, tuple(skipped.items()))


def chunks(
    states: Sequence[SubjectState], count: int, max_bytes: int
) -> Iterator[list[SubjectState]]:
    """``states`` in runs of at most ``count`` states and ``max_bytes``; a larger state as
    runs of its parts (sync.bounds.split), one part per run."""
    run: list[SubjectState] = []
    size = 0
    for state in states:
        step = state_bytes(state)
        if step > max_bytes:
            yield from ([p] for p in split(state, max_bytes))
            continue
        if run and (len(run) == count or size + step > max_bytes):
            yield run
            run, size = [], 0
        run.append(state)
        size += step
    if run:
        yield run


def _exchange(
    replica: Replica,
    link: PeerLink,
    states: list[SubjectState],
    skipped: dict[Subject, str],
    source: str,
) -> int:
    """Exchanges ``states`` (one at a time if the peer refuses them together); returns how
    many subjects changed here, and adds the subjects the peer refused to ``skipped``."""
    try:
        answer = link.exchange(states)
    except StatesRefused as exc:
        if len(states) == 1:
            skipped[states[0].subject] = str(exc)
            return 0
        return sum(_exchange(replica, link, [s], skipped, source) for s in states)
    skipped.update(answer.refused)
    return replica.merge(answer.states, source).merged
