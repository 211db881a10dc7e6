"""A cached, pre-serialized GetSelfModel reply reads exactly like one built from scratch."""

from __future__ import annotations

from node import convert
from node.engine import ModelView
from node.policy import PolicyBook
from node.resolution import Belief, Position, left_out, select
from selfmodel.v1 import model_pb2, selfmodel_pb2
from sync.crdt import SubjectState
from sync.observation import Subject, SubjectKind

U1 = Subject("acme", SubjectKind.USER, "u-1")
STATE = SubjectState(U1)


def belief(context: str, key: str, confidence: float, uncertain: bool = False) -> Belief:
    stance = Position("sales_agent", f"{key} holds", confidence, 1_700_000_000_000)
    return Belief(
        context, key, f"{key} holds", confidence, (stance,), (), uncertain, 1_700_000_000_000,
        "weighted",
    )  # fmt: skip


BELIEFS = (
    belief("budget", "ceiling", 0.9),
    belief("budget", "owner", 0.3, uncertain=True),
    belief("communication_style", "tone", 0.7),
)


def expected(view: ModelView, contexts: frozenset[str], floor: float, uncertain: bool) -> bytes:
    beliefs = select(view.beliefs, contexts, floor, uncertain)
    omitted = left_out(view.beliefs, contexts, floor, uncertain)
    minimums = convert.context_minimums(view.beliefs, contexts, PolicyBook())
    msg = convert.snapshot(U1, beliefs, view.token, view.resolved_ms, "sales", omitted, minimums)
    return msg.SerializeToString(deterministic=True)


def parsed(raw: bytes) -> bytes:
    """The snapshot a GetSelfModelResponse (and the same WatchSelfModelResponse) holds."""
    watched = selfmodel_pb2.WatchSelfModelResponse.FromString(raw).snapshot
    got = selfmodel_pb2.GetSelfModelResponse.FromString(raw).snapshot
    assert got == watched
    return got.SerializeToString(deterministic=True)


def test_the_reply_parses_to_the_snapshot_built_from_scratch_for_every_filter():
    replies = convert.SnapshotReplies()
    view = ModelView(STATE, BELIEFS, "token-1", 1_700_000_123_456)
    for contexts, floor, uncertain in [
        (frozenset(), 0.0, False),
        (frozenset(), 0.0, True),
        (frozenset({"budget"}), 0.0, True),
        (frozenset(), 0.8, False),
    ]:
        for _ in range(2):  # built, then from the cache
            raw = replies.reply(U1, view, contexts, floor, uncertain, "sales")
            assert parsed(raw) == expected(view, contexts, floor, uncertain)


def test_a_cached_reply_carries_each_call_s_resolution_time_and_follows_new_beliefs():
    replies = convert.SnapshotReplies()
    first = ModelView(STATE, BELIEFS, "token-1", 1_700_000_000_100)
    replies.reply(U1, first, frozenset(), 0.0, False, "sales")

    same_beliefs_later = ModelView(STATE, BELIEFS, "token-1", 1_700_000_000_900)
    raw = replies.reply(U1, same_beliefs_later, frozenset(), 0.0, False, "sales")
    assert parsed(raw) == expected(same_beliefs_later, frozenset(), 0.0, False)
    assert selfmodel_pb2.GetSelfModelResponse.FromString(
        raw
    ).snapshot.resolved_at.ToMilliseconds() == (1_700_000_000_900)

    changed = ModelView(STATE, BELIEFS[:1], "token-2", 1_700_000_001_000)
    raw = replies.reply(U1, changed, frozenset(), 0.0, False, "sales")
    assert parsed(raw) == expected(changed, frozenset(), 0.0, False)


def test_the_cache_stays_bounded():
    replies = convert.SnapshotReplies(max_entries=3)
    view = ModelView(STATE, BELIEFS, "token-1", 1_700_000_000_000)
    for i in range(10):
        replies.reply(U1, view, frozenset(), i / 10, False, "sales")
    assert len(replies) == 3


def test_a_snapshot_of_any_size_is_framed_as_the_response_s_field():
    for size in (0, 1, 127, 128, 16_383, 16_384, 2_100_000):
        snap = model_pb2.SelfModelSnapshot(node="n" * size)
        raw = convert.as_snapshot_field(snap.SerializeToString())
        assert raw == selfmodel_pb2.GetSelfModelResponse(snapshot=snap).SerializeToString()


def test_the_reply_counts_what_it_left_out_and_names_each_context_s_minimum():
    view = ModelView(STATE, BELIEFS, "token-1", 1_700_000_000_000)
    raw = convert.SnapshotReplies().reply(U1, view, frozenset(), 0.8, False, "sales")
    snap = selfmodel_pb2.GetSelfModelResponse.FromString(raw).snapshot
    assert [b.key for b in snap.beliefs] == ["ceiling"]
    assert (snap.uncertain_omitted, snap.below_min_confidence_omitted) == (1, 1)
    assert dict(snap.context_min_confidence) == {"budget": 0.5, "communication_style": 0.5}
