"""Reply sizes and the Python views on a real node: watches and batch reads take
``max_positions`` as GetSelfModel does, and a view carries every factor the reply does."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import grpc
import pytest

from federation.client import Client, SelfModelView, user
from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from sync.observation import Evidence
from tests.nodes import NodeProcess

TENANT = "acme"
WAIT_S = 15.0
SUBJECTS = [user("u-sized"), user("u-other")]
AGENTS = ("sales_agent", "support_agent", "billing_agent")


def counts_only(view: SelfModelView) -> SelfModelView:
    """``view`` as a summary read shows it: every belief without its lists, counts kept."""
    beliefs = tuple(dataclasses.replace(b, supporters=(), dissenters=()) for b in view.all_beliefs)
    return dataclasses.replace(view, all_beliefs=beliefs)


@pytest.fixture
def node(start_node: Callable[..., NodeProcess]) -> Iterator[NodeProcess]:
    process = start_node("sales")
    for i, agent in enumerate(AGENTS):
        with Client(process.address, agent=agent, tenant=TENANT) as client:
            for subject in SUBJECTS:
                client.observe(
                    subject,
                    "10 people" if i < 2 else "25 people",
                    confidence=0.82 - 0.1 * i,
                    context="company",
                    key="team_size",
                    evidence=[Evidence("ticket", f"t://{i}", "we are ten")] if i == 1 else (),
                )
                if i == 0:  # one supporter: 0.6 x 0.9 = 0.54, below a reader's 0.7
                    client.observe(subject, "Prefers email", confidence=0.6, context="style")
    yield process


def first_of_watch(client: Client, max_positions: int | None) -> SelfModelView:
    stream = client.watch(SUBJECTS[0], timeout_s=WAIT_S, max_positions=max_positions)
    try:
        return next(iter(stream))
    finally:
        stream.close()  # type: ignore[attr-defined]


def test_a_watch_and_a_batch_read_with_max_positions_carry_counts_and_no_lists(
    node: NodeProcess,
) -> None:
    with Client(node.address, agent="reader", tenant=TENANT) as client:
        full = client.self_model(SUBJECTS[0])
        assert any(b.supporter_count == 2 and b.dissenter_count == 1 for b in full.all_beliefs)

        summary = first_of_watch(client, 0)
        assert all(not b.supporters and not b.dissenters for b in summary.all_beliefs)
        assert summary == counts_only(full)
        assert first_of_watch(client, None) == full
        top = first_of_watch(client, 1)
        assert [(b.supporters, b.dissenters) for b in top.all_beliefs] == [
            (b.supporters[:1], b.dissenters[:1]) for b in full.all_beliefs
        ]

        singles = [client.self_model(s) for s in SUBJECTS]
        models, _ = client.self_models(SUBJECTS, max_positions=0)
        assert models == [counts_only(m) for m in singles]
        assert all(b.supporter_count for m in models for b in m.all_beliefs)
        whole, _ = client.self_models(SUBJECTS)
        assert whole == singles


def test_a_view_carries_each_positions_factors_and_what_the_read_left_out(
    node: NodeProcess,
) -> None:
    with (
        Client(node.address, agent="reader", tenant=TENANT) as client,
        grpc.insecure_channel(node.address) as channel,
    ):
        view = client.self_model(SUBJECTS[0], min_confidence=0.7)
        request = selfmodel_pb2.GetSelfModelRequest(min_confidence=0.7)
        request.subject.CopyFrom(
            model_pb2.Subject(tenant=TENANT, kind=model_pb2.SUBJECT_KIND_USER, id="u-sized")
        )
        stub = selfmodel_pb2_grpc.SelfModelServiceStub(channel)
        raw = stub.GetSelfModel(request, metadata=(("x-agent-id", "reader"),)).snapshot

        assert view.uncertain_omitted == raw.uncertain_omitted
        assert view.below_min_confidence_omitted == raw.below_min_confidence_omitted == 1
        assert view.context_min_confidence == dict(raw.context_min_confidence)
        assert set(view.context_min_confidence) == {"company", "style"}
        (belief,) = view.all_beliefs
        (proto,) = raw.beliefs
        for mine, theirs in [
            *zip(belief.supporters, proto.supporters, strict=True),
            *zip(belief.dissenters, proto.dissenters, strict=True),
        ]:
            assert (
                mine.source,
                mine.confidence,
                mine.weight,
                mine.reliability,
                mine.recency,
                mine.evidence_factor,
                mine.counted,
            ) == (
                theirs.source,
                theirs.confidence,
                theirs.weight,
                theirs.reliability,
                theirs.recency,
                theirs.evidence_factor,
                theirs.counted,
            )
        # Why 0.82 became 0.738: no evidence, so 0.9 of it (the default evidence discount).
        first = next(s for s in belief.supporters if s.source == "sales_agent")
        assert (first.confidence, first.evidence_factor) == (0.82, pytest.approx(0.9))
        assert first.weight == pytest.approx(0.82 * 0.9 * first.recency * first.reliability)
        cited = next(s for s in belief.supporters if s.source == "support_agent")
        assert cited.evidence_factor == pytest.approx(0.95)
        assert all(s.counted for s in belief.supporters)
