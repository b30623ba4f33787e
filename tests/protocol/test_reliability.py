"""Unit tests of the datagram reliability layer (docs/protocol.md §6.2-§6.4):
send window, receive window and ack scheduling, including PID wrap-around."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elink_protocol.config import Config
from elink_protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from elink_protocol.pid import PID_MASK, pid_add
from elink_protocol.reliability import (
    INITIAL_CWND,
    MIN_CWND,
    AckScheduler,
    DeliveryTimeout,
    ReceiveWindow,
    SendWindow,
    Verdict,
)

CFG = Config(initial_rtt=0.1, min_rto=0.2, max_rto=5.0, max_retransmissions=3)
NEAR_WRAP = 2**32 - 3  # PIDs 0xFFFFFFFD, 0xFFFFFFFE, 0xFFFFFFFF, 0, 1, ...
FIRST_PIDS = [1, NEAR_WRAP]


def send_n(window: SendWindow[str], n: int, now: float = 0.0) -> list[int]:
    pids = []
    for _ in range(n):
        pid = window.next_pid
        window.on_sent(pid, f"item-{pid}", 100, now)
        pids.append(pid)
    return pids


# --- SendWindow: sending --------------------------------------------------------


@pytest.mark.parametrize("first", FIRST_PIDS)
def test_pids_are_consecutive_and_wrap(first: int) -> None:
    w: SendWindow[str] = SendWindow(CFG, first_pid=first)
    assert w.acked_through == pid_add(first, -1)
    pids = send_n(w, 6)
    assert pids == [pid_add(first, i) for i in range(6)]
    if first == NEAR_WRAP:
        assert pids == [0xFFFFFFFD, 0xFFFFFFFE, 0xFFFFFFFF, 0, 1, 2]
    assert w.in_flight == 6
    assert w.bytes_in_flight == 600


def test_on_sent_refuses_wrong_pid() -> None:
    w: SendWindow[str] = SendWindow(CFG)
    with pytest.raises(LocalProtocolError):
        w.on_sent(2, "x", 1, 0.0)
    assert w.in_flight == 0


def test_initial_congestion_window_limits_sending() -> None:
    w: SendWindow[str] = SendWindow(CFG)
    send_n(w, INITIAL_CWND)
    assert not w.can_send()
    with pytest.raises(LocalProtocolError):
        w.on_sent(w.next_pid, "x", 1, 0.0)


@pytest.mark.parametrize("first", FIRST_PIDS)
def test_send_window_limits_the_pid_span(first: int) -> None:
    cfg = Config(send_window=12)
    w: SendWindow[str] = SendWindow(cfg, first_pid=first)
    now = 0.0
    # Grow the congestion window past the send window with clean acks.
    for _ in range(5):
        pids = send_n(w, 2, now)
        w.on_ack(pids[-1], (), 0.0, now + 0.01)
        now += 0.02
    assert w.congestion_window == 12
    base = w.acked_through
    pids = send_n(w, 12, now)
    assert not w.can_send()
    # Ack everything but the oldest one selectively: the span stays full,
    # so nothing new may go out even though only one packet is in flight.
    w.on_ack(base, [(pids[1], pids[-1])], 0.0, now + 0.01)
    assert w.in_flight == 1
    assert not w.can_send()
    w.on_ack(pids[0], (), 0.0, now + 0.02)
    assert w.acked_through == pids[-1]
    assert w.can_send()


# --- SendWindow: acknowledgements ---------------------------------------------


@pytest.mark.parametrize("first", FIRST_PIDS)
def test_cumulative_ack_returns_items_in_pid_order(first: int) -> None:
    w: SendWindow[str] = SendWindow(CFG, first_pid=first)
    pids = send_n(w, 5)
    assert w.on_ack(pids[2], (), 0.0, 0.05) == [f"item-{p}" for p in pids[:3]]
    assert w.acked_through == pids[2]
    assert w.in_flight == 2
    # A stale (reordered) ack is harmless.
    assert w.on_ack(pids[0], (), 0.0, 0.06) == []
    assert w.on_ack(pids[4], (), 0.0, 0.07) == [f"item-{p}" for p in pids[3:]]
    assert w.in_flight == 0
    assert w.get_timer() is None


def test_initial_cumulative_ack_means_nothing_yet() -> None:
    w: SendWindow[str] = SendWindow(CFG)
    assert w.on_ack(0, (), 0.0, 0.0) == []
    send_n(w, 2)
    assert w.on_ack(0, (), 0.0, 0.0) == []
    assert w.in_flight == 2


@pytest.mark.parametrize("first", FIRST_PIDS)
def test_sack_ranges(first: int) -> None:
    w: SendWindow[str] = SendWindow(CFG, first_pid=first)
    pids = send_n(w, 8)
    base = pid_add(first, -1)
    acked = w.on_ack(base, [(pids[1], pids[2]), (pids[5], pids[5])], 0.0, 0.05)
    assert acked == [f"item-{p}" for p in (pids[1], pids[2], pids[5])]
    assert w.acked_through == base
    # Cumulative ack over the gap plus a range overlapping what was acked.
    acked = w.on_ack(pids[0], [(pids[2], pids[6])], 0.0, 0.06)
    assert acked == [f"item-{p}" for p in (pids[0], pids[3], pids[4], pids[6])]
    assert w.acked_through == pids[6]
    assert [pid for pid, _ in w.unacked_items()] == [pids[7]]


@pytest.mark.parametrize("first", FIRST_PIDS)
def test_peer_processed_ignores_selective_acks(first: int) -> None:
    w: SendWindow[str] = SendWindow(CFG, first_pid=first)
    p = send_n(w, 5)
    base = pid_add(first, -1)
    w.on_ack(base, [(p[1], p[2])], 0.0, 0.01)
    assert w.peer_processed == base
    w.on_ack(p[0], [(p[1], p[2])], 0.0, 0.02)
    assert w.acked_through == p[2]  # the gap closed
    assert w.peer_processed == p[0]  # but only p[0] is known processed
    assert w.on_ack(p[2], (), 0.0, 0.03) == []  # nothing new to acknowledge...
    assert w.peer_processed == p[2]  # ...yet the peer processed more
    w.on_ack(p[1], (), 0.0, 0.04)  # stale
    assert w.peer_processed == p[2]


@pytest.mark.parametrize("first", FIRST_PIDS)
@pytest.mark.parametrize(
    "case",
    [
        "ahead",  # cumulative beyond the highest PID sent
        "before_first",  # cumulative before the first PID ever sent
        "range_beyond",  # range ends beyond the highest PID sent
        "range_inverted",
        "range_at_cum",  # range not above the cumulative ack
        "range_overlap",
        "range_descending",
    ],
)
def test_bad_acks_are_pid_errors_and_change_nothing(first: int, case: str) -> None:
    w: SendWindow[str] = SendWindow(CFG, first_pid=first)
    pids = send_n(w, 6)
    w.on_ack(pids[0], (), 0.0, 0.01)

    def p(i: int) -> int:
        return pid_add(first, i)

    cum, ranges = {
        "ahead": (p(6), []),
        "before_first": (p(-2), []),
        "range_beyond": (p(1), [(p(3), p(6))]),
        "range_inverted": (p(1), [(p(4), p(3))]),
        "range_at_cum": (p(1), [(p(1), p(3))]),
        "range_overlap": (p(0), [(p(2), p(3)), (p(3), p(4))]),
        "range_descending": (p(0), [(p(4), p(4)), (p(2), p(2))]),
    }[case]
    with pytest.raises(RemoteProtocolError) as info:
        w.on_ack(cum, ranges, 0.0, 0.02)
    assert info.value.error_code is ErrorCode.PID_ERROR
    assert w.in_flight == 5
    assert w.acked_through == pids[0]


def test_ack_with_no_packets_sent_must_name_nothing() -> None:
    w: SendWindow[str] = SendWindow(CFG, first_pid=NEAR_WRAP)
    with pytest.raises(RemoteProtocolError):
        w.on_ack(NEAR_WRAP, (), 0.0, 0.0)
    with pytest.raises(RemoteProtocolError):
        w.on_ack(0, (), 0.0, 0.0)
    assert w.on_ack(pid_add(NEAR_WRAP, -1), (), 0.0, 0.0) == []


# --- SendWindow: RTT samples and Karn ------------------------------------------


def test_rtt_sample_from_first_transmission_minus_ack_delay() -> None:
    w: SendWindow[str] = SendWindow(CFG)
    send_n(w, 1, now=1.0)
    w.on_ack(1, (), 0.010, 1.100)
    assert w.rtt.smoothed_rtt == pytest.approx(0.100)  # first sample: delay ignored
    send_n(w, 1, now=2.0)
    w.on_ack(2, (), 0.030, 2.150)
    assert w.rtt.latest_rtt == pytest.approx(0.120)


def test_sample_only_when_largest_named_pid_is_newly_acked() -> None:
    w: SendWindow[str] = SendWindow(CFG)
    send_n(w, 3, now=0.0)
    w.on_ack(0, [(3, 3)], 0.0, 0.1)
    assert w.rtt.latest_rtt == pytest.approx(0.1)
    # Cumulative ack of 1..2 arrives much later, still naming 3 as largest:
    # no sample, or the late ack would inflate the estimate.
    w.on_ack(2, [(3, 3)], 0.0, 5.0)
    assert w.rtt.latest_rtt == pytest.approx(0.1)
    assert w.rtt.smoothed_rtt == pytest.approx(0.1)


def test_karn_no_sample_from_resent_packet() -> None:
    w: SendWindow[str] = SendWindow(CFG)
    send_n(w, 1, now=0.0)
    timer = w.get_timer()
    assert timer == pytest.approx(CFG.initial_rtt * 3)
    assert w.on_timer(timer) == [(1, "item-1")]
    assert w.rtt.backoff == 1
    w.on_ack(1, (), 0.0, timer + 0.01)
    assert w.rtt.smoothed_rtt is None  # no sample from a re-sent packet ...
    assert w.rtt.backoff == 0  # ... but progress ends the backoff (§6.4.3)
    send_n(w, 1, now=10.0)
    w.on_ack(2, (), 0.0, 10.05)
    assert w.rtt.smoothed_rtt == pytest.approx(0.05)
    assert w.rtt.backoff == 0


# --- SendWindow: timeouts -------------------------------------------------------


def test_timer_and_retransmission_with_backoff() -> None:
    w: SendWindow[str] = SendWindow(CFG)
    send_n(w, 1, now=0.0)
    w.on_ack(0, (), 0.0, 0.0)
    rto = w.rtt.rto
    assert w.get_timer() == pytest.approx(rto)
    assert w.on_timer(rto - 0.001) == []
    assert w.on_timer(rto) == [(1, "item-1")]
    assert w.get_timer() == pytest.approx(rto + 2 * rto)  # doubled
    assert w.on_timer(3 * rto) == [(1, "item-1")]
    assert w.get_timer() == pytest.approx(3 * rto + 4 * rto)


def test_burst_backs_off_once() -> None:
    w: SendWindow[str] = SendWindow(CFG)
    for i in range(4):
        send_n(w, 1, now=i * 0.001)
    rto = w.rtt.rto
    assert w.on_timer(rto) == [(1, "item-1")]
    assert w.rtt.backoff == 1
    # The others were sent at the old backoff level: their expiries re-send
    # them but do not double the RTO again.
    t = w.get_timer()
    assert t is not None
    resent = w.on_timer(t + 0.01)
    assert [pid for pid, _ in resent] == [2, 3, 4]
    assert w.rtt.backoff == 1


@pytest.mark.parametrize("first", FIRST_PIDS)
def test_max_retransmissions_then_failure(first: int) -> None:
    w: SendWindow[str] = SendWindow(CFG, first_pid=first)
    send_n(w, 2, now=0.0)
    w.on_ack(first, (), 0.0, 0.0)
    now = 0.0
    for _ in range(CFG.max_retransmissions):
        t = w.get_timer()
        assert t is not None and t > now
        now = t
        assert w.on_timer(now) == [(pid_add(first, 1), f"item-{pid_add(first, 1)}")]
    t = w.get_timer()
    assert t is not None
    with pytest.raises(DeliveryTimeout) as info:
        w.on_timer(t)
    assert info.value.error_code is ErrorCode.TIMEOUT
    assert info.value.pid == pid_add(first, 1)
    assert w.failed
    assert w.get_timer() is None
    assert not w.can_send()
    with pytest.raises(DeliveryTimeout):
        w.on_timer(t + 100)


def test_default_retry_limit_gives_up_after_seventy_seconds() -> None:
    # The figure §6.4.5 quotes: RTO 1.5, 3, 6, then 10 s (max_rto) each.
    w: SendWindow[str] = SendWindow(Config())
    send_n(w, 1)
    expiries = []
    while True:
        t = w.get_timer()
        assert t is not None
        try:
            w.on_timer(t)
        except DeliveryTimeout:
            break
        expiries.append(t)
    assert len(expiries) == Config().max_retransmissions == 8
    assert expiries[:4] == pytest.approx([1.5, 4.5, 10.5, 20.5])
    assert t == pytest.approx(70.5)


def test_ack_after_retransmission_prevents_failure() -> None:
    w: SendWindow[str] = SendWindow(CFG)
    send_n(w, 1)
    for _ in range(CFG.max_retransmissions):
        t = w.get_timer()
        assert t is not None
        w.on_timer(t)
    w.on_ack(1, (), 0.0, 100.0)
    assert w.get_timer() is None
    assert not w.failed


# --- SendWindow: fast retransmit and congestion --------------------------------


def test_fast_retransmit_after_three_later_packets_acked() -> None:
    w: SendWindow[str] = SendWindow(CFG)
    send_n(w, 5, now=0.0)
    cwnd = w.congestion_window
    w.on_ack(0, [(2, 3)], 0.0, 0.05)  # two later: not yet
    assert w.get_timer() == pytest.approx(w.rtt.rto)
    w.on_ack(0, [(2, 4)], 0.0, 0.06)  # three later: PID 1 lost
    assert w.get_timer() == pytest.approx(0.06)
    assert w.on_timer(0.06) == [(1, "item-1")]
    assert w.congestion_window == max((cwnd + 3) // 2, MIN_CWND)
    assert w.rtt.backoff == 0  # fast retransmit is not a timeout


@pytest.mark.parametrize(("in_flight", "later_acked"), [(2, 1), (3, 2)])
def test_early_retransmit_with_fewer_than_four_in_flight(in_flight: int, later_acked: int) -> None:
    w: SendWindow[str] = SendWindow(CFG)
    send_n(w, in_flight, now=0.0)
    if later_acked > 1:
        w.on_ack(0, [(2, later_acked)], 0.0, 0.05)  # one short of the threshold
        assert w.get_timer() == pytest.approx(w.rtt.rto)
    w.on_ack(0, [(2, in_flight)], 0.0, 0.06)
    assert w.get_timer() == pytest.approx(0.06)
    assert w.on_timer(0.06) == [(1, "item-1")]


def test_fast_retransmit_ignores_acks_of_resent_packets() -> None:
    w: SendWindow[str] = SendWindow(CFG)
    send_n(w, 5, now=0.0)
    t = w.get_timer()
    assert t is not None
    assert len(w.on_timer(t)) == 5  # all re-sent, transmission order 1..5
    # Acks of re-sent packets are ambiguous: no loss inferred from them.
    w.on_ack(0, [(2, 5)], 0.0, t + 0.05)
    assert w.get_timer() == pytest.approx(t + w.rtt.rto)


def test_lost_packet_acked_before_resend_is_not_resent() -> None:
    w: SendWindow[str] = SendWindow(CFG)
    send_n(w, 5, now=0.0)
    w.on_ack(0, [(2, 5)], 0.0, 0.05)
    assert w.get_timer() == pytest.approx(0.05)
    w.on_ack(5, (), 0.0, 0.06)
    assert w.on_timer(0.07) == []
    assert w.get_timer() is None


def test_congestion_window_halves_once_per_event_and_has_a_floor() -> None:
    w: SendWindow[str] = SendWindow(CFG)
    send_n(w, 10, now=0.0)
    t = w.get_timer()
    assert t is not None
    w.on_timer(t)  # every packet timed out: one event
    assert w.congestion_window == INITIAL_CWND // 2
    t = w.get_timer()
    assert t is not None
    w.on_timer(t)  # the re-sent copies are lost again: a new event
    assert w.congestion_window == INITIAL_CWND // 4
    t = w.get_timer()
    assert t is not None
    w.on_timer(t)
    assert w.congestion_window == MIN_CWND


def test_window_of_one_packet() -> None:
    w: SendWindow[str] = SendWindow(Config(send_window=1))
    assert w.congestion_window == 1
    send_n(w, 1)
    assert not w.can_send()
    t = w.get_timer()
    assert t is not None
    w.on_timer(t)
    assert w.congestion_window == 1
    w.on_ack(1, (), 0.0, t + 0.1)
    assert w.can_send()


def test_slow_start_then_congestion_avoidance() -> None:
    cfg = Config(send_window=1000)
    w: SendWindow[str] = SendWindow(cfg)
    now = 0.0
    # Slow start: +1 per acked packet.
    pids = send_n(w, INITIAL_CWND, now)
    w.on_ack(pids[-1], (), 0.0, now + 0.05)
    assert w.congestion_window == 2 * INITIAL_CWND
    # A loss sets ssthresh = cwnd/2; from there +1 per cwnd's worth of acks.
    pids = send_n(w, 4, now + 0.1)
    w.on_ack(w.acked_through, [(pids[1], pids[3])], 0.0, now + 0.15)
    t = w.get_timer()
    assert t is not None
    assert w.on_timer(t) == [(pids[0], f"item-{pids[0]}")]
    assert w.congestion_window == (2 * INITIAL_CWND + 3) // 2
    w.on_ack(pids[3], (), 0.0, t + 0.05)  # the re-sent packet: after recovery
    cwnd = w.congestion_window
    now = t + 1
    acked = 0
    while acked < cwnd:
        pids = send_n(w, 1, now)
        w.on_ack(pids[0], (), 0.0, now + 0.05)
        now += 0.1
        acked += 1
    assert w.congestion_window == cwnd + 1


def test_unacked_items_in_pid_order_after_resends() -> None:
    w: SendWindow[str] = SendWindow(CFG, first_pid=NEAR_WRAP)
    pids = send_n(w, 5)
    w.on_ack(pid_add(NEAR_WRAP, -1), [(pids[2], pids[4])], 0.0, 0.01)
    t = w.get_timer()
    assert t is not None
    w.on_timer(t)
    assert [pid for pid, _ in w.unacked_items()] == pids[:2]


# --- ReceiveWindow ------------------------------------------------------------


@pytest.mark.parametrize("first", FIRST_PIDS)
def test_receive_in_order_and_out_of_order(first: int) -> None:
    r: ReceiveWindow[int] = ReceiveWindow(CFG, first_pid=first)
    p = [pid_add(first, i) for i in range(5)]
    assert r.cumulative_ack == pid_add(first, -1)
    assert r.on_received(p[1], 1) is Verdict.NEW
    assert r.pop_deliverable() == []
    assert r.sack_ranges() == [(p[1], p[1])]
    assert r.on_received(p[3], 3) is Verdict.NEW
    assert r.sack_ranges() == [(p[1], p[1]), (p[3], p[3])]
    assert r.on_received(p[0], 0) is Verdict.NEW
    assert r.pop_deliverable() == [0, 1]
    assert r.cumulative_ack == p[1]
    assert r.sack_ranges() == [(p[3], p[3])]
    assert r.on_received(p[2], 2) is Verdict.NEW
    assert r.pop_deliverable() == [2, 3]
    assert r.sack_ranges() == []
    assert r.buffered == 0


@pytest.mark.parametrize("first", FIRST_PIDS)
def test_receive_duplicates(first: int) -> None:
    r: ReceiveWindow[int] = ReceiveWindow(CFG, first_pid=first)
    assert r.on_received(pid_add(first, -1), 0) is Verdict.DUPLICATE  # "nothing yet"
    assert r.on_received(first, 0) is Verdict.NEW
    assert r.on_received(first, 0) is Verdict.DUPLICATE  # held, not yet popped
    r.pop_deliverable()
    assert r.on_received(first, 0) is Verdict.DUPLICATE  # at the cumulative ack
    assert r.on_received(pid_add(first, 2), 2) is Verdict.NEW
    assert r.on_received(pid_add(first, 2), 2) is Verdict.DUPLICATE
    # Far behind in serial arithmetic: a replay, not a future packet.
    assert r.on_received(pid_add(first, -(2**31)), 9) is Verdict.DUPLICATE
    assert r.on_received(pid_add(first, -1000), 9) is Verdict.DUPLICATE


@pytest.mark.parametrize("first", FIRST_PIDS)
def test_receive_window_edge(first: int) -> None:
    cfg = Config(receive_window=16)
    r: ReceiveWindow[int] = ReceiveWindow(cfg, first_pid=first)
    cum = r.cumulative_ack
    assert r.on_received(pid_add(cum, 17), 17) is Verdict.OUT_OF_WINDOW
    assert r.on_received(pid_add(cum, 16), 16) is Verdict.NEW
    assert r.on_received(pid_add(cum, 2**31 - 1), 0) is Verdict.OUT_OF_WINDOW
    assert r.sack_ranges() == [(pid_add(cum, 16), pid_add(cum, 16))]
    # Memory stays bounded by the window whatever arrives.
    for i in range(1, 200):
        r.on_received(pid_add(cum, i), i)
    assert r.buffered == 16
    assert r.pop_deliverable() == list(range(1, 17))
    assert r.cumulative_ack == pid_add(cum, 16)


def test_sack_ranges_limit_keeps_the_highest() -> None:
    r: ReceiveWindow[int] = ReceiveWindow(CFG, first_pid=NEAR_WRAP)
    cum = r.cumulative_ack
    for i in range(2, 200, 2):  # every other PID: 99 separate ranges
        r.on_received(pid_add(cum, i), i)
    ranges = r.sack_ranges()
    assert len(ranges) == 64
    assert ranges[-1] == (pid_add(cum, 198), pid_add(cum, 198))
    assert ranges[0] == (pid_add(cum, 198 - 63 * 2), pid_add(cum, 198 - 63 * 2))
    assert r.sack_ranges(limit=2) == ranges[-2:]
    assert r.sack_ranges(limit=0) == []
    with pytest.raises(ValueError):
        r.sack_ranges(limit=-1)


def test_sack_ranges_merge_consecutive_pids() -> None:
    r: ReceiveWindow[int] = ReceiveWindow(CFG, first_pid=NEAR_WRAP)
    cum = r.cumulative_ack
    for i in (2, 3, 4, 6, 7, 9):
        r.on_received(pid_add(cum, i), i)
    assert r.sack_ranges() == [
        (pid_add(cum, 2), pid_add(cum, 4)),
        (pid_add(cum, 6), pid_add(cum, 7)),
        (pid_add(cum, 9), pid_add(cum, 9)),
    ]
    assert r.sack_ranges()[0] == (0xFFFFFFFE, 0)


def test_windows_must_fit_the_pid_space() -> None:
    with pytest.raises(ValueError):
        ReceiveWindow(Config(receive_window=2**31))
    with pytest.raises(ValueError):
        SendWindow(Config(send_window=2**31))
    with pytest.raises(ValueError):
        SendWindow(CFG, first_pid=2**32)


@settings(max_examples=200, deadline=None)
@given(
    first=st.sampled_from([1, 2**32 - 40, 2**31 - 10]),
    order=st.permutations(list(range(40))),
    dups=st.lists(st.integers(0, 39), max_size=40),
    pop_every=st.integers(1, 10),
)
def test_receive_any_arrival_order_delivers_once_in_order(
    first: int, order: list[int], dups: list[int], pop_every: int
) -> None:
    r: ReceiveWindow[int] = ReceiveWindow(Config(receive_window=64), first_pid=first)
    arrivals = order + dups
    delivered: list[int] = []
    seen: set[int] = set()
    for n, i in enumerate(arrivals):
        verdict = r.on_received(pid_add(first, i), i)
        assert verdict is (Verdict.DUPLICATE if i in seen else Verdict.NEW)
        seen.add(i)
        for first_, last in r.sack_ranges():
            assert ((first_ - r.cumulative_ack) & PID_MASK) >= 1
            assert ((last - first_) & PID_MASK) < 64
        if n % pop_every == 0:
            delivered += r.pop_deliverable()
    delivered += r.pop_deliverable()
    assert delivered == list(range(40))
    assert r.cumulative_ack == pid_add(first, 39)


# --- AckScheduler ---------------------------------------------------------------


def test_ack_delayed_for_a_single_packet() -> None:
    s = AckScheduler(CFG)
    assert s.get_timer() is None
    assert not s.ack_due(0.0)
    s.on_received(1, Verdict.NEW, 1.0)
    assert s.get_timer() == pytest.approx(1.0 + CFG.ack_delay)
    assert not s.ack_due(1.0)
    assert s.ack_due(1.0 + CFG.ack_delay)
    assert s.ack_delay(1.004) == pytest.approx(0.004)
    s.on_ack_sent(1.0 + CFG.ack_delay)
    assert s.get_timer() is None


def test_ack_immediately_after_every_second_packet() -> None:
    s = AckScheduler(CFG, first_pid=NEAR_WRAP)
    s.on_received(NEAR_WRAP, Verdict.NEW, 1.0)
    s.on_received(pid_add(NEAR_WRAP, 1), Verdict.NEW, 1.001)
    assert s.ack_due(1.001)
    assert s.get_timer() == pytest.approx(1.001)  # due now, not at 1.0 + ack_delay
    s.on_ack_sent(1.001)
    s.on_received(pid_add(NEAR_WRAP, 2), Verdict.NEW, 1.002)
    assert not s.ack_due(1.002)
    s.on_received(pid_add(NEAR_WRAP, 3), Verdict.NEW, 1.003)
    assert s.ack_due(1.003)


@pytest.mark.parametrize("verdict", [Verdict.DUPLICATE, Verdict.OUT_OF_WINDOW])
def test_ack_immediately_on_duplicate_or_out_of_window(verdict: Verdict) -> None:
    s = AckScheduler(CFG)
    s.on_received(1, verdict, 2.0)
    assert s.ack_due(2.0)


def test_ack_immediately_on_gap_and_on_gap_fill() -> None:
    s = AckScheduler(CFG, first_pid=NEAR_WRAP)
    s.on_received(pid_add(NEAR_WRAP, 3), Verdict.NEW, 1.0)  # opens a gap
    assert s.ack_due(1.0)
    s.on_ack_sent(1.0)
    s.on_received(NEAR_WRAP, Verdict.NEW, 1.1)  # fills part of it
    assert s.ack_due(1.1)
    # The delay field measures from the highest PID, not the gap filler.
    assert s.ack_delay(1.1) == pytest.approx(0.1)


def test_progress_without_a_sample_ends_the_backoff() -> None:
    w: SendWindow[str] = SendWindow(CFG)
    send_n(w, 2, now=0.0)
    t = w.get_timer()
    assert t is not None
    w.on_timer(t)
    w.on_timer(t + w.rtt.rto)
    assert w.rtt.backoff == 2
    w.on_ack(1, (), 0.0, t + 5.0)  # PID 1 was re-sent: no sample, but progress
    assert w.rtt.smoothed_rtt is None and w.rtt.backoff == 0
