"""What a peer sends, validated like agents' input, and each refusal logged once.

A delta sent again, or a state every anti-entropy round ships, would otherwise log the same
refusal over and over: the log says it once, the metrics count every time.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from node import validation
from node.errors import InvalidArgument
from node.validation import Limits
from selfmodel.sync.v1 import sync_pb2

log = logging.getLogger("selfmodel.node")


class Refusals:
    """Validates what a peer sends (node.validation.remote_state) and logs each refusal once:
    a delta sent again, or a state every anti-entropy round ships, is not logged again.
    Implements sync.ports.Screen."""

    def __init__(self, where: str, limits: Limits, remember: int = 4096) -> None:
        self._where = where
        self._limits = limits
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._remember = remember
        self._lock = threading.Lock()

    def valid(self, msg: sync_pb2.SubjectState, field: str, peer: str = "") -> bool:
        return not self.refused(msg, field, peer)

    def refused(self, msg: sync_pb2.SubjectState, field: str, peer: str = "") -> str:
        try:
            validation.remote_state(msg, field, self._limits)
        except InvalidArgument as exc:
            subject = f"{msg.subject.tenant}/{msg.subject.id}"
            if self._first((peer, f"{subject} {exc.description}")):
                log.warning(
                    "refused %s of %s from %s (logged once): %s",
                    field,
                    subject,
                    peer or self._where,
                    exc,
                )
            return f"{exc.field.rpartition('.')[2] or exc.field}: {exc.description}"
        return ""

    def deferred(self, peer: str, reason: str) -> None:
        if self._first((peer, "clock")):
            log.warning(
                "holding back deltas from %s until this node's clock allows them (logged once "
                "per peer; selfmodel_deltas_refused_from_peer_total counts them): %s",
                peer,
                reason,
            )

    def undeferred(self, peer: str) -> None:
        with self._lock:
            self._seen.pop((peer, "clock"), None)

    def _first(self, key: tuple[str, str]) -> bool:
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)
            return True


__all__ = ["Refusals"]
