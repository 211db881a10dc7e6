"""The policy book a node resolves with: the cluster file's seed under the replicated settings.

Per context and field the value is the first of (sync.governance holds the replicated ones):

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
the disagreement, so the node can say so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from node.policy import DAY_S, ContextPolicy, PolicyBook
from sync.governance import (
    Governance,
    Register,
    SettingValue,
    in_force,
    reliability_delta,
    setting_delta,
)

DEFAULT = "*"  # the context name of every context's default, and of a source's every context
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
        return cls({k: _typed(k[1], v) for k, v in settings.items()}, reliability)


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
            f"on {self.replicated.actor} at hybrid time {self.replicated.hlc}); the replicated "
            "setting is in force"
        )


@dataclass(frozen=True, slots=True)
class Governed:
    book: PolicyBook
    disagreements: tuple[Disagreement, ...]


def governed(seed: Seed, replicated: Governance) -> Governed:
    """The policy book in force, and where the file disagrees with the replicated settings."""
    settings = {k: r.value for k, r in in_force(replicated.settings).items()}
    default = _layer(ContextPolicy(), DEFAULT, settings, seed.settings)
    names = {c for c, _ in seed.settings} | {c for c, _ in settings}
    contexts = {c: _layer(default, c, settings, seed.settings) for c in sorted(names - {DEFAULT})}
    reliability = dict(seed.reliability)
    reliability.update(
        {k: float(r.value or 0.0) for k, r in in_force(replicated.reliability).items()}
    )

    disagreements = [
        Disagreement("setting", k, seed.settings[k], r)
        for k, r in sorted(in_force(replicated.settings).items())
        if k in seed.settings and seed.settings[k] != r.value
    ]
    disagreements += [
        Disagreement("reliability", k, seed.reliability[k], r)
        for k, r in sorted(in_force(replicated.reliability).items())
        if k in seed.reliability and seed.reliability[k] != r.value
    ]
    return Governed(PolicyBook(default, contexts, reliability), tuple(disagreements))


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
    if name == "max_observations":
        return int(value)
    return float(value)


def check_setting(context: str, name: str, value: SettingValue) -> SettingValue:
    """The value to replicate, or ValueError naming the field, the rule and the value."""
    if not context:
        raise ValueError("context: must name a context, or '*' for every context's default")
    if name not in FIELDS:
        raise ValueError(f"field: must be one of {', '.join(FIELDS)}, got {name!r}")
    if name == "half_life_s" and value == 0:
        value = None  # as in the cluster file: no decay
    try:
        typed = _typed(name, value)
        ContextPolicy(**{name: typed})  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from exc
    return typed


def setting_write(
    context: str, name: str, value: SettingValue, hlc: int, actor: str, by: str
) -> Governance:
    """The delta of an operator's setting: checked, stamped and signed."""
    return setting_delta(
        context, name, Register(hlc, actor, check_setting(context, name, value), by)
    )


def setting_clear(context: str, name: str, hlc: int, actor: str, by: str) -> Governance:
    """The delta that hands a setting back to each node's cluster file."""
    if name not in FIELDS:
        raise ValueError(f"field: must be one of {', '.join(FIELDS)}, got {name!r}")
    return setting_delta(context, name, Register(hlc, actor, None, by, cleared=True))


def reliability_write(
    source: str, context: str, value: float, hlc: int, actor: str, by: str
) -> Governance:
    if not source:
        raise ValueError("source: must name a source")
    if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"reliability: must be a number within [0, 1], got {value!r}")
    return reliability_delta(source, context or DEFAULT, Register(hlc, actor, float(value), by))
