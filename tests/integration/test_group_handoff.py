"""A handoff token of a member's write, read on another node through the member's team or
organization, on real node processes (docs/groups.md, "Handoff tokens on a group's reads").

The delta stream between the nodes is cut by the fault proxies, so the write's position is
really not merged on the reader's node: the group's reads answer HANDOFF_POSITION_PENDING with
a RetryInfo, the Python client asks again, and once the cut heals it gets the roll-up with the
write. A token naming only subjects outside the group, another tenant's among them, is refused
as a subject read refuses a token of other subjects, and the same whatever the node holds of
them.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from federation import cli
from federation.client import Client, SelfModelView, org, team, user
from selfmodel.admin.v1 import admin_pb2, admin_pb2_grpc
from selfmodel.errors import HandoffPending, InvalidArgument, Reason, from_rpc_error
from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from sync.codec import merge_tokens
from tests.harness import LocalCluster, running_cluster
from tests.nodes import NEVER_FADE, wait_until

WRITER, READER = "east", "west"
WAIT_S = 30.0
_tenants = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(
        tmp_path_factory.mktemp("group-handoff"), (WRITER, READER), policies=NEVER_FADE
    ) as made:
        yield made


@pytest.fixture
def tenant(cluster: LocalCluster) -> Iterator[str]:
    """A tenant of the test's own, the cut healed afterwards whatever happened."""
    try:
        yield f"gh{next(_tenants)}"
    finally:
        cluster.heal()


def _subject(tenant: str, kind: int, id: str) -> model_pb2.Subject:
    return model_pb2.Subject(tenant=tenant, kind=kind, id=id)


TEAM, ORG, USER = (
    model_pb2.SUBJECT_KIND_TEAM,
    model_pb2.SUBJECT_KIND_ORG,
    model_pb2.SUBJECT_KIND_USER,
)


def _raw(cluster: LocalCluster, method: str, request: Any) -> Any:
    """One call to the reader's node, no retry: its reply, or the error it answered."""
    with grpc.insecure_channel(cluster.address(READER)) as channel:
        stub = selfmodel_pb2_grpc.SelfModelServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=10, metadata=(("x-agent-id", "b"),))
        except grpc.RpcError as exc:
            return from_rpc_error(exc)


def _get(tenant: str, kind: int, id: str, token: str) -> selfmodel_pb2.GetSelfModelRequest:
    return selfmodel_pb2.GetSelfModelRequest(subject=_subject(tenant, kind, id), at_least=token)


def _pending_reads(cluster: LocalCluster) -> float:
    for line in cluster.nodes[READER].metrics().splitlines():
        if line.startswith("selfmodel_handoff_pending_total "):
            return float(line.split(" ")[1])
    return 0.0


def _statements(view: SelfModelView) -> set[str]:
    return {r.statement for r in view.rollups}


def _other_subject(answer: object) -> InvalidArgument:
    assert isinstance(answer, InvalidArgument), answer
    assert answer.reason == Reason.HANDOFF_TOKEN_OTHER_SUBJECT
    return answer


