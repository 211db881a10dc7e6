"""The node's application layer: turns requests into CRDT deltas, commits them, answers reads.

Its parts: local writes (node.writes) and peers' merges (node.merges), committed in order per
subject (node.committing); here, the wiring, the books resolution runs with, and reads. Reads
are node.reads' (resolved snapshots; a handoff read never waits: node.handoff), watches
node.watches', the clock's screening of peers' deltas node.screening's.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence

from node import groups, idempotency
from node.admission import admit_every_write
from node.audit import AuditLog
from node.handoff import DEFAULT_LEAD, Handoffs
from node.locks import SubjectLocks
from node.merges import PeerMerges
from node.policy import PolicyBook
from node.reads import ModelView, Reader
from node.reliability import Books, Weights, books_of, learned_book
from node.resolution import Explanation
from node.sizes import SubjectSizes
from node.snapshots import Snapshots
from node.store import Change, Store
from node.watches import Subscription, Watches
from node.withdrawals import Withdrawals, follower
from node.writes import LocalWrites
from sync.bounds import (
    Footprint,
    SubjectLimits,
)
from sync.causal import CausalContext
from sync.codec import encode_token
from sync.crdt import SubjectState
from sync.delivery import CausalBuffer
from sync.hlc import HybridClock, wall_ms
from sync.members import is_group
from sync.observation import Subject


class Engine(LocalWrites, PeerMerges):
    def __init__(
        self,
        store: Store,
        policies: PolicyBook | None = None,
        *,
        clock: HybridClock | None = None,
        now_ms: Callable[[], int] = wall_ms,
        max_watchers: int = 1024,
        subject_limits: SubjectLimits | None = None,
        members: frozenset[str] = frozenset(),
        max_handoff_lead: int = DEFAULT_LEAD,
        snapshot_cache_mb: float = 64.0,
    ) -> None:
        self.store = store
        self.clock = clock or HybridClock(high_water=store.hlc_high_water)
        self.node = store.node
        self._now_ms = now_ms
        self._locks = SubjectLocks()
        self.watches = Watches(store.node, max_watchers)
        self.snapshots = Snapshots(int(snapshot_cache_mb * 2**20))
        store.on_dropped = self.snapshots.state_dropped
        # What a read with a handoff token is answered (the nodes whose actors it may name).
        self.handoffs = Handoffs(store.node, members | {store.node}, max_handoff_lead)
        # Each tenant's withdrawn sources (node.withdrawals), followed as they change.
        self.withdrawals = Withdrawals(lambda s: store.load(s) or SubjectState(s))
        self.reader = Reader(
            store, policies or PolicyBook(), self.snapshots, self.handoffs, self.withdrawals
        )
        self._held = CausalBuffer()
        self._sweeper = idempotency.Sweeper()  # of the requests column family (node.idempotency)
        self.audit = AuditLog(store)
        self.subject_limits = subject_limits or SubjectLimits()
        self.sizes = SubjectSizes(self.subject_limits)
        # Called with every committed batch of changes (local writes and merges alike), under
        # the subjects' locks, before watches are woken: what follows the subjects' states
        # (roll-ups, governance) keeps up with every change, in commit order; a group read
        # with a handoff token passes the locks to wait for them (``settled``).
        self.listeners: list[Callable[[Sequence[Change]], None]] = [
            follower(self.withdrawals, store, self.refresh),
            self.reader.follow,  # kept snapshots advance with every change
        ]
        # The books in force are the operators' (node.governor) and, per tenant, the
        # operators' times that tenant's learned weights (node.learning; none unless it is
        # on): node.reliability.Books, kept by the reader (``policies``, ``book_of``).
        self.learned: Mapping[str, Weights] = {}  # per tenant
        self._book_lock = threading.Lock()
        # Told the operators' new book when it changes (learning judges against it).
        self.book_listeners: list[Callable[[PolicyBook], None]] = []
        self.groups = groups.follow(self)  # memberships and roll-ups (node.groups)
        self.admit = admit_every_write  # agent writes ask (node.admission)

    @property
    def policies(self) -> PolicyBook:
        """The operators' book in force: every context's policy, the same for every tenant
        (a subject resolves with ``book_of`` its tenant, which adds its learned weights)."""
        return self.reader.policies

    def book_of(self, tenant: str) -> PolicyBook:
        """The book ``tenant``'s subjects resolve with: ``learned_book(operators, its
        weights)``."""
        return self.reader.books.of(tenant)

    def use_policies(self, book: PolicyBook) -> None:
        """Resolves with the operators' ``book`` from now on (node.governor keeps it: the file
        under the replicated settings), times each tenant's learned weights: no snapshot
        resolved under another book is served again (node.reads), and every watch is woken to
        read its model again. ``book_listeners`` are told."""
        with self._book_lock:
            self.snapshots.rebooked_all()
            self.reader.books = books_of(book, self.learned)
            self.groups.policies_changed()  # members' beliefs moved: so do roll-ups
            self.watches.wake_all()
        for listen in self.book_listeners:
            listen(book)

    def use_learned(
        self, learned: Mapping[str, Weights], moved: Mapping[str, frozenset[str]]
    ) -> None:
        """Resolves with the ``learned`` weights (per tenant) from now on (node.learning), which
        move only the beliefs of ``moved``'s tenants, in its contexts: a cached snapshot of
        such a tenant is resolved again on its next read, in those contexts only
        (node.snapshots), and its tenant's watches look again; other tenants' are untouched."""
        with self._book_lock:
            self.learned = learned
            books = self.reader.books
            tenants = dict(books.tenants)
            for tenant, contexts in moved.items():
                new = learned_book(self.policies, learned.get(tenant, {}))
                self.snapshots.rebooked(tenant, books.of(tenant), new, contexts)
                if new is self.policies:
                    tenants.pop(tenant, None)
                else:
                    tenants[tenant] = new
            self.reader.books = Books(self.policies, tenants)
            for tenant, contexts in moved.items():  # members' beliefs moved: so do roll-ups
                self.groups.policies_changed(contexts, tenant)
        for tenant in moved:
            self.watches.wake_tenant(tenant)

    def refresh(self, subject: Subject) -> None:
        """Re-resolves ``subject``'s kept snapshot (none is resolved for a subject not kept)
        and wakes its watchers: for a change of what resolution takes besides the state."""
        if self.snapshots.get(subject) is not None:
            self.reader.snapshot(self.state(subject))
        self.groups.resolved_anew(subject)  # a member's beliefs moved: so do its roll-ups
        self.watches.notify(subject)

    def footprint(self, state: SubjectState) -> Footprint:
        """What ``state`` holds as the subject limits count it (node.sizes)."""
        return self.sizes.footprint(state)

    # -- reads ---------------------------------------------------------------------------

    def at_position(
        self, subject: Subject, positions: dict[Subject, CausalContext] | None
    ) -> SubjectState:
        """The subject's state if it covers the token's position (node.reads.Reader); for a
        team or an organization, if it and its roll-up cover the token's positions of it and
        of its members (node.handoff.Handoffs.require_group)."""
        if positions is None or not is_group(subject):
            return self.reader.at_position(subject, positions)
        state = self.state(subject)
        reach = functools.partial(self._reach, subject)
        named = self.handoffs.require_group(state, positions, self.actor, reach, self.state)
        for covered in named:
            self.settled(covered)
        return state

    def _reach(self, group: Subject) -> frozenset[Subject]:
        """``group``'s members as its roll-up has them (node.groups.Following.reach), once the
        roll-up has every state of the group a read has seen."""
        self.settled(group)
        return self.groups.reach(group)

    def model(
        self, subject: Subject, positions: dict[Subject, CausalContext] | None = None
    ) -> ModelView:
        """The subject's resolved snapshot (node.snapshots), if it covers ``positions``."""
        state = self.at_position(subject, positions)
        return ModelView(self.reader.snapshot(state), self._now_ms())

    def explain(
        self,
        subject: Subject,
        context: str,
        key: str,
        positions: dict[Subject, CausalContext] | None = None,
    ) -> tuple[Explanation | None, str]:
        state = self.at_position(subject, positions)
        return self.reader.explain(state, context, key), encode_token({subject: state.context})

    def position(self, subject: Subject) -> CausalContext:
        return self.state(subject).context

    def positions_of(
        self, subject: Subject, positions: dict[Subject, CausalContext]
    ) -> dict[Subject, CausalContext] | None:
        """The token's positions a read of ``subject`` waits for, within a read of several
        subjects (none: it waits for nothing): the subject's; a group's and its members'."""
        if not positions:
            return None
        wanted = {subject} | (self._reach(subject) if is_group(subject) else set())
        found = {s: p for s, p in positions.items() if s in wanted}
        if found and is_group(subject):  # a member removed since is then ignored, not refused
            found.setdefault(subject, CausalContext())
        return found or None

    # -- watch ---------------------------------------------------------------------------

    def subscribe(self, subject: Subject) -> Subscription:
        return self.watches.subscribe(subject)

    def unsubscribe(self, sub: Subscription) -> None:
        self.watches.unsubscribe(sub)

    def wake_watches(self) -> None:
        """Wakes every watch at once (its stream then checks its caller's token again)."""
        self.watches.wake_all()

    def close_watches(self) -> None:
        self.watches.close_all()

    def count_subjects(self, tenant: str) -> int:
        """How many subjects of ``tenant`` this node holds (an exact count of its key range),
        the node's own (``_``-named, as ListSubjects leaves them out) aside."""
        return sum(1 for s in self.store.subjects(tenant) if not s.id.startswith("_"))


__all__ = ["Engine"]
