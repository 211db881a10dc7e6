"""Every client command of the CLI answers one JSON style, the proto JSON mapping of its reply,
against a real node, with the bearer token from --token, $SELFMODEL_TOKEN or a file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from federation import cli, tokens
from federation.bearer import TOKEN_ENV
from federation.client import Client, user
from selfmodel.admin.v1 import admin_pb2
from selfmodel.v1 import model_pb2, selfmodel_pb2
from tests.nodes import NodeProcess

CALL_EVIDENCE = '{"kind": "EVIDENCE_KIND_CALL", "ref": "rec://9", "time": "2026-01-05T10:00:00Z"}'


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    assert done.value.code == 0, err
    return out


def reply(out: str, kind: type[Message]) -> Any:
    """``out`` parsed strictly as ``kind`` in the proto JSON mapping (unknown names refused), and
    checked to use its JSON names (lowerCamelCase), every field shown."""
    msg = json_format.Parse(out, kind())
    raw = json.loads(out)
    assert set(raw) == {f.json_name for f in kind.DESCRIPTOR.fields}, raw.keys()
    return msg


def test_every_client_command_prints_its_reply_in_the_proto_json_mapping(
    start_node: Callable[..., NodeProcess],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    file = tmp_path / "tokens.toml"
    agent, _ = tokens.create(file, "cli_agent", "acme", "agent", ["*"], ["*"])
    operator, _ = tokens.create(file, "cli_ops", "acme", "operator", ["*"], ["*"])
    token_file = tmp_path / "operator.token"
    token_file.write_text(operator + "\n")
    node = start_node("sales", "--tokens", str(file))
    target = ["--target", node.address, "--tenant", "acme"]
    with_token = [*target, "--token", agent]

    out = run(
        capsys, "observe", "user:u-cli", "Pays yearly", "--context", "billing", "--key", "cycle",
        "--confidence", "0.9", "--evidence", "ticket:crm://t/1",
        "--evidence", CALL_EVIDENCE,
        "--idempotency-key", "cli-1", *with_token,
    )  # fmt: skip
    written = reply(out, selfmodel_pb2.ObserveResponse)
    assert written.key == "cycle" and written.observation_id.startswith("sales.")
    again = run(
        capsys, "observe", "user:u-cli", "Pays yearly", "--context", "billing", "--key", "cycle",
        "--confidence", "0.9", "--evidence", "ticket:crm://t/1",
        "--evidence", CALL_EVIDENCE,
        "--idempotency-key", "cli-1", *with_token,
    )  # fmt: skip
    assert reply(again, selfmodel_pb2.ObserveResponse).observation_id == written.observation_id

    monkeypatch.setenv(TOKEN_ENV, agent)  # the token from the environment from here on
    shown = run(capsys, "show", "user:u-cli", *target)
    model = reply(shown, selfmodel_pb2.GetSelfModelResponse).snapshot
    [belief] = model.beliefs
    assert belief.statement == "Pays yearly" and model.handoff_token
    page = reply(
        run(capsys, "show", "user:u-cli", "--page-size", "1", *target),
        selfmodel_pb2.GetSelfModelResponse,
    ).snapshot
    assert list(page.beliefs) == [belief] and page.next_page_token == ""
    explained = reply(
        run(capsys, "explain", "user:u-cli", "billing", "cycle", *target),
        selfmodel_pb2.ExplainBeliefResponse,
    )
    assert [[e.kind for e in o.evidence] for o in explained.observations] == [
        [model_pb2.EVIDENCE_KIND_TICKET, model_pb2.EVIDENCE_KIND_CALL]
    ]
    many = reply(
        run(capsys, "show-many", "user:u-cli", "user:u-none", *target),
        selfmodel_pb2.BatchGetSelfModelsResponse,
    )
    assert [m.subject.id for m in many.models] == ["u-cli", "u-none"]
    listed = reply(
        run(capsys, "subjects", "--kind", "user", *target), selfmodel_pb2.ListSubjectsResponse
    )
    assert [s.id for s in listed.subjects] == ["u-cli"]
    contexts = reply(
        run(capsys, "contexts", "user:u-cli", *target), selfmodel_pb2.ListContextsResponse
    )
    assert [c.context for c in contexts.contexts] == ["billing"]
    policy = reply(
        run(capsys, "policy", "show", "billing", *target), selfmodel_pb2.GetPolicyResponse
    )
    assert [(p.context, p.policy) for p in policy.policies] == [
        ("billing", model_pb2.POLICY_WEIGHTED)
    ]
    retracted = reply(
        run(capsys, "retract", "user:u-cli", "billing", "cycle", *target),
        selfmodel_pb2.RetractResponse,
    )
    assert (retracted.retracted, retracted.recorded) == (1, True)

    monkeypatch.delenv(TOKEN_ENV)
    with_file = [*target, "--token-file", str(token_file)]  # the operator's, from a file
    forgotten = reply(
        run(capsys, "forget", "user:u-cli", *with_file), selfmodel_pb2.ForgetSubjectResponse
    )
    assert forgotten.handoff_token
    audit = reply(run(capsys, "audit", *with_file), admin_pb2.ListAuditResponse)
    assert [e.action for e in audit.entries] == [admin_pb2.AUDIT_ACTION_FORGET]


def test_the_sources_commands_list_withdraw_and_lift_a_source(
    start_node: Callable[..., NodeProcess],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    file = tmp_path / "tokens.toml"
    agent, _ = tokens.create(file, "cli_bot", "acme", "agent", ["*"], ["*"])
    operator, _ = tokens.create(file, "cli_ops", "acme", "operator", ["*"], ["*"])
    node = start_node("sales", "--tokens", str(file))
    target = ["--target", node.address, "--tenant", "acme"]
    for n in range(3):
        run(
            capsys, "observe", f"user:u-{n}", "Pays yearly", "--context", "billing",
            "--key", "cycle", "--confidence", "0.9", *target, "--token", agent,
        )  # fmt: skip
    as_operator = [*target, "--token", operator]

    withdrawn = reply(
        run(capsys, "sources", "withdraw", "cli_bot", *as_operator),
        admin_pb2.WithdrawSourceResponse,
    )
    assert withdrawn.subjects == 3 and withdrawn.withdrawn_at.ToMilliseconds() > 0
    first = reply(
        run(capsys, "sources", "list", "cli_bot", "--page-size", "2", *as_operator),
        admin_pb2.ListSourceContributionsResponse,
    )
    assert [(c.subject.id, c.key, c.withdrawn) for c in first.contributions] == [
        ("u-0", "cycle", True),
        ("u-1", "cycle", True),
    ]
    assert first.withdrawn_at == withdrawn.withdrawn_at
    rest = reply(
        run(
            capsys, "sources", "list", "cli_bot", "--page-size", "2",
            "--page-token", first.next_page_token, *as_operator,
        ),
        admin_pb2.ListSourceContributionsResponse,
    )  # fmt: skip
    assert [c.subject.id for c in rest.contributions] == ["u-2"] and not rest.next_page_token
    shown = reply(run(capsys, "show", "user:u-0", *as_operator), selfmodel_pb2.GetSelfModelResponse)
    assert list(shown.snapshot.beliefs) == []  # its only source is withdrawn
    lifted = reply(
        run(capsys, "sources", "lift", "cli_bot", *as_operator),
        admin_pb2.LiftSourceWithdrawalResponse,
    )
    assert lifted.handoff_token
    shown = reply(run(capsys, "show", "user:u-0", *as_operator), selfmodel_pb2.GetSelfModelResponse)
    assert [b.statement for b in shown.snapshot.beliefs] == ["Pays yearly"]
    audit = reply(run(capsys, "audit", *as_operator), admin_pb2.ListAuditResponse)
    assert [e.action for e in audit.entries] == [
        admin_pb2.AUDIT_ACTION_WITHDRAW_SOURCE,
        admin_pb2.AUDIT_ACTION_LIFT_WITHDRAWAL,
    ]
    assert {e.actor for e in audit.entries} == {"cli_ops"}


def test_policy_get_set_and_clear_change_the_cluster_s_settings_for_cluster_operators_only(
    start_node: Callable[..., NodeProcess],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    file = tmp_path / "tokens.toml"
    agent, _ = tokens.create(file, "cli_agent", "acme", "agent", ["*"], ["*"])
    operator, _ = tokens.create(file, "cli_ops", "acme", "cluster_operator", ["*"], ["*"])
    node = start_node("sales", "--tokens", str(file))
    ops = ["--target", node.address, "--tenant", "acme", "--token", operator]

    def settings(*context: str) -> dict[tuple[str, str], admin_pb2.Setting]:
        got = reply(run(capsys, "policy", "get", *context, *ops), admin_pb2.GetSettingsResponse)
        return {(s.context, admin_pb2.SettingField.Name(s.field)): s for s in got.settings}

    before = settings()
    assert before["", "SETTING_FIELD_POLICY"].origin == admin_pb2.SETTING_ORIGIN_DEFAULT
    set_ = ["policy", "set", "policy", "latest", "--context", "billing", *ops]
    assert reply(run(capsys, *set_), admin_pb2.SetSettingResponse).handoff_token
    set_ = ["policy", "set", "min_confidence", "0.8", *ops]  # every context's default
    reply(run(capsys, *set_), admin_pb2.SetSettingResponse)
    billing = settings("--context", "billing")
    assert {c for c, _ in billing} == {"billing"}
    policy = billing["billing", "SETTING_FIELD_POLICY"]
    assert (policy.policy, policy.origin) == (
        model_pb2.POLICY_LATEST,
        admin_pb2.SETTING_ORIGIN_REPLICATED,
    )
    assert (policy.write.set_by, policy.write.node) == ("cli_ops", "sales")
    minimum = billing["billing", "SETTING_FIELD_MIN_CONFIDENCE"]
    assert (minimum.number, minimum.inherited) == (0.8, True)
    shown = reply(run(capsys, "policy", "show", "billing", *ops), selfmodel_pb2.GetPolicyResponse)
    assert [(p.policy, p.min_confidence) for p in shown.policies] == [
        (model_pb2.POLICY_LATEST, 0.8)
    ]

    clear = ["policy", "clear", "policy", "--context", "billing", *ops]
    reply(run(capsys, *clear), admin_pb2.ClearSettingResponse)
    assert ("billing", "SETTING_FIELD_POLICY") not in settings("--context", "billing")
    reliability = ["policy", "reliability", "bot", "0.25", "--context", "billing", *ops]
    reply(run(capsys, *reliability), admin_pb2.SetReliabilityResponse)
    got = reply(run(capsys, "policy", "get", *ops), admin_pb2.GetSettingsResponse)
    assert [(r.source, r.context, r.reliability) for r in got.reliability] == [
        ("bot", "billing", 0.25)
    ]
    unset = ["policy", "clear-reliability", "bot", "--context", "billing", *ops]
    reply(run(capsys, *unset), admin_pb2.ClearReliabilityResponse)
    got = reply(run(capsys, "policy", "get", *ops), admin_pb2.GetSettingsResponse)
    assert not got.reliability
    audit = reply(run(capsys, "audit", *ops), admin_pb2.ListAuditResponse)
    assert [e.action for e in audit.entries] == [
        admin_pb2.AUDIT_ACTION_SET_SETTING,
        admin_pb2.AUDIT_ACTION_SET_SETTING,
        admin_pb2.AUDIT_ACTION_CLEAR_SETTING,
        admin_pb2.AUDIT_ACTION_SET_RELIABILITY,
        admin_pb2.AUDIT_ACTION_CLEAR_RELIABILITY,
    ]
    assert audit.entries[0].detail == 'context=billing field=policy value="latest"'

    as_agent = ["--target", node.address, "--tenant", "acme", "--token", agent]
    with pytest.raises(SystemExit) as refused:
        cli.main(["policy", "set", "policy", "weighted", *as_agent])
    assert refused.value.code != 0
    assert "PermissionDenied" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        cli.main(["policy", "set", "min_confidence", "1.5", *ops])
    err = capsys.readouterr().err
    assert refused.value.code != 0
    assert "number: min_confidence must be within [0, 1], got 1.5" in err


def _positions(belief: model_pb2.Belief) -> tuple[int, int, int, int]:
    """Supporters and dissenters listed, then counted."""
    listed = (len(belief.supporters), len(belief.dissenters))
    return (*listed, belief.supporter_count, belief.dissenter_count)


def test_show_show_many_and_watch_list_at_most_max_positions_per_belief_and_no_uncertain_one(
    start_node: Callable[..., NodeProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    node = start_node("sales")
    target = ["--target", node.address, "--tenant", "acme"]
    for agent, statement in [("a1", "Pays yearly"), ("a2", "Pays yearly"), ("a3", "Pays monthly")]:
        with Client(node.address, agent=agent, tenant="acme") as client:
            client.observe(user("u-pos"), statement, confidence=0.9, context="billing", key="cycle")

    def shown(*argv: str) -> model_pb2.Belief:
        out = run(capsys, "show", "user:u-pos", *argv, *target)
        [belief] = reply(out, selfmodel_pb2.GetSelfModelResponse).snapshot.beliefs
        return belief

    assert _positions(shown()) == (2, 1, 2, 1)  # every position by default
    assert _positions(shown("--max-positions", "0")) == (0, 0, 2, 1)
    assert _positions(shown("--max-positions", "1")) == (1, 1, 2, 1)

    many = reply(
        run(capsys, "show-many", "user:u-pos", "user:u-none", "--max-positions", "0", *target),
        selfmodel_pb2.BatchGetSelfModelsResponse,
    )
    [belief] = many.models[0].beliefs
    assert _positions(belief) == (0, 0, 2, 1)

    # watch: one reply per line, in the same JSON style.
    out = run(capsys, "watch", "user:u-pos", "--max-positions", "1", "--count", "1", *target)
    [line] = out.splitlines()
    [belief] = reply(line, selfmodel_pb2.WatchSelfModelResponse).snapshot.beliefs
    assert _positions(belief) == (1, 1, 2, 1)
    out = run(capsys, "watch", "user:u-pos", "--timeout", "1", *target)  # ends at the deadline
    for line in out.splitlines():
        [belief] = reply(line, selfmodel_pb2.WatchSelfModelResponse).snapshot.beliefs
        assert _positions(belief) == (2, 1, 2, 1)
    assert out

    # show leaves uncertain beliefs out, as GetSelfModel does, and says so; asked, it shows them.
    with Client(node.address, agent="a1", tenant="acme") as client:
        client.observe(user("u-unsure"), "Maybe yearly", confidence=0.55, context="billing")
    hidden = reply(
        run(capsys, "show", "user:u-unsure", *target), selfmodel_pb2.GetSelfModelResponse
    ).snapshot
    assert (list(hidden.beliefs), hidden.uncertain_omitted) == ([], 1)
    out = run(capsys, "show", "user:u-unsure", "--include-uncertain", *target)
    [belief] = reply(out, selfmodel_pb2.GetSelfModelResponse).snapshot.beliefs
    assert belief.uncertain and belief.statement == "Maybe yearly"

    for bad in ("-1", "2.5", str(2**32)):
        with pytest.raises(SystemExit) as done:
            cli.main(["show", "user:u-pos", "--max-positions", bad, *target])
        assert done.value.code == 2
        assert "--max-positions: must be a whole number within [0, 2^32)" in capsys.readouterr().err


def test_members_commands_and_show_of_a_team_print_their_replies_in_the_proto_json_mapping(
    start_node: Callable[..., NodeProcess],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    file = tmp_path / "tokens.toml"
    hr, _ = tokens.create(file, "hr_agent", "acme", "agent", ["*"], ["*"], members=True)
    node = start_node("sales", "--tokens", str(file))
    target = ["--target", node.address, "--tenant", "acme", "--token", hr]

    def member(action: str, *argv: str) -> Any:
        kind = admin_pb2.AddMemberResponse if action == "add" else admin_pb2.RemoveMemberResponse
        return reply(run(capsys, "members", action, *argv, *target), kind)

    assert member("add", "team:t1", "user:u1").outcome == admin_pb2.MEMBERSHIP_OUTCOME_ADDED
    again = member("add", "team:t1", "user:u1")
    assert again.outcome == admin_pb2.MEMBERSHIP_OUTCOME_ALREADY_MEMBER
    assert member("add", "team:t1", "user:u2").outcome == admin_pb2.MEMBERSHIP_OUTCOME_ADDED
    assert member("add", "org:o1", "team:t1").outcome == admin_pb2.MEMBERSHIP_OUTCOME_ADDED
    listed = reply(
        run(capsys, "members", "list", "team:t1", "--page-size", "1", *target),
        admin_pb2.ListMembersResponse,
    )
    assert [m.id for m in listed.members] == ["u1"] and listed.group_users == 2
    assert listed.next_page_token
    removed = member("remove", "team:t1", "user:u2")
    assert removed.outcome == admin_pb2.MEMBERSHIP_OUTCOME_REMOVED
    run(
        capsys, "observe", "user:u1", "Pays yearly", "--context", "billing", "--key", "cycle",
        "--confidence", "0.9", *target,
    )  # fmt: skip
    for group in ("team:t1", "org:o1"):
        shown = reply(run(capsys, "show", group, *target), selfmodel_pb2.GetSelfModelResponse)
        model = shown.snapshot
        assert model.group_users == 1 and not model.beliefs
        assert [(r.statement, r.holders) for r in model.rollups] == [("Pays yearly", 1)]