def test_a_members_write_is_in_its_groups_rollups_read_with_its_token_on_another_node(
    cluster: LocalCluster, tenant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with (
        cluster.client(WRITER, "ops", tenant) as east,
        cluster.client(READER, "b", tenant, timeout_s=WAIT_S) as west,
    ):
        east.add_member(team("t"), user("u1"))
        east.add_member(org("o"), team("t"))
        cluster.wait_converged(WAIT_S)
        cluster.partition([WRITER], [READER])
        token = east.observe(
            user("u1"), "Wants a yearly plan", confidence=0.9, context="budget", key="plan"
        ).token

        # Cut: every group read with the member's token is pending, with a RetryInfo.
        for method, request in (
            ("GetSelfModel", _get(tenant, TEAM, "t", token)),
            ("GetSelfModel", _get(tenant, ORG, "o", token)),
            (
                "ExplainBelief",
                selfmodel_pb2.ExplainBeliefRequest(
                    subject=_subject(tenant, TEAM, "t"), context="budget", key="plan",
                    at_least=token,
                ),
            ),
            (
                "BatchGetSelfModels",
                selfmodel_pb2.BatchGetSelfModelsRequest(
                    subjects=[_subject(tenant, TEAM, "t")], at_least=token
                ),
            ),
        ):  # fmt: skip
            answer = _raw(cluster, method, request)
            assert isinstance(answer, HandoffPending), (method, answer)
            assert answer.reason == Reason.HANDOFF_POSITION_PENDING
            assert answer.metadata["subject"] == f"{tenant}/user/u1"
            assert answer.retry_after_s is not None and 0 < answer.retry_after_s <= 1.0

        # The Python client asks again until the cut heals, then reads the write in the roll-up.
        before = _pending_reads(cluster)
        read: list[SelfModelView | BaseException] = []

        def read_team() -> None:
            try:
                read.append(west.self_model(team("t"), at_least=token))
            except BaseException as exc:  # handed to the test's thread
                read.append(exc)

        reader = threading.Thread(target=read_team)
        reader.start()
        try:
            wait_until(
                lambda: _pending_reads(cluster) >= before + 2 or read,
                "the client's team read asked again while its position was pending",
                timeout_s=WAIT_S,
            )
            assert not read, read  # answered only once the write arrives
            cluster.heal()
        finally:
            reader.join(WAIT_S + 5)
        assert not reader.is_alive()
        [view] = read
        assert isinstance(view, SelfModelView), view
        assert _statements(view) == {"Wants a yearly plan"}
        assert view.group_users == 1

        assert _statements(west.self_model(org("o"), at_least=token)) == {"Wants a yearly plan"}
        views, _ = west.self_models([team("t"), org("o")], at_least=token)
        assert [_statements(v) for v in views] == [{"Wants a yearly plan"}] * 2
        explained = west.explain(team("t"), "budget", "plan", at_least=token)
        assert [h.user.id for h in explained.holders] == ["u1"]

        # The command line's `show` takes the same token for a team.
        with pytest.raises(SystemExit) as done:
            cli.main(
                ["show", "team:t", "--at-least", token, "--target", cluster.address(READER),
                 "--tenant", tenant]
            )  # fmt: skip
        out, err = capsys.readouterr()
        assert done.value.code == 0, err
        assert "Wants a yearly plan" in out


def _add_member(cluster: LocalCluster, tenant: str, group: str, member: str) -> str:
    """AddMember on the writer's node (through the raw stub: its handoff token)."""
    with grpc.insecure_channel(cluster.address(WRITER)) as channel:
        reply = admin_pb2_grpc.AdminServiceStub(channel).AddMember(
            admin_pb2.AddMemberRequest(
                group=_subject(tenant, TEAM, group), member=_subject(tenant, USER, member)
            ),
            timeout=10,
            metadata=(("x-agent-id", "ops"),),
        )
    return str(reply.handoff_token)


def test_a_token_naming_no_member_is_refused_and_other_subjects_in_it_are_ignored(
    cluster: LocalCluster, tenant: str
) -> None:
    with (
        cluster.client(WRITER, "ops", tenant) as east,
        cluster.client(READER, "b", tenant, timeout_s=WAIT_S) as west,
    ):
        east.add_member(team("t"), user("u1"))
        cluster.wait_converged(WAIT_S)
        member = west.observe(user("u1"), "Likes chat", confidence=0.9, context="style").token
        stranger = west.observe(user("u9"), "Likes mail", confidence=0.9, context="style").token

        # u9 is in no team: a token of it alone names nothing the team's read waits for ...
        _other_subject(_raw(cluster, "GetSelfModel", _get(tenant, TEAM, "t", stranger)))
        # ... and beside a member's position, u9's is ignored.
        both = merge_tokens([member, stranger])
        view = west.self_model(team("t"), at_least=both)
        assert _statements(view) == {"Likes chat"}

        # A member added on the writer's node, not yet on the reader's: the write's token alone
        # is refused (this node cannot tell the add is on its way); with the add's token, the
        # read is pending on the team's position, then reads the new member's write.
        cluster.partition([WRITER], [READER])
        added = _add_member(cluster, tenant, "t", "u2")
        written = east.observe(user("u2"), "Likes video", confidence=0.8, context="style").token
        _other_subject(_raw(cluster, "GetSelfModel", _get(tenant, TEAM, "t", written)))
        handed = merge_tokens([added, written])
        answer = _raw(cluster, "GetSelfModel", _get(tenant, TEAM, "t", handed))
        assert isinstance(answer, HandoffPending), answer
        assert answer.metadata["subject"] == f"{tenant}/team/t"
        cluster.heal()
        view = west.self_model(team("t"), at_least=handed)
        assert _statements(view) == {"Likes chat", "Likes video"}
        assert view.group_users == 2


def test_another_tenants_position_in_a_token_is_never_waited_for_and_reveals_nothing(
    cluster: LocalCluster, tenant: str
) -> None:
    foreign = f"{tenant}-other"
    with (
        cluster.client(WRITER, "g", foreign) as elsewhere,
        cluster.client(READER, "ops", tenant, timeout_s=WAIT_S) as west,
        Client(
            cluster.address(READER), agent="b", tenant=foreign, timeout_s=WAIT_S
        ) as foreign_west,
    ):
        west.add_member(team("t"), user("u1"))
        member = west.observe(user("u1"), "Likes chat", confidence=0.9, context="style").token
        cluster.partition([WRITER], [READER])
        theirs = elsewhere.observe(user("u1"), "Secret", confidence=0.9, context="style").token

        # Beside a member's position, the other tenant's (not merged here) is not waited for.
        view = west.self_model(team("t"), at_least=merge_tokens([member, theirs]))
        assert _statements(view) == {"Likes chat"}

        # Alone, it is refused as a subject read refuses a token of another subject: the same
        # answer before and after this node holds that subject.
        request = _get(tenant, TEAM, "t", theirs)
        before = _other_subject(_raw(cluster, "GetSelfModel", request))
        cluster.heal()
        wait_until(
            lambda: foreign_west.self_model(user("u1"), at_least=theirs).beliefs(),
            "the other tenant's write merged on the reader's node",
            timeout_s=WAIT_S,
        )
        after = _other_subject(_raw(cluster, "GetSelfModel", request))
        assert (after.message, after.metadata) == (before.message, before.metadata)
        assert "Secret" not in after.message


def _gauge(cluster: LocalCluster, name: str) -> float:
    for line in cluster.nodes[READER].metrics().splitlines():
        if line.startswith(f"{name} "):
            return float(line.split(" ")[1])
    return 0.0


def test_a_watchs_first_model_waits_for_its_tokens_positions(
    cluster: LocalCluster, tenant: str
) -> None:
    with (
        cluster.client(WRITER, "ops", tenant) as east,
        cluster.client(READER, "b", tenant) as west,
    ):
        east.add_member(team("t"), user("u1"))
        cluster.wait_converged(WAIT_S)
        cluster.partition([WRITER], [READER])
        token = east.observe(
            user("u1"), "Wants a yearly plan", confidence=0.9, context="budget", key="plan"
        ).token
        firsts: dict[str, SelfModelView | BaseException] = {}

        def first(name: str, subject: Any) -> None:
            try:
                for view in west.watch(subject, at_least=token, timeout_s=WAIT_S):
                    firsts[name] = view
                    return
            except BaseException as exc:  # handed to the test's thread
                firsts[name] = exc

        open_before = _gauge(cluster, "selfmodel_watches")
        watchers = [
            threading.Thread(target=first, args=("team", team("t"))),
            threading.Thread(target=first, args=("user", user("u1"))),
        ]
        for w in watchers:
            w.start()
        try:
            wait_until(
                lambda: _gauge(cluster, "selfmodel_watches") >= open_before + 2 or firsts,
                "both watches open on the reader's node",
                timeout_s=WAIT_S,
            )
            # Open while the write is held back: no model yet (a read is still pending).
            pending = _raw(cluster, "GetSelfModel", _get(tenant, TEAM, "t", token))
            assert isinstance(pending, HandoffPending), pending
            assert not firsts, firsts
            cluster.heal()
        finally:
            for w in watchers:
                w.join(WAIT_S + 5)
        team_view, user_view = firsts["team"], firsts["user"]
        assert isinstance(team_view, SelfModelView), team_view
        assert _statements(team_view) == {"Wants a yearly plan"}
        assert isinstance(user_view, SelfModelView), user_view
        assert [b.statement for b in user_view.all_beliefs] == ["Wants a yearly plan"]

        # A token a read refuses ends the watch before any model.
        stranger = west.observe(user("u9"), "Likes mail", confidence=0.9, context="style").token
        with pytest.raises(InvalidArgument) as refused:
            next(iter(west.watch(team("t"), at_least=stranger, timeout_s=WAIT_S)))
        assert refused.value.reason == Reason.HANDOFF_TOKEN_OTHER_SUBJECT
