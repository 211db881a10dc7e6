"""The policy book a node resolves with: the cluster file's seed under the replicated settings.

Per context and field the value is the first of (sync.governance reads the replicated ones
from the cluster's governance subject):

1. the replicated setting of that context,
2. the cluster file's setting of that context (``[policies.contexts.<name>]``),
3. the replicated default (context ``"*"``),
4. the cluster file's default (``[policies.default]``),
5. the built-in default (node.policy.ContextPolicy).

A source's reliability in a context is, likewise, the replicated value for that context, the
file's for that context, the replicated value for every context (``"*"``), the file's, else 1.0.
So every node whose replicated state is the same resolves the same way wherever a setting was
replicated, and the file only fills what was never set (or was cleared) through Admin. Where a
node's file sets a value that a replicated setting overrides with another, ``governed`` reports
the disagreement, so the node can say so. ``book_in_force`` is the one place the book is built.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from node.policy import DAY_S, ContextPolicy, PolicyBook
from sync.crdt import SubjectState
from sync.governance import (
    EVERY,
    Governance,
    Register,
    SettingValue,
    encode,
    reliability_slot,
    setting_slot,
    view,
)

DEFAULT = EVERY  # the context name of every context's default, and of a source's every context
FIELDS = ("policy", "min_confidence", "half_life_s", "max_observations", "evidence_discount")


@dataclass(frozen=True, slots=True)
class Seed:
    """What a cluster file's ``[policies]`` table sets explicitly."""

    settings: Mapping[tuple[str, str], SettingValue]  # (context or "*", field) -> value
    reliability: Mapping[tuple[str, str], float]  # (source, context or "*") -> value

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> Seed:
        PolicyBook.from_config(raw)  # refuses what a node would refuse, naming it
        settings: dict[tuple[str, str], SettingValue] = {}
        tables = [(DEFAULT, raw.get("default", {}))]
        tables += sorted(raw.get("contexts", {}).items())
        for context, table in tables:
            for name, value in table.items():
                if name == "half_life_days":
                    settings[context, "half_life_s"] = None if not value else value * DAY_S
                else:
                    settings[context, name] = value
        reliability: dict[tuple[str, str], float] = {}
        for source, value in raw.get("reliability", {}).items():
            per_context = value if isinstance(value, Mapping) else {DEFAULT: value}
            for context, r in per_context.items():
                reliability[source, context] = float(r)
        typed = {}
        for (context, name), value in settings.items():
            try:
                typed[context, name] = _typed(name, value)
            except ValueError as exc:
                where = "default" if context == DEFAULT else f"contexts.{context}"
                raise ValueError(f"{where}.{name}: {exc}") from None
        return cls(typed, reliability)

    @property
    def book(self) -> PolicyBook:
        """The book the file alone gives (nothing replicated)."""
        return governed(self, Governance()).book


NO_SEED = Seed({}, {})


@dataclass(frozen=True, slots=True)
class Disagreement:
    """A value of this node's cluster file that a replicated setting overrides."""

    kind: str  # "setting" or "reliability"
    scope: tuple[str, str]  # (context, field) or (source, context)
    file_value: SettingValue
    replicated: Register

    def __str__(self) -> str:
        a, b = self.scope
        where = (
            f"policies for context {a!r}, {b}"
            if self.kind == "setting"
            else (f"reliability of source {a!r} in context {b!r}")
        )
        return (
            f"{where}: the cluster file says {self.file_value!r}, the cluster's replicated "
            f"setting says {self.replicated.value!r} (set by {self.replicated.by or 'unknown'} "
            f"on {self.replicated.node} at hybrid time {self.replicated.hlc}); the replicated "
            "setting is in force"
        )


@dataclass(frozen=True, slots=True)
class Governed:
    book: PolicyBook
    disagreements: tuple[Disagreement, ...]


def book_in_force(seed: Seed, state: SubjectState) -> Governed:
    """The policy book of a node whose file says ``seed`` and whose governance subject
    (sync.governance.GOVERNANCE) is ``state``: the one place a node's book is built."""
    return governed(seed, checked(view(state)))


def checked(replicated: Governance) -> Governance:
    """``replicated`` without values no node writes (refused where written: check_setting,
    check_reliability), so a faulty peer's register can never stop a node resolving."""

    settings = {}
    for (context, name), r in replicated.settings.items():
        try:
            settings[context, name] = r._replace(value=check_setting(context, name, r.value))
        except ValueError:
            continue
    reliability = {}
    for key, r in replicated.reliability.items():
        try:
            reliability[key] = r._replace(value=check_reliability(key[0], r.value))
        except ValueError:
            continue
    return Governance(settings, reliability)


