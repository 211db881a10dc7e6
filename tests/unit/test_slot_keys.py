"""The slot-key rule clients reimplement (docs/slot_keys.json, docs/clients.md) is the node's.

Each vector's statement, written without a key, gets the vector's key from Observe's
validation and the engine's normalization; Retract and ExplainBelief accept the statement as
written and name the same slot.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from node.errors import InvalidArgument
from node.resolution import normalize_statement
from node.validation import Limits, observation, slot_key
from selfmodel.v1 import model_pb2, selfmodel_pb2

DOC = json.loads((Path(__file__).resolve().parents[2] / "docs" / "slot_keys.json").read_text())
VECTORS = DOC["vectors"]
LIMITS = Limits()
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # refused in statements (node.validation)


def _request(statement: str) -> selfmodel_pb2.ObserveRequest:
    subject = model_pb2.Subject(tenant="acme", kind=model_pb2.SUBJECT_KIND_USER, id="u-1")
    return selfmodel_pb2.ObserveRequest(
        subject=subject, context="style", statement=statement, confidence=0.8
    )


@pytest.mark.parametrize("vector", VECTORS, ids=[v["why"] for v in VECTORS])
def test_each_vector_s_statement_gets_its_key(vector: dict[str, str | None]) -> None:
    statement, key = vector["statement"], vector["key"]
    assert statement is not None
    if key is None:
        with pytest.raises(InvalidArgument) as refused:
            observation(_request(statement), "", LIMITS)
        assert refused.value.field == "statement"
        return
    item = observation(_request(statement), "", LIMITS)
    assert item.key == ""  # no key given: the engine derives it
    assert normalize_statement(item.statement) == key


@pytest.mark.parametrize("vector", VECTORS, ids=[v["why"] for v in VECTORS])
def test_retract_and_explain_name_a_keyless_slot_by_its_statement_as_written(
    vector: dict[str, str | None],
) -> None:
    statement, key = vector["statement"], vector["key"]
    assert statement is not None
    if key is None:
        return
    assert slot_key(statement, "key", LIMITS) == key
    assert slot_key(key, "key", LIMITS) == key  # the key Observe returned names it too


def test_the_listed_whitespace_is_exactly_what_becomes_one_space() -> None:
    listed = {int(u.removeprefix("U+"), 16) for u in DOC["whitespace"]}
    collapsed = {
        c
        for c in range(sys.maxunicode + 1)
        if not 0xD800 <= c <= 0xDFFF
        and not _CONTROL.match(chr(c))
        and normalize_statement(f"a{chr(c)}{chr(c)}b") == "a b"
    }
    assert collapsed == listed
