"""node/listing.py: pages of subjects and beliefs, and tokens bound to their listing."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.errors import InvalidArgument
from node.listing import SCAN_FACTOR, beliefs_page, page_size, subjects_page
from node.resolution import Belief
from sync.causal import CausalContext
from sync.crdt import SubjectState
from sync.observation import Subject, SubjectKind
from tests.unit.strategies import VALUES, observation


class Keys:
    """The ``state`` column family's keys, scanned as Store.scan_keys does."""

    def __init__(self, subjects: list[Subject], empty: frozenset[Subject] = frozenset()) -> None:
        self.keys = sorted(s.storage_key() for s in subjects)
        self.empty = empty
        self.read = 0

    def scan_keys(self, cf: str, prefix: bytes, after: bytes, limit: int) -> list[bytes]:
        found = [k for k in self.keys if k.startswith(prefix) and k > after][:limit]
        self.read += len(found)
        return found

    def load(self, subject: Subject) -> SubjectState | None:
        if subject in self.empty:
            return SubjectState(subject)  # forgotten: no observation left
        obs = observation()
        return SubjectState(
            subject, context=CausalContext.of([obs.dot]), observations={obs.dot: obs}
        )


def every_page(keys: Keys, tenant: str, kind: SubjectKind | None, size: int) -> list[list[Subject]]:
    pages, token = [], ""
    for _ in range(1000):
        page, token = subjects_page(keys, keys.load, tenant, kind, token, size)
        pages.append(page)
        if not token:
            return pages
    raise AssertionError("the listing never ended")


SUBJECTS = st.lists(
    st.builds(
        Subject,
        st.sampled_from(["acme", "acme2", "globex"]),
        st.sampled_from(list(SubjectKind)),
        st.text("abz09-", min_size=1, max_size=4),
    ),
    unique=True,
    max_size=40,
)


@VALUES
@given(subjects=SUBJECTS, size=st.integers(1, 9), kind=st.sampled_from([None, *SubjectKind]))
def test_the_pages_list_each_subject_of_the_tenant_and_kind_once_in_storage_order(
    subjects: list[Subject], size: int, kind: SubjectKind | None
) -> None:
    keys = Keys(subjects)
    pages = every_page(keys, "acme", kind, size)
    listed = [s for page in pages for s in page]
    expected = sorted(
        (s for s in subjects if s.tenant == "acme" and kind in (None, s.kind)),
        key=Subject.storage_key,
    )
    assert listed == expected
    assert all(len(page) <= size for page in pages)


def test_forgotten_subjects_are_skipped_and_a_call_reads_a_bounded_number_of_keys() -> None:
    subjects = [Subject("acme", SubjectKind.USER, f"u-{i:03d}") for i in range(100)]
    keys = Keys(subjects, empty=frozenset(subjects[:90]))
    page, token = subjects_page(keys, keys.load, "acme", None, "", 5)
    assert page == [] and token  # short, but it goes on
    assert keys.read == 5 * SCAN_FACTOR + 1  # the keys of its budget, and one to see what is left
    assert [s for p in every_page(keys, "acme", None, 5) for s in p] == subjects[90:]


def test_a_token_is_refused_for_another_tenant_or_kind_and_garbage_is_refused() -> None:
    subjects = [Subject("acme", SubjectKind.USER, f"u-{i}") for i in range(5)]
    keys = Keys(subjects)
    _, token = subjects_page(keys, keys.load, "acme", None, "", 2)
    for tenant, kind in (("globex", None), ("acme", SubjectKind.USER)):
        with pytest.raises(InvalidArgument, match="page_token: was issued for another listing"):
            subjects_page(keys, keys.load, tenant, kind, token, 2)
    crafted = base64.urlsafe_b64encode(
        json.dumps({"v": 1, "of": "ListSubjects", "listing": ["acme", 0], "after": ["z"]}).encode()
    ).decode()
    for garbage in ("x", "e30", "!!!", token[:-3], crafted):
        with pytest.raises(InvalidArgument, match="page_token"):
            subjects_page(keys, keys.load, "acme", None, garbage, 2)


def _belief(context: str, key: str) -> Belief:
    return Belief(context, key, "s", 0.9, (), (), False, 0, "weighted")


def test_belief_pages_add_up_to_the_beliefs_and_their_token_names_the_subject() -> None:
    beliefs = [_belief(c, k) for c in ("a", "b") for k in ("x", "y", "z")]
    alice = Subject("acme", SubjectKind.USER, "alice")
    pages, token = [], ""
    for _ in range(10):
        page, token = beliefs_page(alice, beliefs, token, 4)
        pages.append(page)
        if not token:
            break
    assert [len(p) for p in pages] == [4, 2]
    assert [b for p in pages for b in p] == beliefs
    _, token = beliefs_page(alice, beliefs, "", 4)
    with pytest.raises(InvalidArgument, match="page_token: was issued for another subject"):
        beliefs_page(alice._replace(id="bob"), beliefs, token, 4)


def test_a_page_size_above_the_maximum_is_refused_naming_the_setting() -> None:
    assert page_size(0, "page_size", 1000) == 100
    assert page_size(7, "page_size", 1000) == 7
    with pytest.raises(InvalidArgument, match=r"page_size: must be at most 1000 .*max_page_size"):
        page_size(1001, "page_size", 1000)