def governed(seed: Seed, replicated: Governance) -> Governed:
    """The policy book in force, and where the file disagrees with the replicated settings
    (whose values are checked: ``checked``)."""
    settings = {k: r.value for k, r in replicated.settings.items()}
    default = _layer(ContextPolicy(), DEFAULT, settings, seed.settings)
    names = {c for c, _ in seed.settings} | {c for c, _ in settings}
    contexts = {c: _layer(default, c, settings, seed.settings) for c in sorted(names - {DEFAULT})}
    reliability = dict(seed.reliability)
    reliability.update({k: float(r.value or 0.0) for k, r in replicated.reliability.items()})

    disagreements = [
        Disagreement("setting", k, seed.settings[k], r)
        for k, r in sorted(replicated.settings.items())
        if k in seed.settings and seed.settings[k] != r.value
    ]
    disagreements += [
        Disagreement("reliability", k, seed.reliability[k], r)
        for k, r in sorted(replicated.reliability.items())
        if k in seed.reliability and seed.reliability[k] != r.value
    ]
    return Governed(PolicyBook(default, contexts, reliability), tuple(disagreements))


Origin = str  # "replicated" | "file" | "default" (built in)


@dataclass(frozen=True, slots=True)
class InForce:
    """One setting in force: its value, where it comes from, and the replicated write behind
    it (if any). ``scope`` is (context, field) or (source, context); ``inherited``: a
    context's value that is every context's default (``"*"``)."""

    scope: tuple[str, str]
    value: SettingValue
    origin: Origin
    register: Register | None = None
    inherited: bool = False


def in_force(seed: Seed, replicated: Governance) -> tuple[list[InForce], list[InForce]]:
    """Every setting in force, per context named by the file or the replicated settings (the
    default first), and every source's reliability either sets: each with where it comes from,
    as ``governed`` layers them."""
    built_in = ContextPolicy()
    names = {c for c, _ in seed.settings} | {c for c, _ in replicated.settings}
    settings = []
    for context in [DEFAULT, *sorted(names - {DEFAULT})]:
        for name in FIELDS:
            for scope in dict.fromkeys([(context, name), (DEFAULT, name)]):
                r = replicated.settings.get(scope)
                inherited = scope[0] != context
                if r is not None:
                    settings.append(InForce((context, name), r.value, "replicated", r, inherited))
                    break
                if scope in seed.settings:
                    value = seed.settings[scope]
                    settings.append(InForce((context, name), value, "file", None, inherited))
                    break
            else:
                value = getattr(built_in, name)
                inherited = context != DEFAULT
                settings.append(InForce((context, name), value, "default", None, inherited))
    reliability = []
    for scope in sorted(seed.reliability.keys() | replicated.reliability.keys()):
        r = replicated.reliability.get(scope)
        if r is not None:
            reliability.append(InForce(scope, r.value, "replicated", r))
        else:
            reliability.append(InForce(scope, seed.reliability[scope], "file"))
    return settings, reliability


def _layer(
    base: ContextPolicy,
    context: str,
    replicated: Mapping[tuple[str, str], SettingValue],
    seed: Mapping[tuple[str, str], SettingValue],
) -> ContextPolicy:
    """``base`` with the context's own values: replicated first, then the file's."""
    changes: dict[str, SettingValue] = {}
    for name in FIELDS:
        for layer in (replicated, seed):
            if (context, name) in layer:
                changes[name] = layer[context, name]
                break
    return dataclasses.replace(base, **changes) if changes else base  # type: ignore[arg-type]


def _typed(name: str, value: SettingValue) -> SettingValue:
    """A setting's value in the type its field holds (a file's 1 is the float 1.0)."""
    if value is None or name == "policy":
        return value
    if isinstance(value, str | bool) or not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    if name == "max_observations":
        if value != int(value):
            raise ValueError(f"must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def check_setting(context: str, name: str, value: SettingValue) -> SettingValue:
    """The value to replicate in its field's type, or ValueError "<field>: <rule>, got <value>"."""
    if not context:
        raise ValueError("context: must name a context, or '*' for every context's default")
    if name not in FIELDS:
        raise ValueError(f"field: must be one of {', '.join(FIELDS)}, got {name!r}")
    if name == "half_life_s" and value == 0:
        value = None  # as in the cluster file: no decay
    if value is None and name != "half_life_s":
        raise ValueError(f"{name}: must be set, got none")
    try:
        typed = _typed(name, value)
        ContextPolicy(**{name: typed})  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name}: {str(exc).removeprefix(f'{name} ')}") from exc
    return typed


def check_reliability(source: str, value: SettingValue) -> float:
    """A source's reliability to replicate, or ValueError naming what is wrong."""
    if not source:
        raise ValueError("source: must name a source")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"reliability: must be a number within [0, 1], got {value!r}")
    return float(value)


def setting_register(context: str, name: str, value: SettingValue) -> tuple[str, str, str]:
    """The register (context, key, statement) of an operator's setting, its value checked."""
    return *setting_slot(context, name), encode(check_setting(context, name, value))


def setting_cleared(context: str, name: str) -> tuple[str, str]:
    """The register (context, key) to clear: the setting goes back to each node's file."""
    if name not in FIELDS:
        raise ValueError(f"field: must be one of {', '.join(FIELDS)}, got {name!r}")
    return setting_slot(context or DEFAULT, name)


def reliability_register(source: str, context: str, value: float) -> tuple[str, str, str]:
    """The register (context, key, statement) of a source's reliability, checked."""
    return *reliability_slot(source, context), encode(check_reliability(source, value))
