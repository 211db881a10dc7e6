"""What a read of a TEAM or ORG subject adds to its own beliefs: its roll-up (node.rollup),
as the rows the reader's filter selects, and on Explain the users behind a slot's rows.

A roll-up part is a SelfModelSnapshot holding only ``rollups`` and ``group_users``, serialized:
appended to a snapshot's bytes (protobuf merges the concatenation as one message), or wrapped
as the response's field 1 and appended to a serialized response (a message field seen twice is
merged). A group's parts are kept per filter until its roll-up moves (the roll-up is a new
object then), so a read of an unchanged group serializes nothing.

A part carries at most ``budget`` bytes of rows (the node's max_rollup_bytes), the first in
the roll-up's order, and counts the rest in ``rollups_omitted``: however many distinct
statements a group's users hold, its reads fit a reply.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from node.convert import Filter, as_snapshot_field
from node.rollup import GroupRollup, Holder, select_rollup
from selfmodel.v1 import model_pb2, selfmodel_pb2
from sync.codec import subject_to_proto
from sync.members import is_group
from sync.observation import Subject

_FRAMING = 6  # a repeated field's tag and length prefix, at most, per row

# Roll-up parts kept (per group and filter), in count and in bytes (a part holds up to
# max_rollup_bytes, and a reader names its filters); the least recently used goes first.
MAX_PARTS = 4096
MAX_PART_BYTES = 64 * 1024 * 1024


class RollupReads:
    def __init__(
        self,
        rollup: Callable[[Subject], GroupRollup],
        holders: Callable[[Subject, str, str, str], tuple[Holder, ...]],
        budget: int,
    ) -> None:
        self._rollup = rollup
        self._budget = budget
        self._holders = holders
        self._parts: OrderedDict[tuple[Subject, Filter], tuple[GroupRollup, bytes]] = OrderedDict()
        self._bytes = 0  # of the kept parts' bodies
        self._lock = threading.Lock()

    def part(self, subject: Subject, want: Filter) -> bytes:
        """The serialized roll-up part of a read of ``subject`` (empty for a user)."""
        if not is_group(subject):
            return b""
        rollup = self._rollup(subject)
        key = (subject, want)
        with self._lock:
            found = self._parts.get(key)
            if found is not None and found[0] is rollup:
                self._parts.move_to_end(key)
                return found[1]
        body = rollup_part(rollup, want, self._budget).SerializeToString()
        with self._lock:
            replaced = self._parts.pop(key, None)
            if replaced is not None:
                self._bytes -= len(replaced[1])
            self._parts[key] = (rollup, body)
            self._bytes += len(body)
            while len(self._parts) > MAX_PARTS or self._bytes > MAX_PART_BYTES:
                _, (_, dropped) = self._parts.popitem(last=False)
                self._bytes -= len(dropped)
        return body

    def kept_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def parts(self, subjects: Sequence[Subject], want: Filter) -> list[bytes]:
        """``part`` of each of ``subjects`` (BatchGetSelfModels), the rows of them all within
        one budget: a group read once the budget is spent carries its users and counts."""
        left, found = self._budget, []
        for subject in subjects:
            body = self.part(subject, want)
            if len(body) > left:
                body = rollup_part(self._rollup(subject), want, left).SerializeToString()
            left = max(0, left - len(body))
            found.append(body)
        return found

    def field(self, subject: Subject, want: Filter) -> bytes:
        """``part`` as a response's snapshot field (GetSelfModel, WatchSelfModel)."""
        body = self.part(subject, want)
        return as_snapshot_field(body) if body else b""

    def explain(
        self, subject: Subject, context: str, key: str, msg: selfmodel_pb2.ExplainBeliefResponse
    ) -> None:
        """Adds to ``msg`` the users behind each roll-up row of the slot (a group's own users:
        of its tenant, as every member is), while they fit in the budget, and the count of the
        rest."""
        if not is_group(subject):
            return
        used = 0
        for row in self._rollup(subject).beliefs:
            if (row.context, row.key) != (context, key):
                continue
            for h in self._holders(subject, context, key, row.statement):
                if h.user.tenant != subject.tenant:
                    continue
                if used > self._budget:
                    msg.holders_omitted += 1
                    continue
                item = selfmodel_pb2.RollupHolder(statement=row.statement, confidence=h.confidence)
                subject_to_proto(h.user, item.user)
                item.changed_at.FromMilliseconds(h.changed_ms)
                used += item.ByteSize() + _FRAMING
                if used > self._budget:
                    msg.holders_omitted += 1
                else:
                    msg.holders.append(item)


def rollup_part(rollup: GroupRollup, want: Filter, budget: int) -> model_pb2.SelfModelSnapshot:
    """The rows ``want`` selects (its contexts; its minimum against the mean confidence), in
    order while they fit in ``budget`` bytes, the count of the rest, and the group's users."""
    msg = model_pb2.SelfModelSnapshot(group_users=rollup.users)
    rows = select_rollup(rollup, want.contexts, want.min_confidence).beliefs
    used = 0
    for i, r in enumerate(rows):
        row = model_pb2.RollupBelief(
            context=r.context,
            key=r.key,
            statement=r.statement,
            holders=r.holders,
            share=r.share,
            mean_confidence=r.mean_confidence,
        )
        row.changed_at.FromMilliseconds(r.changed_ms)
        used += row.ByteSize() + _FRAMING
        if used > budget:
            msg.rollups_omitted = len(rows) - i
            break
        msg.rollups.append(row)
    return msg


__all__ = ["MAX_PARTS", "MAX_PART_BYTES", "RollupReads", "rollup_part"]
