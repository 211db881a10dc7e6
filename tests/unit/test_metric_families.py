"""node.metrics.Family: the families counted per call export what prometheus_client's would."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from node.metrics import Family

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)
LABELS = ("method", "code")
label_values = st.tuples(st.sampled_from(["Observe", "GetSelfModel"]), st.sampled_from(["OK", "X"]))
counter_ops = st.lists(
    st.tuples(label_values, st.floats(min_value=0, max_value=1e6, allow_nan=False)), max_size=40
)
timing_ops = st.lists(
    st.tuples(
        label_values,
        # bounds themselves included: a value on a bound falls in that bound's bucket
        st.one_of(st.sampled_from(BUCKETS), st.floats(-5, 100, allow_nan=False)),
    ),
    max_size=40,
)


def exposition(registry: CollectorRegistry) -> tuple[list[str], list[str]]:
    """The text format's lines, without and then only the ``_created`` series (whose values,
    creation times, differ between any two registries)."""
    lines = generate_latest(registry).decode().splitlines()
    created = [line.split(" ")[0] for line in lines if "_created" in line.split(" ")[0]]
    return [line for line in lines if "_created" not in line.split(" ")[0]], created


@given(counter_ops)
def test_a_counter_family_exports_what_a_prometheus_client_counter_does(ops):
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Counter("calls_total", "Calls.", LABELS, registry=theirs_registry)
    ours = Family("calls_total", "Calls.", LABELS, registry=ours_registry)
    for values, amount in ops:
        theirs.labels(*values).inc(amount)
        ours.counter(*values).inc(amount)
    assert exposition(ours_registry) == exposition(theirs_registry)


@given(timing_ops)
def test_a_histogram_family_exports_what_a_prometheus_client_histogram_does(ops):
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Histogram("took_seconds", "Took.", LABELS, buckets=BUCKETS, registry=theirs_registry)
    ours = Family("took_seconds", "Took.", LABELS, buckets=BUCKETS, registry=ours_registry)
    for values, amount in ops:
        theirs.labels(*values).observe(amount)
        ours.timing(*values).observe(amount)
    assert exposition(ours_registry) == exposition(theirs_registry)


def test_an_unlabelled_family_and_the_registry_lookup():
    registry = CollectorRegistry()
    commits = Family("commits_total", "Commits.", registry=registry).counter()
    took = Family("commit_seconds", "Took.", buckets=BUCKETS, registry=registry).timing()
    commits.inc()
    commits.inc(2)
    took.observe(0.005)
    assert registry.get_sample_value("commits_total") == 3
    assert registry.get_sample_value("commit_seconds_bucket", {"le": "0.001"}) == 0
    assert registry.get_sample_value("commit_seconds_bucket", {"le": "0.01"}) == 1
    assert registry.get_sample_value("commit_seconds_bucket", {"le": "+Inf"}) == 1
    assert registry.get_sample_value("commit_seconds_count") == 1
    assert registry.get_sample_value("commit_seconds_sum") == 0.005


def test_concurrent_increments_are_all_counted():
    registry = CollectorRegistry()
    family = Family("calls_total", "Calls.", ["method"], registry=registry)
    timing = Family("took_seconds", "Took.", ["method"], buckets=BUCKETS, registry=registry)
    threads, per_thread = 8, 5_000

    def work() -> None:
        calls, took = family.counter("Observe"), timing.timing("Observe")
        for _ in range(per_thread):
            calls.inc()
            took.observe(0.5)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert registry.get_sample_value("calls_total", {"method": "Observe"}) == threads * per_thread
    count = registry.get_sample_value("took_seconds_count", {"method": "Observe"})
    assert count == threads * per_thread


def test_misuse_is_refused():
    registry = CollectorRegistry()
    calls = Family("calls_total", "Calls.", ["method"], registry=registry)
    took = Family("took_seconds", "Took.", buckets=BUCKETS, registry=registry)
    with pytest.raises(ValueError, match="only go up"):
        calls.counter("Observe").inc(-1)
    with pytest.raises(ValueError, match="takes labels"):
        calls.counter("Observe", "extra")
    with pytest.raises(TypeError, match="is a counter"):
        calls.timing("Observe")
    with pytest.raises(TypeError, match="is a histogram"):
        took.counter()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Family("calls_total", "Again.", ["method"], registry=registry)
    assert registry.get_sample_value("calls_total", {"method": "Observe"}) == 0, "nothing counted"
