"""A kept, pre-serialized GetSelfModel reply reads exactly like one built from scratch."""

from __future__ import annotations

from node import convert
from node.policy import PolicyBook
from node.reads import ModelView
from node.resolution import Belief, Support, left_out, select
from node.snapshots import MAX_REPLIES, SlotIndex, Snapshot, Snapshots
from selfmodel.v1 import model_pb2, selfmodel_pb2
from sync.crdt import SubjectState
from sync.observation import Subject, SubjectKind

U1 = Subject("acme", SubjectKind.USER, "u-1")
STATE = SubjectState(U1)


def belief(context: str, key: str, confidence: float, uncertain: bool = False) -> Belief:
    stance = Support("sales_agent", f"{key} holds", confidence, 1_700_000_000_000)
    other = Support("support_agent", f"{key} holds", 0.5, 1_699_000_000_000)
    against = Support("billing_agent", f"no {key}", 0.4, 1_698_000_000_000)
    return Belief(
        context, key, f"{key} holds", confidence, (stance, other), (against,), uncertain,
        1_700_000_000_000, "weighted",
    )  # fmt: skip


BELIEFS = (
    belief("budget", "ceiling", 0.9),
    belief("budget", "owner", 0.3, uncertain=True),
    belief("communication_style", "tone", 0.7),
)


def snap(beliefs: tuple[Belief, ...], token: str) -> Snapshot:
    return Snapshot(SlotIndex(STATE, {}), PolicyBook(), {}, beliefs, token)


def expected(view: ModelView, want: convert.Filter) -> bytes:
    beliefs = select(view.beliefs, want.contexts, want.min_confidence, want.include_uncertain)
    omitted = left_out(view.beliefs, want.contexts, want.min_confidence, want.include_uncertain)
    minimums = convert.context_minimums(view.beliefs, want.contexts, PolicyBook())
    msg = convert.snapshot(
        U1, beliefs, view.token, view.resolved_ms, "sales", want.max_positions, omitted, minimums
    )
    return msg.SerializeToString(deterministic=True)


def unwrapped(raw: bytes) -> model_pb2.SelfModelSnapshot:
    """The snapshot a GetSelfModelResponse (and the same WatchSelfModelResponse) holds."""
    watched = selfmodel_pb2.WatchSelfModelResponse.FromString(raw).snapshot
    got = selfmodel_pb2.GetSelfModelResponse.FromString(raw).snapshot
    assert got == watched
    return got


def parsed(raw: bytes) -> bytes:
    return unwrapped(raw).SerializeToString(deterministic=True)


def test_the_reply_parses_to_the_snapshot_built_from_scratch_for_every_filter():
    replies = convert.SnapshotReplies(Snapshots(2**20))
    view = ModelView(snap(BELIEFS, "token-1"), 1_700_000_123_456)
    for want in [
        convert.Filter(),
        convert.Filter(include_uncertain=True),
        convert.Filter(frozenset({"budget"}), 0.0, True),
        convert.Filter(min_confidence=0.8),
        convert.Filter(max_positions=0),
        convert.Filter(max_positions=1),
    ]:
        for _ in range(2):  # built, then kept with the snapshot
            raw = replies.reply(U1, view, want, "sales")
            assert parsed(raw) == expected(view, want)


def test_a_summary_lists_no_positions_but_counts_them_and_top_n_lists_the_first_n():
    replies = convert.SnapshotReplies(Snapshots(2**20))
    view = ModelView(snap(BELIEFS, "token-1"), 1_700_000_000_000)
    full = unwrapped(replies.reply(U1, view, convert.Filter(), "s"))
    summary = unwrapped(replies.reply(U1, view, convert.Filter(max_positions=0), "s"))
    top = unwrapped(replies.reply(U1, view, convert.Filter(max_positions=1), "s"))
    for f, s, t in zip(full.beliefs, summary.beliefs, top.beliefs, strict=True):
        assert (f.supporter_count, f.dissenter_count) == (len(f.supporters), len(f.dissenters))
        assert (s.supporter_count, s.dissenter_count) == (f.supporter_count, f.dissenter_count)
        assert not s.supporters and not s.dissenters
        assert list(t.supporters) == list(f.supporters)[:1]
        assert list(t.dissenters) == list(f.dissenters)[:1]
        assert (s.statement, s.confidence, s.uncertain) == (f.statement, f.confidence, f.uncertain)


def test_a_kept_reply_carries_each_call_s_resolution_time_and_follows_new_snapshots():
    replies = convert.SnapshotReplies(Snapshots(2**20))
    first = snap(BELIEFS, "token-1")
    replies.reply(U1, ModelView(first, 1_700_000_000_100), convert.Filter(), "sales")

    later = ModelView(first, 1_700_000_000_900)
    raw = replies.reply(U1, later, convert.Filter(), "sales")
    assert parsed(raw) == expected(later, convert.Filter())
    assert unwrapped(raw).resolved_at.ToMilliseconds() == (1_700_000_000_900)

    changed = ModelView(snap(BELIEFS[:1], "token-2"), 1_700_000_001_000)
    raw = replies.reply(U1, changed, convert.Filter(), "sales")
    assert parsed(raw) == expected(changed, convert.Filter())


def test_the_replies_kept_per_snapshot_are_bounded_and_counted_in_the_budget():
    snapshots = Snapshots(2**20)
    replies = convert.SnapshotReplies(snapshots)
    kept = snap(BELIEFS, "token-1")
    snapshots._keep(U1, kept, kept.index)
    before = snapshots.cost_bytes
    view = ModelView(kept, 1_700_000_000_000)
    for i in range(3 * MAX_REPLIES):
        replies.reply(U1, view, convert.Filter(min_confidence=i / 100), "sales")
    assert len(kept.replies) == MAX_REPLIES
    assert snapshots.cost_bytes == before + sum(len(r) for r in kept.replies.values())


def test_the_reply_counts_what_it_left_out_and_names_each_context_s_minimum():
    view = ModelView(snap(BELIEFS, "token-1"), 1_700_000_000_000)
    replies = convert.SnapshotReplies(Snapshots(2**20))
    got = unwrapped(replies.reply(U1, view, convert.Filter(min_confidence=0.8), "sales"))
    assert [b.key for b in got.beliefs] == ["ceiling"]
    assert (got.uncertain_omitted, got.below_min_confidence_omitted) == (1, 1)
    assert dict(got.context_min_confidence) == {"budget": 0.5, "communication_style": 0.5}


def test_a_snapshot_of_any_size_is_framed_as_the_response_s_field():
    for size in (0, 1, 127, 128, 16_383, 16_384, 2_100_000):
        one = model_pb2.SelfModelSnapshot(node="n" * size)
        raw = convert.as_snapshot_field(one.SerializeToString())
        assert raw == selfmodel_pb2.GetSelfModelResponse(snapshot=one).SerializeToString()
