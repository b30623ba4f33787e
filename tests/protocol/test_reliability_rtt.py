"""RTT estimation and the RTO (docs/protocol.md §6.4.2, RFC 6298, RFC 9002 §5)."""

from __future__ import annotations

import pytest

from elink_protocol.config import Config
from elink_protocol.rtt import GRANULARITY, RttEstimator

# Wide clamps so the RFC 6298 arithmetic shows through unclamped.
WIDE = Config(min_rto=0.001, max_rto=1000.0, initial_rtt=0.5)


def test_initial_rto_is_three_initial_rtts() -> None:
    est = RttEstimator(WIDE)
    assert est.smoothed_rtt is None
    # SRTT = 0.5, RTTVAR = 0.25  ->  0.5 + 4 * 0.25
    assert est.rto == pytest.approx(1.5)


def test_rfc6298_first_and_second_sample() -> None:
    est = RttEstimator(WIDE)
    est.on_sample(1.0)
    # (2.2): SRTT = R, RTTVAR = R/2, RTO = SRTT + max(G, 4*RTTVAR)
    assert est.smoothed_rtt == pytest.approx(1.0)
    assert est.rttvar == pytest.approx(0.5)
    assert est.rto == pytest.approx(3.0)
    est.on_sample(2.0)
    # (2.3): RTTVAR = 3/4 * 0.5 + 1/4 * |1.0 - 2.0| = 0.625 (old SRTT!)
    #        SRTT   = 7/8 * 1.0 + 1/8 * 2.0 = 1.125
    assert est.rttvar == pytest.approx(0.625)
    assert est.smoothed_rtt == pytest.approx(1.125)
    assert est.rto == pytest.approx(1.125 + 4 * 0.625)


def test_steady_path_converges_and_granularity_floor() -> None:
    est = RttEstimator(WIDE)
    for _ in range(200):
        est.on_sample(0.1)
    assert est.smoothed_rtt == pytest.approx(0.1)
    assert est.rttvar is not None and est.rttvar < 1e-9
    # 4*RTTVAR has collapsed; G keeps the RTO above SRTT.
    assert est.rto == pytest.approx(0.1 + GRANULARITY)


def test_rto_is_clamped() -> None:
    cfg = Config(min_rto=0.2, max_rto=2.0, initial_rtt=0.5)
    est = RttEstimator(cfg)
    for _ in range(50):
        est.on_sample(0.001)
    assert est.rto == pytest.approx(0.2)
    est = RttEstimator(cfg)
    est.on_sample(5.0)
    assert est.rto == pytest.approx(2.0)


def test_backoff_doubles_until_max_and_resets_on_sample() -> None:
    cfg = Config(min_rto=0.2, max_rto=10.0, initial_rtt=0.5)
    est = RttEstimator(cfg)
    est.on_sample(0.4)  # RTO = 0.4 + 4 * 0.2 = 1.2
    assert est.rto == pytest.approx(1.2)
    seen = []
    for _ in range(6):
        est.on_timeout()
        seen.append(est.rto)
    assert seen == pytest.approx([2.4, 4.8, 9.6, 10.0, 10.0, 10.0])
    assert est.backoff == 6
    est.on_sample(0.4)
    assert est.backoff == 0
    assert est.rto < 1.2 + 1e-9


def test_backoff_exponent_is_bounded() -> None:
    est = RttEstimator(WIDE)
    for _ in range(1000):
        est.on_timeout()
    assert est.rto == pytest.approx(1000.0)
    assert est.backoff <= 32


def test_ack_delay_subtracted_but_never_below_min_rtt() -> None:
    est = RttEstimator(WIDE)
    est.on_sample(0.100, ack_delay=0.050)  # first sample: ack delay ignored
    assert est.smoothed_rtt == pytest.approx(0.100)
    assert est.min_rtt == pytest.approx(0.100)
    est.on_sample(0.180, ack_delay=0.050)  # 0.130 >= min_rtt: subtract
    assert est.latest_rtt == pytest.approx(0.130)
    est.on_sample(0.120, ack_delay=0.050)  # 0.070 < min_rtt: keep raw
    assert est.latest_rtt == pytest.approx(0.120)
    est.on_sample(0.150, ack_delay=-5.0)  # negative delay counts as zero
    assert est.latest_rtt == pytest.approx(0.150)


def test_min_rtt_tracks_raw_samples() -> None:
    est = RttEstimator(WIDE)
    for rtt in (0.3, 0.2, 0.25, 0.1, 0.4):
        est.on_sample(rtt, ack_delay=0.05)
    assert est.min_rtt == pytest.approx(0.1)


def test_negative_sample_is_ignored() -> None:
    est = RttEstimator(WIDE)
    est.on_timeout()
    est.on_sample(-0.5)
    assert est.smoothed_rtt is None
    assert est.backoff == 1  # an invalid sample does not end the backoff
