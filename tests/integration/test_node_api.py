"""The agent API of one real node process, through the client library (sync and asyncio)."""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from federation.client import AsyncClient, Client, SelfModelView, user
from node.errors import (
    HandoffPending,
    HandoffTimeout,
    InvalidArgument,
    PermissionDenied,
    SelfModelError,
    Unavailable,
)
from selfmodel.v1 import model_pb2, selfmodel_pb2
from sync.causal import CausalContext
from sync.codec import decode_token, encode_token
from sync.observation import Evidence
from tests.nodes import free_port

TENANT = "acme"
WAIT_S = 5.0


def statements(view: SelfModelView) -> set[str]:
    return {b.statement for b in view.all_beliefs}


def test_watch_yields_the_current_model_then_a_change_written_by_another_client(start_node):
    node = start_node()
    subject = user("u-watch")
    with (
        Client(node.address, agent="sales_agent", tenant=TENANT) as sales,
        Client(node.address, agent="support_agent", tenant=TENANT) as support,
    ):
        sales.observe(subject, "Prefers email", confidence=0.8, context="communication_style")
        views: queue.Queue[SelfModelView | BaseException] = queue.Queue()

        def consume() -> None:
            try:
                # The stream's own deadline bounds this thread even if no change ever arrives.
                for n, view in enumerate(support.watch(subject, timeout_s=15.0)):
                    views.put(view)
                    if "Works late" in statements(view) or n >= 10:
                        return
            except BaseException as exc:
                views.put(exc)

        watcher = threading.Thread(target=consume, daemon=True)
        watcher.start()
        first = views.get(timeout=WAIT_S)
        if isinstance(first, BaseException):
            raise first
        assert statements(first) == {"Prefers email"}, "watch must start with the current model"

        sales.observe(subject, "Works late", confidence=0.7, context="schedule")
        deadline = time.monotonic() + WAIT_S
        seen: list[SelfModelView] = []
        while not seen or "Works late" not in statements(seen[-1]):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no pushed change within {WAIT_S}s; got {seen}"
            item = views.get(timeout=remaining)
            if isinstance(item, BaseException):
                raise item
            seen.append(item)
        assert statements(seen[-1]) == {"Prefers email", "Works late"}
        [late] = seen[-1].beliefs(context="schedule")
        assert [s.source for s in late.supporters] == ["sales_agent"]
        watcher.join(WAIT_S)
        assert not watcher.is_alive()


def test_explain_names_every_source_with_its_weight_factors_and_why_the_winner_won(start_node):
    node = start_node()
    subject = user("u-explain")
    slot = {"context": "company", "key": "team_size"}
    ticket = Evidence("ticket", "zendesk://4411", "we are twelve people now")
    with (
        Client(node.address, agent="sales_agent", tenant=TENANT) as sales,
        Client(node.address, agent="support_agent", tenant=TENANT) as support,
        Client(node.address, agent="billing_agent", tenant=TENANT) as billing,
    ):
        sales.observe(subject, "Team of 5", confidence=0.6, **slot)
        support.observe(subject, "Team of 12", confidence=0.9, evidence=[ticket], **slot)
        billing.observe(subject, "Team of 12", confidence=0.7, **slot)
        explanation = sales.explain(subject, "company", "team_size")

    assert explanation.policy == model_pb2.POLICY_WEIGHTED
    assert explanation.belief.statement == "Team of 12"
    by_source = {o.source: o for o in explanation.observations}
    assert set(by_source) == {"sales_agent", "support_agent", "billing_agent"}
    for o in explanation.observations:
        assert o.observation_id.startswith(f"{node.name}.")
        assert o.origin_node == node.name
        assert o.observed_at.seconds > 0
        assert o.reliability == 1.0
        assert 0.99 < o.recency <= 1.0
        assert 0.0 < o.evidence_factor <= 1.0
        product = o.confidence * o.reliability * o.recency * o.evidence_factor
        assert o.weight == pytest.approx(product, rel=1e-9)
        assert not o.below_minimum
    assert by_source["support_agent"].evidence_factor > by_source["sales_agent"].evidence_factor
    [ev] = by_source["support_agent"].evidence
    assert (ev.kind, ev.ref, ev.quote) == (
        model_pb2.EVIDENCE_KIND_TICKET,
        "zendesk://4411",
        "we are twelve people now",
    )

    assert [c.statement for c in explanation.candidates] == ["Team of 12", "Team of 5"]
    assert list(explanation.candidates[0].sources) == ["billing_agent", "support_agent"]
    assert explanation.candidates[0].support > explanation.candidates[1].support
    assert "Team of 12" in explanation.reason and "Team of 5" in explanation.reason


