"""Handoff positions: which a node refuses as made up, and what it answers for one not merged yet.

A read with ``at_least`` is answered at once, never held: grpcio's threaded server answers a
unary call on the thread that runs it, so a read waiting there would hold a thread for as long
as it waits. A position the node has merged is read; a position no node can have issued is
refused (``implausible``: INVALID_ARGUMENT, HANDOFF_POSITION_IMPLAUSIBLE); any other is
answered UNAVAILABLE with HANDOFF_POSITION_PENDING, naming the first dot missing (``missing``)
and a RetryInfo delay (``DeliveryDelays``), and the client asks again until its deadline.

A read of a team or an organization carries its roll-up, which follows its members' states:
its token may name the group and any subject whose changes move that roll-up (its members and,
for an organization, its teams' users, as this node knows them), and each such position is
required as a subject read requires its own (``Handoffs.require_group``). Positions of other
subjects are ignored, as a batch read ignores those of subjects it does not read; membership
is known as of the group's position the node has merged, so the group's own position is judged
first (a member just added elsewhere counts once its add is merged here).

The rule for "no node can have issued it", for a token's position (a causal context) of a
subject whose local state has the context ``c`` (a position ``c`` covers is answered at once and
never judged; an erase's bound travels with its dot, so the context alone is the position):

- an actor is named ``<node>.<run>.<random>`` (node.store); an actor the local state has never
  seen, whose node is neither this node nor a member of its cluster, was issued by no node;
- this run's own actor issues every one of its dots here, in the state it writes: a counter of
  it beyond what the local state holds was never issued (dots are never reused: an erase keeps
  the context, so a later write's counter follows it);
- any other actor: a counter more than ``lead`` past the highest the local state holds for it
  is refused as made up (a legitimate lead is the writes of one actor to one subject not yet
  replicated here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from node import metrics
from node.errors import HandoffPending, InvalidArgument, Reason
from sync.causal import CausalContext, Dot
from sync.crdt import SubjectState
from sync.observation import Subject

DEFAULT_LEAD = 100_000


def node_of(actor: str) -> str | None:
    """The node of an actor named ``<node>.<run>.<random>``, or None if it is not so named."""
    parts = actor.rsplit(".", 2)
    return parts[0] if len(parts) == 3 and parts[0] else None


def _top_counters(context: CausalContext) -> dict[str, int]:
    top = dict(context.vector)
    for dot in context.cloud:
        if dot.counter > top.get(dot.actor, 0):
            top[dot.actor] = dot.counter
    return top


def implausible(
    state: SubjectState,
    context: CausalContext,
    *,
    actor: str,
    members: Iterable[str],
    lead: int = DEFAULT_LEAD,
) -> str | None:
    """Why no node can have issued the position ``context`` of ``state``'s subject, or None
    when it may have been (see the module docstring for the rule)."""
    known = _top_counters(state.context)
    seen = state.context.vector.keys() | {d.actor for d in state.context.cloud}
    nodes = set(members)
    for name, counter in sorted(_top_counters(context).items()):
        have = known.get(name, 0)
        if counter <= have:
            continue
        if name == actor:
            return (
                f"names dot {name}:{counter} of {state.subject}, but this node's actor {name} "
                f"has issued only up to {have} of it"
            )
        if name not in seen and node_of(name) not in nodes:
            return f"names actor {name!r}, of no node of this cluster ({', '.join(sorted(nodes))})"
        if counter > have + lead:
            return (
                f"names dot {name}:{counter} of {state.subject}, more than {lead} past the "
                f"{have} this node holds of that actor (setting max_handoff_lead)"
            )
    return None


class Missing(NamedTuple):
    """The first dot (by actor name) of a position that a state does not cover: ``actor``'s
    ``counter``, of which the state holds up to ``held``."""

    actor: str
    counter: int
    held: int


def missing(state: SubjectState, context: CausalContext) -> Missing | None:
    """The first dot of the position ``context`` that ``state`` lacks, or None if it has all."""
    have = state.context
    wanted = [Dot(actor, top) for actor, top in context.vector.items()]
    for dot in sorted([*wanted, *context.cloud]):
        covered = (
            have.includes(CausalContext({dot.actor: dot.counter})) if dot in wanted else dot in have
        )
        if not covered:
            return Missing(dot.actor, dot.counter, have.max_counter(dot.actor))
    return None


MIN_RETRY_S = 0.005  # the least a pending read is told to wait: a delta is rarely sooner
MAX_RETRY_S = 1.0  # the most: an absent peer's writes come by anti-entropy, the client grows it


class DeliveryDelays:
    """How long each peer's deltas have lately taken to reach this node (from the batch's
    ``sent_at_ms`` to its merge here), as a moving average: the RetryInfo delay of a read
    whose position waits for that peer's writes is about that, within [MIN_RETRY_S,
    MAX_RETRY_S]; for a peer never heard from, twice the floor."""

    def __init__(self, weight: float = 0.2) -> None:
        self._weight = weight
        self._delay_s: dict[str, float] = {}

    def note(self, peer: str, delay_s: float) -> None:
        delay_s = min(max(delay_s, 0.0), MAX_RETRY_S)
        old = self._delay_s.get(peer)
        self._delay_s[peer] = delay_s if old is None else old + self._weight * (delay_s - old)

    def retry_after_s(self, actor: str) -> float:
        node = node_of(actor)
        delay = self._delay_s.get(node) if node is not None else None
        if delay is None:
            return 2 * MIN_RETRY_S
        return min(max(delay, MIN_RETRY_S), MAX_RETRY_S)


class Handoffs:
    """What a node answers a read with a handoff token (``require``), and how soon it tells a
    pending one to ask again (``deliveries``). ``members``: the nodes of its cluster, itself
    included, whose actors a token may name."""

    def __init__(self, node: str, members: frozenset[str], lead: int = DEFAULT_LEAD) -> None:
        self.node = node
        self.members = members
        self.lead = lead
        self.deliveries = DeliveryDelays()

    def require(
        self, state: SubjectState, positions: dict[Subject, CausalContext], actor: str
    ) -> None:
        """Returns if ``state`` covers the token's position for its subject; a token of other
        subjects, or of a position no node can have issued, is InvalidArgument; a position not
        merged yet is HandoffPending, naming the first dot missing and when to ask again.
        ``actor``: this run's."""
        position = positions.get(state.subject)
        if position is None:
            raise other_subject(state.subject, positions)
        self.covers(state, position, actor)

    def require_group(
        self,
        state: SubjectState,
        positions: dict[Subject, CausalContext],
        actor: str,
        reach: Callable[[], frozenset[Subject]],
        load: Callable[[Subject], SubjectState],
    ) -> list[Subject]:
        """As ``require``, for a read of the group ``state`` is of, whose reply carries its
        roll-up: the token's positions of the group and of the subjects ``reach`` returns (its
        members and, for an organization, its teams' users, as this node's roll-up has them,
        asked once the group's own position is merged) must be covered by their states
        (``load``). Positions of any other subject are ignored (another tenant's among them: it
        is never a member, and nothing of it is read), and a token naming none of these
        subjects is InvalidArgument as in ``require``. Returns the subjects whose positions it
        checked, group first."""
        group = state.subject
        checked = []
        if group in positions:
            self.covers(state, positions[group], actor)
            checked.append(group)
        others = sorted(s for s in positions if s != group and s.tenant == group.tenant)
        if others:
            members = reach()
            for subject in others:
                if subject in members:
                    self.covers(load(subject), positions[subject], actor)
                    checked.append(subject)
        if not checked:
            raise other_subject(group, positions, group_read=True)
        return checked

    def covers(self, state: SubjectState, position: CausalContext, actor: str) -> None:
        """Returns if ``state`` covers ``position``, else as ``require`` says."""
        subject = state.subject
        lacking = missing(state, position)
        if lacking is None:
            return
        why = implausible(state, position, actor=actor, members=self.members, lead=self.lead)
        name, counter, held = lacking
        if why is not None:
            metrics.HANDOFF_REFUSED.labels("implausible").inc()
            raise InvalidArgument(
                "at_least",
                f"{why}: no node has issued that position",
                reason=Reason.HANDOFF_POSITION_IMPLAUSIBLE,
                metadata={
                    "subject": subject,
                    "actor": name,
                    "counter": counter,
                    "held": held,
                    "setting": "max_handoff_lead",
                },
            )
        raise HandoffPending(
            f"node {self.node} has not yet merged the handoff token's position for {subject} "
            f"(dot {name}:{counter}; it holds up to {held}); ask again shortly, or read on "
            "the writer's node",
            metadata={"subject": subject, "actor": name, "counter": counter, "held": held},
            retry_after_s=self.deliveries.retry_after_s(name),
        )


def other_subject(
    subject: Subject, positions: dict[Subject, CausalContext], *, group_read: bool = False
) -> InvalidArgument:
    """The refusal of a token that names no subject a read of ``subject`` waits for (told from
    the token alone: nothing of the subjects it names is read)."""
    named = sorted(positions)
    listed = ", ".join(str(s) for s in named[:3]) + (", ..." if len(named) > 3 else "")
    whose = (
        f"{subject} or of a member of it on this node (a member added elsewhere counts once "
        f"this node has merged the add: pass a token that also names {subject})"
        if group_read
        else str(subject)
    )
    return InvalidArgument(
        "at_least",
        f"is a handoff token of {listed}, not of {whose}: pass a token that a write "
        f"or read of {subject} returned",
        reason=Reason.HANDOFF_TOKEN_OTHER_SUBJECT,
        metadata={"subject": subject, "token_subjects": listed},
    )


__all__ = [
    "DEFAULT_LEAD",
    "DeliveryDelays",
    "Handoffs",
    "Missing",
    "implausible",
    "missing",
    "node_of",
    "other_subject",
]
