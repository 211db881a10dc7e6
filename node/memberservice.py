"""AdminService's membership calls: AddMember, RemoveMember, ListMembers (docs/groups.md).

A group's members are registers in its own reserved context (sync.members), set and cleared
through Engine.put with the caller as their source, audited in the same batch. An add of a
present member and a remove of an absent one change nothing, and say so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from node import listing, validation
from node.audit import AuditRecord
from node.auth import Principal
from node.errors import InvalidArgument, QuotaViolation, Reason, ResourceExhausted, map_errors
from node.validation import Limits
from selfmodel.admin.v1 import admin_pb2
from sync.codec import EnumWords, encode_token, subject_to_proto
from sync.members import MEMBERS, check_member, is_group, member_statement
from sync.observation import Subject

OUTCOMES = EnumWords(admin_pb2.MembershipOutcome)
Pair = admin_pb2.AddMemberRequest | admin_pb2.RemoveMemberRequest


if TYPE_CHECKING:
    from node.engine import Engine


class MembersAdmin:
    """The membership calls of AdminService (node.adminservice.AdminServicer takes them)."""

    engine: Engine
    identify: Callable[[grpc.ServicerContext, Limits], Principal]
    limits: Limits
    domain: str  # the node's domain, which an agent's token domains must match

    @map_errors
    def AddMember(
        self, request: admin_pb2.AddMemberRequest, context: grpc.ServicerContext
    ) -> admin_pb2.AddMemberResponse:
        who, group, member = self._pair(request, context, "add members")
        if member in self.engine.groups.members(group):
            return admin_pb2.AddMemberResponse(
                outcome=OUTCOMES.number("already_member"),  # type: ignore[arg-type]
                handoff_token=self._position(group),
            )
        self._room_for(member)
        audit = _audit(who, "add_member", group, member)
        statement = member_statement(member)
        token = self.engine.put(group, MEMBERS, member.id, statement, who.agent, audit)
        return admin_pb2.AddMemberResponse(
            outcome=OUTCOMES.number("added"),  # type: ignore[arg-type]
            handoff_token=token,
        )

    @map_errors
    def RemoveMember(
        self, request: admin_pb2.RemoveMemberRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RemoveMemberResponse:
        who, group, member = self._pair(request, context, "remove members")
        if member not in self.engine.groups.members(group):
            return admin_pb2.RemoveMemberResponse(
                outcome=OUTCOMES.number("not_member"),  # type: ignore[arg-type]
                handoff_token=self._position(group),
            )
        audit = _audit(who, "remove_member", group, member)
        token = self.engine.put(group, MEMBERS, member.id, None, who.agent, audit)
        return admin_pb2.RemoveMemberResponse(
            outcome=OUTCOMES.number("removed"),  # type: ignore[arg-type]
            handoff_token=token,
        )

    @map_errors
    def ListMembers(
        self, request: admin_pb2.ListMembersRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListMembersResponse:
        who = self.identify(context, self.limits)
        group = self._group(request)
        who.check_tenant(group.tenant)
        size = listing.page_size(request.page_size, "page_size", self.limits.max_page_size)
        asked = validation.page_token(request.page_token, "page_token", self.limits)
        members = self.engine.groups.members(group)
        page, token = listing.members_page(group, members, asked, size)
        reply = admin_pb2.ListMembersResponse(
            next_page_token=token, group_users=self.engine.groups.rollup(group).users
        )
        for member in page:
            subject_to_proto(member, reply.members.add())
        return reply

    def _group(self, request: Pair | admin_pb2.ListMembersRequest) -> Subject:
        group = validation.subject(request.group, "group", self.limits, request.HasField("group"))
        if not is_group(group):
            raise InvalidArgument(
                "group",
                f"must be a TEAM or ORG subject, got {group}",
                reason=Reason.MEMBER_INVALID,
                metadata={"group": str(group)},
            )
        return group

    def _pair(
        self, request: Pair, context: grpc.ServicerContext, action: str
    ) -> tuple[Principal, Subject, Subject]:
        """The caller, the group and the member a membership change names, checked in that
        order: the tenant and the permission before anything about the group is looked up."""
        who = self.identify(context, self.limits)
        group = self._group(request)
        member = validation.subject(
            request.member, "member", self.limits, request.HasField("member")
        )
        who.check_tenant(group.tenant)
        who.check_members(action)
        if not who.is_operator:  # an agent writes through the nodes of its domains only
            who.check_domain(self.domain)
        try:
            check_member(group, member)
        except ValueError as exc:
            field, _, rule = str(exc).partition(": ")
            raise InvalidArgument(
                field,
                rule,
                reason=Reason.MEMBER_INVALID,
                metadata={"group": str(group), "member": str(member)},
            ) from None
        return who, group, member

    def _room_for(self, member: Subject) -> None:
        """Refuses a new group of a member already in ``max_groups_per_member``: each write of
        a member moves every group it is in, under the node's one groups lock."""
        most = self.limits.max_groups_per_member
        joined = len(self.engine.groups.groups_of(member))
        if joined >= most:
            raise ResourceExhausted(
                f"member {member} is in {joined} groups, the most a member may join "
                "(setting max_groups_per_member): remove it from one first",
                reason=Reason.MEMBER_GROUPS_EXHAUSTED,
                metadata={"member": str(member), "limit": most, "setting": "max_groups_per_member"},
                quota=[QuotaViolation(f"member {member}", f"at most {most} groups")],
            )

    def _position(self, group: Subject) -> str:
        return encode_token({group: self.engine.position(group)})


def _audit(who: Principal, action: str, group: Subject, member: Subject) -> AuditRecord:
    detail = f"member={member_statement(member)}"
    return AuditRecord(who.agent, who.role, action, group, detail, who.tenant or "")


__all__ = ["MembersAdmin"]
