"""The message content model (docs/protocol.md §11.4.1-§11.4.3).

A message has a ``kind`` (an open-ended name) and a ``content`` map whose
schema depends on the kind.  Known kinds are checked against their schema;
unknown kinds are checked only for size, and are stored and relayed unchanged
so that newer clients can use kinds older servers do not know.  Content maps
are kept exactly as received (unknown keys included) and relayed verbatim:
they are plain ``dict`` objects, to be treated as read-only.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from elink_protocol.packets import blob, text, uint, wire
from elink_protocol.payload import encode_payload

from .base import Record
from .fields import nonempty_text

#: Largest encoded content map, in bytes (§11.4.2).  Chosen so that the
#: largest message, inside the largest page or push that carries one, still
#: fits a 4096-byte payload (tests/protocol/test_app_limits.py checks it).
MAX_CONTENT_SIZE = 2600
#: Largest ``text`` value of any content, in UTF-8 bytes.
MAX_TEXT = 2500
#: Largest ``emoji`` value, in UTF-8 bytes.
MAX_EMOJI = 64
#: Largest ``url`` of a link, and ``title`` of a link, in UTF-8 bytes.
MAX_URL = 2048
MAX_TITLE = 256


class MessageKind(enum.StrEnum):
    """The kinds this revision names (§11.4.1).  Any name matching the kind
    syntax is legal on the wire."""

    TEXT = "text"
    EMOJI = "emoji"
    IMAGE = "image"
    VOICE = "voice"
    VIDEO = "video"
    FILE = "file"
    FOLDER = "folder"
    LINK = "link"
    CARD = "card"
    """Reserved: defined by a later revision; any map until then."""
    SYSTEM = "system"
    """Reserved: server-generated notices; any map until then."""


#: Kinds whose content refers to heavy-bus data by a transfer reference (§9.3).
FILE_KINDS = frozenset(
    {MessageKind.IMAGE, MessageKind.VOICE, MessageKind.VIDEO, MessageKind.FILE, MessageKind.FOLDER}
)


class MessageFlags(enum.IntFlag):
    """Bits of a message's ``flags`` (u32, §11.4.3).  Both defined bits are
    reserved for features that later revisions specify; bits 2-31 are
    reserved and MUST be 0 when sent."""

    NONE = 0
    SECRET = 1 << 0
    """Secret chat: destroyed once read, never indexed, not forwardable."""
    SIGN_RECEIPT = 1 << 1
    """Sealed until the recipient signs for it."""


@attrs.frozen(kw_only=True)
class TransferRef(Record):
    """A reference to heavy-bus content (§9.3), the ``ref`` of file-like
    content."""

    id: bytes = wire("id", blob(16, 16))
    """Transfer or file id assigned by the file service."""
    size: int = wire("sz", uint(64))
    """Size in bytes."""
    sha256: bytes = wire("h", blob(32, 32))
    """SHA-256 of the whole content."""
    name: str = wire("n", nonempty_text(255))
    """File name (no path separators) or folder manifest name."""
    media_type: str = wire("mt", text(127))
    """Media type, e.g. ``image/png``."""
    token: bytes = wire("tok", blob(0, 64), default=b"")
    """Optional short-lived admission token for the heavy-bus connection."""

    def _check_untrusted(self) -> None:
        if "/" in self.name or "\\" in self.name:
            raise ValueError("a transfer name must not contain path separators")


# --- schemas of the known kinds ----------------------------------------------
# key -> (validator, required).  Every kind may also carry ``text``.

_Schema = dict[str, tuple[Any, bool]]

_text = text(MAX_TEXT)
_file: _Schema = {"ref": (TransferRef.from_wire_untrusted, True)}
_SCHEMAS: dict[str, _Schema] = {
    MessageKind.TEXT: {"text": (nonempty_text(MAX_TEXT), True)},
    MessageKind.EMOJI: {"emoji": (nonempty_text(MAX_EMOJI), True)},
    MessageKind.IMAGE: {**_file, "w": (uint(32), False), "h": (uint(32), False)},
    MessageKind.VOICE: {**_file, "dur": (uint(32), False)},
    MessageKind.VIDEO: {**_file, "dur": (uint(32), False)},
    MessageKind.FILE: _file,
    MessageKind.FOLDER: _file,
    MessageKind.LINK: {
        "url": (nonempty_text(MAX_URL), True),
        "title": (text(MAX_TITLE), False),
    },
}


def mapping(v: Any) -> dict[str, Any]:
    """Validator: a content map (any keys; checked later against its kind)."""
    if type(v) is not dict:
        raise ValueError(f"expected a map, got {type(v).__name__}")
    return v


def check_content(kind: str, content: Any) -> None:
    """Check ``content`` against ``kind`` (§11.4.2); raises :class:`ValueError`.

    Every content: a map of at most :data:`MAX_CONTENT_SIZE` encoded bytes;
    ``text``, if present, a string of at most :data:`MAX_TEXT` bytes.  Known
    kinds: their required keys present and valid.  Unknown keys are allowed."""
    if type(content) is not dict:
        raise ValueError("content must be a map")
    if len(encode_payload(content)) > MAX_CONTENT_SIZE:
        raise ValueError(f"content exceeds {MAX_CONTENT_SIZE} bytes")
    if "text" in content:
        _text(content["text"])
    for key, (check, required) in _SCHEMAS.get(kind, {}).items():
        if key in content:
            try:
                check(content[key])
            except ValueError as exc:
                raise ValueError(f"content.{key}: {exc}") from None
        elif required:
            raise ValueError(f"{kind} content lacks {key!r}")


def text_content(value: str) -> dict[str, Any]:
    """Content of a ``text`` message."""
    return {"text": value}


def emoji_content(value: str) -> dict[str, Any]:
    """Content of an ``emoji`` message: an emoji sequence or a sticker code."""
    return {"emoji": value}


def file_content(ref: TransferRef, *, caption: str = "", **extra: Any) -> dict[str, Any]:
    """Content of a file-like message (image, voice, video, file, folder)."""
    out: dict[str, Any] = {"ref": ref.to_wire(), **extra}
    if caption:
        out["text"] = caption
    return out
