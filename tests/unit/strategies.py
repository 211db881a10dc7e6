"""Shared builders and hypothesis strategies for the pure core.

``simulate`` plays a random event sequence on 2-4 replicas of one subject: local observes (each
superseding the same source's earlier dots in the slot), retracts, occasional erases, and
deliveries of deltas (duplicated, reordered, lost) and of full states between replicas. Slots
span two contexts, and an observe may take the very timestamp another replica's newest
observation has (a tie, where ordering rules bite: hybrid clocks of different nodes can meet).
``subject_runs`` plays such sequences for several subjects that share an id. Besides
the replicas' states it records, independently of the CRDT, what every event did, so tests can
compare the CRDT against a plain reference model.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from sync.causal import CausalContext, Dot
from sync.crdt import (
    NO_ERASE,
    EraseBound,
    KeyedCall,
    SubjectState,
    erase_delta,
    merge,
    observe_delta,
    retract_delta,
    slot_dots,
)
from sync.hlc import pack
from sync.observation import Evidence, Observation, Subject, SubjectKind

# Fixed derandomized runs: every failure replays, and print_blob prints the reproduction blob.
LAWS = settings(
    max_examples=200,
    derandomize=True,
    print_blob=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# For plain values (codec round trips, contexts, resolution): fewer examples go as far.
VALUES = settings(LAWS, max_examples=100)

SUBJECT = Subject("acme", SubjectKind.USER, "u-42")
# Subjects alike but for their tenant or kind: they must never mix.
SUBJECTS = (
    SUBJECT,
    Subject("acme", SubjectKind.TEAM, "u-42"),
    Subject("acme2", SubjectKind.USER, "u-42"),
)
ACTORS = ("a.1", "b.1", "c.1", "d.1")
SOURCES = ("sales_agent", "support_agent", "bot")
CONTEXT = "budget"
CONTEXTS = (CONTEXT, "channel_pref")
KEYS = ("amount", "owner")
STATEMENTS = ("ten thousand", "Ten thousand.", "fifty thousand", "unknown")
BASE_MS = 1_700_000_000_000


def observation(
    actor: str = "a.1",
    counter: int = 1,
    *,
    context: str = CONTEXT,
    key: str = "amount",
    source: str = "sales_agent",
    statement: str = "ten thousand",
    confidence: float = 0.8,
    ms: int = BASE_MS,
    logical: int = 0,
    evidence: Iterable[Evidence] = (Evidence("message", "crm://msg/1"),),
    origin: str | None = None,
    request_key: str = "",
    request_index: int = 0,
) -> Observation:
    return Observation(
        dot=Dot(actor, counter),
        context=context,
        key=key,
        source=source,
        statement=statement,
        confidence=confidence,
        evidence=tuple(evidence),
        hlc=pack(ms, logical),
        origin=origin if origin is not None else actor.split(".")[0],
        request_key=request_key,
        request_index=request_index,
    )


# --- random event sequences ----------------------------------------------------------------


# Each op names replicas, sources and keys by index (taken modulo the number present), so one
# strategy serves any number of replicas, shrinks well and prints readably.
@dataclass(frozen=True)
class Observe:
    replica: int
    source: int
    key: int
    statement: int
    confidence: float
    context: int = 0
    tie: bool = False  # take the timestamp of another replica's newest observation


@dataclass(frozen=True)
class Retract:
    """Retracts the dots of one source in one slot: those of the replica's ``pick``-th
    observation (so retracts usually remove something), or of ``source`` and ``key`` when the
    replica holds none."""

    replica: int
    pick: int
    source: int
    key: int
    context: int = 0


@dataclass(frozen=True)
class Erase:
    replica: int


@dataclass(frozen=True)
class Deliver:
    """Delivers one delta already produced (any, so duplicated, reordered; some never: lost)."""

    replica: int
    pick: int


@dataclass(frozen=True)
class FullState:
    replica: int
    target: int


Op = Observe | Retract | Erase | Deliver | FullState

# Observes and deliveries are frequent, erases rare.
_KINDS = ("observe",) * 6 + ("retract",) * 3 + ("deliver",) * 5 + ("full",) * 2 + ("erase",)


def decode_op(n: int) -> Op:
    """One op from one drawn integer: a third of the cost of drawing each field, which counts
    when every law runs 200 random sequences. Shrinking n towards 0 shrinks to observes."""
    n, kind = divmod(n, len(_KINDS))
    n, replica = divmod(n, 4)
    n, source = divmod(n, len(SOURCES))
    n, key = divmod(n, len(KEYS))
    n, context = divmod(n, len(CONTEXTS))
    match _KINDS[kind]:
        case "observe":
            n, statement = divmod(n, len(STATEMENTS))
            n, confidence = divmod(n, 3)
            tie = n % 3 == 2  # a third of the observes try for a tie
            conf = (0.2, 0.5, 0.9)[confidence]
            return Observe(replica, source, key, statement, conf, context, tie)
        case "retract":
            return Retract(replica, n, source, key, context)
        case "deliver":
            return Deliver(replica, n)
        case "full":
            return FullState(replica, n % 4)
        case _:
            return Erase(replica)


ops = st.lists(st.integers(0, 2**24 - 1).map(decode_op), min_size=4, max_size=25)


@dataclass
class Issued:
    """An observation as the reference model knows it: unique by its dot (hlcs may tie, dots
    are never reused)."""

    observation: Observation


@dataclass
class Retraction:
    removes: frozenset[Dot]  # what the retracting replica held of the source in the slot
    seen: CausalContext  # the retracting replica's context when it retracted
    delta: SubjectState
    key: str
    source: str
    hlc: int  # the retract's timestamp: its step
    context: str = CONTEXT


@dataclass
class Erasure:
    hlc: int  # the erase's timestamp: its step, like every event's
    erased: frozenset[Observation]  # what the erasing replica held
    delta: SubjectState


@dataclass
class Run:
    actors: list[str]
    replicas: list[SubjectState]
    deltas: list[SubjectState] = field(default_factory=list)
    history: list[SubjectState] = field(default_factory=list)
    issued: list[Issued] = field(default_factory=list)
    removed: set[Dot] = field(default_factory=set)  # superseded or retracted
    retractions: list[Retraction] = field(default_factory=list)
    erasures: list[Erasure] = field(default_factory=list)
    observe_deltas: list[SubjectState] = field(default_factory=list)
    events: list[Dot] = field(default_factory=list)  # the dot of each delta's own event

    def expected_observations(self) -> dict[Dot, Observation]:
        """The reference model: what every replica holds once every event reached it.

        Every observation issued, less those superseded, those of a retracted source and slot
        from before the retract, and those from before any erase, wherever written (steps are
        one total order, as hybrid timestamps are on real nodes).
        """
        last_erase = max((e.hlc for e in self.erasures), default=0)
        return {
            i.observation.dot: i.observation
            for i in self.issued
            if i.observation.dot not in self.removed
            and i.observation.hlc > last_erase
            and not self.withdrawn(i.observation)
        }

    def withdrawn(self, obs: Observation) -> bool:
        return any(
            (r.context, r.key, r.source) == (obs.context, obs.key, obs.source) and obs.hlc < r.hlc
            for r in self.retractions
        )


def dots_of(context: CausalContext) -> set[Dot]:
    return {Dot(a, c) for a, n in context.vector.items() for c in range(1, n + 1)} | set(
        context.cloud
    )


def newest_stamp(state: SubjectState) -> int:
    """The newest timestamp a state carries: of an observation, its bound or a withdrawal."""
    stamps = [o.hlc for o in state.observations.values()]
    return max([state.erased.hlc, *state.withdrawals.values(), *stamps])


def forget_call(hlc: int) -> KeyedCall:
    return KeyedCall(hlc, "forget", b"f" * 16)


def causally_ready(state: SubjectState, delta: SubjectState, event: Dot) -> bool:
    """True when ``state`` already merged every dot ``delta`` removes (a causal delivery)."""
    return all(dot in state.context for dot in dots_of(delta.context) - {event})


def simulate(
    n_replicas: int, script: Sequence[Op], causal: bool = False, subject: Subject = SUBJECT
) -> Run:
    """Plays ``script``; with ``causal`` a delta is delivered only once it is causally ready
    (as a replicator that buffers early deltas would), otherwise in any order."""
    actors = list(ACTORS[:n_replicas])
    run = Run(actors, [SubjectState(subject) for _ in actors])
    # Each replica's clock: past every timestamp it minted or merged (hybrid clocks), so a tie
    # never takes a timestamp from before an erase or retract the replica has merged.
    clocks = [0] * n_replicas
    for step, op in enumerate(script):
        r = op.replica % n_replicas
        state, actor = run.replicas[r], actors[r]
        match op:
            case Observe():
                source, key, context = SOURCES[op.source], KEYS[op.key], CONTEXTS[op.context]
                supersedes = slot_dots(state, context, key, source)
                hlc = pack(BASE_MS + step, 0)
                others = [i.observation for i in run.issued if i.observation.dot.actor != actor]
                if op.tie and others and others[-1].hlc > clocks[r]:
                    hlc = others[-1].hlc  # the same instant on another node's clock
                clocks[r] = hlc
                obs = observation(
                    actor,
                    state.next_dot(actor).counter,
                    context=context,
                    key=key,
                    source=source,
                    statement=STATEMENTS[op.statement],
                    confidence=op.confidence,
                    ms=hlc >> 16,
                    logical=hlc & 0xFFFF,
                )
                delta = observe_delta(state, obs, supersedes)
                event = obs.dot
                run.issued.append(Issued(obs))
                run.removed.update(supersedes)
                run.observe_deltas.append(delta)
            case Retract():
                source, key, context = SOURCES[op.source], KEYS[op.key], CONTEXTS[op.context]
                if state.observations:
                    held = sorted(state.observations.values(), key=lambda o: o.dot)
                    chosen = held[op.pick % len(held)]
                    source, key, context = chosen.source, chosen.key, chosen.context
                removes = slot_dots(state, context, key, source)
                hlc = pack(BASE_MS + step)
                clocks[r] = hlc
                call = {(source, f"k{step % 3}"): KeyedCall(hlc, "retract", b"r" * 16, step % 2)}
                delta = retract_delta(state, actor, context, key, source, hlc, call)
                event = state.next_dot(actor)
                run.removed.update(removes)
                run.retractions.append(
                    Retraction(frozenset(removes), state.context, delta, key, source, hlc, context)
                )
            case Erase():
                hlc = pack(BASE_MS + step)
                delta = erase_delta(state, actor, hlc, {("ops", f"k{step % 3}"): forget_call(hlc)})
                (event,) = dots_of(delta.context)
                clocks[r] = hlc
                erased = frozenset(state.observations.values())
                run.erasures.append(Erasure(hlc, erased, delta))
            case Deliver():
                if not run.deltas:
                    continue
                pick = op.pick % len(run.deltas)
                if causal and not causally_ready(state, run.deltas[pick], run.events[pick]):
                    continue
                run.replicas[r] = merge(state, run.deltas[pick])
                clocks[r] = max(clocks[r], newest_stamp(run.deltas[pick]))
                run.history.append(run.replicas[r])
                continue
            case FullState():
                target = op.target % n_replicas
                run.replicas[target] = merge(run.replicas[target], state)
                clocks[target] = max(clocks[target], clocks[r])
                run.history.append(run.replicas[target])
                continue
        run.deltas.append(delta)
        run.events.append(event)
        run.replicas[r] = merge(state, delta)
        run.history.append(run.replicas[r])
    return run


runs = st.builds(simulate, st.integers(2, 4), ops)
causal_runs = st.builds(simulate, st.integers(2, 4), ops, st.just(True))


@st.composite
def subject_runs(draw: st.DrawFn) -> list[Run]:
    """One run for each of two or three subjects alike but for tenant or kind (SUBJECTS)."""
    chosen = draw(st.lists(st.sampled_from(SUBJECTS), min_size=2, max_size=3, unique=True))
    return [
        draw(st.builds(simulate, st.integers(2, 3), ops, st.just(False), st.just(s)))
        for s in chosen
    ]


# A plain Random seeded by hypothesis: cheaper than st.randoms() (whose every call is a draw),
# and the failing seed is printed with the example, so a failure still replays.
shuffles = st.builds(random.Random, st.integers(0, 2**32 - 1))


def fold(states: Iterable[SubjectState], subject: Subject = SUBJECT) -> SubjectState:
    acc = SubjectState(subject)
    for s in states:
        acc = merge(acc, s)
    return acc


# --- random values for the codec and resolution ------------------------------------------

names = st.text(st.characters(codec="utf-8"), max_size=12)
dots = st.builds(Dot, st.sampled_from(ACTORS), st.integers(1, 2**40))
contexts = st.builds(CausalContext.of, st.lists(dots, max_size=12))
evidence = st.builds(
    Evidence,
    st.sampled_from(["", "message", "ticket", "call", "meeting", "document", "record", "other"]),
    names,
    names,
    st.one_of(st.just(0), st.integers(1, 2**40)),
)
subjects = st.builds(Subject, names, st.sampled_from(SubjectKind), names)
keyed_calls = st.builds(
    KeyedCall,
    st.integers(1, 2**63 - 1),
    st.sampled_from(["retract", "forget"]),
    st.binary(min_size=16, max_size=16),
    st.integers(0, 2**32 - 1),
)


@st.composite
def random_states(draw: st.DrawFn) -> SubjectState:
    """Arbitrary (not necessarily reachable) states: every field a codec has to carry."""
    observed = draw(st.lists(dots, max_size=4, unique=True))
    observations = {
        d: Observation(
            dot=d,
            context=draw(names),
            key=draw(names),
            source=draw(names),
            statement=draw(names),
            confidence=draw(st.floats(0.0, 1.0)),
            evidence=tuple(draw(st.lists(evidence, max_size=3))),
            hlc=draw(st.integers(0, 2**63 - 1)),
            origin=draw(names),
            based_on=draw(st.one_of(st.none(), contexts)),
        )
        for d in observed
    }
    context = draw(contexts).join(CausalContext.of(observed))
    erased = draw(
        st.one_of(
            st.just(NO_ERASE),
            st.builds(EraseBound, st.integers(1, 2**63 - 1), contexts),
        )
    )
    withdrawals = draw(
        st.dictionaries(st.tuples(names, names, names), st.integers(1, 2**63 - 1), max_size=3)
    )
    calls = draw(st.dictionaries(st.tuples(names, names), keyed_calls, max_size=3))
    return SubjectState(draw(subjects), erased, context, observations, withdrawals, calls)
