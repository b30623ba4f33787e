"""Packet types and their payload schemas (docs/protocol.md §5).

Each packet type is a frozen, slotted, keyword-only class.  The same classes
are used to send and to receive.  Class attributes say where a packet belongs:

* ``TYPE`` -- its u16 type code;
* ``PRIORITY`` -- the priority class it is sent in (§6.1);
* ``PHASES`` -- the connection phases in which it is legal (§5.5);
* ``NUMBERED`` -- whether it takes a PID, and so is acknowledged, re-sent
  and de-duplicated (§6.2);
* ``BUS`` -- the kind of connection it is legal on (light, heavy or both, §9.1).

Payload fields are declared with :func:`wire`, which names the msgpack key and
the validator applied to peer input.  Unknown keys are ignored (so a peer can
add fields, §5.4); a missing required key is ``PAYLOAD_INVALID``.

Type ranges (§5.3): ``0x0000-0x7FFF`` are *critical* -- an unknown one is a
protocol error (``UNKNOWN_PACKET_TYPE``); ``0x8000-0xFFFF`` are *ignorable* --
an unknown one is delivered as :class:`UnknownPacket` and otherwise ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import attrs

from .errors import ErrorCode, RemoteProtocolError
from .frame import Priority

IGNORABLE_TYPES_START = 0x8000


class Phase(enum.Flag):
    """Connection phases, for the legality column of the packet table."""

    HANDSHAKE = enum.auto()
    ESTABLISHED = enum.auto()
    ANY = HANDSHAKE | ESTABLISHED


class Bus(enum.Flag):
    """Which connections a packet is legal on (§9.1): the light bus (the
    long-lived session), the heavy bus (file transfers), or both."""

    LIGHT = enum.auto()
    HEAVY = enum.auto()
    BOTH = LIGHT | HEAVY


# --- field validators --------------------------------------------------------
# Each takes the raw msgpack value and returns the checked value or raises
# ValueError; `Packet.from_payload_untrusted` turns that into PAYLOAD_INVALID.

Check = Callable[[Any], Any]


def uint(bits: int) -> Check:
    top = (1 << bits) - 1

    def check(v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= top:
            raise ValueError(f"expected an unsigned {bits}-bit integer, got {v!r}")
        return int(v)

    return check


def boolean(v: Any) -> bool:
    if type(v) is not bool:
        raise ValueError(f"expected a boolean, got {v!r}")
    return v


def blob(min_len: int, max_len: int, *, sizes: tuple[int, ...] = ()) -> Check:
    def check(v: Any) -> bytes:
        if type(v) is not bytes or not min_len <= len(v) <= max_len:
            raise ValueError(f"expected {min_len}..{max_len} bytes, got {type(v).__name__}")
        if sizes and len(v) not in sizes:
            raise ValueError(f"expected one of {sizes} bytes, got {len(v)}")
        return v

    return check


def text(max_len: int) -> Check:
    def check(v: Any) -> str:
        if type(v) is not str or len(v.encode()) > max_len:
            raise ValueError(f"expected a string of at most {max_len} bytes")
        return v

    return check


def array(item: Check, max_len: int) -> Check:
    def check(v: Any) -> tuple[Any, ...]:
        if type(v) is not list or len(v) > max_len:
            raise ValueError(f"expected an array of at most {max_len} items")
        return tuple(item(x) for x in v)

    return check


def pid_range(v: Any) -> tuple[int, int]:
    """A ``[first, last]`` pair of PIDs (inclusive), as in ACK ranges."""
    if type(v) is not list or len(v) != 2:
        raise ValueError("expected a [first, last] pair")
    check = uint(32)
    return (check(v[0]), check(v[1]))


def wire(key: str, check: Check, **kwargs: Any) -> Any:
    """Declare a payload field: ``key`` on the wire, ``check`` for peer input."""
    metadata = {"wire": (key, check)}
    return attrs.field(metadata=metadata, **kwargs)


# --- the registry ------------------------------------------------------------

P = TypeVar("P", bound="Packet")

PACKET_TYPES: dict[int, type[Packet]] = {}
"""Type code -> packet class, for every packet this library knows."""


def register(cls: type[P]) -> type[P]:
    """Class decorator adding a packet class to :data:`PACKET_TYPES`."""
    if cls.TYPE in PACKET_TYPES:
        raise RuntimeError(f"packet type {cls.TYPE:#06x} registered twice")
    PACKET_TYPES[cls.TYPE] = cls
    return cls


@attrs.frozen(kw_only=True)
class Packet:
    """Base of all packet classes."""

    TYPE: ClassVar[int]
    PRIORITY: ClassVar[Priority] = Priority.CONTROL
    PHASES: ClassVar[Phase] = Phase.ESTABLISHED
    NUMBERED: ClassVar[bool] = True
    BUS: ClassVar[Bus] = Bus.BOTH

    def to_payload(self) -> dict[str, Any]:
        """The payload map for msgpack.  Optional fields equal to their default
        are left out to keep packets small."""
        out: dict[str, Any] = {}
        for f in attrs.fields(type(self)):
            spec = f.metadata.get("wire")
            if spec is None:
                continue
            value = getattr(self, f.name)
            if f.default is not attrs.NOTHING and value == f.default:
                continue
            out[spec[0]] = _plain(value)
        return out

    @classmethod
    def from_payload_untrusted(cls: type[P], payload: dict[str, Any]) -> P:
        kwargs: dict[str, Any] = {}
        for f in attrs.fields(cls):
            spec = f.metadata.get("wire")
            if spec is None:
                continue
            key, check = spec
            if key not in payload:
                if f.default is attrs.NOTHING:
                    raise RemoteProtocolError(
                        f"{cls.__name__} lacks field {key!r}", ErrorCode.PAYLOAD_INVALID
                    )
                continue
            try:
                kwargs[f.name] = check(payload[key])
            except ValueError as exc:
                raise RemoteProtocolError(
                    f"{cls.__name__}.{key}: {exc}", ErrorCode.PAYLOAD_INVALID
                ) from None
        try:
            return cls(**kwargs)
        except ValueError as exc:  # cross-field checks in __attrs_post_init__
            raise RemoteProtocolError(f"{cls.__name__}: {exc}", ErrorCode.PAYLOAD_INVALID) from None


def _plain(value: Any) -> Any:
    """Tuples become lists (msgpack arrays), int enums plain ints."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return value


