"""Governance that replicates: policy settings and source reliability as last-writer-wins
registers, one per setting, ordered by hybrid clock.

The state is two maps of registers: ``settings``, ``(context, field) -> Register`` (context
``"*"`` is every context's default), and ``reliability``, ``(source, context) -> Register``
(context ``"*"``: every context). A register holds its value, the hybrid timestamp of the write,
the replica that wrote it and who asked (for the audit); ``cleared`` marks a write that hands the
setting back to the cluster file.

Merge keeps, per key, the later register: by timestamp, then replica (two replicas' clocks can
meet), then the rest of the register, so the order is total even over states no replica made and
merge is commutative, associative and idempotent. A write is after everything its replica had
merged (hybrid clocks), so an operator's change always replaces what its node showed; of two
concurrent changes, the later by that total order wins on every node. A delta is itself a state.
The values are checked where a setting is written (node.governance); this module only orders them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

SettingValue = str | float | int | None


class Register(NamedTuple):
    hlc: int
    actor: str  # the replica that wrote it
    value: SettingValue
    by: str = ""  # who set it: the principal the audit names
    cleared: bool = False  # the setting goes back to the cluster file's

    def order(self) -> tuple[int, str, bool, str, str, str]:
        """The total order of registers: timestamp, replica, then the rest (ties of made-up
        states only)."""
        return (
            self.hlc,
            self.actor,
            self.cleared,
            type(self.value).__name__,
            repr(self.value),
            self.by,
        )


Registers = Mapping[tuple[str, str], Register]
_EMPTY: Registers = MappingProxyType({})


class Governance(NamedTuple):
    settings: Registers = _EMPTY  # (context, field) -> register
    reliability: Registers = _EMPTY  # (source, context) -> register

    def digest(self) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for tag, registers in ((b"s", self.settings), (b"r", self.reliability)):
            for (a, b), r in sorted(registers.items()):
                h.update(b"%s%r\x00%r\x00%r\x00" % (tag, a, b, r))
        return h.digest()


def _join(a: Registers, b: Registers) -> Registers:
    if not b:
        return a
    if not a:
        return b
    joined = dict(a)
    for key, r in b.items():
        have = joined.get(key)
        if have is None or r.order() > have.order():
            joined[key] = r
    return joined


def merge(a: Governance, b: Governance) -> Governance:
    return Governance(_join(a.settings, b.settings), _join(a.reliability, b.reliability))


def setting_delta(context: str, field: str, register: Register) -> Governance:
    """The delta of one setting's write (its value checked by the caller)."""
    return Governance(settings={(context, field): register})


def reliability_delta(source: str, context: str, register: Register) -> Governance:
    """The delta of one source's reliability write (its value checked by the caller)."""
    return Governance(reliability={(source, context): register})


def in_force(registers: Registers) -> dict[tuple[str, str], Register]:
    """The registers that set a value (a cleared one leaves the cluster file's)."""
    return {k: r for k, r in registers.items() if not r.cleared}
