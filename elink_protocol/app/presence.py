"""Presence and follows (docs/protocol.md §11.9).

Each device has a status; a user's *aggregated* status is the most available
one among the user's devices.  Users who follow someone are told when that
someone's presence changes, coming online included.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import ClassVar

import attrs

from elink_protocol.packets import array, boolean, register, text, uint, wire

from .base import AnsweredByOk, Push, Record, Request, Response, _tuple, fill, record_size, records
from .fields import choice, name
from .session import DeviceKind

#: Longest presence note, in UTF-8 bytes.
MAX_NOTE = 128
#: Most users one QueryPresence may name.
MAX_QUERY_USERS = 100
#: Most devices listed per user in a presence entry.
MAX_DEVICES = 8


class PresenceStatus(enum.StrEnum):
    """Presence of a device, or of a user (aggregated)."""

    ONLINE = "online"
    AWAY = "away"
    BUSY = "busy"
    OFFLINE = "offline"


#: Aggregation order (§11.9.1): a user's status is the first of these that
#: any of the user's devices has.
AGGREGATION_ORDER = (
    PresenceStatus.ONLINE,
    PresenceStatus.BUSY,
    PresenceStatus.AWAY,
    PresenceStatus.OFFLINE,
)


def aggregate(statuses: Sequence[PresenceStatus]) -> PresenceStatus:
    """A user's status from the statuses of the user's devices (§11.9.1)."""
    present = set(statuses)
    for status in AGGREGATION_ORDER:
        if status in present:
            return status
    return PresenceStatus.OFFLINE


@register
@attrs.frozen(kw_only=True)
class SetPresence(Request, AnsweredByOk):
    """Set this device's status (§11.9.2).  Answered with Ok."""

    TYPE: ClassVar[int] = 0x0300

    status: PresenceStatus = wire("s", choice(PresenceStatus))
    """The device's new status; ``offline`` while connected means invisible."""
    note: str = wire("nt", text(MAX_NOTE), default="")
    """A short free-text note shown with the status."""


@register
@attrs.frozen(kw_only=True)
class PresenceUpdate(Push):
    """A user's device changed presence (§11.9.3): sent to the user's
    followers and to the user's other devices."""

    TYPE: ClassVar[int] = 0x0301

    user: str = wire("u", name)
    """Whose presence changed."""
    device: str = wire("dv", name)
    """The device that changed."""
    device_kind: DeviceKind = wire("dk", choice(DeviceKind))
    """Its kind."""
    status: PresenceStatus = wire("s", choice(PresenceStatus))
    """The device's new status."""
    aggregated: PresenceStatus = wire("ag", choice(PresenceStatus))
    """The user's status over all devices, after the change."""
    note: str = wire("nt", text(MAX_NOTE), default="")
    """The device's note."""
    at_ms: int = wire("at", uint(64))
    """When it changed (ms since the Unix epoch)."""


@register
@attrs.frozen(kw_only=True)
class Follow(Request, AnsweredByOk):
    """Be told about ``user``'s presence from now on (§11.9.4.1).  Answered
    with Ok (also when already following)."""

    TYPE: ClassVar[int] = 0x0302

    user: str = wire("u", name)
    """The user to follow."""


@register
@attrs.frozen(kw_only=True)
class Unfollow(Request, AnsweredByOk):
    """Stop following ``user`` (§11.9.4.2).  Answered with Ok (also when not
    following)."""

    TYPE: ClassVar[int] = 0x0303

    user: str = wire("u", name)
    """The user to stop following."""


@attrs.frozen(kw_only=True)
class DevicePresence(Record):
    """One device in a presence entry."""

    device: str = wire("d", name)
    """The device id."""
    kind: DeviceKind = wire("k", choice(DeviceKind))
    """Its kind."""
    status: PresenceStatus = wire("s", choice(PresenceStatus))
    """Its status."""


@attrs.frozen(kw_only=True)
class PresenceEntry(Record):
    """One user's presence."""

    user: str = wire("u", name)
    """The user."""
    status: PresenceStatus = wire("s", choice(PresenceStatus))
    """The aggregated status."""
    note: str = wire("nt", text(MAX_NOTE), default="")
    """The note of the device that set the aggregated status."""
    since_ms: int = wire("at", uint(64), default=0)
    """When the aggregated status last changed (ms since the Unix epoch); 0
    if unknown."""
    devices: tuple[DevicePresence, ...] = wire(
        "dv", records(DevicePresence, MAX_DEVICES), default=(), converter=_tuple
    )
    """Devices not offline, most recently active first, at most 8."""


@register
@attrs.frozen(kw_only=True)
class QueryPresence(Request):
    """Ask for the presence of some users (§11.9.5)."""

    TYPE: ClassVar[int] = 0x0304

    users: tuple[str, ...] = wire("us", array(name, MAX_QUERY_USERS), converter=_tuple)
    """The users, at most 100 (and the payload at most 4096 bytes)."""

    def result(self, entries: Sequence[PresenceEntry]) -> PresenceResult:
        """The answer: the leading ``entries`` that fit in one payload;
        ``more`` tells the client to ask again for the users left out."""

        def make(page: tuple[PresenceEntry, ...]) -> PresenceResult:
            return PresenceResult(rid=self.rid, entries=page, more=True)

        page = fill(make, entries, item_size=record_size)
        return PresenceResult(rid=self.rid, entries=page, more=len(page) < len(entries))


@register
@attrs.frozen(kw_only=True)
class PresenceResult(Response):
    """Presence of the users asked for, in the order asked (§11.9.6)."""

    TYPE: ClassVar[int] = 0x0305

    entries: tuple[PresenceEntry, ...] = wire(
        "es", records(PresenceEntry, MAX_QUERY_USERS), converter=_tuple
    )
    """One entry per user asked for, in the order asked, up to those that fit."""
    more: bool = wire("mo", boolean, default=False)
    """Entries were left out to fit the payload: ask again for the rest."""


def query_users(users: Sequence[str], rid: int) -> tuple[QueryPresence, tuple[str, ...]]:
    """Split helper for clients: the first :class:`QueryPresence` of ``users``
    that fits in one payload, and the users left for the next one."""

    def make(page: tuple[str, ...]) -> QueryPresence:
        return QueryPresence(rid=rid, users=page)

    page = fill(make, users[:MAX_QUERY_USERS], item_size=_str_size)
    return make(page), tuple(users[len(page) :])


def _str_size(value: str) -> int:
    """Encoded size of a msgpack str."""
    n = len(value.encode())
    return n + (1 if n <= 31 else 2 if n <= 0xFF else 3 if n <= 0xFFFF else 5)
