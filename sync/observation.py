"""The replicated values: subjects, evidence and observations."""

from __future__ import annotations

import enum
from typing import NamedTuple

from sync.causal import CausalContext, Dot


class SubjectKind(enum.IntEnum):
    USER = 1
    TEAM = 2
    ORG = 3


class Subject(NamedTuple):
    """A tuple, as Dot is (sync.causal): a subject keys the store's cache, the engine's locks
    and every token, and a tuple hashes and compares in C."""

    tenant: str
    kind: SubjectKind
    id: str

    def __str__(self) -> str:
        return f"{self.tenant}/{self.kind.name.lower()}/{self.id}"

    def storage_key(self) -> bytes:
        """Tenant first, so one tenant (and one subject) is one prefix scan; ids never hold NUL."""
        return b"%s\x00%c%s" % (self.tenant.encode(), self.kind, self.id.encode())

    @classmethod
    def from_storage_key(cls, raw: bytes) -> Subject:
        tenant, _, rest = raw.partition(b"\x00")
        return cls(tenant.decode(), SubjectKind(rest[0]), rest[1:].decode())


class Evidence(NamedTuple):
    kind: str
    ref: str = ""
    quote: str = ""
    time_ms: int = 0  # 0: unknown


class Observation(NamedTuple):
    """What one source asserted once about one slot (context, key) of a subject. A tuple, as
    SubjectState is (see there)."""

    dot: Dot
    context: str
    key: str
    source: str
    statement: str
    confidence: float
    evidence: tuple[Evidence, ...]
    hlc: int
    origin: str  # the node that accepted it
    # The model its agent read before writing it (the read's causal context), if it said so:
    # what it may merely repeat (node.resolution: independence).
    based_on: CausalContext | None = None
    # The idempotency key of the agent's call that wrote it ("" for none) and its index in that
    # call: a retry of the call is recognised wherever this observation has been merged.
    request_key: str = ""
    request_index: int = 0

    @property
    def slot(self) -> tuple[str, str]:
        return (self.context, self.key)
