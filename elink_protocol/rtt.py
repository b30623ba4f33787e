"""Round-trip time estimation and the retransmission timeout (docs/protocol.md §6.4.2).

The estimator follows RFC 6298 (SRTT, RTTVAR, ``RTO = SRTT + max(G, 4*RTTVAR)``,
exponential backoff on expiry) with two refinements taken from QUIC (RFC 9002
§5): the peer's reported acknowledgement delay is subtracted from a sample, but
never so far that the sample drops below the smallest RTT ever observed; and
before the first sample the estimator behaves as if ``Config.initial_rtt`` had
been measured, so the first RTO is ``3 * initial_rtt``.

Karn's rule (no samples from re-sent packets) is the caller's job: only
:class:`~elink_protocol.reliability.SendWindow` knows which packets were
re-sent, and it never feeds their acknowledgements to :meth:`RttEstimator.on_sample`.
"""

from __future__ import annotations

from .config import Config

#: The clock granularity G of RFC 6298, in seconds.  It keeps the RTO above
#: SRTT when the variance collapses to zero on a very steady path.
GRANULARITY = 0.001

#: Backoff is counted, not applied forever: 2**32 times any RTO is far beyond
#: ``max_rto``, and capping the exponent keeps the arithmetic in small floats.
_MAX_BACKOFF_EXPONENT = 32


class RttEstimator:
    """Smoothed RTT, RTT variance and the resulting retransmission timeout.

    ``on_sample(rtt, ack_delay)`` feeds one measurement; ``on_timeout()``
    doubles the RTO (capped at ``max_rto``) until the next valid sample;
    ``rto`` is the timeout to use for packets sent now.
    """

    __slots__ = (
        "_backoff",
        "_initial_rtt",
        "_max_rto",
        "_min_rto",
        "_rto",
        "latest_rtt",
        "min_rtt",
        "rttvar",
        "smoothed_rtt",
    )

    def __init__(self, config: Config) -> None:
        self._initial_rtt = config.initial_rtt
        self._min_rto = config.min_rto
        self._max_rto = max(config.max_rto, config.min_rto)
        self._backoff = 0
        self.smoothed_rtt: float | None = None
        """SRTT, or ``None`` before the first sample."""
        self.rttvar: float | None = None
        """RTTVAR, or ``None`` before the first sample."""
        self.min_rtt: float | None = None
        """Smallest raw sample seen (ack delay not subtracted)."""
        self.latest_rtt: float | None = None
        """The most recent sample after ack-delay adjustment."""
        # Cached: hosts ask for the RTO after every packet, samples are rarer.
        self._rto = self._compute_rto()

    @property
    def backoff(self) -> int:
        """Timeouts since the last valid sample; the RTO is scaled by ``2**backoff``."""
        return self._backoff

    @property
    def base_rto(self) -> float:
        """``SRTT + max(G, 4*RTTVAR)`` clamped to ``[min_rto, max_rto]``, without backoff."""
        if self.smoothed_rtt is None or self.rttvar is None:
            srtt, rttvar = self._initial_rtt, self._initial_rtt / 2
        else:
            srtt, rttvar = self.smoothed_rtt, self.rttvar
        return min(max(srtt + max(GRANULARITY, 4 * rttvar), self._min_rto), self._max_rto)

    @property
    def rto(self) -> float:
        """The retransmission timeout for a packet sent now: the base RTO
        doubled once per timeout since the last valid sample, at most ``max_rto``."""
        return self._rto

    def _compute_rto(self) -> float:
        return min(self.base_rto * (1 << self._backoff), self._max_rto)

    def on_sample(self, rtt: float, ack_delay: float = 0.0) -> None:
        """Feed one RTT measurement (seconds) from a packet sent exactly once.

        ``ack_delay`` is how long the peer says it held the acknowledgement.
        A negative ``rtt`` (a host clock that went backwards) is ignored.
        A valid sample ends any backoff (RFC 6298 §5, Karn).
        """
        if rtt < 0:
            return
        min_rtt = self.min_rtt
        if min_rtt is None or rtt < min_rtt:
            self.min_rtt = min_rtt = rtt
        self._backoff = 0
        srtt, rttvar = self.smoothed_rtt, self.rttvar
        if srtt is None or rttvar is None:
            # RFC 6298 (2.2): the first sample sets SRTT and RTTVAR directly.
            # Like QUIC, the ack delay is ignored here: min_rtt is this very
            # sample, so subtracting it could only be refused anyway.
            adjusted, srtt, rttvar = rtt, rtt, rtt / 2
        else:
            # Subtract the peer's delay only while the result stays plausible:
            # a peer cannot talk us below the fastest round trip we have seen.
            adjusted = rtt - ack_delay if ack_delay > 0 and rtt - ack_delay >= min_rtt else rtt
            # RFC 6298 (2.3): RTTVAR is updated with the *old* SRTT.
            rttvar = 0.75 * rttvar + 0.25 * abs(srtt - adjusted)
            srtt = 0.875 * srtt + 0.125 * adjusted
        self.latest_rtt = adjusted
        self.smoothed_rtt = srtt
        self.rttvar = rttvar
        # The base RTO, inlined: this runs for most acks.
        variance = 4 * rttvar
        self._rto = min(
            max(srtt + (variance if variance > GRANULARITY else GRANULARITY), self._min_rto),
            self._max_rto,
        )

    def on_progress(self) -> None:
        """An acknowledgement newly acknowledged a packet: end any backoff,
        with or without a sample (as QUIC's PTO backoff, RFC 9002 §6.2.1).
        Under steady loss every packet in flight may have been re-sent, so
        Karn's rule leaves no packet to sample, and a backoff that waited for
        a sample would grow to ``max_rto`` while the peer is receiving."""
        if self._backoff:
            self._backoff = 0
            self._rto = self._compute_rto()

    def on_timeout(self) -> None:
        """A retransmission timer expired: double the RTO (RFC 6298 (5.5))."""
        if self._backoff < _MAX_BACKOFF_EXPONENT:
            self._backoff += 1
            self._rto = self._compute_rto()
