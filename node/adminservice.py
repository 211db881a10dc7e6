"""AdminService: the node's status, its audit log and learned source weights here; the
governance, attribution and membership calls from their modules (node.adminsettings,
node.sources_admin, node.memberservice), its base classes.

Each call identifies its caller and answers what its role and tenant may see, from the engine,
the status or the learning the servicer is given.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from node import convert, validation
from node.adminsettings import SettingsAdmin
from node.auth import Principal
from node.engine import Engine
from node.errors import map_errors
from node.governor import Governor
from node.identity import identify_by_header
from node.learning import Learning
from node.memberservice import MembersAdmin
from node.sources_admin import SourcesAdmin
from node.validation import Limits
from selfmodel.admin.v1 import admin_pb2, admin_pb2_grpc


class AdminServicer(SettingsAdmin, SourcesAdmin, MembersAdmin, admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        engine: Engine,
        status: Callable[[], admin_pb2.GetStatusResponse],
        identify: Callable[[grpc.ServicerContext, Limits], Principal] = identify_by_header,
        limits: Limits | None = None,
        governor: Governor | None = None,
        learning: Learning | None = None,
        domain: str = "",
    ) -> None:
        self.engine = engine
        self.domain = domain  # the node's domain, which an agent's token domains must match
        self.status = status
        self.identify = identify
        self.limits = limits or Limits()
        self.governor = governor  # the cluster's settings (node.adminsettings)
        self.learning = learning  # None: the node does not learn reliability

    @map_errors
    def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> admin_pb2.GetStatusResponse:
        who = self.identify(context, self.limits)
        status = self.status()
        if who.tenant is not None:  # the subject count of the caller's tenant, for its operators
            status.subjects = self.engine.count_subjects(who.tenant) if who.is_operator else 0
        return status

    @map_errors
    def ListAudit(
        self, request: admin_pb2.ListAuditRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListAuditResponse:
        who = self.identify(context, self.limits)
        who.check_operator("read the audit log")
        after = validation.audit_cursor(request.after, "after")
        limit = min(request.limit or 100, 1000)
        entries, cursor = self.engine.audit.list(after, limit, tenant=who.tenant)
        return convert.audit_page(entries, cursor)

    @map_errors
    def ListSourceWeights(
        self, request: admin_pb2.ListSourceWeightsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListSourceWeightsResponse:
        who = self.identify(context, self.limits)
        who.check_operator("list learned source weights")
        if request.context:
            validation.context_name(request.context, "context", self.limits)
        tenant = request.tenant or who.tenant
        if tenant is not None:
            validation.identifier(tenant, "tenant", self.limits.max_id)
            who.check_tenant(tenant)  # weights are per tenant, as agent ids are
        if self.learning is None:
            return convert.source_weights(False, [])
        tenants = [tenant] if tenant is not None else self.learning.tenants()
        wanted = [
            (t, w)
            for t in tenants
            for w in self.learning.weights(t)
            if not request.context or w.context == request.context
        ]
        return convert.source_weights(True, wanted)


__all__ = ["AdminServicer"]
