"""Handoff waits: which positions a node agrees to wait for, and how many waits it holds.

A read with ``at_least`` waits until the node has merged the token's position. grpcio's
threaded server answers a unary call on the thread that runs it, so a waiting read holds that
thread until it is answered: waits are therefore bounded in time (``max_handoff_wait_s``), in
number per node and per principal (``WaitSlots``), and a position no node can have issued is
refused at once (``implausible``) instead of being waited on.

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

import threading
from collections.abc import Callable, Iterable

from node.errors import ResourceExhausted
from sync.causal import CausalContext
from sync.crdt import SubjectState

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


class WaitSlots:
    """How many handoff waits a node holds at once: at most ``per_node``, of which at most
    ``per_principal`` for one principal. ``acquire`` never blocks: over a bound it refuses."""

    def __init__(self, node: str, per_node: int, per_principal: int) -> None:
        self.node = node
        self.per_node = per_node
        self.per_principal = per_principal
        self._held: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._total

    def acquire(self, holder: str) -> Callable[[], None]:
        """Takes a slot for ``holder`` or raises ResourceExhausted; returns its release."""
        with self._lock:
            mine = self._held.get(holder, 0)
            if mine >= self.per_principal:
                raise ResourceExhausted(
                    f"{holder} already holds {mine} handoff waits on node {self.node}, the most "
                    f"one principal may (setting max_handoff_waits_per_principal = "
                    f"{self.per_principal}); retry once one is answered"
                )
            if self._total >= self.per_node:
                raise ResourceExhausted(
                    f"node {self.node} already holds {self._total} handoff waits, its most "
                    f"(setting max_handoff_waits = {self.per_node}); retry shortly, or read "
                    "on the writer's node"
                )
            self._held[holder] = mine + 1
            self._total += 1

        def release() -> None:
            with self._lock:
                left = self._held[holder] - 1
                if left:
                    self._held[holder] = left
                else:
                    del self._held[holder]
                self._total -= 1

        return release


__all__ = ["DEFAULT_LEAD", "WaitSlots", "implausible", "node_of"]