def _tuple(v: Any) -> tuple[Any, ...]:
    return tuple(v)


# --- handshake (§7.3) ----------------------------------------------------------
_u16s = array(uint(16), 32)


@register
@attrs.frozen(kw_only=True)
class ClientHello(Packet):
    """First packet of a connection, client to server (§7.3.1)."""

    TYPE: ClassVar[int] = 0x0001
    PHASES: ClassVar[Phase] = Phase.HANDSHAKE
    NUMBERED: ClassVar[bool] = False

    versions: tuple[int, ...] = wire("v", _u16s, converter=_tuple)
    """Protocol versions the client speaks, most preferred first."""
    suites: tuple[int, ...] = wire("cs", _u16s, converter=_tuple)
    """Cipher suites offered, most preferred first."""
    signature_algorithms: tuple[int, ...] = wire("sa", _u16s, converter=_tuple)
    """Server-signature algorithms the client can verify."""
    random: bytes = wire("r", blob(32, 32))
    """32 fresh random bytes."""
    key_share: bytes = wire("ks", blob(0, 32, sizes=(0, 32)), default=b"")
    """The client's ephemeral X25519 public key; empty if it offers only legacy suites."""
    features: tuple[str, ...] = wire("f", array(text(64), 32), default=(), converter=_tuple)
    """Optional features the client supports (§5.4)."""


@register
@attrs.frozen(kw_only=True)
class ServerHello(Packet):
    """The server's choice of version, suite and features (§7.3.2)."""

    TYPE: ClassVar[int] = 0x0002
    PHASES: ClassVar[Phase] = Phase.HANDSHAKE
    NUMBERED: ClassVar[bool] = False

    version: int = wire("v", uint(16))
    suite: int = wire("cs", uint(16))
    random: bytes = wire("r", blob(32, 32))
    key_share: bytes = wire("ks", blob(0, 32, sizes=(0, 32)), default=b"")
    """The server's ephemeral X25519 public key; empty for legacy suites."""
    features: tuple[str, ...] = wire("f", array(text(64), 32), default=(), converter=_tuple)
    """The subset of the client's features that the server also supports."""


@register
@attrs.frozen(kw_only=True)
class ServerAuth(Packet):
    """The server's long-term public key and its signature over the transcript
    (§7.3.3)."""

    TYPE: ClassVar[int] = 0x0003
    PHASES: ClassVar[Phase] = Phase.HANDSHAKE
    NUMBERED: ClassVar[bool] = False

    signature_algorithm: int = wire("sa", uint(16))
    public_key: bytes = wire("pk", blob(32, 2048))
    """Ed25519: the 32 raw bytes.  RSA: DER SubjectPublicKeyInfo."""
    signature: bytes = wire("sig", blob(64, 1024))


@register
@attrs.frozen(kw_only=True)
class ClientFinished(Packet):
    """The client's transcript confirmation, with the legacy key transport and
    the optional resumption request (§7.3.4)."""

    TYPE: ClassVar[int] = 0x0004
    PHASES: ClassVar[Phase] = Phase.HANDSHAKE
    NUMBERED: ClassVar[bool] = False

    verify: bytes = wire("vd", blob(32, 32))
    key_transport: bytes = wire("kt", blob(0, 1024), default=b"")
    """Legacy suites: the RSA-OAEP encrypted pre-master secret."""
    resume_session: bytes = wire("rs", blob(0, 16, sizes=(0, 16)), default=b"")
    """Id of the session to resume; empty for a fresh session."""
    resume_last_processed: int = wire("rl", uint(32), default=0)
    """Resumption: the last PID of the server's that the client processed."""
    resume_proof: bytes = wire("rp", blob(0, 32, sizes=(0, 32)), default=b"")
    """Resumption: HMAC proving the client holds the old session's secret."""


