"""Learned reliability with real node processes: a source the consensus keeps contradicting
loses weight on every node, down to the floor and never below, until its contradiction no
longer wins; every node shows the same weights (Admin), each supporter's learned weight
(ExplainBelief) and the weights' spread on /metrics. Weights are per tenant: one tenant's
consensus never moves another tenant's beliefs, nor shows in its operator's listing. A source
withdrawn across its tenant is judged on every node as if it had never spoken."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc

from federation import tokens
from federation.client import user
from selfmodel.admin.v1 import admin_pb2, admin_pb2_grpc
from selfmodel.v1 import selfmodel_pb2
from tests.harness import LocalCluster

CONTEXT = "plan_choice"
NODES = ("sales", "support", "billing")
# Window 4, a flat prior: four disagreements in a row weigh (0 + 1) / (4 + 2) / 0.5 = 1/3,
# below the floor, so the floor holds.
LEARNING = {
    "enabled": True,
    "window": 4,
    "prior_agree": 1.0,
    "prior_disagree": 1.0,
    "floor": 0.4,
    "ceiling": 1.0,
    "interval_s": 0.2,
}
T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], what: str, timeout_s: float = 60.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        time.sleep(0.1)


def weights(
    cluster: LocalCluster, name: str, token: str = "", tenant: str = ""
) -> admin_pb2.ListSourceWeightsResponse:
    """``name``'s weights in CONTEXT, listed by ``token``'s operator (without one: the
    development principal, of a node without tokens)."""
    caller = (("authorization", f"Bearer {token}"),) if token else (("x-agent-id", "ops"),)
    with grpc.insecure_channel(cluster.address(name)) as channel:
        reply: admin_pb2.ListSourceWeightsResponse = admin_pb2_grpc.AdminServiceStub(
            channel
        ).ListSourceWeights(
            admin_pb2.ListSourceWeightsRequest(context=CONTEXT, tenant=tenant),
            timeout=10,
            metadata=caller,
        )
    return reply


def table(reply: admin_pb2.ListSourceWeightsResponse) -> dict[str, tuple[int, int, float]]:
    return {w.source: (w.agreed, w.judged, w.weight) for w in reply.weights}


def explained(
    cluster: LocalCluster, name: str, subject: str
) -> selfmodel_pb2.ExplainBeliefResponse:
    with cluster.client(name, "reader") as reader:
        return reader.explain(user(subject), CONTEXT, "plan")


def same_weights_everywhere(
    cluster: LocalCluster, liar: tuple[int, int]
) -> dict[str, tuple[int, int, float]] | None:
    """The weights every node shows once they agree and count the liar's (agreed, judged)."""
    found = [table(weights(cluster, name)) for name in NODES]
    if found[0].get("liar", (0, 0, 0))[:2] != liar or any(f != found[0] for f in found):
        return None
    return found[0]


