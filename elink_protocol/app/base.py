"""The common machinery of the application packets (docs/protocol.md §11.1,
§11.2): nested records, the packet base classes, requests and their two
generic answers, and page filling.

Theory of operation.  An application packet is a :class:`~elink_protocol.
packets.Packet` whose fields may hold *records*: nested maps with their own
declared keys (a message inside a page, a delivery receipt inside a status).
Records and packets share one schema mechanism -- fields declared with
:func:`~elink_protocol.packets.wire` -- and one parser, :func:`parse_fields`,
which raises only :class:`ValueError`; a packet turns that into
``PAYLOAD_INVALID``.  After the fields parse, ``_check_untrusted()`` runs the
checks that need several fields at once (the content schema of a message
depends on its kind).  Those checks run on peer input only: building a packet
locally costs no validation, and :meth:`AppPacket.validate` runs them on
demand.

Every request carries a client-chosen ``rid``; its answer echoes it.  Server
pushes carry none.  :class:`RequestFailed` answers any request that failed;
:class:`Ok` answers the requests that return no data.

Pages (pull results, history, search...) hold as many items as fit in one
4096-byte payload: :func:`fill` computes that count exactly from the encoded
size of each item, because a msgpack array is its header followed by its
items' encodings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import attrs

from elink_protocol.config import MAX_LIGHT_PAYLOAD
from elink_protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from elink_protocol.frame import Priority
from elink_protocol.packets import Bus, Packet, register, text, uint, wire
from elink_protocol.payload import decode_payload_untrusted, encode_payload
from elink_protocol.state import Role

from .errors import AppErrorCode
from .fields import MAX_REASON

R = TypeVar("R", bound="Record")
A = TypeVar("A", bound="AppPacket")
T = TypeVar("T")

#: First and last packet type of the application protocol (§5.3).
APP_TYPES_FIRST = 0x0100
APP_TYPES_LAST = 0x03FF


# --- schemas -------------------------------------------------------------------


@attrs.frozen
class _Field:
    name: str
    key: str
    check: Callable[[Any], Any]
    default: Any


_SCHEMAS: dict[type, tuple[_Field, ...]] = {}


def _schema(cls: type) -> tuple[_Field, ...]:
    """The wire fields of an attrs class, computed once per class."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        schema = tuple(
            _Field(f.name, f.metadata["wire"][0], f.metadata["wire"][1], f.default)
            for f in attrs.fields(cls)
            if "wire" in f.metadata
        )
        _SCHEMAS[cls] = schema
    return schema


