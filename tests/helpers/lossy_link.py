"""A seeded, lossy, one-way datagram link for tests.

Pure and synchronous: time is whatever the caller passes as ``now``.  Every
random decision comes from one ``random.Random``, so a seed (or a
Hypothesis-controlled ``Random``) replays the same drops, duplicates,
reorders, delays and corruptions exactly.

Each datagram handed to :meth:`LossyLink.send` is, independently:

* dropped with probability ``drop``;
* otherwise delivered after ``delay`` plus a uniform ``jitter``; with
  probability ``reorder`` it is held back by an extra uniform
  ``0..reorder_delay``, so later datagrams overtake it;
* with probability ``duplicate`` delivered a second time, with its own delay;
* with probability ``corrupt`` (per copy) delivered with a burst of 1 to 4
  consecutive bytes XORed with random non-zero values.  A CRC-32 detects
  every burst of up to 32 bits, so a corrupted plaintext frame is always
  caught by its ``pck``.

Use two links for a two-way path.
"""

from __future__ import annotations

import heapq
import random as _random

import attrs


@attrs.define(kw_only=True)
class LinkStats:
    """Counters of what the link did, for assertions and debugging."""

    sent: int = 0
    """Datagrams handed to :meth:`LossyLink.send`."""
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    delivered: int = 0
    """Copies returned by :meth:`LossyLink.receive` (duplicates count twice)."""


class LossyLink:
    """One direction of a simulated datagram path."""

    def __init__(
        self,
        *,
        seed: int | None = None,
        rng: _random.Random | None = None,
        drop: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        corrupt: float = 0.0,
        delay: float = 0.01,
        jitter: float = 0.0,
        reorder_delay: float = 0.05,
    ) -> None:
        for name, rate in (
            ("drop", drop),
            ("duplicate", duplicate),
            ("reorder", reorder),
            ("corrupt", corrupt),
        ):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} rate must be in [0, 1], got {rate}")
        if delay < 0 or jitter < 0 or reorder_delay < 0:
            raise ValueError("delays must not be negative")
        if rng is not None and seed is not None:
            raise ValueError("pass either seed or rng, not both")
        self._rng = rng if rng is not None else _random.Random(seed)
        self.drop = drop
        self.duplicate = duplicate
        self.reorder = reorder
        self.corrupt = corrupt
        self.delay = delay
        self.jitter = jitter
        self.reorder_delay = reorder_delay
        self.stats = LinkStats()
        # (arrival time, tie-breaking sequence, datagram): a heap, so arrivals
        # come out in time order and equal times in send order.
        self._queue: list[tuple[float, int, bytes]] = []
        self._seq = 0

    def __len__(self) -> int:
        """Copies in flight (scheduled, not yet received)."""
        return len(self._queue)

    def send(self, datagram: bytes, now: float) -> None:
        """Hand a datagram to the link at time ``now``."""
        rng = self._rng
        self.stats.sent += 1
        if rng.random() < self.drop:
            self.stats.dropped += 1
            return
        copies = 1
        if rng.random() < self.duplicate:
            self.stats.duplicated += 1
            copies = 2
        for _ in range(copies):
            arrival = now + self.delay + rng.uniform(0.0, self.jitter)
            if rng.random() < self.reorder:
                self.stats.reordered += 1
                arrival += rng.uniform(0.0, self.reorder_delay)
            data = datagram
            if data and rng.random() < self.corrupt:
                self.stats.corrupted += 1
                data = self._corrupt(data)
            heapq.heappush(self._queue, (arrival, self._seq, data))
            self._seq += 1

    def _corrupt(self, data: bytes) -> bytes:
        rng = self._rng
        buf = bytearray(data)
        length = rng.randint(1, min(4, len(buf)))
        start = rng.randrange(len(buf) - length + 1)
        for i in range(start, start + length):
            buf[i] ^= rng.randint(1, 255)
        return bytes(buf)

    def next_arrival(self) -> float | None:
        """When the next copy arrives, or ``None`` if nothing is in flight."""
        return self._queue[0][0] if self._queue else None

    def receive(self, now: float) -> list[bytes]:
        """Every copy that has arrived by ``now``, in arrival order."""
        out = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            out.append(heapq.heappop(queue)[2])
        self.stats.delivered += len(out)
        return out

    def receive_one(self, now: float) -> bytes | None:
        """The next copy that has arrived by ``now``, or ``None``."""
        if self._queue and self._queue[0][0] <= now:
            self.stats.delivered += 1
            return heapq.heappop(self._queue)[2]
        return None
