"""Datagram reliability: acknowledgement, retransmission, duplicate
suppression and in-order delivery (docs/protocol.md §6.2-§6.4).

Theory of operation
-------------------
Numbered packets carry consecutive PIDs per direction.  Three small machines,
all driven by the host with explicit ``now`` arguments, make them reliable:

* :class:`SendWindow` keeps every sent, unacknowledged packet.  An ack names
  a cumulative PID (everything up to it was processed) plus selective ranges
  above it (received and held).  Packets are kept in order of their *latest
  transmission*, so the oldest transmission, whose retransmission deadline
  comes first, is always at the front.  Every transmission (first send or
  re-send) gets a private, strictly increasing *transmission sequence
  number*.  It plays the role of QUIC's packet number for loss detection,
  because e-Link re-sends a packet under its original PID and the PID alone
  cannot tell an old copy from a new one.  A packet is declared lost when an
  acknowledged transmission at least three sequence numbers later is known
  (fast retransmit), or when its latest transmission is older than the RTO
  (timeout).  Acks of re-sent packets are ambiguous (which copy arrived?),
  so, following Karn, they give neither RTT samples nor evidence for loss
  detection.  A congestion window (AIMD in packets, with slow start) and the
  span limit ``send_window`` gate new sends.
* :class:`ReceiveWindow` keeps packets that arrived ahead of a gap, up to
  ``receive_window`` PIDs past the cumulative ack, and hands them out in PID
  order with no gaps.  Anything at or below the cumulative ack, or already
  held, is a duplicate; anything beyond the window is dropped unacknowledged.
* :class:`AckScheduler` decides when the receiver owes the peer an ACK.

All PID comparisons are modulo 2**32 (:mod:`elink_protocol.pid`).  Internally
the send window turns PIDs into linear distances below the highest PID sent,
which cannot wrap because at most 2**31 - 1 of them are ever meaningful.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Sequence
from typing import Generic, TypeVar

import attrs

from .config import Config
from .errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from .pid import PID_MASK, pid_add, pid_distance
from .rtt import RttEstimator

T = TypeVar("T")

#: A loss is declared when a transmission this many sequence numbers later
#: was acknowledged (RFC 9002's kPacketThreshold).
PACKET_THRESHOLD = 3
#: Congestion window at the start, in packets (RFC 6928's IW10).
INITIAL_CWND = 10
#: The congestion window never drops below this many packets.
MIN_CWND = 2
#: Most selective-ack ranges one ACK packet carries (``packets.Ack.ranges``).
MAX_ACK_RANGES = 64

# Windows must stay far below half the PID space for serial arithmetic to be
# unambiguous (pid.py); 2**30 is generous and keeps the check simple.
_MAX_WINDOW = 1 << 30
_HALF = 1 << 31
# Linear distances below the highest PID sent are meaningful up to this.
_MAX_SPAN = _HALF - 1


class DeliveryTimeout(ProtocolError):
    """A numbered packet was re-sent ``Config.max_retransmissions`` times and
    its next retransmission came due without an acknowledgement.  The peer or
    the path is gone; close the connection with ``error_code`` (``TIMEOUT``).

    It is neither the caller's fault nor provably the peer's, hence neither
    :class:`LocalProtocolError` nor :class:`RemoteProtocolError`."""

    def __init__(self, pid: int, retransmissions: int) -> None:
        super().__init__(
            f"packet {pid} unacknowledged after {retransmissions} retransmissions",
            ErrorCode.TIMEOUT,
        )
        self.pid = pid
        """The PID of the packet that exhausted its retransmissions."""


def _check_window(name: str, value: int) -> int:
    if not 0 < value <= _MAX_WINDOW:
        raise ValueError(f"{name} must be in 1..{_MAX_WINDOW}, got {value}")
    return value


@attrs.frozen(kw_only=True)
class SendStatistics:
    """An immutable snapshot of a :class:`SendWindow`, for monitoring."""

    in_flight: int
    """Numbered packets sent and not yet acknowledged."""
    bytes_in_flight: int
    """Sum of their sizes as given to ``on_sent``."""
    congestion_window: int
    """Current congestion window, in packets."""
    smoothed_rtt: float | None
    """SRTT in seconds, or ``None`` before the first sample."""
    rto: float
    """The retransmission timeout now in force, backoff included."""
    retransmissions: int
    """Re-sends so far, over the window's life."""
    most_retries: int
    """The most re-sends of any one packet now in flight (0 when none)."""


