"""The one configuration class of the protocol library.

Every limit the library enforces lives here, with the spec section that defines
it.  A :class:`Config` is immutable; make a variant with ``attrs.evolve``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from .packets import Bus

if TYPE_CHECKING:
    from .crypto.identity import ServerIdentity

#: Light-bus payloads (the plaintext msgpack body of one packet) are at most
#: this many bytes (§4.2).  Larger data travels on the heavy bus.
MAX_LIGHT_PAYLOAD = 4096

#: Heavy-bus payloads are at most this many bytes (§9.4): the largest frame
#: length a u16 can announce (65,535) less the largest record-protection
#: overhead of any suite (64, as in §4.2).
MAX_HEAVY_PAYLOAD = 65_535 - 64

#: Largest record-protection overhead of any suite, rounded up (§4.2).
MAX_RECORD_OVERHEAD = 64


#: Largest priority-class weight (§6.1.3).  It bounds the scheduler's shared
#: lookup tables, whose size grows with the sum of the weights.
MAX_SCHEDULER_WEIGHT = 255


def _weight(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= MAX_SCHEDULER_WEIGHT:
        raise ValueError(f"{attribute.name} must be in 1..{MAX_SCHEDULER_WEIGHT}, got {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen(kw_only=True)
class Config:
    """Settings for one :class:`~elink_protocol.Connection`.

    Defaults are safe for a server on the public Internet; tests shrink the
    timers.  All durations are in seconds, measured on the clock the host
    passes in as ``now``.
    """

    # --- framing and payloads (§4, §5) ---
    bus: Bus = Bus.LIGHT
    """The kind of connection (§9.1): ``Bus.LIGHT`` for the session,
    ``Bus.HEAVY`` for a file transfer.  Packets of the other bus are
    UNEXPECTED_PACKET.  :func:`heavy_bus_config` makes a heavy-bus variant."""

    max_payload_size: int = attrs.field(default=MAX_LIGHT_PAYLOAD, validator=_positive)
    """Largest plaintext payload accepted or sent: at most 4096 on the light
    bus (§4.2), at most :data:`MAX_HEAVY_PAYLOAD` on the heavy bus (§9.4)."""

    max_receive_buffer: int = attrs.field(default=256 * 1024, validator=_positive)
    """Stream transports: most bytes buffered for frames not yet parsed.  A peer
    that sends more without completing a frame gets RESOURCE_LIMIT."""

    max_pending_events: int = attrs.field(default=1024, validator=_positive)
    """Most decoded events queued for ``next_event()``; beyond it the peer is
    closed with RESOURCE_LIMIT (the host is not reading)."""

    # --- cryptography (§7) ---
    suites: tuple[int, ...] = attrs.field(default=(0x1301, 0x1302))
    """Client: the suites offered, in preference order.  Server: the suites it
    accepts, in its preference order (the server's order wins).  Values are
    :class:`~elink_protocol.crypto.suites.CipherSuite` members."""

    allow_legacy_suites: bool = False
    """Server policy: legacy RSA key-transport suites (DES, 3DES, AES-CBC) are
    refused unless this is set *and* they are listed in ``suites`` (§7.6)."""

    identity: ServerIdentity | None = None
    """Server only: the long-term signing keys (Ed25519 and/or RSA >= 2048)."""

    trusted_server_keys: frozenset[str] | None = None
    """Client only: fingerprints (``SHA256:<hex>``) of server keys that are
    trusted (pinning, §7.8).  ``None`` with ``trust_on_first_use`` leaves the
    decision to the host, which checks ``HandshakeComplete.peer_fingerprint``
    against its known-servers file before sending anything."""

    trust_on_first_use: bool = False
    """Client only: allow ``trusted_server_keys=None`` (see above)."""

    features: tuple[str, ...] = ()
    """Optional protocol features this side supports (§5.4 negotiation)."""

    rekey_after_packets: int = attrs.field(
        default=1 << 20, validator=[_positive, attrs.validators.le(1 << 30)]
    )
    """Start a rekey after this many packets sealed under one key (§7.7).  At
    most 2**30, far below the hard limit of 2**31 where sending stops until
    the rekey completes (§7.5.1)."""

    rekey_after_seconds: float = attrs.field(default=3600.0, validator=_positive)
    """Start a rekey after this long under one key (§7.7)."""

    # --- timers (§6) ---
    handshake_timeout: float = attrs.field(default=10.0, validator=_positive)
    """The handshake must complete within this long, or TIMEOUT."""

    heartbeat_interval: float = attrs.field(default=20.0, validator=_positive)
    """Send a PING after this long without sending anything."""

    idle_timeout: float = attrs.field(default=60.0, validator=_positive)
    """Close with TIMEOUT after this long without receiving anything."""

    ack_delay: float = attrs.field(default=0.01, validator=_positive)
    """Longest a receiver waits before acknowledging a numbered packet (§6.3)."""

    # --- priority scheduler (§6.1) ---
    weight_interactive: int = attrs.field(default=8, validator=_weight)
    """Share of INTERACTIVE in the weighted round robin among the three
    non-control classes (§6.1.3).  1..255."""
    weight_sync: int = attrs.field(default=4, validator=_weight)
    """Share of SYNC (§6.1.3).  1..255."""
    weight_bulk: int = attrs.field(default=1, validator=_weight)
    """Share of BULK (§6.1.3).  1..255.  However high, the bulk gate (§6.1.4)
    still lets at most one BULK packet out between two INTERACTIVE ones."""

    # --- datagram reliability (§6.4) ---
    max_datagram_size: int = attrs.field(default=1200, validator=_positive)
    """Largest UDP payload sent.  1200 bytes fits every IPv6 path."""

    initial_rtt: float = attrs.field(default=0.5, validator=_positive)
    """RTT assumed before the first sample (§6.4.2): SRTT = initial_rtt and
    RTTVAR = initial_rtt / 2, so the first RTO is 3 * initial_rtt."""
    min_rto: float = attrs.field(default=0.2, validator=_positive)
    """Lower clamp of the retransmission timeout (§6.4.2)."""
    max_rto: float = attrs.field(default=10.0, validator=_positive)
    """Upper clamp of the retransmission timeout, backoff included (§6.4.3)."""
    max_retransmissions: int = attrs.field(default=8, validator=_positive)
    """A packet re-sent this many times without an ack fails the connection
    with TIMEOUT."""

    send_window: int = attrs.field(default=256, validator=_positive)
    """Most PIDs a sender runs ahead of its oldest unacknowledged packet
    (§6.4.7); also the congestion window's ceiling.  At most 2**30."""

    receive_window: int = attrs.field(default=1024, validator=_positive)
    """Receivers accept PIDs at most this far beyond the cumulative ack
    (§6.4.6).  At most 2**30."""

    # --- resumption (§6.5) ---
    max_unacked_packets: int = attrs.field(default=4096, validator=_positive)
    """Most sent-but-unacknowledged packets kept for retransmission or
    resumption.  Past it the sender stops taking new packets (backpressure)."""

    def __attrs_post_init__(self) -> None:
        limit = MAX_LIGHT_PAYLOAD if self.bus is Bus.LIGHT else MAX_HEAVY_PAYLOAD
        if self.bus not in (Bus.LIGHT, Bus.HEAVY):
            raise ValueError(f"bus must be LIGHT or HEAVY, got {self.bus!r}")
        if self.max_payload_size > limit:
            raise ValueError(
                f"max_payload_size {self.max_payload_size} exceeds {limit} on the "
                f"{'light' if self.bus is Bus.LIGHT else 'heavy'} bus"
            )

    @property
    def max_frame_length(self) -> int:
        """Largest ``length`` a received frame header may announce (§4.2, §9.4)."""
        return max(MAX_LIGHT_PAYLOAD, self.max_payload_size) + MAX_RECORD_OVERHEAD


def heavy_bus_config(config: Config) -> Config:
    """``config`` (suites, keys, trust, timers) made into a heavy-bus
    connection's configuration (§9.4): payloads up to
    :data:`MAX_HEAVY_PAYLOAD`, a receive buffer for a few such frames, and
    few packets kept for retransmission, because each may be 64 KB."""
    return attrs.evolve(
        config,
        bus=Bus.HEAVY,
        max_payload_size=MAX_HEAVY_PAYLOAD,
        max_receive_buffer=max(config.max_receive_buffer, 1024 * 1024),
        max_unacked_packets=32,
    )
