"""The sender's priority scheduler (docs/protocol.md §6.1).

A sender queues outgoing packets in four priority classes and, whenever the
transport can take more bytes, asks the scheduler which one goes next.  The
scheduler is pure bookkeeping: items are opaque, nothing here reads a clock or
touches the network, and every operation is O(1).

Theory of operation
-------------------

*CONTROL* is served first, always (strict priority).  The other three classes
share the link by weight.  The weights ``(w_i, w_s, w_b)`` define a *cycle* of
``W = w_i + w_s + w_b`` slots, generated once by smooth weighted round robin
(nginx's SWRR) as if every class were always backlogged.  For the default
weights 8/4/1 it is ``I S I I S I B I S I I S I``.  A *cursor* walks the cycle;
each non-control pop serves the first slot at or after the cursor whose class
has items, and moves the cursor past it.  Slots of empty classes are skipped,
so the scheduler is work-conserving, and skipping is the only way the cursor
moves past a slot: a class that stays backlogged cannot lose its slots, which
is why BULK gets a turn in every ``W`` non-control pops however the other
classes come and go.  (nginx's SWRR run over only the backlogged classes does
not give that bound: with weights 8/4/1 and INTERACTIVE and SYNC flapping
between empty and busy, a random search found 16 non-bulk pops in a row.)

Weights alone cannot keep a chat line from waiting behind a train of bulk
packets (with weights 1/1/32 most slots are BULK), so one hard rule overrides
them, the *bulk gate*: after a BULK pop made while INTERACTIVE had items, no
further BULK item goes out until an INTERACTIVE one has.  When the cursor
reaches a BULK slot with the gate closed, the scheduler pops INTERACTIVE
instead and leaves the cursor *on* that BULK slot, so BULK keeps its turn and
takes it on the very next non-control pop.  The gate can only be closed while
INTERACTIVE has items (it closes on a BULK pop with INTERACTIVE non-empty and
opens on every INTERACTIVE pop, which is the only way INTERACTIVE empties).

To make a pop O(1) rather than a scan over skipped slots, the scheduler
precomputes, for each of the seven non-empty subsets of {I, S, B} and each
cursor position, the slot a pop would serve.  The tables depend only on the
weights and are shared by every scheduler that uses the same weights.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar

import attrs

from .config import MAX_SCHEDULER_WEIGHT
from .errors import ErrorCode, LocalProtocolError
from .frame import Priority

if TYPE_CHECKING:
    from .config import Config

T = TypeVar("T")

_CONTROL = int(Priority.CONTROL)
_INTERACTIVE = int(Priority.INTERACTIVE)
_SYNC = int(Priority.SYNC)
_BULK = int(Priority.BULK)
_PRIORITIES = tuple(Priority)


_PRIORITIES = tuple(Priority)


def swrr_cycle(weights: tuple[int, int, int]) -> tuple[Priority, ...]:
    """The slot cycle of §6.1.3: smooth weighted round robin over INTERACTIVE,
    SYNC and BULK, run for ``sum(weights)`` steps with every class backlogged.

    Each step adds every class's weight to its running total, picks the class
    with the largest total (ties go to the more urgent class) and subtracts
    ``sum(weights)`` from the winner.  After ``sum(weights)`` steps every total
    is back to zero, so the cycle repeats exactly."""
    _check_weights(weights)
    total = sum(weights)
    current = [0, 0, 0]
    cycle = []
    for _ in range(total):
        best = 0
        for k in range(3):
            current[k] += weights[k]
            # Strict ">" so that the first (most urgent) class wins a tie.
            if current[k] > current[best]:
                best = k
        current[best] -= total
        cycle.append(_PRIORITIES[best + 1])
    return tuple(cycle)


def _check_weights(weights: tuple[int, int, int]) -> None:
    if len(weights) != 3 or not all(
        type(w) is int and 1 <= w <= MAX_SCHEDULER_WEIGHT for w in weights
    ):
        raise ValueError(
            f"weights must be three integers in 1..{MAX_SCHEDULER_WEIGHT}, got {weights!r}"
        )


#: One entry of the serve table: (class 1..3, slot served, cursor after it).
_Entry = tuple[int, int, int]


@functools.lru_cache(maxsize=32)
def _serve_table(weights: tuple[int, int, int]) -> tuple[tuple[_Entry, ...], ...]:
    """``table[mask][cursor]`` describes the first slot at or after ``cursor``
    (cyclically) whose class is in ``mask`` (bit 0 = I, bit 1 = S, bit 2 = B).

    The weights are first divided by their gcd: SWRR is linear in the
    weights, so ``k*w`` yields the cycle of ``w`` repeated ``k`` times, and a
    cursor in the long cycle behaves exactly like the same cursor modulo the
    short one.  Only the table gets smaller."""
    g = math.gcd(*weights)
    cycle = [int(p) for p in swrr_cycle((weights[0] // g, weights[1] // g, weights[2] // g))]
    size = len(cycle)
    table: list[tuple[_Entry, ...]] = [()]  # mask 0: nothing queued, never looked up
    for mask in range(1, 8):
        row = []
        for cursor in range(size):
            for step in range(size):
                slot = (cursor + step) % size
                if mask & (1 << (cycle[slot] - 1)):
                    row.append((cycle[slot], slot, (slot + 1) % size))
                    break
        table.append(tuple(row))
    return tuple(table)


@attrs.frozen(kw_only=True, slots=True)
class SchedulerStatistics:
    """A snapshot of a :class:`PriorityScheduler`, from ``statistics()``.
    Tuples are indexed by :class:`~elink_protocol.frame.Priority`."""

    queued: tuple[int, int, int, int]
    """Items waiting in each class."""
    popped: tuple[int, int, int, int]
    """Items popped from each class since the scheduler was created."""
    bulk_deferrals: int
    """How many times the bulk gate (§6.1.4) served INTERACTIVE in a BULK slot."""
    max_items: int
    """The bound on queued items (all classes together)."""


class PriorityScheduler(Generic[T]):
    """Chooses which queued item a sender emits next (§6.1).

    ``push(priority, item)`` queues an item; ``pop()`` returns the next one to
    send, or ``None`` when nothing is queued (so items themselves should not
    be ``None``).  At most ``max_items`` items are held across all classes.
    """

    __slots__ = (
        "_cursor",
        "_deferrals",
        "_gate_closed",
        "_len",
        "_max_items",
        "_popped",
        "_queues",
        "_serve",
        "_weights",
    )

    def __init__(self, *, weights: tuple[int, int, int] = (8, 4, 1), max_items: int) -> None:
        _check_weights(weights)
        if type(max_items) is not int or max_items < 1:
            raise ValueError(f"max_items must be a positive integer, got {max_items!r}")
        self._weights = weights
        self._serve = _serve_table(weights)
        self._queues: tuple[deque[T], deque[T], deque[T], deque[T]] = (
            deque(),
            deque(),
            deque(),
            deque(),
        )
        self._max_items = max_items
        self._len = 0
        self._cursor = 0
        self._gate_closed = False
        self._popped = [0, 0, 0, 0]
        self._deferrals = 0

    @classmethod
    def from_config(cls, config: Config, *, max_items: int) -> PriorityScheduler[T]:
        """A scheduler with the weights of ``config`` (``weight_interactive``,
        ``weight_sync``, ``weight_bulk``)."""
        return cls(
            weights=(config.weight_interactive, config.weight_sync, config.weight_bulk),
            max_items=max_items,
        )

    @property
    def weights(self) -> tuple[int, int, int]:
        return self._weights

    @property
    def max_items(self) -> int:
        return self._max_items

    def __len__(self) -> int:
        return self._len

    @property
    def is_empty(self) -> bool:
        return self._len == 0

    def pending(self, priority: Priority) -> int:
        """Items queued in one class."""
        return len(self._queues[priority])

    def queued(self) -> list[tuple[Priority, T]]:
        """Every queued item with its class, most urgent class first and FIFO
        within a class.  Nothing is removed (used to snapshot a session)."""
        return [(_PRIORITIES[i], item) for i, queue in enumerate(self._queues) for item in queue]

    def push(self, priority: Priority, item: T) -> None:
        """Queue ``item`` at the tail of its class.

        Raises :class:`LocalProtocolError` (``RESOURCE_LIMIT``) when
        ``max_items`` items are already queued; nothing is queued then."""
        if self._len >= self._max_items:
            raise LocalProtocolError(
                f"send queue full ({self._max_items} items)", ErrorCode.RESOURCE_LIMIT
            )
        self._queues[priority].append(item)
        self._len += 1

    def _choose(self) -> tuple[int, int, bool]:
        """Decide the next non-control pop: ``(class, cursor_after, deferred)``.

        ``class`` is 0 when nothing is queued.  ``deferred`` is true when the
        bulk gate turns a BULK slot into an INTERACTIVE pop; the cursor then
        stays on that slot so BULK keeps its turn."""
        _, qi, qs, qb = self._queues
        mask = (1 if qi else 0) | (2 if qs else 0) | (4 if qb else 0)
        if not mask:
            return 0, self._cursor, False
        cls, slot, after = self._serve[mask][self._cursor]
        if cls == _BULK and self._gate_closed:
            # The gate is only ever closed while INTERACTIVE has items.
            return _INTERACTIVE, slot, True
        return cls, after, False

    def peek_priority(self) -> Priority | None:
        """The class ``pop()`` would take its item from, without popping."""
        if self._queues[_CONTROL]:
            return Priority.CONTROL
        cls, _, _ = self._choose()
        return _PRIORITIES[cls] if cls else None

    def pop(self) -> T | None:
        """Remove and return the next item to send, or ``None`` if empty."""
        queues = self._queues
        control = queues[_CONTROL]
        if control:
            self._len -= 1
            self._popped[_CONTROL] += 1
            return control.popleft()
        # The decision of _choose(), inlined: this runs once per packet sent.
        qi = queues[_INTERACTIVE]
        mask = (1 if qi else 0) | (2 if queues[_SYNC] else 0) | (4 if queues[_BULK] else 0)
        if not mask:
            return None
        cls, slot, after = self._serve[mask][self._cursor]
        if cls == _INTERACTIVE:
            self._cursor = after
            self._gate_closed = False
        elif cls == _SYNC:
            self._cursor = after
        elif self._gate_closed:
            # Deferral: INTERACTIVE (non-empty whenever the gate is closed)
            # goes in this BULK slot; the cursor stays so BULK goes next.
            cls = _INTERACTIVE
            self._cursor = slot
            self._gate_closed = False
            self._deferrals += 1
        else:
            self._cursor = after
            # qi is tested before the popleft below, which never touches it.
            self._gate_closed = bool(qi)
        self._len -= 1
        self._popped[cls] += 1
        return queues[cls].popleft()

    def statistics(self) -> SchedulerStatistics:
        q = self._queues
        p = self._popped
        return SchedulerStatistics(
            queued=(len(q[0]), len(q[1]), len(q[2]), len(q[3])),
            popped=(p[0], p[1], p[2], p[3]),
            bulk_deferrals=self._deferrals,
            max_items=self._max_items,
        )