def test_retract_withdraws_only_the_callers_own_observation(start_node):
    node = start_node()
    subject = user("u-retract")
    slot = ("communication_style", "channel")
    with (
        Client(node.address, agent="agent_a", tenant=TENANT) as a,
        Client(node.address, agent="agent_b", tenant=TENANT) as b,
    ):
        a.observe(subject, "Prefers phone", confidence=0.7, context=slot[0], key=slot[1])
        b.observe(subject, "Prefers email", confidence=0.8, context=slot[0], key=slot[1])

        retracted = a.retract(subject, *slot)
        assert retracted.count == 1
        remaining = b.explain(subject, *slot, at_least=retracted.token)
        assert [o.source for o in remaining.observations] == ["agent_b"]
        belief = b.self_model(subject).belief(*slot)
        assert belief is not None and belief.statement == "Prefers email"
        assert belief.dissenters == ()

        with pytest.raises(PermissionDenied) as denied:
            a.retract(subject, *slot, source="agent_b")
        assert "agent_b" in str(denied.value)
        assert [o.source for o in b.explain(subject, *slot).observations] == ["agent_b"]
        assert a.retract(subject, *slot).count == 0, "nothing of agent_a's is left to retract"


def test_seed_scenario_newer_confident_evidenced_belief_wins_and_the_loser_dissents(start_node):
    node = start_node()
    subject = user("u-42")
    with (
        Client(node.address, agent="sales_agent", tenant=TENANT) as sales,
        Client(node.address, agent="support_agent", tenant=TENANT) as support,
    ):
        sales.observe(
            subject,
            "Evaluating for a team of 5",
            confidence=0.55,
            context="purchase_motivation",
            key="team_size",
        )
        newer = support.observe(
            subject,
            "Rolling out to a team of 40",
            confidence=0.85,
            context="purchase_motivation",
            key="team_size",
            evidence=[Evidence("call", "gong://call/77", "we need 40 seats by March")],
        )
        weak = support.observe(
            subject, "Might churn next quarter", confidence=0.3, context="churn_risk"
        )

        model = sales.self_model(subject, at_least=weak.token)
        belief = model.belief("purchase_motivation", "team_size")
        assert belief is not None
        assert belief.statement == "Rolling out to a team of 40"
        assert not belief.uncertain
        assert [s.source for s in belief.supporters] == ["support_agent"]
        assert [(s.source, s.statement) for s in belief.dissenters] == [
            ("sales_agent", "Evaluating for a team of 5")
        ]
        assert belief.supporters[0].observed_at >= belief.dissenters[0].observed_at
        # One piece of evidence halves the default 10% discount: 0.85 * 0.95.
        assert belief.confidence == pytest.approx(0.85 * 0.95, rel=1e-3)
        assert newer.key == "team_size"

        assert model.beliefs(context="churn_risk") == [], "uncertain beliefs are not facts"
        with_uncertain = sales.self_model(subject, include_uncertain=True)
        [churn] = with_uncertain.beliefs(context="churn_risk")
        assert churn.uncertain
        assert churn.statement == "Might churn next quarter"
        assert churn.key == "might churn next quarter", "without a key the slot is the statement"
        assert with_uncertain.belief("purchase_motivation", "team_size") == belief


