"""A node's policy book in force, following the cluster's governance subject.

The book is ``node.governance.book_in_force(file seed, governance state)``, rebuilt whenever a
batch the engine commits changes the governance subject (``Engine.listeners``: local writes and
peers' merges alike, in commit order, under the subject's lock), so every node whose governance
state is the same resolves with the same book. A new book is handed to the engine
(``Engine.use_policies``): no snapshot resolved under another is served again, and every watch
reads its model again. Where the file disagrees with a replicated setting, the node logs each
disagreement at start and whenever the replicated settings move, and exports their count
(``selfmodel_policy_disagreements``).

Operators' writes are registers of that subject (``Engine.put``), checked before they are
written (node.governance) and audited in the same batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from node import metrics
from node.audit import AuditRecord
from node.engine import Engine
from node.governance import (
    Disagreement,
    InForce,
    Seed,
    book_in_force,
    checked,
    in_force,
    reliability_register,
    setting_cleared,
    setting_register,
)
from node.store import Change
from sync.crdt import SubjectState
from sync.governance import GOVERNANCE, Governance, SettingValue, reliability_slot, view

log = logging.getLogger("selfmodel.node")


class Governor:
    """Keeps ``engine``'s policy book the file's ``seed`` under the replicated settings."""

    def __init__(self, engine: Engine, seed: Seed) -> None:
        self.engine = engine
        self.seed = seed
        self._lock = threading.Lock()
        self.replicated = Governance()
        self.disagreements: tuple[Disagreement, ...] = ()
        engine.listeners.append(self._changed)  # first: no change is missed
        with self._lock:
            self._follow(engine.state(GOVERNANCE), starting=True)

    def _changed(self, changes: Sequence[Change]) -> None:
        for change in changes:
            if change.new.subject == GOVERNANCE:
                with self._lock:
                    self._follow(change.new)

    def _follow(self, state: SubjectState, starting: bool = False) -> None:
        """Rebuilds the book from the governance subject's ``state``; logs the disagreements
        at start and whenever the replicated settings moved."""
        replicated = checked(view(state))
        found = book_in_force(self.seed, state)
        if found.book != self.engine.policies:  # the book in force is it times learned weights
            self.engine.use_policies(found.book)
        moved = starting or replicated != self.replicated
        self.replicated = replicated
        self.disagreements = found.disagreements
        for kind in ("setting", "reliability"):
            count = sum(1 for d in found.disagreements if d.kind == kind)
            metrics.POLICY_DISAGREEMENTS.labels(kind).set(count)
        if moved:
            for d in found.disagreements:
                log.warning("node %s: policy disagreement: %s", self.engine.node, d)

    # -- operators' writes -----------------------------------------------------------------

    def set_setting(
        self, context: str, name: str, value: SettingValue, by: str, audit: AuditRecord
    ) -> str:
        """Sets a policy setting cluster-wide (ValueError naming what is wrong); the token."""
        ctx, key, statement = setting_register(context, name, value)
        return self.engine.put(GOVERNANCE, ctx, key, statement, by, audit)

    def clear_setting(self, context: str, name: str, by: str, audit: AuditRecord) -> str:
        """Hands a setting back to each node's cluster file (removes the values this node
        holds; a concurrent set it has not seen survives)."""
        ctx, key = setting_cleared(context, name)
        return self.engine.put(GOVERNANCE, ctx, key, None, by, audit)

    def set_reliability(
        self, source: str, context: str, value: float, by: str, audit: AuditRecord
    ) -> str:
        ctx, key, statement = reliability_register(source, context, value)
        return self.engine.put(GOVERNANCE, ctx, key, statement, by, audit)

    def clear_reliability(self, source: str, context: str, by: str, audit: AuditRecord) -> str:
        ctx, key = reliability_slot(source, context)
        return self.engine.put(GOVERNANCE, ctx, key, None, by, audit)

    def in_force(self) -> tuple[list[InForce], list[InForce], tuple[Disagreement, ...]]:
        """Every setting and reliability in force with where it comes from, and the file's
        disagreements."""
        with self._lock:
            replicated, disagreements = self.replicated, self.disagreements
        settings, reliability = in_force(self.seed, replicated)
        return settings, reliability, disagreements


__all__ = ["Governor"]
