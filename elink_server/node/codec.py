"""Typed objects <-> the values the node's links carry (msgpack).

Packets travel as ``[type, payload blob, priority]``: the payload map the
protocol library puts on the wire, packed once by the sender, forwarded
untouched by the hub, and parsed back with the packet class's own
``from_payload_untrusted`` (so a bug cannot smuggle an invalid packet to a
client).  Log entries travel as blobs of their wire map.  Session states are
plain arrays of their fields.
"""

from __future__ import annotations

from typing import Any

from elink_protocol import PACKET_TYPES, Packet, UnknownPacket
from elink_protocol.app import PresenceEntry, SyncEvent
from elink_protocol.app.sync import sync_event
from elink_protocol.frame import Priority
from elink_protocol.resumption import ResumptionState, SentPacket, UnsentPacket
from elink_server.services.router import Handover

from .link import pack_value, unpack_value


class CodecError(ValueError):
    """A value from a link is not what it claims to be."""


def entry_blob(event: SyncEvent) -> bytes:
    """A log entry, packed."""
    return pack_value(event.to_wire())


def entry_from_blob(blob: bytes) -> SyncEvent:
    try:
        return sync_event(unpack_value(blob))
    except ValueError as exc:
        raise CodecError(f"bad log entry: {exc}") from None


def packet_value(packet: Packet) -> list[Any]:
    """A packet as a link value."""
    if isinstance(packet, UnknownPacket):
        return [packet.type, packet.payload, int(packet.priority)]
    return [packet.TYPE, pack_value(packet.to_payload()), int(packet.PRIORITY)]


def packet_from_value(value: list[Any]) -> Packet:
    kind, blob, priority = value
    cls = PACKET_TYPES.get(kind)
    try:
        if cls is None:
            return UnknownPacket(type=kind, payload=blob, priority=Priority(priority))
        return cls.from_payload_untrusted(unpack_value(blob))
    except Exception as exc:
        raise CodecError(f"bad packet {kind!r}: {exc}") from None


def presence_entry_from_value(value: Any) -> PresenceEntry:
    try:
        return PresenceEntry.from_wire_untrusted(value)
    except ValueError as exc:
        raise CodecError(f"bad presence entry: {exc}") from None


def state_value(state: ResumptionState) -> list[Any]:
    return [
        state.session_id,
        state.resumption_secret,
        state.next_pid,
        state.last_processed,
        [[p.pid, p.type, int(p.priority), p.more_fragments, p.payload] for p in state.unacked],
        [[p.type, int(p.priority), p.payload, p.fragment, p.more_fragments] for p in state.unsent],
    ]


def state_from_value(value: list[Any]) -> ResumptionState:
    session_id, secret, next_pid, last_processed, unacked, unsent = value
    return ResumptionState(
        session_id=bytes(session_id),
        resumption_secret=bytes(secret),
        next_pid=int(next_pid),
        last_processed=int(last_processed),
        unacked=tuple(
            SentPacket(
                pid=pid, type=kind, priority=Priority(prio), more_fragments=more, payload=payload
            )
            for pid, kind, prio, more, payload in unacked
        ),
        unsent=tuple(
            UnsentPacket(
                type=kind,
                priority=Priority(prio),
                payload=payload,
                fragment=fragment,
                more_fragments=more,
            )
            for kind, prio, payload, fragment, more in unsent
        ),
    )


def handover_value(handover: Handover) -> list[Any]:
    return [
        handover.user,
        handover.device_id,
        handover.kind,
        state_value(handover.state),
        [packet_value(p) for p in handover.undelivered],
        handover.pushed_up_to,
        [entry_blob(e) for e in handover.held],
    ]


def handover_from_value(value: list[Any]) -> Handover:
    try:
        user, device_id, kind, state, undelivered, pushed, held = value
        return Handover(
            user=str(user),
            device_id=str(device_id),
            kind=str(kind),
            state=state_from_value(state),
            undelivered=tuple(packet_from_value(p) for p in undelivered),
            pushed_up_to=None if pushed is None else int(pushed),
            held=tuple(entry_from_blob(b) for b in held),
        )
    except (TypeError, ValueError) as exc:
        raise CodecError(f"bad handover: {exc}") from None
