"""Tests for the sender's priority scheduler (docs/protocol.md §6.1).

The scheduler is checked three ways: against the spec's worked examples,
against ``ReferenceScheduler`` (the spec's algorithm transcribed literally, with
none of the lookup tables or gcd reduction of the real one), and by a
Hypothesis state machine that interleaves pushes and pops of every class and
asserts the §6.1.2 guarantees after every single pop.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from elink_protocol.config import Config
from elink_protocol.errors import ErrorCode, LocalProtocolError
from elink_protocol.frame import Priority
from elink_protocol.scheduler import PriorityScheduler, SchedulerStatistics, swrr_cycle

CONTROL, INTERACTIVE, SYNC, BULK = (
    Priority.CONTROL,
    Priority.INTERACTIVE,
    Priority.SYNC,
    Priority.BULK,
)

weight = st.integers(1, 32)
weights_st = st.tuples(weight, weight, weight)


def reference_cycle(weights: tuple[int, int, int]) -> list[Priority]:
    """§6.1.3 step 1, written independently of ``swrr_cycle``."""
    total = sum(weights)
    current = {INTERACTIVE: 0, SYNC: 0, BULK: 0}
    w = dict(zip((INTERACTIVE, SYNC, BULK), weights, strict=True))
    cycle = []
    for _ in range(total):
        for p in current:
            current[p] += w[p]
        # max() returns the first maximal element: ties go to the lower class.
        best = max(current, key=lambda p: current[p])
        current[best] -= total
        cycle.append(best)
    assert all(v == 0 for v in current.values())
    return cycle


class ReferenceScheduler:
    """§6.1.3-§6.1.4 as written: a cursor over the full cycle, a linear scan
    for the first backlogged slot, and the bulk gate."""

    def __init__(self, weights: tuple[int, int, int]) -> None:
        self.cycle = reference_cycle(weights)
        self.queues: dict[Priority, deque[Any]] = {p: deque() for p in Priority}
        self.cursor = 0
        self.gate_closed = False

    def push(self, priority: Priority, item: object) -> None:
        self.queues[priority].append(item)

    def pop(self) -> Any:
        q = self.queues
        if q[CONTROL]:
            return q[CONTROL].popleft()
        if not (q[INTERACTIVE] or q[SYNC] or q[BULK]):
            return None
        size = len(self.cycle)
        for step in range(size):
            slot = (self.cursor + step) % size
            cls = self.cycle[slot]
            if q[cls]:
                break
        if cls is BULK and self.gate_closed:
            assert q[INTERACTIVE], "gate closed while INTERACTIVE is empty"
            self.cursor = slot
            self.gate_closed = False
            return q[INTERACTIVE].popleft()
        self.cursor = (slot + 1) % size
        if cls is INTERACTIVE:
            self.gate_closed = False
        elif cls is BULK:
            self.gate_closed = bool(q[INTERACTIVE])
        return q[cls].popleft()


def drain(sched: PriorityScheduler[str]) -> list[str]:
    out = []
    while (item := sched.pop()) is not None:
        out.append(item)
    return out


# --- the spec's worked examples (§6.1.5) -------------------------------------


def test_default_cycle_is_the_spec_table() -> None:
    assert "".join(p.name[0] for p in swrr_cycle((8, 4, 1))) == "ISIISIBISIISI"
    assert swrr_cycle((8, 4, 1)) == tuple(reference_cycle((8, 4, 1)))


def test_worked_example_bulk_gate() -> None:
    sched: PriorityScheduler[str] = PriorityScheduler(weights=(1, 1, 4), max_items=16)
    assert "".join(p.name[0] for p in swrr_cycle((1, 1, 4))) == "BIBSBB"
    for name in ("I1", "I2", "I3"):
        sched.push(INTERACTIVE, name)
    sched.push(SYNC, "S1")
    for k in range(1, 6):
        sched.push(BULK, f"B{k}")
    assert drain(sched) == ["B1", "I1", "B2", "S1", "I2", "B3", "I3", "B4", "B5"]
    assert sched.statistics().bulk_deferrals == 2


def test_worked_example_skipping_and_control() -> None:
    sched: PriorityScheduler[str] = PriorityScheduler(max_items=64)
    for k in range(20):
        sched.push(SYNC, f"S{k}")
    for k in range(3):
        sched.push(BULK, f"B{k}")
    out = [sched.pop() for _ in range(3)]
    sched.push(INTERACTIVE, "I1")
    sched.push(CONTROL, "C1")
    out += [sched.pop() for _ in range(7)]
    assert out == ["S0", "S1", "B0", "C1", "I1", "S2", "S3", "S4", "S5", "B1"]


# --- API edges ----------------------------------------------------------------


def test_empty_scheduler() -> None:
    sched: PriorityScheduler[int] = PriorityScheduler(max_items=1)
    assert sched.pop() is None
    assert sched.peek_priority() is None
    assert sched.is_empty
    assert len(sched) == 0
    assert sched.statistics() == SchedulerStatistics(
        queued=(0, 0, 0, 0), popped=(0, 0, 0, 0), bulk_deferrals=0, max_items=1
    )


def test_bound_raises_resource_limit_and_changes_nothing() -> None:
    sched: PriorityScheduler[int] = PriorityScheduler(max_items=2)
    sched.push(BULK, 1)
    sched.push(CONTROL, 2)
    before = sched.statistics()
    with pytest.raises(LocalProtocolError) as info:
        sched.push(CONTROL, 3)
    assert info.value.error_code is ErrorCode.RESOURCE_LIMIT
    assert sched.statistics() == before
    assert sched.pop() == 2
    sched.push(INTERACTIVE, 4)  # room again
    assert [sched.pop(), sched.pop(), sched.pop()] == [4, 1, None]


def test_statistics_is_a_frozen_snapshot() -> None:
    sched: PriorityScheduler[int] = PriorityScheduler(max_items=8)
    sched.push(SYNC, 1)
    snap = sched.statistics()
    sched.pop()
    assert snap.queued == (0, 0, 1, 0)
    assert sched.statistics().popped == (0, 0, 1, 0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        snap.queued = (0, 0, 0, 0)  # type: ignore[misc]


def test_from_config() -> None:
    config = Config(weight_interactive=3, weight_sync=2, weight_bulk=7)
    sched: PriorityScheduler[int] = PriorityScheduler.from_config(config, max_items=5)
    assert sched.weights == (3, 2, 7)
    assert sched.max_items == 5
    assert PriorityScheduler.from_config(Config(), max_items=1).weights == (8, 4, 1)


@pytest.mark.parametrize("weights", [(0, 1, 1), (1, 256, 1), (1, 1), (1.0, 1, 1), (-1, 4, 1)])
def test_bad_weights(weights: Any) -> None:
    with pytest.raises(ValueError):
        PriorityScheduler(weights=weights, max_items=1)


@pytest.mark.parametrize("field", ["weight_interactive", "weight_sync", "weight_bulk"])
@pytest.mark.parametrize("value", [0, 256])
def test_config_rejects_bad_weights(field: str, value: int) -> None:
    with pytest.raises(ValueError):
        Config(**{field: value})


@pytest.mark.parametrize("max_items", [0, -1, 1.5])
def test_bad_max_items(max_items: Any) -> None:
    with pytest.raises(ValueError):
        PriorityScheduler(max_items=max_items)


# --- shares -------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(weights=weights_st, cycles=st.integers(1, 3))
def test_shares_when_all_backlogged(weights: tuple[int, int, int], cycles: int) -> None:
    """With every class backlogged, pops follow the cycle slot by slot, except
    that each deferral is one extra INTERACTIVE pop that consumes no slot.
    So with no deferral, W*k pops give each class exactly k times its weight;
    and there is none when w_b <= w_i."""
    sched: PriorityScheduler[int] = PriorityScheduler(weights=weights, max_items=10_000)
    total = sum(weights) * cycles
    for p in (INTERACTIVE, SYNC, BULK):
        for n in range(total + 1):
            sched.push(p, n)
    for _ in range(total):
        sched.pop()
    stats = sched.statistics()
    deferrals = stats.bulk_deferrals
    slots = (reference_cycle(weights) * cycles)[: total - deferrals]
    served = (stats.popped[1] - deferrals, stats.popped[2], stats.popped[3])
    assert served == (slots.count(INTERACTIVE), slots.count(SYNC), slots.count(BULK))
    if weights[2] <= weights[0]:
        assert deferrals == 0
        assert stats.popped[1:] == tuple(w * cycles for w in weights)
    if weights[2] > weights[0] + weights[1]:
        # BULK holds the majority of slots; the gate alone keeps it to one
        # pop per INTERACTIVE pop (plus the first).
        assert deferrals > 0
        assert stats.popped[3] <= stats.popped[1] + 1


@settings(max_examples=100, deadline=None)
@given(weights=weights_st, scale=st.integers(2, 7))
def test_scaled_weights_give_the_same_cycle(weights: tuple[int, int, int], scale: int) -> None:
    """The implementation reduces weights by their gcd; §6.1.3 does not.  The
    reduction must not change the order."""
    scaled = (weights[0] * scale, weights[1] * scale, weights[2] * scale)
    assert swrr_cycle(scaled) == swrr_cycle(weights) * scale


# --- the guarantees, under arbitrary interleavings ------------------------------


@attrs.frozen
class Item:
    priority: Priority
    seq: int
    ahead: int
    """INTERACTIVE items queued ahead of this one when it was pushed."""
    bulk_pops_at_push: int


class Checker:
    """Drives a scheduler and the reference side by side, keeps a model of
    the queues, and asserts the §6.1.2 guarantees after every pop."""

    def __init__(self, weights: tuple[int, int, int], max_items: int) -> None:
        self.weights = weights
        self.sched: PriorityScheduler[Item] = PriorityScheduler(
            weights=weights, max_items=max_items
        )
        self.ref = ReferenceScheduler(weights)
        self.model: dict[Priority, deque[Item]] = {p: deque() for p in Priority}
        self.popped = dict.fromkeys(Priority, 0)
        self.seq = 0
        self.bulk_pops = 0
        # Per class: non-control pops of other classes in a row while this
        # class stayed backlogged, and the longest such run seen.
        self.starved_run = dict.fromkeys((INTERACTIVE, SYNC, BULK), 0)
        self.longest_wait = dict.fromkeys((INTERACTIVE, SYNC, BULK), 0)
        w_i, w_s, w_b = weights
        total = w_i + w_s + w_b
        self.wait_bound = {
            INTERACTIVE: total - w_i,
            SYNC: total - w_s + w_b,
            BULK: total - w_b,
        }
        # BULK pops since the current INTERACTIVE head became the head.
        self.bulk_since_interactive = 0

    def total(self) -> int:
        return sum(len(q) for q in self.model.values())

    def push(self, priority: Priority) -> None:
        if self.total() == self.sched.max_items:
            before = self.sched.statistics()
            with pytest.raises(LocalProtocolError) as info:
                self.sched.push(priority, Item(priority, -1, 0, 0))
            assert info.value.error_code is ErrorCode.RESOURCE_LIMIT
            assert self.sched.statistics() == before
            return
        ahead = len(self.model[INTERACTIVE])
        item = Item(priority, self.seq, ahead, self.bulk_pops)
        self.seq += 1
        if priority is INTERACTIVE and not ahead:
            self.bulk_since_interactive = 0
        self.model[priority].append(item)
        self.sched.push(priority, item)
        self.ref.push(priority, item)

    def pop(self) -> None:
        model = self.model
        peeked = self.sched.peek_priority()
        item = self.sched.pop()
        assert item == self.ref.pop()
        if not self.total():
            assert item is None
            assert peeked is None
            return
        # Work-conserving, and peek agrees with pop.
        assert item is not None
        assert peeked is item.priority
        # (1) strict priority for CONTROL; (2) FIFO within each class.
        if model[CONTROL]:
            assert item.priority is CONTROL
        assert model[item.priority].popleft() == item
        self.popped[item.priority] += 1
        if item.priority is not CONTROL:
            self.check_no_starvation(item)
            self.check_interactive_waits_behind_one_bulk(item)

    def check_no_starvation(self, item: Item) -> None:
        """(4) and §6.1.3's bounds: while a class stays backlogged, at most
        W - w_i (INTERACTIVE), W - w_s + w_b (SYNC) or W - w_b (BULK, hence
        at most W - 1) non-control pops of other classes go in a row."""
        for cls, run in self.starved_run.items():
            if item.priority is cls or not self.model[cls]:
                # Served, or not backlogged during this pop.
                self.starved_run[cls] = 0
            else:
                self.starved_run[cls] = run + 1
                self.longest_wait[cls] = max(self.longest_wait[cls], run + 1)
                assert run + 1 <= self.wait_bound[cls], cls

    def check_interactive_waits_behind_one_bulk(self, item: Item) -> None:
        """(5)."""
        if item.priority is BULK:
            self.bulk_pops += 1
            if self.model[INTERACTIVE]:
                self.bulk_since_interactive += 1
                assert self.bulk_since_interactive <= 1
        elif item.priority is INTERACTIVE:
            self.bulk_since_interactive = 0
            # An item pushed with k INTERACTIVE items ahead of it waited
            # behind at most k + 1 BULK pops: at most one per head turn.
            assert self.bulk_pops - item.bulk_pops_at_push <= item.ahead + 1

    def check_counts(self) -> None:
        sched = self.sched
        queued = tuple(len(self.model[p]) for p in Priority)
        assert len(sched) == sum(queued)
        assert sched.is_empty == (sum(queued) == 0)
        assert tuple(sched.pending(p) for p in Priority) == queued
        stats = sched.statistics()
        assert stats.queued == queued
        assert stats.popped == tuple(self.popped[p] for p in Priority)


# Small weights make the starvation window short enough to be hit often.
machine_weight = st.one_of(st.integers(1, 3), st.integers(1, 32))


class SchedulerMachine(RuleBasedStateMachine):
    """Interleaves pushes and pops of all classes (the Checker asserts)."""

    checker: Checker

    @initialize(
        weights=st.tuples(machine_weight, machine_weight, machine_weight),
        max_items=st.integers(1, 64),
    )
    def setup(self, weights: tuple[int, int, int], max_items: int) -> None:
        self.checker = Checker(weights, max_items)

    @rule(priority=st.sampled_from(Priority), count=st.integers(1, 8))
    def push(self, priority: Priority, count: int) -> None:
        for _ in range(count):
            self.checker.push(priority)

    @rule(count=st.integers(1, 8))
    def pop(self, count: int) -> None:
        for _ in range(count):
            self.checker.pop()

    @precondition(lambda self: self.checker.total() > 0)
    @rule()
    def drain(self) -> None:
        while self.checker.total():
            self.checker.pop()
        self.checker.pop()

    @invariant()
    def counts_agree(self) -> None:
        if hasattr(self, "checker"):
            self.checker.check_counts()


SchedulerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None
)
TestSchedulerMachine = SchedulerMachine.TestCase


@settings(max_examples=150, deadline=None)
@given(
    weights=st.tuples(machine_weight, machine_weight, machine_weight),
    ops=st.lists(st.integers(0, 5), max_size=400),
)
def test_long_interleavings(weights: tuple[int, int, int], ops: list[int]) -> None:
    """Longer runs than the state machine reaches, with the same checks.
    Ops 0..3 push into that class; 4 and 5 pop (pops are as likely as pushes,
    so queues stay short and flap between empty and busy)."""
    checker = Checker(weights, max_items=1000)
    for op in ops:
        if op >= 4:
            checker.pop()
        else:
            checker.push(Priority(op))
    while checker.total():
        checker.pop()
    checker.check_counts()


def test_bulk_wait_bound_is_reached() -> None:
    """The W - 1 bound of (4) is tight for the defaults: BULK can wait behind
    12 other non-control pops, never 13."""
    checker = Checker((8, 4, 1), max_items=1000)
    for _ in range(30):
        for p in (INTERACTIVE, SYNC, BULK):
            checker.push(p)
    while checker.total():
        checker.pop()
    assert checker.longest_wait[BULK] == 12