def _observe_request(
    subject_id: str, statement: str, confidence: float
) -> selfmodel_pb2.ObserveRequest:
    return selfmodel_pb2.ObserveRequest(
        subject=model_pb2.Subject(tenant=TENANT, kind=model_pb2.SUBJECT_KIND_USER, id=subject_id),
        context="budget",
        statement=statement,
        confidence=confidence,
    )


def test_observe_batch_is_all_or_nothing(start_node):
    node = start_node()
    with Client(node.address, agent="batch_agent", tenant=TENANT) as client:
        good = _observe_request("u-batch-1", "Has a 10k budget", 0.7)
        bad = _observe_request("u-batch-2", "Has a 20k budget", 1.5)
        with pytest.raises(InvalidArgument) as refused:
            client.observe_batch([good, bad])
        assert refused.value.field == "observations[1].confidence"
        assert "1.5" in refused.value.description
        for subject_id in ("u-batch-1", "u-batch-2"):
            assert client.self_model(user(subject_id), include_uncertain=True).all_beliefs == ()

        token = client.observe_batch([good, _observe_request("u-batch-2", "Has a 20k budget", 0.6)])
        positions = decode_token(token)
        assert {s.id for s in positions} == {"u-batch-1", "u-batch-2"}, "the token covers both"
        for subject_id, statement in (
            ("u-batch-1", "Has a 10k budget"),
            ("u-batch-2", "Has a 20k budget"),
        ):
            model = client.self_model(user(subject_id), at_least=token)
            assert statements(model) == {statement}


def handoff_timeouts(node) -> float:
    """The node's selfmodel_handoff_timeouts_total."""
    [family] = [
        f
        for f in text_string_to_metric_families(node.metrics())
        if f.name == "selfmodel_handoff_timeouts"
    ]
    return sum(s.value for s in family.samples if s.name.endswith("_total"))


def test_a_pending_handoff_position_is_asked_again_until_the_deadline_then_times_out(
    start_node,
):
    node = start_node()
    subject = user("u-handoff")
    with Client(node.address, agent="sales_agent", tenant=TENANT) as client:
        written = client.observe(
            subject, "Prefers chat", confidence=0.8, context="communication_style"
        )
        [(subj, context)] = decode_token(written.token).items()
        actor = written.observation_id.rpartition(":")[0]  # the node's actor of this run
        assert actor.startswith(f"{node.name}.1."), actor
        assert context.vector.get(actor), f"the write's position names actor {actor}: {context}"
        # A dot of an earlier run of this node, not merged here: a peer may yet deliver it, so it
        # is pending (a dot of this run's actor beyond its own writes is refused at once).
        ahead = CausalContext({**context.vector, f"{node.name}.0.feedbeef": 3})
        future = encode_token({subj: ahead})

        before = handoff_timeouts(node)
        started = time.monotonic()
        with pytest.raises(HandoffTimeout) as timed_out:
            client.self_model(subject, at_least=future, timeout_s=0.5)
        took = time.monotonic() - started
        pending = timed_out.value.__cause__
        assert isinstance(pending, HandoffPending), repr(pending)
        assert pending.__cause__.code() == grpc.StatusCode.UNAVAILABLE
        assert timed_out.value.reason == "HANDOFF_POSITION_PENDING"
        assert timed_out.value.metadata["actor"] == f"{node.name}.0.feedbeef"
        assert timed_out.value.metadata["counter"] == "3"
        # The client asked until its deadline, and the node counted the last answer.
        assert 0.3 <= took <= 1.5, took
        assert handoff_timeouts(node) == before + 1
        assert "not yet merged the handoff token's position" in str(timed_out.value)

        with Client(node.address, agent="support_agent", tenant=TENANT, timeout_s=0.5) as hurried:
            with pytest.raises(HandoffTimeout):
                hurried.explain(subject, "communication_style", "chat", at_least=future)
            assert handoff_timeouts(node) == before + 2

        async def read_async() -> None:
            async with AsyncClient(node.address, agent="a", tenant=TENANT, timeout_s=0.5) as a:
                await a.self_model(subject, at_least=future)

        with pytest.raises(HandoffTimeout) as timed_out:
            asyncio.run(read_async())
        assert isinstance(timed_out.value.__cause__, HandoffPending)
        assert handoff_timeouts(node) == before + 3

        model = client.self_model(subject, at_least=written.token, timeout_s=2.0)
        assert statements(model) == {"Prefers chat"}, "a met token is answered at once"


