"""Security promises, against real node processes started with a token file."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from federation import tokens
from federation.cli import main
from federation.client import AsyncClient, AuditEntry, Client, user
from federation.processes import node_command
from node.errors import PermissionDenied, Unauthenticated
from selfmodel.admin.v1 import admin_pb2, admin_pb2_grpc
from selfmodel.v1 import model_pb2, selfmodel_pb2, selfmodel_pb2_grpc
from tests.nodes import NodeProcess, free_port

USER = model_pb2.SUBJECT_KIND_USER


def subject(tenant: str, id: str) -> model_pb2.Subject:
    return model_pb2.Subject(tenant=tenant, kind=USER, id=id)


@dataclass
class Secured:
    node: NodeProcess
    file: Path
    tokens: dict[str, str]
    channel: grpc.Channel

    def stub(self) -> selfmodel_pb2_grpc.SelfModelServiceStub:
        return selfmodel_pb2_grpc.SelfModelServiceStub(self.channel)

    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel)

    def md(self, who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[who]}"),)

    def client(self, who: str, tenant: str = "acme", **kw: object) -> Client:
        return Client(self.node.address, token=self.tokens[who], tenant=tenant, **kw)  # type: ignore[arg-type]


PRINCIPALS = {
    # name: (agent, tenant, role, write, domains)
    "sales": ("sales_agent", "acme", "agent", ["purchase_*", "team"], ["sales"]),
    "support": ("support_agent", "acme", "agent", ["support_*", "team"], ["*"]),
    "operator": ("acme_ops", "acme", "operator", ["*"], ["*"]),
    "elsewhere": ("sales_agent", "acme", "agent", ["*"], ["support"]),
    "globex": ("globex_agent", "globex", "agent", ["*"], ["*"]),
    "globex_ops": ("globex_ops", "globex", "operator", ["*"], ["*"]),
    # Tenants a prefix or case match would confuse with acme.
    "acme2": ("near_agent", "acme2", "agent", ["*"], ["*"]),
    "acm": ("near_agent", "acm", "agent", ["*"], ["*"]),
    "ACME": ("near_agent", "ACME", "agent", ["*"], ["*"]),
}


@pytest.fixture
def secured(start_node: Callable[..., NodeProcess], tmp_path: Path) -> Iterator[Secured]:
    file = tmp_path / "tokens.toml"
    made = {}
    for name, (agent, tenant, role, write, domains) in PRINCIPALS.items():
        made[name], _ = tokens.create(file, agent, tenant, role, write, domains)
    node = start_node("sales", "--tokens", str(file), "--domain", "sales")
    with grpc.insecure_channel(node.address) as channel:
        yield Secured(node, file, made, channel)


def status_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def full_status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, tuple[object, ...]]:
    try:
        call()
    except grpc.RpcError as exc:
        trailers = tuple(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
        return exc.code(), exc.details(), trailers  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, "", ()


def observe(
    ctx: str = "purchase_motivation",
    key: str = "",
    tenant: str = "acme",
    id: str = "u-1",
    statement: str = "Wants quick time-to-value",
) -> selfmodel_pb2.ObserveRequest:
    return selfmodel_pb2.ObserveRequest(
        subject=subject(tenant, id), context=ctx, key=key, statement=statement, confidence=0.8
    )


def get(s: Secured, who: str, tenant: str = "acme", id: str = "u-1") -> model_pb2.SelfModelSnapshot:
    req = selfmodel_pb2.GetSelfModelRequest(subject=subject(tenant, id), include_uncertain=True)
    reply: model_pb2.SelfModelSnapshot = (
        s.stub().GetSelfModel(req, metadata=s.md(who), timeout=5).snapshot
    )
    return reply


def test_calls_without_a_valid_token_are_unauthenticated(secured: Secured) -> None:
    stub, admin = secured.stub(), secured.admin()
    req = selfmodel_pb2.GetSelfModelRequest(subject=subject("acme", "u-1"))
    for metadata in [(), (("x-agent-id", "sales_agent"),), (("authorization", "Bearer nope"),),
                     (("authorization", "Basic c2FsZXM6cHc="),)]:  # fmt: skip
        for call in (
            lambda md=metadata: stub.GetSelfModel(req, metadata=md, timeout=5),
            lambda md=metadata: stub.Observe(observe(), metadata=md, timeout=5),
            lambda md=metadata: admin.GetStatus(
                admin_pb2.GetStatusRequest(), metadata=md, timeout=5),
            lambda md=metadata: next(stub.WatchSelfModel(
                selfmodel_pb2.WatchSelfModelRequest(subject=subject("acme", "u-1")),
                metadata=md, timeout=5)),
        ):  # fmt: skip
            code, details = status_of(call)
            assert code == grpc.StatusCode.UNAUTHENTICATED, details
    assert "selfmodel token create" in status_of(lambda: stub.GetSelfModel(req, timeout=5))[1]
    assert get(secured, "sales").subject.id == "u-1"


def test_a_revoked_token_is_refused_and_a_new_one_accepted_without_a_restart(
    secured: Secured,
) -> None:
    with secured.client("sales") as sales:
        sales.observe(user("u-1"), "Wants quick time-to-value", confidence=0.8,
                      context="purchase_motivation")  # fmt: skip
        tokens.revoke(secured.file, agent="sales_agent", tenant="acme")
        deadline = time.monotonic() + 5
        while True:
            try:
                sales.self_model(user("u-1"))
            except Unauthenticated as exc:
                assert "was revoked" in str(exc)
                break
            assert time.monotonic() < deadline, "the revoked token still works after 5 s"
            time.sleep(0.1)
    fresh, _ = tokens.create(secured.file, "sales_agent", "acme", "agent", ["purchase_*"])
    with Client(secured.node.address, token=fresh, tenant="acme") as again:
        deadline = time.monotonic() + 5
        while True:
            try:
                assert again.self_model(user("u-1")).beliefs()
                break
            except Unauthenticated:
                assert time.monotonic() < deadline, "the new token is not accepted after 5 s"
                time.sleep(0.1)
    assert secured.node.running


def test_an_agent_writing_outside_its_contexts_or_domains_is_refused_and_nothing_is_written(
    secured: Secured,
) -> None:
    stub = secured.stub()
    before = get(secured, "operator")
    code, details = status_of(
        lambda: stub.Observe(observe("budget"), metadata=secured.md("sales"), timeout=5)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "may not write context 'budget'" in details and "purchase_*" in details
    batch = selfmodel_pb2.ObserveBatchRequest(
        observations=[observe("purchase_motivation"), observe("support_mood", id="u-2")]
    )
    code, details = status_of(
        lambda: stub.ObserveBatch(batch, metadata=secured.md("sales"), timeout=5)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "support_mood" in details
    # A token bound to the support domain may not write through the sales node.
    code, details = status_of(
        lambda: stub.Observe(observe(), metadata=secured.md("elsewhere"), timeout=5)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "domain 'sales'" in details
    # An agent may not retract (write) in a context outside its globs either.
    retract = selfmodel_pb2.RetractRequest(
        subject=subject("acme", "u-1"), context="budget", key="k"
    )
    code, _ = status_of(lambda: stub.Retract(retract, metadata=secured.md("sales"), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED

    after = get(secured, "operator")
    assert after.handoff_token == before.handoff_token and not after.beliefs
    assert not get(secured, "operator", id="u-2").beliefs


def test_tenant_a_learns_nothing_about_tenant_b_subjects(secured: Secured) -> None:
    """Every method answers a subject of another tenant identically, existing or not."""
    with secured.client("sales") as sales:
        sales.observe(user("u-1"), "Wants quick time-to-value", confidence=0.8,
                      context="purchase_motivation", key="motivation")  # fmt: skip
    stub = secured.stub()

    def calls(id: str) -> dict[str, Callable[[], object]]:
        s = subject("acme", id)
        md, ops = secured.md("globex"), secured.md("globex_ops")
        return {
            "get": lambda: stub.GetSelfModel(
                selfmodel_pb2.GetSelfModelRequest(subject=s), metadata=md, timeout=5),
            "explain": lambda: stub.ExplainBelief(selfmodel_pb2.ExplainBeliefRequest(
                subject=s, context="purchase_motivation", key="motivation"),
                metadata=md, timeout=5),
            "watch": lambda: next(stub.WatchSelfModel(
                selfmodel_pb2.WatchSelfModelRequest(subject=s), metadata=md, timeout=5)),
            "observe": lambda: stub.Observe(observe(id=id), metadata=md, timeout=5),
            "batch": lambda: stub.ObserveBatch(selfmodel_pb2.ObserveBatchRequest(
                observations=[observe(id=id)]), metadata=md, timeout=5),
            "retract": lambda: stub.Retract(selfmodel_pb2.RetractRequest(
                subject=s, context="purchase_motivation", key="motivation", source="sales_agent"),
                metadata=ops, timeout=5),
            "forget": lambda: stub.ForgetSubject(
                selfmodel_pb2.ForgetSubjectRequest(subject=s), metadata=ops, timeout=5),
        }  # fmt: skip

    existing, missing = calls("u-1"), calls("u-does-not-exist")
    for method in existing:
        answer = full_status(existing[method])
        code, details, _ = answer
        assert code == grpc.StatusCode.PERMISSION_DENIED, (method, details)
        assert details.endswith(
            "of tenant 'globex' may not use subjects of tenant 'acme': use a token of that tenant"
        )
        # The same status, details and trailers, whether the subject exists or not.
        assert answer == full_status(missing[method]), method
    [belief] = get(secured, "operator").beliefs
    assert belief.statement == "Wants quick time-to-value"


def test_tenants_near_acme_by_prefix_case_or_look_alike_are_refused_both_ways(
    secured: Secured,
) -> None:
    """Exact tenant match: acme2, acm and ACME neither read nor write acme's subjects, nor acme
    theirs; an empty or look-alike tenant is no tenant at all."""
    with secured.client("sales") as sales:
        sales.observe(user("u-1"), "Wants quick time-to-value", confidence=0.8,
                      context="purchase_motivation", key="motivation")  # fmt: skip
    stub = secured.stub()
    for near in ("acme2", "acm", "ACME"):
        # near's agent on acme's subject: refused, whatever the method
        for call in (
            lambda n=near: get(secured, n),
            lambda n=near: stub.Observe(observe(), metadata=secured.md(n), timeout=5),
            lambda n=near: next(stub.WatchSelfModel(
                selfmodel_pb2.WatchSelfModelRequest(subject=subject("acme", "u-1")),
                metadata=secured.md(n), timeout=5)),
        ):  # fmt: skip
            code, details = status_of(call)
            assert code == grpc.StatusCode.PERMISSION_DENIED, (near, details)
            assert f"of tenant {near!r} may not use subjects of tenant 'acme'" in details
        # acme's agent on near's subject of the same id: refused too
        code, details = status_of(lambda n=near: get(secured, "sales", tenant=n))
        assert code == grpc.StatusCode.PERMISSION_DENIED, (near, details)
        assert f"of tenant 'acme' may not use subjects of tenant {near!r}" in details
        # near's own u-1 is its own: it holds nothing of acme's, and writing it leaves acme's be
        assert not get(secured, near, tenant=near).beliefs
        stub.Observe(observe(tenant=near, statement=f"Written by {near}"),
                     metadata=secured.md(near), timeout=5)  # fmt: skip
        assert [b.statement for b in get(secured, near, tenant=near).beliefs] == [
            f"Written by {near}"
        ]
    for nowhere in ("", "\u0430cme"):  # empty; Cyrillic a
        for who in ("sales", "acme2"):
            code, details = status_of(lambda t=nowhere, w=who: get(secured, w, tenant=t))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (nowhere, details)
            assert details.startswith("subject.tenant: "), details
    [belief] = get(secured, "operator").beliefs
    assert belief.statement == "Wants quick time-to-value"
    assert [s.source for s in belief.supporters] == ["sales_agent"]


def test_the_source_is_the_tokens_agent_whatever_the_call_claims(secured: Secured) -> None:
    with secured.client("sales", agent="mallory") as sales:  # sends x-agent-id: mallory
        written = sales.observe(user("u-1"), "Wants quick time-to-value", confidence=0.8,
                                context="purchase_motivation", key="motivation")  # fmt: skip
    # A payload carrying a source anyway (an unknown field 15 = "mallory") changes nothing.
    raw = observe(statement="Budget is tight").SerializeToString() + b"\x7a\x07mallory"
    call = secured.channel.unary_unary("/selfmodel.v1.SelfModelService/Observe")
    call(raw, metadata=secured.md("sales"), timeout=5)
    model = get(secured, "operator")
    sources = {s.source for b in model.beliefs for s in [*b.supporters, *b.dissenters]}
    assert sources == {"sales_agent"}
    assert written.token
    # Only an operator may name another source, and only for retracting.
    req = selfmodel_pb2.RetractRequest(
        subject=subject("acme", "u-1"), context="purchase_motivation", key="motivation",
        source="mallory",
    )  # fmt: skip
    code, details = status_of(
        lambda: secured.stub().Retract(req, metadata=secured.md("sales"), timeout=5)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "only its own" in details


def test_an_agent_cannot_retract_anothers_observation_an_operator_can_and_the_audit_shows_it(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    with secured.client("sales") as sales:
        sales.observe(user("u-1"), "12 people", confidence=0.9, context="team", key="team_size")
    with secured.client("support") as support:
        with pytest.raises(PermissionDenied, match="only its own observations"):
            support.retract(user("u-1"), "team", "team_size", source="sales_agent")
        assert support.retract(user("u-1"), "team", "team_size").count == 0  # its own: none
        with pytest.raises(PermissionDenied, match="only an operator may forget"):
            support.forget(user("u-1"))
    assert get(secured, "operator").beliefs[0].statement == "12 people"

    with secured.client("operator") as ops:
        assert ops.retract(user("u-1"), "team", "team_size", source="sales_agent").count == 1
        ops.forget(user("u-2"))
    assert not get(secured, "operator").beliefs

    admin = secured.admin()
    reply = admin.ListAudit(
        admin_pb2.ListAuditRequest(), metadata=secured.md("operator"), timeout=5
    )
    assert [(e.action, e.actor, e.actor_role, e.subject.id, e.detail) for e in reply.entries] == [
        (admin_pb2.AUDIT_ACTION_RETRACT_ON_BEHALF, "acme_ops", "operator", "u-1",
         "context=team key=team_size source=sales_agent retracted=1"),
        (admin_pb2.AUDIT_ACTION_FORGET, "acme_ops", "operator", "u-2", ""),
    ]  # fmt: skip
    assert all(e.node == "sales" and e.time.seconds > 0 for e in reply.entries)
    assert reply.next_cursor == ""
    # Agents may not read the audit log; another tenant's operator sees none of it.
    code, _ = status_of(lambda: admin.ListAudit(
        admin_pb2.ListAuditRequest(), metadata=secured.md("support"), timeout=5))  # fmt: skip
    assert code == grpc.StatusCode.PERMISSION_DENIED
    other = admin.ListAudit(
        admin_pb2.ListAuditRequest(), metadata=secured.md("globex_ops"), timeout=5
    )
    assert not other.entries
    # Paging by cursor.
    page = admin.ListAudit(
        admin_pb2.ListAuditRequest(limit=1), metadata=secured.md("operator"), timeout=5
    )
    assert len(page.entries) == 1 and page.next_cursor
    rest = admin.ListAudit(admin_pb2.ListAuditRequest(after=page.next_cursor),
                           metadata=secured.md("operator"), timeout=5)  # fmt: skip
    assert [e.action for e in rest.entries] == [admin_pb2.AUDIT_ACTION_FORGET]
    # The same log through the client library and the command line.
    with secured.client("operator") as ops:
        first, cursor = ops.audit(limit=1)
        more, end = ops.audit(after=cursor)
    assert [(e.action, e.subject.id, e.actor) for e in first + more] == [
        ("retract_on_behalf", "u-1", "acme_ops"), ("forget", "u-2", "acme_ops")
    ]  # fmt: skip
    assert first[0].time.year >= 2026 and end == ""
    with secured.client("support") as support, pytest.raises(PermissionDenied):
        support.audit()

    async def asynchronously() -> list[AuditEntry]:
        async with AsyncClient(secured.node.address, token=secured.tokens["operator"]) as ops:
            entries, _ = await ops.audit()
        return entries

    assert asyncio.run(asynchronously()) == first + more
    cli = [
        "audit", "--target", secured.node.address, "--token", secured.tokens["operator"],
        "--limit", "1",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as ended:
        main(cli)
    assert ended.value.code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [e["action"] for e in printed["entries"]] == ["AUDIT_ACTION_RETRACT_ON_BEHALF"]
    assert printed["nextCursor"] == cursor


def run_node(tmp_path: Path, listen: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = node_command("n", data_dir=tmp_path / "data", listen=listen, metrics="", args=args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def test_a_node_without_tokens_refuses_to_bind_a_non_loopback_address(tmp_path: Path) -> None:
    done = run_node(tmp_path, f"0.0.0.0:{free_port()}")
    assert done.returncode == 2
    assert "refusing to serve 0.0.0.0" in done.stderr and "--tokens FILE" in done.stderr


def test_a_node_with_a_missing_token_file_refuses_to_start(tmp_path: Path) -> None:
    done = run_node(tmp_path, f"127.0.0.1:{free_port()}", "--tokens", str(tmp_path / "x"))
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_a_development_node_says_loudly_that_authentication_is_off(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node("dev")
    assert "AUTHENTICATION IS OFF" in node.log()
