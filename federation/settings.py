"""The cluster file's numeric settings, each described once (its type, default and least value)
and checked by one parser: ``[cluster.limits]`` (every limit of a node; a limit's name is the
NodeConfig or ``node.validation.Limits`` field it sets, and the ``selfmodel node`` option where
there is one), ``[cluster.sync]`` (how replication behaves: sync.settings.SyncSettings) and
``[cluster.learning]`` (learned reliability: node.reliability.LearningSettings)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from node.config import NodeConfig
from node.reliability import LearningSettings
from node.validation import Limits
from sync.bounds import SETTINGS as SUBJECT_SETTINGS
from sync.bounds import SubjectLimits
from sync.settings import SyncSettings


class SettingError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Setting:
    kind: type[int] | type[float]
    default: int | float
    least: int | float
    above: bool = False  # True: the value must be greater than ``least``, not merely equal

    def check(self, table: str, name: str, value: Any) -> int | float:
        """``value`` when it is a finite number of this kind within bounds, else SettingError."""
        kinds: tuple[type, ...] = (int,) if self.kind is int else (int, float)
        if type(value) not in kinds or not math.isfinite(value) or self._low(value):
            noun = "a whole number" if self.kind is int else "a number"
            bound = f"above {self.least}" if self.above else f"of at least {self.least}"
            raise SettingError(f"[{table}] {name} must be {noun} {bound}, got {value!r}")
        return self.kind(value)

    def _low(self, value: float) -> bool:
        return value <= self.least if self.above else value < self.least


def _table() -> dict[str, Setting]:
    node, limits, subject = NodeConfig(), Limits(), SubjectLimits()
    table = {
        name: Setting(type(getattr(limits, name)), getattr(limits, name), 0, above=True)
        for name in Limits.__slots__
    }
    for field_name, (setting, _) in SUBJECT_SETTINGS.items():
        table[setting] = Setting(int, getattr(subject, f"max_{field_name}"), 1)
    least: dict[str, tuple[float, bool]] = {
        "max_message_bytes": (1, False),
        "max_watchers": (1, False),
        "cache_mb": (0, True),
        "snapshot_cache_mb": (0, True),
        "rocksdb_cache_mb": (0, True),
        "max_clock_offset_ms": (0, False),
        "min_free_mb": (0, False),
        "disk_probe_s": (0, True),
        "max_connections": (1, False),
        "connection_idle_s": (0, True),
        "handshake_timeout_s": (0, True),
    }
    for name, (low, above) in least.items():
        default = getattr(node, name)
        table[name] = Setting(type(default), default, low, above)
    return table


# Every key [cluster.limits] takes.
LIMITS: dict[str, Setting] = _table()

_MAY_BE_ZERO = ("claim_wait_s", "linger_s", "max_replication_lag_s")
# Every key [cluster.sync] takes: counts at least 1, durations above 0 (claim_wait_s, linger_s
# and max_replication_lag_s: at least 0).
SYNC: dict[str, Setting] = {
    f.name: Setting(
        type(f.default),  # type: ignore[arg-type]
        f.default,  # type: ignore[arg-type]
        1 if type(f.default) is int else 0,
        above=type(f.default) is float and f.name not in _MAY_BE_ZERO,
    )
    for f in dataclasses.fields(SyncSettings)
}

# Every number [cluster.learning] takes (its `enabled` is true or false): counts at least 1, the
# rest above 0; LearningSettings checks the rest (floor <= ceiling <= 1).
LEARNING: dict[str, Setting] = {
    f.name: Setting(
        type(f.default),  # type: ignore[arg-type]
        f.default,  # type: ignore[arg-type]
        1 if type(f.default) is int else 0,
        above=type(f.default) is float,
    )
    for f in dataclasses.fields(LearningSettings)
    if f.name != "enabled"
}


# Where each key of an earlier cluster file layout now is (a file naming one is refused, naming
# its new key).
MOVED: dict[tuple[str, str], str] = {
    ("cluster", "cache_mb"): "cache_mb",
    ("cluster", "snapshot_cache_mb"): "snapshot_cache_mb",
    ("cluster", "max_clock_offset_ms"): "max_clock_offset_ms",
    ("cluster", "max_message_bytes"): "max_message_bytes",
    **{("cluster", s): s for s, _ in SUBJECT_SETTINGS.values()},
    ("cluster.storage", "min_free_mb"): "min_free_mb",
    ("cluster.storage", "probe_s"): "disk_probe_s",
    ("cluster.connections", "max"): "max_connections",
    ("cluster.connections", "idle_s"): "connection_idle_s",
    ("cluster.connections", "handshake_s"): "handshake_timeout_s",
}


def moved(table: str, keys: Any) -> None:
    """Refuses keys of ``[table]`` that moved to ``[cluster.limits]``, naming where to."""
    found = [(k, MOVED[(table, k)]) for k in keys if (table, k) in MOVED]
    if found:
        where = ", ".join(f"{old} is now [cluster.limits] {new}" for old, new in found)
        raise SettingError(f"[{table}]: {where}")


def parse_table(table: str, raw: Any, settings: Mapping[str, Setting]) -> dict[str, Any]:
    """The values ``[table]`` gives, checked against ``settings`` (SettingError names the key
    and its bound, or the unknown keys)."""
    if not isinstance(raw, Mapping):
        raise SettingError(f"[{table}] must be a table, got {raw!r}")
    unknown = set(raw) - set(settings)
    if unknown:
        raise SettingError(
            f"unknown [{table}] keys {sorted(unknown)}; known: {', '.join(sorted(settings))}"
        )
    return {name: settings[name].check(table, name, value) for name, value in raw.items()}


def parse_limits(raw: Any) -> dict[str, Any]:
    return parse_table("cluster.limits", raw, LIMITS)


def parse_sync(raw: Any) -> SyncSettings:
    return SyncSettings(**parse_table("cluster.sync", raw, SYNC))


def parse_learning(raw: Any) -> LearningSettings:
    """``[cluster.learning]``: learned reliability, off unless ``enabled = true``."""
    if not isinstance(raw, Mapping):
        raise SettingError(f"[cluster.learning] must be a table, got {raw!r}")
    enabled = raw.get("enabled", False)
    if not isinstance(enabled, bool):
        raise SettingError(f"[cluster.learning] enabled must be true or false, got {enabled!r}")
    numbers = {k: v for k, v in raw.items() if k != "enabled"}
    values = parse_table("cluster.learning", numbers, LEARNING)
    try:
        return LearningSettings(**values, enabled=enabled)
    except ValueError as exc:
        raise SettingError(f"[cluster.learning] {exc}") from None


def apply(config: NodeConfig, values: Mapping[str, Any]) -> None:
    """Sets ``config``'s fields (its Limits and SubjectLimits too) to ``values``."""
    subject = {s: f"max_{k}" for k, (s, _) in SUBJECT_SETTINGS.items()}
    given: dict[str, Any] = {subject[k]: v for k, v in values.items() if k in subject}
    config.subject_limits = dataclasses.replace(config.subject_limits, **given)
    fields: dict[str, Any] = {k: v for k, v in values.items() if k in Limits.__slots__}
    config.limits = dataclasses.replace(config.limits, **fields)
    for name, value in values.items():
        if name not in subject and name not in Limits.__slots__:
            setattr(config, name, value)


__all__ = [
    "LEARNING",
    "LIMITS",
    "MOVED",
    "SYNC",
    "Setting",
    "SettingError",
    "apply",
    "moved",
    "parse_learning",
    "parse_limits",
    "parse_sync",
    "parse_table",
]
