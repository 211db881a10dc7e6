"""Dots and causal contexts: compact, so the same dots always make the same context."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.causal import CausalContext, Dot
from tests.unit.strategies import VALUES, shuffles

# Few actors and small counters, so contexts overlap, fill gaps and compact often.
small_dots = st.builds(Dot, st.sampled_from(["a.1", "b.1", "c.2"]), st.integers(1, 12))
dot_lists = st.lists(small_dots, max_size=20)


@st.composite
def built_contexts(draw: st.DrawFn) -> CausalContext:
    """A context built the ways the system builds them: from dots and by joining contexts."""
    parts = draw(st.lists(dot_lists, min_size=1, max_size=3))
    ctx = CausalContext()
    for part in parts:
        ctx = ctx.join(CausalContext.of(part))
    return ctx


def _dots(ctx: CausalContext) -> set[Dot]:
    """Every dot a context holds, spelled out."""
    return {Dot(a, c) for a, n in ctx.vector.items() for c in range(1, n + 1)} | set(ctx.cloud)


def _is_compact(ctx: CausalContext) -> bool:
    return all(n > 0 for n in ctx.vector.values()) and all(
        d.counter > ctx.vector.get(d.actor, 0) + 1 for d in ctx.cloud
    )


@VALUES
@given(dots=dot_lists, rnd=shuffles)
def test_same_dots_make_equal_contexts_whatever_the_construction_order(
    dots: list[Dot], rnd: random.Random
) -> None:
    shuffled = list(dots)
    rnd.shuffle(shuffled)
    one_by_one = CausalContext()
    for dot in shuffled:
        one_by_one = one_by_one.join(CausalContext.of([dot]))
    halves = CausalContext.of(shuffled[: len(shuffled) // 2]).join(
        CausalContext.of(shuffled[len(shuffled) // 2 :])
    )
    ctx = CausalContext.of(dots)
    assert ctx == CausalContext.of(shuffled) == one_by_one == halves
    assert _dots(ctx) == set(dots)
    assert _is_compact(ctx)


@VALUES
@given(dots=dot_lists)
def test_contains_is_exactly_the_dots_given(dots: list[Dot]) -> None:
    ctx = CausalContext.of(dots)
    for actor in ("a.1", "b.1", "c.2", "z.9"):
        for counter in range(1, 14):
            assert (Dot(actor, counter) in ctx) == (Dot(actor, counter) in dots)
    assert "a.1:1" not in ctx
    assert ctx.max_counter("z.9") == 0
    for actor in ("a.1", "b.1", "c.2"):
        assert ctx.max_counter(actor) == max(
            (d.counter for d in dots if d.actor == actor), default=0
        )


def test_compaction_folds_contiguous_dots_into_the_vector() -> None:
    ctx = CausalContext.of([Dot("a.1", 3), Dot("a.1", 1), Dot("a.1", 2), Dot("a.1", 5)])
    assert ctx.vector == {"a.1": 3}
    assert ctx.cloud == frozenset({Dot("a.1", 5)})
    filled = ctx.join(CausalContext.of([Dot("a.1", 4)]))
    assert filled == CausalContext({"a.1": 5})
    assert filled.cloud == frozenset()


def test_a_gap_keeps_dots_in_the_cloud() -> None:
    ctx = CausalContext.of([Dot("b.1", 2), Dot("b.1", 3)])
    assert ctx.vector == {}
    assert Dot("b.1", 1) not in ctx
    assert ctx.max_counter("b.1") == 3
    assert not ctx.is_empty()
    assert CausalContext().is_empty()
    assert CausalContext.of([]).is_empty()


@VALUES
@given(a=built_contexts(), b=built_contexts(), c=built_contexts())
def test_join_is_a_union_commutative_associative_and_idempotent(
    a: CausalContext, b: CausalContext, c: CausalContext
) -> None:
    assert _dots(a.join(b)) == _dots(a) | _dots(b)
    assert a.join(b) == b.join(a)
    assert a.join(b).join(c) == a.join(b.join(c))
    assert a.join(a) == a
    assert a.join(CausalContext()) == a == CausalContext().join(a)
    assert _is_compact(a.join(b))


@VALUES
@given(ctx=built_contexts(), dot=small_dots)
def test_adding_a_dot_is_joining_the_context_of_that_dot(ctx: CausalContext, dot: Dot) -> None:
    added = ctx.add(dot)
    assert added == ctx.join(CausalContext.of([dot]))
    assert _dots(added) == _dots(ctx) | {dot}
    assert _is_compact(added)


@VALUES
@given(a=built_contexts(), b=built_contexts())
def test_includes_is_the_subset_relation(a: CausalContext, b: CausalContext) -> None:
    assert a.includes(b) == (_dots(b) <= _dots(a))
    assert a.join(b).includes(a) and a.join(b).includes(b)
    assert a.includes(a)
    assert a.includes(CausalContext())
    # Mutual inclusion is equality: the representation is canonical.
    assert (a.includes(b) and b.includes(a)) == (a == b)


def test_includes_checks_the_dots_beyond_a_shorter_vector() -> None:
    gappy = CausalContext.of([Dot("a.1", 1), Dot("a.1", 3)])
    assert not gappy.includes(CausalContext({"a.1": 3}))
    assert gappy.join(CausalContext.of([Dot("a.1", 2)])).includes(CausalContext({"a.1": 3}))
    assert CausalContext({"a.1": 3}).includes(gappy)
    assert not CausalContext({"a.1": 3}).includes(CausalContext.of([Dot("a.1", 4)]))


@pytest.mark.parametrize("dot", [Dot("a.1", 7), Dot("node:with:colons.3", 12), Dot("x", 0)])
def test_a_dot_parses_back_from_its_text(dot: Dot) -> None:
    assert Dot.parse(str(dot)) == dot


@pytest.mark.parametrize("text", ["", "a.1", "a.1:", ":3", "a.1:-3", "a.1:x"])
def test_a_malformed_dot_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a dot"):
        Dot.parse(text)
