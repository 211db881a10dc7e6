"""The Admin RPCs of attribution: what a source contributed, and withdrawing it across a tenant.

Part of node.servicer.AdminServicer (a base class of it): each method identifies the caller,
checks it is an operator of the tenant named, calls the engine once, and builds the reply.
Listing pages follow the attribution index (node.store.sources); a page token is the position
after the last contribution sent, bound to its tenant and source (node.listing's tokens).
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
from node.withdrawals import WITHDRAWN, concerned, sources_subject
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

    def _operator_of(
        self, request: Any, context: grpc.ServicerContext, action: str
    ) -> tuple[Principal, str, str]:
        """The caller (an operator of the tenant named), the tenant and the source named."""
        who = self.identify(context, self.limits)
        who.check_operator(action)
        tenant = request.tenant or who.tenant or ""
        if not tenant:
            raise InvalidArgument("tenant", "is required on a node without tokens")
        validation.identifier(tenant, "tenant", self.limits.max_id)
        who.check_tenant(tenant)
        source = validation.source(request.source, "source", self.limits)
        return who, tenant, source

    @map_errors
    def ListSourceContributions(
        self, request: admin_pb2.ListSourceContributionsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListSourceContributionsResponse:
        _, tenant, source = self._operator_of(request, context, "list a source's contributions")
        size = listing.page_size(request.page_size, "page_size", self.limits.max_page_size)
        asked = validation.page_token(request.page_token, "page_token", self.limits)
        after = listing.position_of(asked, "page_token", LISTING, [tenant, source])
        rows = self.engine.store.contributions(tenant, source, after, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        reply = admin_pb2.ListSourceContributionsResponse()
        since = self.engine.withdrawals.of(tenant).get(source)
        if since is not None:
            reply.withdrawn_at.FromMilliseconds(physical_ms(since))
        for _, c in rows:
            item = reply.contributions.add(
                context=c.context,
                key=c.key,
                observation_id=str(c.dot),
                withdrawn=since is not None and c.hlc < since,
            )
            subject_to_proto(c.subject, item.subject)
            item.observed_at.FromMilliseconds(physical_ms(c.hlc))
        if more:
            reply.next_page_token = listing.position_token(LISTING, [tenant, source], rows[-1][0])
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
        reply.subjects = len(concerned(self.engine.store, tenant, {source}))
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
