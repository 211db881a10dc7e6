"""What the agent API promises a client in any language, over the wire of a real node: no
silent defaults, a reply that says what the reader did not see and why a confidence reads as
it does, and slots without a key named by their statement as written.

The calls go through the generated stubs only, as a client generated in another language would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest

from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from tests.harness import LocalCluster

AGENT = (("x-agent-id", "sales_agent"),)
TIMEOUT_S = 10.0
# "strict": a context of its own minimum and evidence discount, and no decay.
POLICIES = {
    "contexts.strict": {"min_confidence": 0.8, "evidence_discount": 0.2, "half_life_days": 0}
}


@pytest.fixture
def stub(
    make_cluster: Callable[..., LocalCluster],
) -> Iterator[selfmodel_pb2_grpc.SelfModelServiceStub]:
    cluster = make_cluster(("sales",), policies=POLICIES, proxies=False)
    with grpc.insecure_channel(cluster.address("sales")) as channel:
        yield selfmodel_pb2_grpc.SelfModelServiceStub(channel)


def subject(id: str) -> model_pb2.Subject:
    return model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id=id)


def observe(
    stub: selfmodel_pb2_grpc.SelfModelServiceStub, **fields: object
) -> selfmodel_pb2.ObserveResponse:
    reply: selfmodel_pb2.ObserveResponse = stub.Observe(
        selfmodel_pb2.ObserveRequest(**fields), metadata=AGENT, timeout=TIMEOUT_S
    )
    return reply


def read(
    stub: selfmodel_pb2_grpc.SelfModelServiceStub, **fields: object
) -> model_pb2.SelfModelSnapshot:
    reply = stub.GetSelfModel(
        selfmodel_pb2.GetSelfModelRequest(**fields), metadata=AGENT, timeout=TIMEOUT_S
    )
    return reply.snapshot  # type: ignore[no-any-return]


def test_an_observe_without_a_confidence_is_refused_and_records_nothing(stub) -> None:
    u = subject("u-presence")
    first = observe(
        stub, subject=u, context="style", key="channel", statement="Email", confidence=0.9
    )
    for call, field in (
        (
            lambda: stub.Observe(
                selfmodel_pb2.ObserveRequest(
                    subject=u, context="style", key="channel", statement="Phone"
                ),
                metadata=AGENT,
                timeout=TIMEOUT_S,
            ),
            "confidence",
        ),
        (
            lambda: stub.ObserveBatch(
                selfmodel_pb2.ObserveBatchRequest(
                    observations=[
                        selfmodel_pb2.ObserveRequest(
                            subject=u, context="style", key="tone", statement="Warm", confidence=0.7
                        ),
                        selfmodel_pb2.ObserveRequest(
                            subject=u, context="style", key="channel", statement="Phone"
                        ),
                    ]
                ),
                metadata=AGENT,
                timeout=TIMEOUT_S,
            ),
            "observations[1].confidence",
        ),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith(f"{field}: is required")
    # The earlier observation stands: an absent confidence never replaced it with 0.
    model = read(stub, subject=u, at_least=first.handoff_token)
    assert [(b.key, b.statement, b.supporters[0].confidence) for b in model.beliefs] == [
        ("channel", "Email", 0.9)
    ]


def test_a_snapshot_says_what_it_left_out_and_each_supporter_what_it_weighs(stub) -> None:
    u = subject("u-left-out")
    observe(stub, subject=u, context="purchase_motivation", key="driver",
            statement="Quick time-to-value", confidence=0.82)  # fmt: skip
    observe(stub, subject=u, context="purchase_motivation", key="budget",
            statement="Tight budget", confidence=0.55)  # fmt: skip
    last = observe(stub, subject=u, context="strict", key="owner", statement="Owns the budget",
                   confidence=0.9)  # fmt: skip

    model = read(stub, subject=u, at_least=last.handoff_token)
    # 0.82 without evidence: 0.82 x 0.9 = 0.738, certain; 0.55 x 0.9 = 0.495 < 0.5, and in
    # "strict" 0.9 x 0.8 = 0.72 < 0.8: both uncertain, left out, and counted.
    [belief] = model.beliefs
    assert (belief.statement, belief.confidence) == ("Quick time-to-value", pytest.approx(0.738))
    [supporter] = belief.supporters
    assert supporter.confidence == 0.82
    assert supporter.weight == pytest.approx(0.738)
    assert (supporter.reliability, supporter.recency) == (1.0, 1.0)
    assert supporter.evidence_factor == pytest.approx(0.9)
    assert supporter.counted
    assert model.uncertain_omitted == 2
    assert model.below_min_confidence_omitted == 0
    assert dict(model.context_min_confidence) == {"purchase_motivation": 0.5, "strict": 0.8}

    everything = read(stub, subject=u, include_uncertain=True, min_confidence=0.6)
    assert [b.statement for b in everything.beliefs] == ["Quick time-to-value", "Owns the budget"]
    assert everything.uncertain_omitted == 0
    assert everything.below_min_confidence_omitted == 1  # "Tight budget" at 0.495

    named = read(stub, subject=u, contexts=["strict", "empty_context"])
    assert dict(named.context_min_confidence) == {"strict": 0.8, "empty_context": 0.5}
    assert (named.uncertain_omitted, len(named.beliefs)) == (1, 0)


def test_explain_shows_the_factors_and_the_context_s_policy(stub) -> None:
    u = subject("u-explain")
    written = observe(stub, subject=u, context="strict", key="owner", statement="Owns the budget",
                      confidence=0.9)  # fmt: skip
    explained = stub.ExplainBelief(
        selfmodel_pb2.ExplainBeliefRequest(
            subject=u, context="strict", key="owner", at_least=written.handoff_token
        ),
        metadata=AGENT,
        timeout=TIMEOUT_S,
    )
    assert explained.policy == model_pb2.POLICY_WEIGHTED
    assert (explained.min_confidence, explained.evidence_discount) == (0.8, 0.2)
    assert not explained.HasField("half_life_days")  # "strict" does not decay
    [o] = explained.observations
    assert (o.confidence, o.evidence_factor, o.weight) == (0.9, 0.8, pytest.approx(0.72))
    assert explained.belief.uncertain

    default = stub.ExplainBelief(
        selfmodel_pb2.ExplainBeliefRequest(
            subject=subject("u-left-out"), context="purchase_motivation", key="driver"
        ),
        metadata=AGENT,
        timeout=TIMEOUT_S,
    )
    assert (default.min_confidence, default.evidence_discount) == (0.5, 0.1)
    assert default.half_life_days == 90.0


def test_a_slot_without_a_key_is_named_by_its_statement_as_written(stub) -> None:
    u = subject("u-slot")
    written = observe(stub, subject=u, context="style", statement="  Prefers  Email. ",
                      confidence=0.9)  # fmt: skip
    assert written.key == "prefers email"
    for named in ("  Prefers  Email. ", "PREFERS EMAIL!", "prefers email"):
        explained = stub.ExplainBelief(
            selfmodel_pb2.ExplainBeliefRequest(
                subject=u, context="style", key=named, at_least=written.handoff_token
            ),
            metadata=AGENT,
            timeout=TIMEOUT_S,
        )
        assert explained.key == "prefers email", named
        assert [o.statement for o in explained.observations] == ["  Prefers  Email. "], named
    retracted = stub.Retract(
        selfmodel_pb2.RetractRequest(subject=u, context="style", key="Prefers email."),
        metadata=AGENT,
        timeout=TIMEOUT_S,
    )
    assert retracted.retracted == 1
    assert not read(
        stub, subject=u, include_uncertain=True, at_least=retracted.handoff_token
    ).beliefs