def test_async_client_observes_reads_and_watches(start_node):
    node = start_node()
    subject = user("u-async")

    async def scenario() -> None:
        async with (
            AsyncClient(node.address, agent="async_writer", tenant=TENANT) as writer,
            AsyncClient(node.address, agent="async_reader", tenant=TENANT) as reader,
        ):
            written = await writer.observe(
                subject, "Prefers async updates", confidence=0.8, context="communication_style"
            )
            model = await reader.self_model(subject, at_least=written.token)
            [belief] = model.beliefs(context="communication_style")
            assert belief.statement == "Prefers async updates"
            assert [s.source for s in belief.supporters] == ["async_writer"]

            with pytest.raises(InvalidArgument) as refused:
                await writer.observe(subject, "x", confidence=math.nan, context="schedule")
            assert refused.value.field == "confidence"

            stream = reader.watch(subject)
            try:
                first = await asyncio.wait_for(anext(stream), WAIT_S)
                assert statements(first) == {"Prefers async updates"}
                await writer.observe(subject, "Works late", confidence=0.7, context="schedule")
                for _ in range(10):
                    view = await asyncio.wait_for(anext(stream), WAIT_S)
                    if "Works late" in statements(view):
                        break
                else:
                    pytest.fail("the async watch never showed the new observation")
            finally:
                await stream.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_client_maps_status_codes_to_domain_exceptions(start_node):
    node = start_node()
    with Client(node.address, agent="sales_agent", tenant=TENANT) as client:
        with pytest.raises(InvalidArgument) as refused:
            client.observe(user("u-errors"), "Too sure", confidence=1.5, context="budget")
        assert isinstance(refused.value, SelfModelError)
        assert refused.value.field == "confidence"
        assert "[0, 1]" in refused.value.description and "1.5" in refused.value.description
        assert refused.value.__cause__.code() == grpc.StatusCode.INVALID_ARGUMENT

        with pytest.raises(InvalidArgument) as refused:
            client.observe(user("u-errors"), "Fine", confidence=0.5, context="Not Snake")
        assert refused.value.field == "context"

        with pytest.raises(InvalidArgument) as refused:
            client.self_model(user("u/../errors"))
        assert refused.value.field == "subject.id"

    # Nothing listens on a fresh free port: UNAVAILABLE, retried, then Unavailable.
    with Client(f"127.0.0.1:{free_port()}", agent="a", attempts=2, timeout_s=2.0) as nowhere:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            nowhere.self_model(user("u-errors"))
        assert time.monotonic() - started < 5.0


def test_a_keyless_belief_can_be_explained_and_retracted_by_the_key_observe_returned(start_node):
    node = start_node()
    subject = user("u-keyless")
    with Client(node.address, agent="sales_agent", tenant=TENANT) as client:
        written = client.observe(
            subject, "Prefers chat, not phone!", confidence=0.8, context="communication_style"
        )
        assert written.key == "prefers chat, not phone"
        explanation = client.explain(subject, "communication_style", written.key)
        assert [o.source for o in explanation.observations] == ["sales_agent"]
        assert client.retract(subject, "communication_style", written.key).count == 1
        assert client.self_model(subject, include_uncertain=True).all_beliefs == ()
