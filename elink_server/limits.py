"""Per-connection request rate limit: a token bucket, and a count of what it
refused.

Theory of operation
-------------------
Each connection has a bucket of at most ``burst`` tokens, refilled at
``rate`` tokens per second and full when the connection opens.  Every
application packet the client sends is charged:

* with at least one token, one is taken and the packet is **admitted**;
* otherwise it is **rejected** (a request is answered RequestFailed
  RATE_LIMITED, §11.10) and counted as *excess*;
* the excess drains at ``rate`` per second; once it passes
  ``flood_factor * burst`` the client is **flooding** and the host closes it
  with RESOURCE_LIMIT.

So a client above the rate is still served at the rate, and one that slows
down recovers by itself.  One sending at up to twice the rate never floods
(its excess drains as fast as it grows); one sending at ``k`` times the
rate floods after about ``flood_factor * burst / ((k - 2) * rate)`` seconds
of ignoring the answers.

The bucket is pure: time comes in as ``now`` (seconds, any monotonic clock).
"""

from __future__ import annotations

import enum
import math

#: Debt, in multiples of the burst, after which a limited client is closed.
FLOOD_FACTOR = 10


class Verdict(enum.Enum):
    """What to do with one packet."""

    ADMIT = "admit"
    """Serve it."""
    REJECT = "reject"
    """Answer RATE_LIMITED (or drop a packet that cannot be answered)."""
    FLOOD = "flood"
    """Close the connection with RESOURCE_LIMIT."""


class RequestRateLimiter:
    """The token bucket of one connection (see the module docstring)."""

    __slots__ = ("_excess", "_flood_at", "_last", "_tokens", "burst", "rate")

    def __init__(
        self, *, rate: float, burst: int, now: float, flood_factor: int = FLOOD_FACTOR
    ) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be positive and finite, got {rate!r}")
        if burst < 1 or flood_factor < 1:
            raise ValueError("burst and flood_factor must be at least 1")
        self.rate = rate
        """Tokens added per second."""
        self.burst = burst
        """Most tokens the bucket holds (and holds at the start)."""
        self._flood_at = float(flood_factor * burst)
        self._tokens = float(burst)
        self._excess = 0.0
        self._last = now

    @property
    def tokens(self) -> float:
        """Tokens left after the last :meth:`admit`."""
        return self._tokens

    @property
    def excess(self) -> float:
        """Rejected packets not yet drained (see the module docstring)."""
        return self._excess

    def admit(self, now: float) -> Verdict:
        """Charge one packet received at ``now`` and say what to do with it."""
        if now > self._last:
            refill = (now - self._last) * self.rate
            self._tokens = min(self.burst, self._tokens + refill)
            self._excess = max(0.0, self._excess - refill)
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return Verdict.ADMIT
        self._excess += 1.0
        if self._excess > self._flood_at:
            return Verdict.FLOOD
        return Verdict.REJECT

    def retry_after_ms(self) -> int:
        """Milliseconds until the next packet would be admitted (at least 1)."""
        missing = 1.0 - self._tokens
        return max(1, math.ceil(missing / self.rate * 1000))
