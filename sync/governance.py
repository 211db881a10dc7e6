"""Governance that replicates: the cluster's policy settings and source reliability, read from
the registers of one subject.

Every setting is a register (``node.engine.Engine.put``) of the subject ``GOVERNANCE``:

- a policy setting at context = the policy's context, or ``DEFAULT`` (``_default``) for every
  context's default, key = the field (``policy``, ``min_confidence``, ``half_life_s``,
  ``max_observations``, ``evidence_discount``);
- a source's reliability at context ``RELIABILITY`` (``_reliability``), key
  ``<source>/<context or _default>`` (neither a source nor a context holds a ``/``).

The statement is the value in JSON (a policy name, a number, or null: no decay); the
observation's source is who set it, its origin the node that took the call.

The laws are the subject CRDT's (tests/unit/test_governance.py shows them on it): a register's
value is its newest observation by (timestamp, dot), the same on every node that holds the same
state; a put, after everything its node had merged (hybrid clocks), replaces what that node
showed; of two concurrent puts, the later by (timestamp, dot) wins on every node; a clear
removes the values its node held (observed-remove: a put it had not seen survives) and hands the
setting back to each node's cluster file. ``view`` is a pure function of the state: nodes that
hold the same state see the same settings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from sync.causal import Dot
from sync.crdt import SubjectState
from sync.observation import Observation, Subject, SubjectKind

GOVERNANCE = Subject("_cluster", SubjectKind.ORG, "_governance")
DEFAULT = "_default"  # the register context (and reliability key part) of every context
RELIABILITY = "_reliability"
EVERY = "*"  # how the view (and the policy book, and the cluster file) names every context

SettingValue = str | float | int | None


class Register(NamedTuple):
    """A setting's value in force, and whose write it is."""

    hlc: int
    node: str  # the node that took the write
    value: SettingValue
    by: str = ""  # who set it: the principal the audit names
    dot: Dot = Dot("", 0)


Registers = Mapping[tuple[str, str], Register]
_EMPTY: Registers = MappingProxyType({})


class Governance(NamedTuple):
    settings: Registers = _EMPTY  # (context or EVERY, field) -> register
    reliability: Registers = _EMPTY  # (source, context or EVERY) -> register


def setting_slot(context: str, field: str) -> tuple[str, str]:
    """The register (context, key) of a policy setting; ``context`` EVERY or "" is the
    default's."""
    return (DEFAULT if context in ("", EVERY) else context), field


def reliability_slot(source: str, context: str) -> tuple[str, str]:
    """The register (context, key) of a source's reliability in a context (EVERY or "": all)."""
    return RELIABILITY, f"{source}/{DEFAULT if context in ('', EVERY) else context}"


def encode(value: SettingValue) -> str:
    return json.dumps(value)


def decode(statement: str) -> SettingValue:
    """A register's value; ValueError for a statement no node writes."""
    value = json.loads(statement)
    if value is None or (isinstance(value, str | int | float) and not isinstance(value, bool)):
        return value  # type: ignore[no-any-return]
    raise ValueError(f"not a setting's value: {statement!r}")


def view(state: SubjectState) -> Governance:
    """The settings ``state`` (of GOVERNANCE) holds: each register's newest value by
    (timestamp, dot); a statement that is no value is left out (no node writes one)."""
    newest: dict[tuple[str, str], Observation] = {}
    for obs in state.observations.values():
        have = newest.get(obs.slot)
        if have is None or (obs.hlc, obs.dot) > (have.hlc, have.dot):
            newest[obs.slot] = obs
    settings: dict[tuple[str, str], Register] = {}
    reliability: dict[tuple[str, str], Register] = {}
    for (context, key), obs in sorted(newest.items()):
        try:
            register = Register(obs.hlc, obs.origin, decode(obs.statement), obs.source, obs.dot)
        except ValueError:
            continue
        if context == RELIABILITY:
            source, _, scope = key.rpartition("/")
            if source:
                reliability[source, EVERY if scope == DEFAULT else scope] = register
        else:
            settings[EVERY if context == DEFAULT else context, key] = register
    return Governance(settings, reliability)


__all__ = [
    "DEFAULT",
    "EVERY",
    "GOVERNANCE",
    "RELIABILITY",
    "Governance",
    "Register",
    "SettingValue",
    "decode",
    "encode",
    "reliability_slot",
    "setting_slot",
    "view",
]
