"""The Admin RPCs of attribution: what a source contributed, and withdrawing it across a tenant.

Part of node.adminservice.AdminServicer (a base class of it): each method identifies the caller,
checks it is an operator of the tenant named, calls the engine once, and builds the reply.
Listing pages follow the attribution index (node.store.sources); a page token is the position
after the last contribution sent, bound to its tenant and source (node.listing's tokens).

Tenants, as in the other tenant-scoped Admin calls (ListAudit, GetStatus, ListSourceWeights):
an empty ``tenant`` is the caller's token's; the development principal of a node without
tokens may name any, and a listing of it without one spans every tenant. A withdrawal or a lift
always changes one tenant's register, so it must name one there: agent ids are per tenant (the
same id in two tenants names two agents), never withdrawn across tenants at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from node import listing, validation
from node.audit import AuditRecord
from node.auth import Principal
from node.engine import Engine
from node.errors import InvalidArgument, map_errors
from node.validation import Limits
from node.withdrawals import WITHDRAWN, slots_of_sources, sources_subject
from selfmodel.admin.v1 import admin_pb2
from sync.codec import subject_to_proto
from sync.crdt import register
from sync.hlc import physical_ms

LISTING = "ListSourceContributions"


class SourcesAdmin:
    """ListSourceContributions, WithdrawSource, LiftSourceWithdrawal."""

    engine: Engine
    identify: Callable[[grpc.ServicerContext, Limits], Principal]
    limits: Limits

    def _scope(
        self, request: Any, context: grpc.ServicerContext, action: str
    ) -> tuple[Principal, str | None, str]:
        """The caller (an operator of the tenant named), the tenant named (None: every tenant,
        for the development principal naming none) and the source named."""
        who = self.identify(context, self.limits)
        who.check_operator(action)
        tenant = request.tenant or who.tenant
        if tenant is not None:
            validation.identifier(tenant, "tenant", self.limits.max_id)
            who.check_tenant(tenant)
        source = validation.source(request.source, "source", self.limits)
        return who, tenant, source

    def _operator_of(
        self, request: Any, context: grpc.ServicerContext, action: str
    ) -> tuple[Principal, str, str]:
        """``_scope`` of a call that changes one tenant: it must name one."""
        who, tenant, source = self._scope(request, context, action)
        if tenant is None:
            raise InvalidArgument(
                "tenant",
                "is required on a node without tokens to withdraw or lift a source: agent ids "
                "are per tenant, so a withdrawal names the tenant whose source it is",
            )
        return who, tenant, source

    @map_errors
    def ListSourceContributions(
        self, request: admin_pb2.ListSourceContributionsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListSourceContributionsResponse:
        _, tenant, source = self._scope(request, context, "list a source's contributions")
        size = listing.page_size(request.page_size, "page_size", self.limits.max_page_size)
        asked = validation.page_token(request.page_token, "page_token", self.limits)
        bound = [tenant or "", source]  # "" (never a tenant's name): every tenant's listing
        after = listing.position_of(asked, "page_token", LISTING, bound)
        rows = self.engine.store.contributions(tenant, source, after, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        reply = admin_pb2.ListSourceContributionsResponse()
        withdrawn_at = None if tenant is None else self.engine.withdrawals.of(tenant).get(source)
        if withdrawn_at is not None:
            reply.withdrawn_at.FromMilliseconds(physical_ms(withdrawn_at))
        for _, c in rows:
            since = self.engine.withdrawals.of(c.subject.tenant).get(source)
            item = reply.contributions.add(
                context=c.context,
                key=c.key,
                observation_id=str(c.dot),
                withdrawn=since is not None and c.hlc < since,
            )
            subject_to_proto(c.subject, item.subject)
            item.observed_at.FromMilliseconds(physical_ms(c.hlc))
        if more:
            reply.next_page_token = listing.position_token(LISTING, bound, rows[-1][0])
        return reply

    @map_errors
    def WithdrawSource(
        self, request: admin_pb2.WithdrawSourceRequest, context: grpc.ServicerContext
    ) -> admin_pb2.WithdrawSourceResponse:
        who, tenant, source = self._operator_of(request, context, "withdraw a source")
        subject = sources_subject(tenant)
        audit = AuditRecord(
            who.agent, who.role, "withdraw_source", subject, f"source={source}", who.tenant or ""
        )
        token = self.engine.put(subject, WITHDRAWN, source, "withdrawn", who.agent, audit)
        value = register(self.engine.state(subject), WITHDRAWN, source)
        reply = admin_pb2.WithdrawSourceResponse(handoff_token=token)
        if value is not None:
            reply.withdrawn_at.FromMilliseconds(physical_ms(value.hlc))
        reply.subjects = len(slots_of_sources(self.engine.store, tenant, {source}))
        return reply

    @map_errors
    def LiftSourceWithdrawal(
        self, request: admin_pb2.LiftSourceWithdrawalRequest, context: grpc.ServicerContext
    ) -> admin_pb2.LiftSourceWithdrawalResponse:
        who, tenant, source = self._operator_of(request, context, "lift a source's withdrawal")
        subject = sources_subject(tenant)
        audit = AuditRecord(
            who.agent, who.role, "lift_withdrawal", subject, f"source={source}", who.tenant or ""
        )
        token = self.engine.put(subject, WITHDRAWN, source, None, who.agent, audit)
        return admin_pb2.LiftSourceWithdrawalResponse(handoff_token=token)


__all__ = ["SourcesAdmin"]
