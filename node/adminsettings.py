"""The Admin calls of governance: the settings in force, and operators' cluster-wide changes.

Each call identifies its caller, refuses any but an operator, checks the request (a bad value
is INVALID_ARGUMENT naming the field), and hands one register write to node.governor, audited
in the same batch.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from node import validation
from node.audit import AuditRecord
from node.auth import Principal
from node.errors import InvalidArgument, map_errors
from node.governance import FIELDS, InForce, check_setting
from node.governor import Governor
from node.validation import Limits
from selfmodel.admin.v1 import admin_pb2
from sync.codec import POLICIES, EnumWords
from sync.governance import EVERY, GOVERNANCE, SettingValue, encode
from sync.hlc import physical_ms

SETTING_FIELDS = EnumWords(admin_pb2.SettingField)
ORIGINS = EnumWords(admin_pb2.SettingOrigin)
# The proto's field words and the policy book's names of them.
_NAMES = dict(zip([w for w in SETTING_FIELDS.value if w], FIELDS, strict=True))
_WORDS = {name: word for word, name in _NAMES.items()}


class SettingsAdmin:
    """The governance calls of AdminService (node.adminservice.AdminServicer takes them)."""

    identify: Callable[[grpc.ServicerContext, Limits], Principal]
    limits: Limits
    governor: Governor | None

    def _operator(
        self, context: grpc.ServicerContext, action: str, *, cluster: bool = True
    ) -> tuple[Principal, Governor]:
        """The caller, an operator; for a change (``cluster``), a cluster operator."""
        who = self.identify(context, self.limits)
        if cluster:
            who.check_cluster_operator(action)
        else:
            who.check_operator(action)
        assert self.governor is not None, "AdminServicer without a governor serves no settings"
        return who, self.governor

    def _context(self, value: str) -> str:
        """A request's context: "" is every context (the default)."""
        if not value:
            return EVERY
        return validation.context_name(value, "context", self.limits)

    def _audit(self, who: Principal, action: str, detail: str) -> AuditRecord:
        return AuditRecord(who.agent, who.role, action, GOVERNANCE, detail, who.tenant or "")

    @map_errors
    def GetSettings(
        self, request: admin_pb2.GetSettingsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.GetSettingsResponse:
        _, governor = self._operator(context, "read the cluster's settings", cluster=False)
        settings, reliability, disagreements = governor.in_force()
        reply = admin_pb2.GetSettingsResponse(disagreements=[str(d) for d in disagreements])
        for s in settings:
            (ctx, name), item = s.scope, reply.settings.add()
            item.context = "" if ctx == EVERY else ctx
            item.field = SETTING_FIELDS.number(_WORDS[name])  # type: ignore[assignment]
            if name == "policy":
                item.policy = POLICIES.number(str(s.value))  # type: ignore[assignment]
            else:
                item.number = float(s.value or 0.0)  # no decay: 0
            _origin(s, item)
            item.inherited = s.inherited
        for r in reliability:
            (source, ctx), entry = r.scope, reply.reliability.add()
            entry.source = source
            entry.context = "" if ctx == EVERY else ctx
            entry.reliability = float(r.value or 0.0)
            _origin(r, entry)
        return reply

    @map_errors
    def SetSetting(
        self, request: admin_pb2.SetSettingRequest, context: grpc.ServicerContext
    ) -> admin_pb2.SetSettingResponse:
        who, governor = self._operator(context, "change the cluster's settings")
        ctx = self._context(request.context)
        name = _field(request.field)
        value: SettingValue
        if name == "policy":
            if request.WhichOneof("value") != "policy" or not request.policy:
                raise InvalidArgument(
                    "policy", f"is required for field policy: one of {POLICIES.names}"
                )
            value = POLICIES.of(request.policy)
            if not value:
                raise InvalidArgument("policy", f"must be one of {POLICIES.names}")
        else:
            if request.WhichOneof("value") != "number":
                raise InvalidArgument("number", f"is required for field {_WORDS[name]}")
            value = request.number
        try:
            checked = check_setting(ctx, name, value)
        except ValueError as exc:
            field = "policy" if name == "policy" else "number"
            raise InvalidArgument(field, str(exc).replace(f"{name}: ", f"{name} ", 1)) from None
        detail = f"context={ctx} field={name} value={encode(checked)}"
        audit = self._audit(who, "set_setting", detail)
        token = governor.set_setting(ctx, name, checked, who.agent, audit)
        return admin_pb2.SetSettingResponse(handoff_token=token)

    @map_errors
    def ClearSetting(
        self, request: admin_pb2.ClearSettingRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ClearSettingResponse:
        who, governor = self._operator(context, "change the cluster's settings")
        ctx = self._context(request.context)
        name = _field(request.field)
        audit = self._audit(who, "clear_setting", f"context={ctx} field={name}")
        token = governor.clear_setting(ctx, name, who.agent, audit)
        return admin_pb2.ClearSettingResponse(handoff_token=token)

    @map_errors
    def SetReliability(
        self, request: admin_pb2.SetReliabilityRequest, context: grpc.ServicerContext
    ) -> admin_pb2.SetReliabilityResponse:
        who, governor = self._operator(context, "change the cluster's settings")
        source = validation.source(request.source, "source", self.limits)
        ctx = self._context(request.context)
        value = validation.unit_interval(request.reliability, "reliability")
        detail = f"source={source} context={ctx} reliability={value!r}"
        audit = self._audit(who, "set_reliability", detail)
        token = governor.set_reliability(source, ctx, value, who.agent, audit)
        return admin_pb2.SetReliabilityResponse(handoff_token=token)

    @map_errors
    def ClearReliability(
        self, request: admin_pb2.ClearReliabilityRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ClearReliabilityResponse:
        who, governor = self._operator(context, "change the cluster's settings")
        source = validation.source(request.source, "source", self.limits)
        ctx = self._context(request.context)
        audit = self._audit(who, "clear_reliability", f"source={source} context={ctx}")
        token = governor.clear_reliability(source, ctx, who.agent, audit)
        return admin_pb2.ClearReliabilityResponse(handoff_token=token)


def _field(number: int) -> str:
    word = SETTING_FIELDS.of(number)
    if not word:
        raise InvalidArgument("field", f"must be one of {SETTING_FIELDS.names}, got {number}")
    return _NAMES[word]


def _origin(found: InForce, item: admin_pb2.Setting | admin_pb2.SourceReliability) -> None:
    item.origin = ORIGINS.number(found.origin)  # type: ignore[assignment]
    r = found.register
    if r is not None:
        item.write.set_by = r.by
        item.write.node = r.node
        item.write.time.FromMilliseconds(physical_ms(r.hlc))


__all__ = ["SETTING_FIELDS", "SettingsAdmin"]
