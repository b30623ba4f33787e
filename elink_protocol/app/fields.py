"""Validators for the values the application packets carry (docs/protocol.md
§11.2).

Like the validators of :mod:`elink_protocol.packets`, each takes a raw
msgpack value and returns the checked value or raises :class:`ValueError`,
which the packet parser turns into ``PAYLOAD_INVALID``.  They run on peer
input only; nothing here is called when a packet is built locally.
"""

from __future__ import annotations

import enum
import re
from typing import Any, TypeVar

from elink_protocol.packets import Check

#: Longest user name, device id or group id, in characters (§11.2.2).  The
#: same rule as the server's storage, so every stored name can be spoken.
MAX_NAME_CHARS = 64
#: Longest conversation id in characters: ``d:`` + name + ``:`` + name.
MAX_CONVERSATION_CHARS = 2 + MAX_NAME_CHARS + 1 + MAX_NAME_CHARS
#: Longest client message id (§11.2.4), ASCII only so characters are bytes.
MAX_CLIENT_MSG_ID = 64
#: Longest message kind name (§11.4.1).
MAX_KIND = 32
#: Longest human-readable reason in RequestFailed and GoingAway.
MAX_REASON = 256

_CLIENT_MSG_ID = re.compile(r"[A-Za-z0-9._~-]{1,64}")
_KIND = re.compile(r"[a-z][a-z0-9_.-]{0,31}")

E = TypeVar("E", bound=enum.Enum)


def name(v: Any) -> str:
    """A user name, device id or group id: 1-64 printable characters, none of
    them whitespace or ``:`` (any script is allowed)."""
    if (
        type(v) is not str
        or not 0 < len(v) <= MAX_NAME_CHARS
        or not v.isprintable()
        or ":" in v
        or any(c.isspace() for c in v)
    ):
        raise ValueError(f"invalid name {v!r:.80}")
    return v


def device_or_empty(v: Any) -> str:
    """A device id, or the empty string where no device applies."""
    return v if v == "" and type(v) is str else name(v)


def conversation_id(v: Any) -> str:
    """``d:<a>:<b>`` with ``a <= b`` (code-point order; ``a == b`` is a user's
    own file assistant) or ``g:<group id>``."""
    if type(v) is str:
        prefix, sep, rest = v.partition(":")
        if sep and prefix == "g":
            name(rest)
            return v
        if sep and prefix == "d":
            a, sep, b = rest.partition(":")
            if sep and name(a) <= name(b):
                return v
    raise ValueError(f"invalid conversation id {v!r:.80}")


def client_msg_id(v: Any) -> str:
    """1-64 characters from ``A-Z a-z 0-9 . _ ~ -`` (a UUID, a ULID, a counter)."""
    if type(v) is not str or not _CLIENT_MSG_ID.fullmatch(v):
        raise ValueError(f"invalid client message id {v!r:.80}")
    return v


def kind(v: Any) -> str:
    """A message kind: a lowercase ASCII letter, then up to 31 of ``a-z 0-9 _ . -``."""
    if type(v) is not str or not _KIND.fullmatch(v):
        raise ValueError(f"invalid kind {v!r:.40}")
    return v


def choice(enum_cls: type[E]) -> Check:
    """One of the string values of a :class:`enum.StrEnum`."""
    values = {member.value: member for member in enum_cls}

    def check(v: Any) -> E:
        if type(v) is not str or v not in values:
            raise ValueError(f"expected one of {sorted(values)}, got {v!r:.40}")
        return values[v]

    return check


def nonempty_text(max_len: int) -> Check:
    """A string of 1 to ``max_len`` UTF-8 bytes."""

    def check(v: Any) -> str:
        if type(v) is not str or not v or len(v.encode()) > max_len:
            raise ValueError(f"expected a non-empty string of at most {max_len} bytes")
        return v

    return check


def uint_range(low: int, high: int) -> Check:
    """An integer in ``low..high`` (inclusive)."""

    def check(v: Any) -> int:
        if type(v) is not int or not low <= v <= high:
            raise ValueError(f"expected an integer in {low}..{high}, got {v!r:.40}")
        return v

    return check