class _Sent(Generic[T]):
    """Book-keeping for one unacknowledged packet (mutable, internal)."""

    __slots__ = ("backoff", "item", "lost", "pid", "retries", "sent_at", "seq", "size")

    def __init__(self, pid: int, item: T, size: int, now: float, *, seq: int, backoff: int) -> None:
        self.pid = pid
        self.item = item
        self.size = size
        self.sent_at = now  # time of the latest transmission
        self.seq = seq  # transmission sequence number of the latest transmission
        self.backoff = backoff  # RTO backoff exponent when it was last transmitted
        self.retries = 0  # re-sends so far
        self.lost = False  # declared lost by fast retransmit, re-send pending


class SendWindow(Generic[T]):
    """Sender side of §6.4: retransmission, RTO, congestion and send window.

    ``T`` is whatever the host needs to re-send a packet (the packet object,
    or its encoded frame).  Usage::

        while window.can_send() and queue:
            pid = window.next_pid
            send(pid, item); window.on_sent(pid, item, size, now)
        acked = window.on_ack(frame.ack, ack.ranges, ack.delay / 1e6, now)
        if (t := window.get_timer()) is not None and t <= now:
            for pid, item in window.on_timer(now):   # may raise DeliveryTimeout
                send(pid, item)
    """

    def __init__(self, config: Config, *, first_pid: int = 1) -> None:
        if not 0 <= first_pid <= PID_MASK:
            raise ValueError(f"first_pid {first_pid} is not a u32")
        self._max_window = _check_window("send_window", config.send_window)
        self._max_retransmissions = config.max_retransmissions
        self.rtt = RttEstimator(config)
        """The RTT estimator; read ``rtt.smoothed_rtt`` / ``rtt.rto`` for statistics."""
        self._next_pid = first_pid
        # Every PID up to and including _acked is acknowledged (cumulatively or
        # selectively); _acked + 1 is the oldest unacknowledged PID, if any.
        self._acked = pid_add(first_pid, -1)
        # The newest cumulative ack received: what the peer has *processed*.
        self._peer_processed = self._acked
        # How many distinct PIDs were ever sent (capped): acks may only name these.
        self._sent_count = 0
        # Unacknowledged packets, in order of their latest transmission.  An
        # OrderedDict, not a dict: the front is read after every ack, and a
        # plain dict's iteration would first skip every slot popped since
        # its last resize (quadratic with a large window).
        self._unacked: OrderedDict[int, _Sent[T]] = OrderedDict()
        # Packets declared lost by acks, re-sent at the next on_timer().
        self._lost: dict[int, _Sent[T]] = {}
        self._lost_at = 0.0
        self._next_seq = 0
        self._largest_acked_seq = -1
        # Congestion state.  A loss of a transmission with seq <= _recovery_seq
        # belongs to a congestion event already answered and does not cut again.
        self._cwnd = min(INITIAL_CWND, self._max_window)
        self._ssthresh = self._max_window
        self._acked_in_round = 0
        self._recovery_seq = -1
        self._bytes_in_flight = 0
        self._retransmissions = 0
        self._failure: DeliveryTimeout | None = None

    # --- state ---------------------------------------------------------------

    @property
    def next_pid(self) -> int:
        """The PID the next new numbered packet must carry."""
        return self._next_pid

    @property
    def acked_through(self) -> int:
        """Every PID up to and including this one has been acknowledged."""
        return self._acked

    @property
    def peer_processed(self) -> int:
        """The newest cumulative ack received: the peer processed every PID up
        to and including this one.  Unlike :attr:`acked_through` it ignores
        selective acks, which only say a packet is held: a host keeping
        packets for resumption (§6.5) may drop them only up to here."""
        return self._peer_processed

    @property
    def in_flight(self) -> int:
        """Packets sent and not yet acknowledged."""
        return len(self._unacked)

    @property
    def bytes_in_flight(self) -> int:
        """Sum of the ``size`` of the packets in flight."""
        return self._bytes_in_flight

    @property
    def congestion_window(self) -> int:
        """Current congestion window, in packets."""
        return self._cwnd

    @property
    def failed(self) -> bool:
        """True once :meth:`on_timer` raised :class:`DeliveryTimeout`."""
        return self._failure is not None

    def statistics(self) -> SendStatistics:
        """A snapshot of the window's state (O(in flight): not for every packet)."""
        return SendStatistics(
            in_flight=len(self._unacked),
            bytes_in_flight=self._bytes_in_flight,
            congestion_window=self._cwnd,
            smoothed_rtt=self.rtt.smoothed_rtt,
            rto=self.rtt.rto,
            retransmissions=self._retransmissions,
            most_retries=max((e.retries for e in self._unacked.values()), default=0),
        )

    def can_send(self) -> bool:
        """True when one more new packet may be sent now: fewer than
        ``congestion_window`` in flight, and its PID no more than
        ``send_window`` past :attr:`acked_through`."""
        return (
            self._failure is None
            and len(self._unacked) < self._cwnd
            and ((self._next_pid - self._acked) & PID_MASK) <= self._max_window
        )

    def unacked_items(self) -> list[tuple[int, T]]:
        """The packets in flight as ``(pid, item)``, in PID order (for resumption)."""
        acked = self._acked
        return [
            (e.pid, e.item)
            for e in sorted(self._unacked.values(), key=lambda e: (e.pid - acked) & PID_MASK)
        ]

    # --- events --------------------------------------------------------------

    def on_sent(self, pid: int, item: T, size: int, now: float) -> None:
        """Record the first transmission of a new numbered packet.

        ``pid`` must be :attr:`next_pid` and :meth:`can_send` must be true;
        otherwise :class:`LocalProtocolError` and nothing is recorded."""
        if pid != self._next_pid:
            raise LocalProtocolError(f"PID {pid} sent, but the next PID is {self._next_pid}")
        unacked = self._unacked
        if (
            self._failure is not None
            or len(unacked) >= self._cwnd
            or ((pid - self._acked) & PID_MASK) > self._max_window
        ):
            raise LocalProtocolError("send window or congestion window is full")
        seq = self._next_seq
        self._next_seq = seq + 1
        unacked[pid] = _Sent(pid, item, size, now, seq=seq, backoff=self.rtt.backoff)
        self._next_pid = (pid + 1) & PID_MASK
        if self._sent_count < _MAX_SPAN:
            self._sent_count += 1
        self._bytes_in_flight += size

    def on_ack(
        self,
        cumulative: int,
        ranges: Sequence[tuple[int, int]] = (),
        ack_delay: float = 0.0,
        now: float = 0.0,
    ) -> list[T]:
        """Process an acknowledgement; returns the newly acknowledged items in
        PID order.

        ``cumulative`` is the header ``ack`` field of any received frame;
        ``ranges`` and ``ack_delay`` (seconds, i.e. ``Ack.delay / 1e6``) come
        from an ACK packet (pass ``()`` and ``0.0`` for other frames).  Raises
        :class:`RemoteProtocolError` ``PID_ERROR`` if the ack names a PID never
        sent or its ranges are not ascending, disjoint and above
        ``cumulative``; nothing is changed then.
        """
        highest = (self._next_pid - 1) & PID_MASK
        limit = self._sent_count
        # Linear distance below the highest PID sent: 0 is the highest, and
        # ``limit`` is the PID before the first one ever sent.
        back_cum = (highest - cumulative) & PID_MASK
        if back_cum > limit:
            raise RemoteProtocolError(
                f"ack {cumulative} acknowledges a PID that was never sent", ErrorCode.PID_ERROR
            )
        prev = back_cum
        for first, last in ranges:
            back_first = (highest - first) & PID_MASK
            back_last = (highest - last) & PID_MASK
            if not back_last <= back_first < prev:
                raise RemoteProtocolError(
                    f"ack range [{first}, {last}] is inverted, overlapping, below the "
                    "cumulative ack or names a PID never sent",
                    ErrorCode.PID_ERROR,
                )
            prev = back_last
        # Valid: from here on the ack is applied.  An older cumulative ack
        # (reordered, or in a re-sent frame) is not an error; it adds nothing.
        if back_cum < (highest - self._peer_processed) & PID_MASK:
            self._peer_processed = cumulative
        back_acked = (highest - self._acked) & PID_MASK
        if not ranges and back_cum >= back_acked:
            return []  # nothing new: the common case of a piggy-backed ack

        unacked = self._unacked
        acked: list[_Sent[T]] = []
        # PIDs above _acked up to the cumulative ack, then each range clipped
        # to above _acked; all in ascending PID order.  Each PID is visited at
        # most once, so the work is bounded by the span in flight.
        acked_pid = self._acked
        if back_cum < back_acked:
            pid = acked_pid
            for _ in range(back_acked - back_cum):
                pid = (pid + 1) & PID_MASK
                entry = unacked.pop(pid, None)
                if entry is not None:
                    acked.append(entry)
            acked_pid = cumulative
        for first, last in ranges:
            lo = (highest - last) & PID_MASK
            hi = min((highest - first) & PID_MASK, back_acked - 1)
            for back in range(hi, lo - 1, -1):
                entry = unacked.pop((highest - back) & PID_MASK, None)
                if entry is not None:
                    acked.append(entry)
        if not acked:
            return []
        self.rtt.on_progress()

        largest_named = ranges[-1][1] if ranges else cumulative
        largest_seq = self._largest_acked_seq
        recovery_seq = self._recovery_seq
        growth = 0
        items = []
        for entry in acked:
            items.append(entry.item)
            self._bytes_in_flight -= entry.size
            if entry.lost:
                del self._lost[entry.pid]
            if entry.retries == 0:
                # Unambiguous: only one copy was ever sent.
                largest_seq = max(largest_seq, entry.seq)
                if entry.pid == largest_named:
                    # RFC 9002 §5.1: sample only when the largest PID this ack
                    # names is newly acknowledged.
                    self.rtt.on_sample(now - entry.sent_at, ack_delay)
            if entry.seq > recovery_seq:
                growth += 1
        if growth and self._cwnd < self._max_window:
            self._grow_cwnd(growth)

        # Everything up to the cumulative ack is acknowledged now; past it,
        # selective acks may have closed the gap above.
        while acked_pid != highest:
            nxt = (acked_pid + 1) & PID_MASK
            if nxt in unacked:
                break
            acked_pid = nxt
        self._acked = acked_pid

        if largest_seq == self._largest_acked_seq:
            return items
        self._largest_acked_seq = largest_seq
        # Fast retransmit: _unacked is in transmission order, so the candidates
        # are at the front.
        # Early retransmit (RFC 5827): with fewer than four packets in flight
        # three later ones can never be acknowledged, and every loss would
        # wait for the timeout; the threshold drops to the packets in flight
        # minus one (at least 1).  A congested path collapses cwnd to 2, so
        # this is what keeps recovery at one round trip there.
        outstanding = len(unacked) + len(acked)
        threshold = largest_seq - max(1, min(PACKET_THRESHOLD, outstanding - 1))
        for entry in unacked.values():
            if entry.seq > threshold:
                break
            if not entry.lost:
                entry.lost = True
                if not self._lost:
                    self._lost_at = now
                self._lost[entry.pid] = entry
        return items

    def get_timer(self) -> float | None:
        """When :meth:`on_timer` must next be called, or ``None``.  A time in
        the past means packets are already due (fast retransmit)."""
        if self._failure is not None:
            return None
        if self._lost:
            return self._lost_at
        for entry in self._unacked.values():
            return entry.sent_at + self.rtt.rto
        return None

    def on_timer(self, now: float) -> list[tuple[int, T]]:
        """Packets to re-send now, as ``(pid, item)`` in PID order; the window
        records them as re-sent at ``now``, so the host must send them.

        Raises :class:`DeliveryTimeout` when a packet that is due has already
        been re-sent ``max_retransmissions`` times; the window is then failed
        and stays so."""
        if self._failure is not None:
            raise self._failure
        due = list(self._lost.values())
        rto = self.rtt.rto
        timed_out = False
        back_off = False
        for entry in self._unacked.values():
            if entry.sent_at + rto > now:
                break
            if not entry.lost:
                due.append(entry)
            timed_out = True
            # Several packets sent close together expire in separate events;
            # only the first expiry at the current backoff level doubles the
            # RTO, or the tail of a burst would back off exponentially.
            if entry.backoff == self.rtt.backoff:
                back_off = True
        if not due:
            return []
        for entry in due:
            if entry.retries >= self._max_retransmissions:
                self._failure = DeliveryTimeout(entry.pid, entry.retries)
                raise self._failure

        if any(entry.seq > self._recovery_seq for entry in due):
            # One congestion event per window of data: halve (RFC 5681 AIMD).
            self._ssthresh = min(max(self._cwnd // 2, MIN_CWND), self._max_window)
            self._cwnd = self._ssthresh
            self._acked_in_round = 0
            self._recovery_seq = self._next_seq - 1
        if timed_out and back_off:
            self.rtt.on_timeout()
        self._lost.clear()
        self._retransmissions += len(due)
        unacked = self._unacked
        backoff = self.rtt.backoff
        for entry in due:
            entry.retries += 1
            entry.lost = False
            entry.sent_at = now
            entry.seq = self._next_seq
            self._next_seq += 1
            entry.backoff = backoff
            unacked.move_to_end(entry.pid)  # the transmission order changed
        acked = self._acked
        due.sort(key=lambda e: (e.pid - acked) & PID_MASK)
        return [(entry.pid, entry.item) for entry in due]

    def _grow_cwnd(self, acked: int) -> None:
        """Open the congestion window for ``acked`` packets acknowledged
        outside recovery."""
        for _ in range(acked):
            if self._cwnd >= self._max_window:
                return
            if self._cwnd < self._ssthresh:
                self._cwnd += 1  # slow start: +1 per acked packet
                continue
            # Congestion avoidance: +1 per congestion window's worth of acks,
            # i.e. about one packet per round trip.
            self._acked_in_round += 1
            if self._acked_in_round >= self._cwnd:
                self._acked_in_round = 0
                self._cwnd += 1


class Verdict(enum.Enum):
    """What :meth:`ReceiveWindow.on_received` decided about a numbered packet."""

    NEW = "new"
    """First arrival inside the window: kept for in-order delivery; it will be acknowledged."""
    DUPLICATE = "duplicate"
    """At or below the cumulative ack, or already held: drop it (it was acknowledged)."""
    OUT_OF_WINDOW = "out_of_window"
    """More than ``receive_window`` past the cumulative ack: drop it, do not acknowledge it."""


class ReceiveWindow(Generic[T]):
    """Receiver side of §6.4: duplicate suppression, anti-replay window and
    in-order delivery.

    ``on_received(pid, item)`` classifies each numbered packet;
    ``pop_deliverable()`` returns the items that are now in order, and only
    then does :attr:`cumulative_ack` advance past them ("processed").  At
    most ``receive_window`` items are held.
    """

    __slots__ = ("_buffer", "_cum", "_window")

    def __init__(self, config: Config, *, first_pid: int = 1) -> None:
        if not 0 <= first_pid <= PID_MASK:
            raise ValueError(f"first_pid {first_pid} is not a u32")
        self._window = _check_window("receive_window", config.receive_window)
        self._cum = pid_add(first_pid, -1)
        self._buffer: dict[int, T] = {}

    @property
    def cumulative_ack(self) -> int:
        """Every PID up to and including this one was delivered by
        :meth:`pop_deliverable`.  Goes into the ``ack`` field of every frame."""
        return self._cum

    @property
    def buffered(self) -> int:
        """Items held: received but not yet returned by :meth:`pop_deliverable`."""
        return len(self._buffer)

    def on_received(self, pid: int, item: T) -> Verdict:
        """Classify a numbered packet and keep it if it is new."""
        distance = (pid - self._cum) & PID_MASK
        if distance == 0 or distance >= _HALF:
            # At or below the cumulative ack (serial arithmetic: "not after").
            return Verdict.DUPLICATE
        if distance > self._window:
            return Verdict.OUT_OF_WINDOW
        if pid in self._buffer:
            return Verdict.DUPLICATE
        self._buffer[pid] = item
        return Verdict.NEW

    def pop_deliverable(self) -> list[T]:
        """Items now deliverable, in PID order with no gaps; the cumulative
        ack advances past them."""
        buffer = self._buffer
        out: list[T] = []
        if not buffer:
            return out
        nxt = (self._cum + 1) & PID_MASK
        while nxt in buffer:
            out.append(buffer.pop(nxt))
            nxt = (nxt + 1) & PID_MASK
        self._cum = (nxt - 1) & PID_MASK
        return out

    def sack_ranges(self, limit: int = MAX_ACK_RANGES) -> list[tuple[int, int]]:
        """Held PIDs above the cumulative ack as ascending, disjoint
        ``(first, last)`` ranges.  When there are more than ``limit``, the
        highest ones are kept: they tell the sender most about loss and RTT."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        if not self._buffer or limit == 0:
            return []
        cum = self._cum
        offsets = sorted((pid - cum) & PID_MASK for pid in self._buffer)
        spans: list[tuple[int, int]] = []
        start = prev = offsets[0]
        for offset in offsets[1:]:
            if offset != prev + 1:
                spans.append((start, prev))
                start = offset
            prev = offset
        spans.append((start, prev))
        return [((cum + a) & PID_MASK, (cum + b) & PID_MASK) for a, b in spans[-limit:]]


class AckScheduler:
    """Decides when the receiver owes its peer an acknowledgement (§6.3).

    An ack is due immediately after every second new numbered packet, after a
    packet that arrives out of order (it opens or fills a gap), after a
    duplicate or out-of-window packet (the sender is re-sending, so it missed
    an ack), and otherwise ``Config.ack_delay`` after the first packet not yet
    acknowledged.
    """

    __slots__ = ("_deadline", "_delay", "_largest", "_largest_at", "_pending")

    def __init__(self, config: Config, *, first_pid: int = 1) -> None:
        self._delay = config.ack_delay
        self._largest = pid_add(first_pid, -1)
        self._largest_at: float | None = None
        self._pending = 0
        self._deadline: float | None = None

    def on_received(self, pid: int, verdict: Verdict, now: float) -> None:
        """Account for one numbered packet and the window's verdict on it."""
        if verdict is not Verdict.NEW:
            self._due(now)
            return
        self._pending += 1
        distance = pid_distance(pid, self._largest)
        in_order = distance == 1
        if distance > 0:
            self._largest = pid
            self._largest_at = now
        if not in_order or self._pending >= 2:
            self._due(now)
        elif self._deadline is None:
            self._deadline = now + self._delay

    def _due(self, now: float) -> None:
        if self._deadline is None or self._deadline > now:
            self._deadline = now

    def get_timer(self) -> float | None:
        """When an ack becomes due, or ``None`` if none is owed."""
        return self._deadline

    def ack_due(self, now: float) -> bool:
        """True when an ACK packet should be sent now."""
        return self._deadline is not None and now >= self._deadline

    def ack_delay(self, now: float) -> float:
        """Seconds since the highest PID was received: the ``delay`` of the
        ACK (in microseconds on the wire)."""
        if self._largest_at is None:
            return 0.0
        return max(now - self._largest_at, 0.0)

    def on_ack_sent(self, now: float) -> None:
        """An ACK packet (or, with no SACK ranges to report, any frame whose
        header carries the current cumulative ack) was sent."""
        self._pending = 0
        self._deadline = None
