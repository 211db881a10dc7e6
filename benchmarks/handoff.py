#!/usr/bin/env python3
"""Handoff: how much of a user's context survives a chain of agent handoffs, by strategy.

What runs (loopback only, data in a temporary directory removed afterwards):

- a ``tests.harness.LocalCluster`` of ``--nodes`` real node processes (default 3);
- ``--journeys`` scripted user journeys (default 20). A journey is a chain of ``--handoffs``
  handoffs (default 8) between agents, agent *i* on node *i mod nodes*: each agent, in its
  stint, learns some facts about the user (``--facts`` per journey, default 24, spread over the
  stints before the last handoff) and updates some learned earlier by other agents
  (``--update-share``, default 0.25, of the facts: a new value, stated with more confidence);
  then it hands the user to the next agent;
- after each handoff the receiving agent answers, for every fact learned so far, what it
  believes the fact's value is, from what its strategy gives it:

  - ``selfmodel+token``: a read of the user's model on its own node with the sender's handoff
    token (``at_least``);
  - ``selfmodel``: the same read issued at once, without the token (eventual);
  - ``transcript``: the conversation so far, truncated to its last ``--window`` tokens (whole
    turns);
  - ``summary``: the sender's ``--summary-k`` most recently mentioned facts (its own summary of
    what it was given and learned);
  - ``none``: nothing.

  A fact is *retained* when the agent has any value for it, *current* when that value is the
  fact's latest. The conversation is simulated: each stint has ``--filler-turns`` turns of
  ``--turn-tokens`` tokens (default 6 x 60) besides one turn of ``--fact-tokens`` tokens
  (default 20) per fact learned or updated. No language model is involved: the transcript and
  summary rules above are the whole loss model, stated so it can be changed.

It prints, per strategy, the share of facts retained and current after handoffs 1, 4 and 8 (or
``--report-at``), and the time a handoff read takes (the self-model strategies; the others cost
no call, only the tokens they put in the receiving agent's prompt). Exit code 1 when the
self-model with the handoff token did not retain every fact with its current value.

    python -m benchmarks.handoff                       # 3 nodes, 20 journeys, ~20 s
    python -m benchmarks.handoff --journeys 5 --window 1000 --summary-k 4 --seed 7
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from federation.client import SelfModelView, user
from tests.harness import LocalCluster, node_sync_defaults, start_with_fresh_ports

STRATEGIES = ("selfmodel+token", "selfmodel", "transcript", "summary", "none")
CONTEXTS = (
    "purchase_motivation",
    "communication_style",
    "budget",
    "team",
    "product_usage",
    "support_history",
)
TENANT = "handoff"


# -- the journey ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Statement:
    """One fact stated at one version: what an agent learns and writes."""

    fact: int
    version: int
    confidence: float

    @property
    def slot(self) -> tuple[str, str]:
        return CONTEXTS[self.fact % len(CONTEXTS)], f"fact_{self.fact}"

    @property
    def value(self) -> str:
        return f"value {self.version} of fact {self.fact}"


@dataclass(frozen=True, slots=True)
class Journey:
    user: str
    stints: tuple[tuple[Statement, ...], ...]  # what agent i learns; len = handoffs + 1


def plan(index: int, args: argparse.Namespace, rng: random.Random) -> Journey:
    """Facts introduced over the stints before the last handoff, round robin after a shuffle,
    so every such stint learns at least one; updates in a later stint than the fact's last."""
    talking = args.handoffs  # stints 0 .. handoffs-1 learn; the last agent only receives
    stints: list[list[Statement]] = [[] for _ in range(args.handoffs + 1)]
    order = list(range(args.facts))
    rng.shuffle(order)
    introduced = {}
    for n, fact in enumerate(order):
        stint = n % talking
        stints[stint].append(Statement(fact, 0, 0.8))
        introduced[fact] = stint
    for fact in rng.sample(range(args.facts), round(args.facts * args.update_share)):
        if introduced[fact] + 1 < talking:
            stint = rng.randrange(introduced[fact] + 1, talking)
            stints[stint].append(Statement(fact, 1, 0.9))
    return Journey(f"journey-{index}", tuple(tuple(s) for s in stints))


# -- what each strategy hands over ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    tokens: int
    statement: Statement | None = None