def to_wire_value(value: Any) -> Any:
    """A field value as msgpack wants it: records become maps, tuples arrays,
    int and str enums plain ints and strs.  Content maps pass through."""
    if isinstance(value, Record):
        return value.to_wire()
    if isinstance(value, tuple | list):
        return [to_wire_value(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str(value)
    return value


def fields_to_wire(obj: object) -> dict[str, Any]:
    """The payload map of a record or packet.  Optional fields equal to their
    default are left out (§5.6: a sender SHOULD leave them out)."""
    out: dict[str, Any] = {}
    for f in _schema(type(obj)):
        value = getattr(obj, f.name)
        if f.default is not attrs.NOTHING and value == f.default:
            continue
        out[f.key] = to_wire_value(value)
    return out


def parse_fields(cls: type[T], value: Any) -> T:
    """Build ``cls`` from a peer's map: unknown keys are ignored (§5.4), a
    missing required key or a bad value raises :class:`ValueError`."""
    if type(value) is not dict:
        raise ValueError(f"expected a map, got {type(value).__name__}")
    kwargs: dict[str, Any] = {}
    for f in _schema(cls):
        if f.key not in value:
            if f.default is attrs.NOTHING:
                raise ValueError(f"lacks key {f.key!r}")
            continue
        try:
            kwargs[f.name] = f.check(value[f.key])
        except ValueError as exc:
            raise ValueError(f"{f.key}: {exc}") from None
    obj = cls(**kwargs)  # __attrs_post_init__ may raise ValueError too
    check_untrusted = getattr(obj, "_check_untrusted", None)
    if check_untrusted is not None:
        check_untrusted()
    return obj


def _tuple(v: Any) -> tuple[Any, ...]:
    return tuple(v)


# --- records -------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Record:
    """Base of nested maps (a message, an event, a receipt...).  Subclasses
    declare their keys with :func:`~elink_protocol.packets.wire`."""

    def to_wire(self) -> dict[str, Any]:
        return fields_to_wire(self)

    @classmethod
    def from_wire_untrusted(cls: type[R], value: Any) -> R:
        """Parse a peer's map; raises :class:`ValueError` only."""
        return parse_fields(cls, value)

    def _check_untrusted(self) -> None:
        """Checks across fields, run on peer input after the fields parse."""


def record(cls: type[R]) -> Callable[[Any], R]:
    """Validator: one nested map of type ``cls``."""
    return cls.from_wire_untrusted


def records(cls: type[R], max_items: int) -> Callable[[Any], tuple[R, ...]]:
    """Validator: an array of at most ``max_items`` maps of type ``cls``."""

    def check(v: Any) -> tuple[R, ...]:
        if type(v) is not list or len(v) > max_items:
            raise ValueError(f"expected an array of at most {max_items} items")
        out = []
        for i, item in enumerate(v):
            try:
                out.append(cls.from_wire_untrusted(item))
            except ValueError as exc:
                raise ValueError(f"[{i}]: {exc}") from None
        return tuple(out)

    return check


# --- packets -------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AppPacket(Packet):
    """Base of the application packets (§11.1): numbered, legal only in the
    established phase, sent by one side only (``SENDER``; ``None`` for the
    heavy-bus data packets, which flow in both directions, §9.6), on the light
    bus unless a packet says otherwise (``BUS``)."""

    SENDER: ClassVar[Role | None]
    PRIORITY: ClassVar[Priority] = Priority.INTERACTIVE
    BUS: ClassVar[Bus] = Bus.LIGHT

    def to_payload(self) -> dict[str, Any]:
        return fields_to_wire(self)

    @classmethod
    def from_payload_untrusted(cls: type[A], payload: dict[str, Any]) -> A:
        try:
            return parse_fields(cls, payload)
        except ValueError as exc:
            raise RemoteProtocolError(f"{cls.__name__}: {exc}", ErrorCode.PAYLOAD_INVALID) from None

    def _check_untrusted(self) -> None:
        """Checks across fields, run on peer input after the fields parse."""

    def validate(self) -> None:
        """Check this locally built packet as its receiver will (schema, limits,
        the 4096-byte payload bound); raises :class:`LocalProtocolError`."""
        data = encode_payload(self.to_payload())
        if len(data) > MAX_LIGHT_PAYLOAD:
            raise LocalProtocolError(
                f"{type(self).__name__} payload exceeds {MAX_LIGHT_PAYLOAD} bytes",
                ErrorCode.FRAME_TOO_LARGE,
            )
        try:
            type(self).from_payload_untrusted(decode_payload_untrusted(data))
        except RemoteProtocolError as exc:
            raise LocalProtocolError(str(exc), exc.error_code) from None


def check_sender(packet: Packet, receiver: Role) -> None:
    """Raise ``UNEXPECTED_PACKET`` if ``packet`` is an application packet that
    only ``receiver``'s own side may send (§11.1.3): a server never accepts a
    server push, a client never accepts a request."""
    if isinstance(packet, AppPacket) and packet.SENDER is receiver:
        raise RemoteProtocolError(
            f"{type(packet).__name__} is sent by the {receiver.value} only",
            ErrorCode.UNEXPECTED_PACKET,
        )


@attrs.frozen(kw_only=True)
class Request(AppPacket):
    """Base of client requests: each carries a ``rid`` that its answer echoes."""

    SENDER: ClassVar[Role | None] = Role.CLIENT

    rid: int = wire("r", uint(32))
    """Request id chosen by the client, unique among its outstanding requests."""

    def failed(
        self, code: AppErrorCode | int, reason: str = "", *, retry_after_ms: int = 0
    ) -> RequestFailed:
        """The failure answer to this request."""
        return RequestFailed(rid=self.rid, code=code, reason=reason, retry_after_ms=retry_after_ms)


class AnsweredByOk:
    """Mixin for requests whose success answer carries no data."""

    __slots__ = ()
    rid: int

    def ok(self) -> Ok:
        """The success answer to this request."""
        return Ok(rid=self.rid)


@attrs.frozen(kw_only=True)
class Response(AppPacket):
    """Base of the server's answers to requests."""

    SENDER: ClassVar[Role | None] = Role.SERVER

    rid: int = wire("r", uint(32))
    """The ``rid`` of the request answered."""


@attrs.frozen(kw_only=True)
class Push(AppPacket):
    """Base of server pushes: unsolicited, no ``rid``."""

    SENDER: ClassVar[Role | None] = Role.SERVER


@register
@attrs.frozen(kw_only=True)
class Ok(Response):
    """Success answer to a request that returns no data (§11.2.6)."""

    TYPE: ClassVar[int] = 0x0110


@register
@attrs.frozen(kw_only=True)
class RequestFailed(Response):
    """Failure answer to any request (§11.2.7).  The connection lives on."""

    TYPE: ClassVar[int] = 0x0111

    code: int = wire("c", uint(16))
    """An :class:`~elink_protocol.app.errors.AppErrorCode` value; unknown
    codes are possible and mean only "failed"."""
    reason: str = wire("m", text(MAX_REASON), default="")
    """Human-readable explanation, for logs; not for program logic."""
    retry_after_ms: int = wire("ra", uint(32), default=0)
    """When non-zero, the client SHOULD wait this long before retrying."""

    @property
    def error(self) -> AppErrorCode | None:
        """``code`` as an :class:`AppErrorCode`, or ``None`` if unknown."""
        try:
            return AppErrorCode(self.code)
        except ValueError:
            return None


# --- pages ---------------------------------------------------------------------


def _array_header(n: int) -> int:
    return 1 if n <= 15 else 3 if n <= 0xFFFF else 5


def fill(
    make: Callable[[tuple[T, ...]], Packet],
    items: Sequence[T],
    *,
    item_size: Callable[[T], int],
    budget: int = MAX_LIGHT_PAYLOAD,
) -> tuple[T, ...]:
    """The longest prefix of ``items`` such that ``make(prefix)`` encodes to at
    most ``budget`` bytes (§11.1.6).  ``make(())`` must encode the list field
    (as an empty array) and every other field at its largest value, so the
    real packet built afterwards is no larger.  Raises
    :class:`LocalProtocolError` if ``items`` is non-empty and not even its
    first item fits: a page that can never make progress is a server bug."""
    base = len(encode_payload(make(()).to_payload())) - _array_header(0)
    body = 0
    count = 0
    for item in items:
        grown = body + item_size(item)
        if base + _array_header(count + 1) + grown > budget:
            break
        body = grown
        count += 1
    if items and count == 0:
        raise LocalProtocolError(
            f"{type(items[0]).__name__} does not fit in one {budget}-byte payload",
            ErrorCode.FRAME_TOO_LARGE,
        )
    return tuple(items[:count])


def record_size(item: Record) -> int:
    """Encoded size of one record inside an array."""
    return len(encode_payload(item.to_wire()))
