"""node.governor: a node's book follows its governance subject, whether an operator set the
setting on it or a peer's merge brought it, and no model resolved under another book is served
again."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from node import metrics
from node.audit import AuditRecord
from node.engine import Engine
from node.governance import Seed
from node.governor import Governor
from node.store import Store
from node.writes import ObservationInput
from sync.delivery import Delta
from sync.governance import GOVERNANCE
from sync.observation import Evidence, Subject, SubjectKind

U = Subject("acme", SubjectKind.USER, "u-1")
SEED = Seed.from_config({"contexts": {"budget": {"policy": "weighted"}}})


def audit(action: str) -> AuditRecord:
    return AuditRecord("ops", "operator", action, GOVERNANCE)


def node(tmp_path: Path, name: str) -> tuple[Engine, Governor]:
    engine = Engine(Store(tmp_path / name, name, fsync=False))
    return engine, Governor(engine, SEED)


def winner(engine: Engine) -> str:
    [belief] = engine.model(U).beliefs
    return belief.statement


def write_slot(engine: Engine) -> None:
    cited = (Evidence("call", "crm://call/7"),)
    for source, statement, confidence, evidence in (
        ("sales_agent", "ten thousand", 0.8, cited),
        ("support_agent", "ten thousand", 0.8, ()),
        ("bot", "fifty thousand", 0.9, ()),
    ):
        item = ObservationInput(U, "budget", "amount", statement, confidence, evidence)
        engine.observe(source, [item])


def gauge() -> float:
    value = metrics.POLICY_DISAGREEMENTS.labels("setting")._value.get()
    return float(value)


def test_the_book_follows_local_sets_and_merged_ones_and_cached_models_are_resolved_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, on_a = node(tmp_path, "a")
    b, _ = node(tmp_path, "b")
    for engine in (a, b):
        write_slot(engine)
        assert winner(engine) == "ten thousand"  # weighted, and now cached
    watch = b.subscribe(U)
    watch.changed.clear()

    with caplog.at_level(logging.WARNING, logger="selfmodel.node"):
        on_a.set_setting("budget", "policy", "latest", "ops", audit("set_setting"))
    assert a.policies.for_context("budget").policy == "latest"
    assert winner(a) == "fifty thousand"
    assert "policy disagreement: policies for context 'budget', policy" in caplog.text
    assert gauge() == 1

    b.merge_remote([Delta(a.state(GOVERNANCE))])
    assert b.policies.for_context("budget").policy == "latest"
    assert winner(b) == "fifty thousand"
    assert watch.changed.is_set()  # its watchers read the model again

    on_a.clear_setting("budget", "policy", "ops", audit("clear_setting"))
    assert winner(a) == "ten thousand" and gauge() == 0
    b.merge_remote([Delta(a.state(GOVERNANCE))])
    assert winner(b) == "ten thousand"


def test_a_restarted_node_starts_with_the_replicated_settings_and_says_where_it_disagrees(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, on_a = node(tmp_path, "a")
    on_a.set_setting("*", "min_confidence", 0.9, "ops", audit("set_setting"))
    a.store.close()
    with caplog.at_level(logging.WARNING, logger="selfmodel.node"):
        again, governor = node(tmp_path, "a")
    assert again.policies.for_context("chat").min_confidence == 0.9
    assert not governor.disagreements  # the file sets no default minimum
    assert "policy disagreement" not in caplog.text
    settings, _, _ = governor.in_force()
    [minimum] = [s for s in settings if s.scope == ("*", "min_confidence")]
    assert (minimum.value, minimum.origin) == (0.9, "replicated")
    assert minimum.register is not None and minimum.register.node == "a"
    with pytest.raises(ValueError, match=r"min_confidence: must be within \[0, 1\], got 1.5"):
        governor.set_setting("*", "min_confidence", 1.5, "ops", audit("set_setting"))