def truncated(turns: Sequence[Turn], window: int) -> list[Turn]:
    """The last whole turns that fit in ``window`` tokens."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        if used + turn.tokens > window:
            break
        kept.append(turn)
        used += turn.tokens
    return kept[::-1]


def known_from_turns(turns: Sequence[Turn]) -> dict[int, int]:
    """fact -> the latest version mentioned."""
    known: dict[int, int] = {}
    for turn in turns:
        if turn.statement is not None:
            known[turn.statement.fact] = turn.statement.version
    return known


def summary(known: dict[int, int], recency: dict[int, int], k: int) -> dict[int, int]:
    """The ``k`` facts of ``known`` mentioned most recently, as the sender restates them."""
    chosen = sorted(known, key=lambda f: recency[f], reverse=True)[:k]
    return {f: known[f] for f in chosen}


def known_from_model(model: SelfModelView, facts: Sequence[int]) -> dict[int, int]:
    known = {}
    for fact in facts:
        context, key = Statement(fact, 0, 0).slot
        belief = model.belief(context, key)
        if belief is not None:
            known[fact] = int(belief.statement.split()[1])
    return known


# -- the run --------------------------------------------------------------------------------


@dataclass
class Tally:
    retained: int = 0
    current: int = 0
    asked: int = 0

    def add(self, known: dict[int, int], truth: dict[int, int]) -> None:
        self.asked += len(truth)
        self.retained += sum(1 for f in truth if f in known)
        self.current += sum(1 for f, v in truth.items() if known.get(f) == v)


@dataclass
class Report:
    args: dict[str, object]
    # strategy -> handoff number -> tally
    tallies: dict[str, dict[int, Tally]] = field(default_factory=dict)
    read_ms: dict[str, list[float]] = field(default_factory=dict)
    prompt_tokens: dict[str, list[int]] = field(default_factory=dict)

    def tally(self, strategy: str, handoff: int) -> Tally:
        return self.tallies.setdefault(strategy, {}).setdefault(handoff, Tally())

    @property
    def token_strategy_whole(self) -> bool:
        return all(
            t.retained == t.asked and t.current == t.asked
            for t in self.tallies["selfmodel+token"].values()
        )


def run_journey(
    journey: Journey, cluster: LocalCluster, nodes: Sequence[str], args: argparse.Namespace
) -> Report:
    report = Report({})
    clients = [
        cluster.client(nodes[i % len(nodes)], agent=f"agent-{i}", tenant=TENANT)
        for i in range(len(journey.stints))
    ]
    try:
        subject = user(journey.user)
        transcript: list[Turn] = []
        truth: dict[int, int] = {}
        summary_known: dict[int, int] = {}  # what the current agent got by summary, plus learned
        recency: dict[int, int] = {}
        token = ""
        clock = 0
        for i, learned in enumerate(journey.stints[:-1]):
            for st in learned:
                context, key = st.slot
                written = clients[i].observe(
                    subject, st.value, confidence=st.confidence, context=context, key=key
                )
                token = written.token
                truth[st.fact] = st.version
                transcript.append(Turn(args.fact_tokens, st))
                summary_known[st.fact] = st.version
                clock += 1
                recency[st.fact] = clock
            transcript += [Turn(args.turn_tokens)] * args.filler_turns
            handoff = i + 1
            receiver = clients[handoff]
            facts = sorted(truth)

            # Both reads at once after the write's acknowledgement; which goes first alternates,
            # so neither is always the one that warms the node's cache.
            reads = [("selfmodel", None), ("selfmodel+token", token)]
            models = {}
            for strategy, at_least in reads if handoff % 2 else reads[::-1]:
                started = time.perf_counter()
                models[strategy] = receiver.self_model(subject, at_least=at_least)
                report.read_ms.setdefault(strategy, []).append(
                    (time.perf_counter() - started) * 1000
                )
            window = truncated(transcript, args.window)
            handed = summary(summary_known, recency, args.summary_k)
            summary_known = dict(handed)  # the receiver knows only the summary, then learns
            report.prompt_tokens.setdefault("transcript", []).append(sum(t.tokens for t in window))
            report.prompt_tokens.setdefault("summary", []).append(len(handed) * args.fact_tokens)
            for strategy, known in (
                ("selfmodel+token", known_from_model(models["selfmodel+token"], facts)),
                ("selfmodel", known_from_model(models["selfmodel"], facts)),
                ("transcript", known_from_turns(window)),
                ("summary", handed),
                ("none", {}),
            ):
                report.tally(strategy, handoff).add(known, truth)
    finally:
        for c in clients:
            c.close()
    return report


def run(args: argparse.Namespace) -> Report:
    rng = random.Random(args.seed)
    journeys = [plan(i, args, rng) for i in range(args.journeys)]
    nodes = [f"n{i + 1}" for i in range(args.nodes)]
    total = Report({k: v for k, v in vars(args).items() if k not in ("json", "data")})
    with tempfile.TemporaryDirectory(prefix="selfmodel-handoff-", dir=args.data) as tmp:

        def make(attempt: int) -> LocalCluster:
            return LocalCluster(  # as deployed: the node's sync defaults
                Path(tmp) / f"cluster-{attempt}",
                nodes,
                proxies=False,
                fsync=True,
                sync=node_sync_defaults(),
            )

        cluster = start_with_fresh_ports(make)
        try:
            for n, journey in enumerate(journeys, 1):
                part = run_journey(journey, cluster, nodes, args)
                for strategy, by_handoff in part.tallies.items():
                    for handoff, t in by_handoff.items():
                        mine = total.tally(strategy, handoff)
                        mine.retained += t.retained
                        mine.current += t.current
                        mine.asked += t.asked
                for k, v in part.read_ms.items():
                    total.read_ms.setdefault(k, []).extend(v)
                for k, w in part.prompt_tokens.items():
                    total.prompt_tokens.setdefault(k, []).extend(w)
                if not args.quiet:
                    print(f"\r  journeys {n}/{len(journeys)}", end="", flush=True)
            if not args.quiet:
                print()
        finally:
            cluster.stop()
    return total


# -- output ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def render(report: Report, args: argparse.Namespace) -> str:
    at = [h for h in args.report_at if h <= args.handoffs]
    head = "| strategy | " + " | ".join(f"retained / current after {h}" for h in at)
    head += " | handoff cost |"
    lines = [head, "|---|" + "---|" * (len(at) + 1)]
    for strategy in STRATEGIES:
        cells = []
        for h in at:
            t = report.tally(strategy, h)
            cells.append(f"{t.retained / t.asked:.0%} / {t.current / t.asked:.0%}")
        if strategy in report.read_ms:
            ms = report.read_ms[strategy]
            cost = f"read p50 {percentile(ms, 0.5):.2f} ms, p99 {percentile(ms, 0.99):.2f} ms"
        elif strategy in report.prompt_tokens:
            tokens = report.prompt_tokens[strategy]
            cost = f"{sum(tokens) / len(tokens):.0f} prompt tokens per handoff"
        else:
            cost = "none"
        lines.append(f"| {strategy} | " + " | ".join(cells) + f" | {cost} |")
    lines += [
        "",
        f"{args.journeys} journeys of {args.handoffs} handoffs across {args.nodes} nodes, "
        f"{args.facts} facts each ({args.update_share:.0%} updated later), seed {args.seed}; "
        f"transcript window {args.window} tokens ({args.filler_turns} filler turns of "
        f"{args.turn_tokens} tokens per stint, {args.fact_tokens} tokens per fact turn); "
        f"summary of the {args.summary_k} most recent facts.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--journeys", type=int, default=20)
    p.add_argument("--handoffs", type=int, default=8)
    p.add_argument("--facts", type=int, default=24, help="facts learned per journey")
    p.add_argument("--update-share", type=float, default=0.25)
    p.add_argument("--window", type=int, default=2000, help="transcript window, tokens")
    p.add_argument("--turn-tokens", type=int, default=60)
    p.add_argument("--fact-tokens", type=int, default=20)
    p.add_argument("--filler-turns", type=int, default=6)
    p.add_argument("--summary-k", type=int, default=8)
    p.add_argument("--report-at", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8])
    p.add_argument("--seed", type=int, default=20261204)
    p.add_argument("--data", type=Path, default=None, help="parent folder for the data")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.nodes < 1 or args.handoffs < 1 or args.facts < args.handoffs:
        p.error("--nodes and --handoffs must be positive and --facts at least --handoffs")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(render(report, args))
    if args.json is not None:
        figures = {s: {h: vars(t) for h, t in by.items()} for s, by in report.tallies.items()}
        args.json.write_text(
            json.dumps(
                {"args": report.args, "tallies": figures, "read_ms": report.read_ms}, indent=1
            )
        )
    return 0 if report.token_strategy_whole else 1


if __name__ == "__main__":
    sys.exit(main())