def test_a_source_the_consensus_contradicts_loses_weight_on_every_node_but_never_all(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(learning=LEARNING)
    with (
        cluster.client("sales", "a") as a,
        cluster.client("support", "b") as b,
        cluster.client("billing", "liar") as liar,
    ):
        # Alone against one source, the liar's surer statement wins while nothing is learned.
        a.observe(user("first"), "monthly", confidence=0.8, context=CONTEXT, key="plan")
        liar.observe(user("first"), "yearly", confidence=0.9, context=CONTEXT, key="plan")
        cluster.wait_converged()
        for name in NODES:
            assert explained(cluster, name, "first").belief.statement == "yearly"
        # Then two sources agree against it, slot after slot: the consensus wins each.
        for i in range(6):
            subject = user(f"u-{i}")
            liar.observe(subject, "yearly", confidence=0.9, context=CONTEXT, key="plan")
            a.observe(subject, "monthly", confidence=0.8, context=CONTEXT, key="plan")
            b.observe(subject, "monthly", confidence=0.8, context=CONTEXT, key="plan")
        cluster.wait_converged()
        found = wait_for(lambda: same_weights_everywhere(cluster, (0, 4)), "the same weights")
        # Its newest four positions all disagreed: 1/3, held at the floor; the others agreed.
        assert found["liar"] == (0, 4, 0.4)
        assert found["a"] == (4, 4, 1.0) and found["b"] == (4, 4, 1.0)
        for name in NODES:
            assert weights(cluster, name).enabled
        for name in NODES:  # the slot it won, it no longer wins
            reply = wait_for(
                lambda n=name: _won_by(explained(cluster, n, "first"), "monthly"),
                f"the first slot resolved with the learned weights on {name}",
            )
            (dissenter,) = reply.belief.dissenters
            assert (dissenter.source, dissenter.learned_weight, dissenter.reliability) == (
                "liar",
                0.4,
                0.4,
            )
            (mine,) = [o for o in reply.observations if o.source == "liar"]
            assert (mine.learned_weight, mine.reliability) == (0.4, 0.4)
        # The metrics page shows the spread of the context's weights, no source ids.
        page = cluster.nodes["support"].metrics()
        assert _gauge(page, "selfmodel_learned_weight", stat="min") == 0.4
        assert _gauge(page, "selfmodel_learned_weight", stat="max") == 1.0
        assert _gauge(page, "selfmodel_learned_sources", band="floor") == 1.0
        assert "liar" not in page
        # A new contradiction against one source, as in the first slot, no longer wins either.
        # (Judged under the operators' book it wins there, so it counts as an agreement: the
        # liar's window is then three disagreements and one agreement, 2/3.)
        a.observe(user("later"), "monthly", confidence=0.8, context=CONTEXT, key="plan")
        liar.observe(user("later"), "yearly", confidence=0.9, context=CONTEXT, key="plan")
        cluster.wait_converged()
        found = wait_for(lambda: same_weights_everywhere(cluster, (1, 4)), "the same weights")
        assert found["liar"] == (1, 4, 2 / 3)
        for name in NODES:
            for subject in ("first", "later"):
                reply = wait_for(
                    lambda n=name, s=subject: _won_by(explained(cluster, n, s), "monthly"),
                    f"{subject} resolved with the learned weights on {name}",
                )
                (dissenter,) = reply.belief.dissenters
                assert dissenter.source == "liar" and dissenter.learned_weight == 2 / 3
        # An operator's reliability, set cluster-wide, is what positions are judged under and
        # what the learned weight multiplies: at 0.5 the liar loses "later" too (judged again,
        # its window is four disagreements: the floor), and weighs 0.5 x 0.4 on every node.
        with grpc.insecure_channel(cluster.address("sales")) as channel:
            admin_pb2_grpc.AdminServiceStub(channel).SetReliability(
                admin_pb2.SetReliabilityRequest(source="liar", context=CONTEXT, reliability=0.5),
                timeout=10,
                metadata=(("x-agent-id", "ops"),),
            )
        found = wait_for(lambda: same_weights_everywhere(cluster, (0, 4)), "the same weights")
        assert found["liar"] == (0, 4, 0.4)
        for name in NODES:
            reply = wait_for(
                lambda n=name: _dissenter_reliability(explained(cluster, n, "later"), 0.2),
                f"the operators' reliability times the learned weight on {name}",
            )
            (dissenter,) = reply.belief.dissenters
            assert dissenter.learned_weight == 0.4


READ_BACK = "the outcomes saved at the last stop read back"
JUDGED = "subject(s) judged at start"


def weights_of(
    cluster: LocalCluster, names: tuple[str, ...], liar: tuple[int, int]
) -> dict[str, tuple[int, int, float]] | None:
    """The weights ``names`` show once they agree and count the liar's (agreed, judged)."""
    found = [table(weights(cluster, name)) for name in names]
    if found[0].get("liar", (0, 0, 0))[:2] != liar or any(f != found[0] for f in found):
        return None
    return found[0]


def test_a_restarted_node_serves_at_once_the_weights_of_the_state_it_holds(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """Stopped cleanly, a node saves its learned outcomes; started again on the same state it
    reads them back instead of judging every stored slot, and serves its peer's weights from
    its first call. Killed (kill -9) with no change since, it reads them back again; killed
    after changes, they are no longer of its state: it judges every slot, and serves its
    peer's weights of the new state from its first call."""
    names = ("sales", "support")
    cluster = make_cluster(names, learning=LEARNING)
    node = cluster.nodes["support"]
    with (
        cluster.client("sales", "a") as a,
        cluster.client("sales", "b") as b,
        cluster.client("sales", "liar") as liar,
    ):
        for i in range(6):
            subject = user(f"u-{i}")
            liar.observe(subject, "yearly", confidence=0.9, context=CONTEXT, key="plan")
            a.observe(subject, "monthly", confidence=0.8, context=CONTEXT, key="plan")
            b.observe(subject, "monthly", confidence=0.8, context=CONTEXT, key="plan")
        cluster.wait_converged()
        before = wait_for(lambda: weights_of(cluster, names, (0, 4)), "the same weights")
        assert node.log().count(JUDGED) == 1  # its first start: nothing saved
        node.stop()
        assert "learned outcomes saved" in node.log()
        node.start()
        assert table(weights(cluster, "support")) == before
        assert node.log().count(READ_BACK) == 1 and node.log().count(JUDGED) == 1
        node.kill()
        node.start()
        assert table(weights(cluster, "support")) == before
        assert node.log().count(READ_BACK) == 2 and node.log().count(JUDGED) == 1
        # The liar now agrees, slot after slot; the node is killed once it has them.
        for i in range(6, 10):
            subject = user(f"u-{i}")
            for agent in (liar, a, b):
                agent.observe(subject, "monthly", confidence=0.8, context=CONTEXT, key="plan")
        cluster.wait_converged()
        after = wait_for(lambda: weights_of(cluster, names, (4, 4)), "the same weights")
        node.kill()
        node.start()
        assert table(weights(cluster, "support")) == after != before
        assert node.log().count(READ_BACK) == 2 and node.log().count(JUDGED) == 2


def test_a_withdrawn_source_is_judged_on_every_node_as_if_it_never_spoke(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """``w`` and ``a`` outweigh ``b`` in each slot, so ``b`` is judged to disagree; once ``w`` is
    withdrawn on one node, every node judges the slots again without it: ``w`` has no weight,
    ``b`` now wins each slot against ``a`` alone and agrees, ``a`` disagrees, and a lift on
    another node brings the first weights back everywhere."""
    cluster = make_cluster(learning=LEARNING)
    with (
        cluster.client("sales", "w") as w,
        cluster.client("support", "a") as a,
        cluster.client("billing", "b") as b,
        cluster.client("sales", "ops") as ops_sales,
        cluster.client("billing", "ops") as ops_billing,
    ):
        for i in range(4):
            subject = user(f"u-{i}")
            w.observe(subject, "monthly", confidence=0.8, context=CONTEXT, key="plan")
            a.observe(subject, "monthly", confidence=0.6, context=CONTEXT, key="plan")
            b.observe(subject, "yearly", confidence=0.9, context=CONTEXT, key="plan")
        cluster.wait_converged()
        first = {"w": (4, 4, 1.0), "a": (4, 4, 1.0), "b": (0, 4, 0.4)}
        wait_for(lambda: same_everywhere(cluster, first), "the first weights on every node")
        ops_sales.withdraw_source("w")
        cluster.wait_converged()
        withdrawn = {"a": (0, 4, 0.4), "b": (4, 4, 1.0)}
        wait_for(lambda: same_everywhere(cluster, withdrawn), "w's outcomes gone everywhere")
        ops_billing.lift_withdrawal("w")
        cluster.wait_converged()
        wait_for(lambda: same_everywhere(cluster, first), "w's outcomes back everywhere")


def same_everywhere(cluster: LocalCluster, expected: dict[str, tuple[int, int, float]]) -> bool:
    return all(table(weights(cluster, name)) == expected for name in NODES)


def _won_by(
    reply: selfmodel_pb2.ExplainBeliefResponse, statement: str
) -> selfmodel_pb2.ExplainBeliefResponse | None:
    return reply if reply.belief.statement == statement else None


def _dissenter_reliability(
    reply: selfmodel_pb2.ExplainBeliefResponse, reliability: float
) -> selfmodel_pb2.ExplainBeliefResponse | None:
    found = [d.reliability for d in reply.belief.dissenters]
    return reply if found and abs(found[0] - reliability) < 1e-9 else None


def _gauge(page: str, name: str, **labels: str) -> float:
    for line in page.splitlines():
        found = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if not found:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))
        if have.get("context") == CONTEXT and all(have.get(k) == v for k, v in labels.items()):
            return float(found.group(2))
    raise AssertionError(f"{name} {labels} of {CONTEXT} not on the metrics page")


def test_a_source_contradicted_in_one_tenant_keeps_its_weight_in_another_on_every_node(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    """Agent ids are per tenant: globex's consensus against its sales_agent floors that agent's
    weight on every node, while acme's sales_agent (another agent, the same id) keeps its weight
    and wins acme's slot; each tenant's operator sees its own tenant's weights only."""
    file = tmp_path / "tokens.toml"
    agents = ("sales_agent", "acme"), ("a", "acme"), ("sales_agent", "globex"), ("a", "globex")
    made = {
        (agent, tenant): tokens.create(file, agent, tenant, write=["*"])[0]
        for agent, tenant in (*agents, ("b", "globex"))
    }
    acme_ops = tokens.create(file, "ops", "acme", role="operator")[0]
    cluster_ops = tokens.create(file, "root", "acme", role="cluster_operator")[0]
    globex_ops = tokens.create(file, "ops", "globex", role="operator")[0]
    names = ("sales", "support")
    cluster = make_cluster(names, tokens=file, learning=LEARNING)

    def write(node: str, agent: str, tenant: str, subject: str, statement: str, c: float) -> None:
        token = made[agent, tenant]
        with cluster.client(node, agent, tenant=tenant, token=token) as client:
            client.observe(user(subject), statement, confidence=c, context=CONTEXT, key="plan")

    # In each tenant, one slot where sales_agent's surer statement stands against a's alone.
    for tenant in ("acme", "globex"):
        write("sales", "a", tenant, "first", "monthly", 0.8)
        write("sales", "sales_agent", tenant, "first", "yearly", 0.9)
    # Then globex's consensus contradicts its sales_agent, slot after slot, through the other
    # node.
    for i in range(4):
        write("support", "sales_agent", "globex", f"u-{i}", "yearly", 0.9)
        write("support", "a", "globex", f"u-{i}", "monthly", 0.8)
        write("support", "b", "globex", f"u-{i}", "monthly", 0.8)
    cluster.wait_converged()

    def read(node: str, tenant: str) -> selfmodel_pb2.ExplainBeliefResponse:
        with cluster.client(node, "a", tenant=tenant, token=made["a", tenant]) as reader:
            return reader.explain(user("first"), CONTEXT, "plan")

    for name in names:
        # globex's sales_agent, at the floor once every globex slot is judged, no longer wins
        # globex's first slot.
        wait_for(
            lambda n=name: _positions(read(n, "globex"), [("a", 1.0)], [("sales_agent", 0.4)]),
            f"globex's first slot resolved with globex's final weights on {name}",
        )
        # acme's is resolved with acme's weights: its sales_agent agreed there (it won), a did
        # not; globex's slots count nothing in acme.
        reply = wait_for(
            lambda n=name: _positions(read(n, "acme"), [("sales_agent", 1.0)], [("a", 2 / 3)]),
            f"acme's first slot resolved with acme's own weights on {name}",
        )
        assert reply.belief.statement == "yearly"
        # acme's operator sees acme's weights and counts only, and may not name globex.
        mine = table(weights(cluster, name, acme_ops))
        assert mine == {"sales_agent": (1, 1, 1.0), "a": (0, 1, 2 / 3)}
        for ops in (acme_ops, cluster_ops):  # a cluster operator reads no other tenant either
            try:
                weights(cluster, name, ops, tenant="globex")
            except grpc.RpcError as refused:
                assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
            else:
                raise AssertionError("an operator of acme listed globex's weights")
        theirs = table(weights(cluster, name, globex_ops))
        assert theirs == {"sales_agent": (0, 4, 0.4), "a": (4, 4, 1.0), "b": (4, 4, 1.0)}


def _positions(
    reply: selfmodel_pb2.ExplainBeliefResponse,
    supporters: list[tuple[str, float]],
    dissenters: list[tuple[str, float]],
) -> selfmodel_pb2.ExplainBeliefResponse | None:
    """``reply`` when its belief's supporters and dissenters are these (source, learned
    weight)s."""
    belief = reply.belief
    found = [
        [(p.source, p.learned_weight) for p in side]
        for side in (belief.supporters, belief.dissenters)
    ]
    wanted = [supporters, dissenters]
    same = all(
        [s for s, _ in f] == [s for s, _ in w]
        and all(abs(a - b) < 1e-9 for (_, a), (_, b) in zip(f, w, strict=True))
        for f, w in zip(found, wanted, strict=True)
    )
    return reply if same else None