@register
@attrs.frozen(kw_only=True)
class ServerFinished(Packet):
    """The server's transcript confirmation and the session's identity
    (§7.3.5)."""

    TYPE: ClassVar[int] = 0x0005
    PHASES: ClassVar[Phase] = Phase.HANDSHAKE
    NUMBERED: ClassVar[bool] = False

    verify: bytes = wire("vd", blob(32, 32))
    session_id: bytes = wire("sid", blob(16, 16))
    resumed: bool = wire("res", boolean, default=False)
    """True when the requested session was resumed."""
    resume_last_processed: int = wire("rl", uint(32), default=0)
    """Resumption: the last PID of the client's that the server processed."""


# --- established-phase control packets (§6) ----------------------------------


@register
@attrs.frozen(kw_only=True)
class Ack(Packet):
    """Acknowledgement (§6.3).  The cumulative ack is the header's ``ack``
    field; ``ranges`` add selective acks for PIDs received above it."""

    TYPE: ClassVar[int] = 0x0010
    NUMBERED: ClassVar[bool] = False

    ranges: tuple[tuple[int, int], ...] = wire(
        "sr", array(pid_range, 64), default=(), converter=_tuple
    )
    """Selective ack blocks ``[first, last]``, inclusive, above the cumulative ack."""
    delay: int = wire("d", uint(32), default=0)
    """Microseconds between receiving the newest PID acked and sending this."""


@register
@attrs.frozen(kw_only=True)
class Ping(Packet):
    """Liveness probe (§6.7); answered with a :class:`Pong` echoing ``data``."""

    TYPE: ClassVar[int] = 0x0011
    NUMBERED: ClassVar[bool] = False

    data: bytes = wire("d", blob(0, 64), default=b"")

    def response(self) -> Pong:
        return Pong(data=self.data)


@register
@attrs.frozen(kw_only=True)
class Pong(Packet):
    """Answer to a :class:`Ping`."""

    TYPE: ClassVar[int] = 0x0012
    NUMBERED: ClassVar[bool] = False

    data: bytes = wire("d", blob(0, 64), default=b"")


@register
@attrs.frozen(kw_only=True)
class Rekey(Packet):
    """Starts a key update to ``epoch`` (§7.7)."""

    TYPE: ClassVar[int] = 0x0013

    epoch: int = wire("e", uint(32))
    random: bytes = wire("r", blob(32, 32))
    key_share: bytes = wire("ks", blob(0, 32, sizes=(0, 32)), default=b"")
    """A fresh X25519 public key (modern suites); empty for legacy suites."""


@register
@attrs.frozen(kw_only=True)
class RekeyAck(Packet):
    """Completes a key update (§7.7)."""

    TYPE: ClassVar[int] = 0x0014

    epoch: int = wire("e", uint(32))
    random: bytes = wire("r", blob(32, 32))
    key_share: bytes = wire("ks", blob(0, 32, sizes=(0, 32)), default=b"")


@register
@attrs.frozen(kw_only=True)
class Close(Packet):
    """Ends the connection, with an error code from §8 (``NO_ERROR`` for a
    normal close).  Legal in every phase."""

    TYPE: ClassVar[int] = 0x0015
    PHASES: ClassVar[Phase] = Phase.ANY
    NUMBERED: ClassVar[bool] = False

    code: int = wire("c", uint(16))
    reason: str = wire("m", text(256), default="")
    versions: tuple[int, ...] = wire("v", _u16s, default=(), converter=_tuple)
    """With UNSUPPORTED_VERSION: the versions the sender speaks."""


@attrs.frozen(kw_only=True)
class UnknownPacket(Packet):
    """A packet of an ignorable type (0x8000-0xFFFF) that this library does
    not know, or one an application sends for its own extension.  Its payload
    is passed through unparsed (but still checked to be a valid payload)."""

    TYPE: ClassVar[int] = -1

    type: int = attrs.field()
    payload: bytes = b""
    priority: Priority = Priority.INTERACTIVE

    def __attrs_post_init__(self) -> None:
        if not IGNORABLE_TYPES_START <= self.type <= 0xFFFF:
            raise ValueError(f"extension packet types are 0x8000-0xFFFF, got {self.type:#x}")


#: Packet types that only the library itself sends; ``Connection.queue()``
#: refuses them from the application.
CONTROL_TYPES = frozenset(
    cls.TYPE
    for cls in (
        ClientHello,
        ServerHello,
        ServerAuth,
        ClientFinished,
        ServerFinished,
        Ack,
        Ping,
        Pong,
        Rekey,
        RekeyAck,
        Close,
    )
)
