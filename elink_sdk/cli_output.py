"""How the ``elink`` command prints things: JSON objects for scripts, one
line per message for people."""

from __future__ import annotations

import time
from typing import Any

import attrs

from elink_protocol.app import Message

from .events import (
    Disconnected,
    Event,
    MessageDelivered,
    MessageRead,
    MessageRecalled,
    MessageReceived,
    PresenceChanged,
    Reconnected,
)
from .results import DeliveryReport, SentMessage

__all__ = [
    "EVENT_TYPES",
    "event_json",
    "format_message",
    "human_size",
    "json_default",
    "local_time",
    "message_json",
    "report_json",
    "sent_json",
]

#: ``type`` of each event in ``elink listen``'s output.
EVENT_TYPES: dict[type[Event], str] = {
    MessageReceived: "message",
    MessageRecalled: "recalled",
    MessageRead: "read",
    MessageDelivered: "delivered",
    PresenceChanged: "presence",
    Disconnected: "disconnected",
    Reconnected: "reconnected",
}


def message_json(message: Message) -> dict[str, Any]:
    """A message as ``elink`` prints it in JSON (bytes as hex strings)."""
    return {
        "msg_id": message.msg_id,
        "conversation": message.conversation,
        "seq": message.seq,
        "sender": message.sender,
        "sender_device": message.sender_device,
        "client_msg_id": message.client_msg_id,
        "kind": message.kind,
        "text": message.text,
        "content": _jsonable(message.content),
        "created_at_ms": message.created_at_ms,
        "recalled_at_ms": message.recalled_at_ms,
        "flags": message.flags,
    }


def event_json(event: Event) -> dict[str, Any]:
    """An event as a JSON object: ``type`` (see :data:`EVENT_TYPES`), then
    its fields; a message's fields are inlined (see :func:`message_json`)."""
    kind = EVENT_TYPES.get(type(event), type(event).__name__.lower())
    if isinstance(event, MessageReceived):
        return {"type": kind, "cursor": event.cursor, **message_json(event.message)}
    return {"type": kind, **_jsonable(attrs.asdict(event))}


def sent_json(sent: SentMessage) -> dict[str, Any]:
    """A sent message's answer as ``elink send --json`` prints it."""
    return {
        "msg_id": sent.msg_id,
        "conversation": sent.conversation,
        "seq": sent.seq,
        "created_at_ms": sent.created_at_ms,
        "client_msg_id": sent.client_msg_id,
        "duplicate": sent.duplicate,
        "status": sent.status.value,
    }


def report_json(report: DeliveryReport) -> dict[str, Any]:
    """A delivery report as ``elink status --json`` prints it."""
    return {
        "msg_id": report.msg_id,
        "state": report.state.value,
        "sent_at_ms": report.sent_at_ms,
        "deliveries": [attrs.asdict(receipt) for receipt in report.deliveries],
        "reads": [attrs.asdict(receipt) for receipt in report.reads],
        "delivered_count": report.delivered_count,
        "read_count": report.read_count,
    }


def _jsonable(value: Any) -> Any:
    """``value`` with bytes turned into hex strings, at any depth."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback: bytes as hex, anything else as text."""
    return value.hex() if isinstance(value, bytes) else str(value)


def local_time(ms: int) -> str:
    """Milliseconds since the epoch as local ``YYYY-MM-DD HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def format_message(message: Message, *, conversation: bool = False) -> str:
    """One line (more if the text has several) for a message, local time."""
    where = f"{message.conversation} " if conversation else ""
    when = local_time(message.created_at_ms)
    return f"{when}  {where}#{message.seq} {message.sender}: {_body(message)}"


def _body(message: Message) -> str:
    content = message.content
    if content is None:
        return "(recalled)"
    if message.kind == "text":
        return str(content.get("text", ""))
    if message.kind == "emoji":
        return str(content.get("emoji", ""))
    if message.kind == "link":
        title = content.get("title")
        return f"{content.get('url')}" + (f" ({title})" if title else "")
    ref = content.get("ref")
    label = f"[{message.kind}"
    if isinstance(ref, dict) and "n" in ref:
        label += f" {ref['n']}"
        if isinstance(ref.get("sz"), int):
            label += f", {human_size(ref['sz'])}"
        # What `elink download` needs: the message id (history shows #seq).
        label += f"; id {message.msg_id}"
    label += "]"
    return f"{label} {message.text}" if message.text else label


def human_size(n: int) -> str:
    """``n`` bytes for people: ``512 B``, ``1.5 MB`` (powers of 1000)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
