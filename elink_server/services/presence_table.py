"""The presence of every logged-in device of a node, in memory (§11.9).

A pure table: no I/O, no clock (times come in as ``now_ms``).  One worker
keeps it itself (:class:`~.router.LocalRouter`); a node of several workers
keeps one in its hub, so that a user's aggregated status covers the devices
on every worker.  Either way the callers publish what it returns.

Each device is owned by the session that logged it in: a change that names
another session (an older session of the same device, ended or replaced on
another worker after a newer login took the device over) is ignored, so a
late "gone" of a replaced session cannot mark the device offline under its
new session.
"""

from __future__ import annotations

import attrs

from elink_protocol.app import (
    DeviceKind,
    DevicePresence,
    PresenceEntry,
    PresenceStatus,
    PresenceUpdate,
    aggregate,
)
from elink_protocol.app.presence import MAX_DEVICES


@attrs.define(kw_only=True)
class _Device:
    """The presence of one logged-in device."""

    kind: DeviceKind
    """Its kind."""
    status: PresenceStatus
    """Its status (``offline`` while connected: invisible)."""
    note: str
    """Its note."""
    changed_ms: int
    """When its status last changed."""
    session: bytes
    """The session that owns the device now."""


@attrs.define
class _User:
    """The presence of one user with at least one logged-in device."""

    devices: dict[str, _Device] = attrs.Factory(dict)
    """By device id."""
    since_ms: int = 0
    """When the aggregated status last changed."""

    def aggregated(self) -> PresenceStatus:
        return aggregate([d.status for d in self.devices.values()])


class PresenceTable:
    """Device presence by user (see the module docstring)."""

    def __init__(self) -> None:
        self._users: dict[str, _User] = {}

    def __len__(self) -> int:
        """Users with at least one device in the table."""
        return len(self._users)

    def online(
        self, user: str, device: str, *, kind: DeviceKind, session: bytes, now_ms: int
    ) -> PresenceUpdate | None:
        """``session`` logged ``device`` in (taking it over from any older
        session): the device is ``online``.  Returns the update to publish."""
        return self._change(
            user,
            device,
            status=PresenceStatus.ONLINE,
            note="",
            kind=kind,
            session=session,
            now_ms=now_ms,
            present=True,
            take=True,
        )

    def change(
        self,
        user: str,
        device: str,
        *,
        kind: DeviceKind,
        session: bytes,
        status: PresenceStatus,
        note: str,
        now_ms: int,
    ) -> PresenceUpdate | None:
        """The device's session set a new status."""
        return self._change(
            user,
            device,
            status=status,
            note=note,
            kind=kind,
            session=session,
            now_ms=now_ms,
            present=True,
        )

    def gone(
        self, user: str, device: str, *, kind: DeviceKind, session: bytes, now_ms: int
    ) -> PresenceUpdate | None:
        """The device's session ended: the device is ``offline`` and forgotten."""
        return self._change(
            user,
            device,
            status=PresenceStatus.OFFLINE,
            note="",
            kind=kind,
            session=session,
            now_ms=now_ms,
            present=False,
        )

    def owner(self, user: str, device: str) -> bytes | None:
        """The session that owns ``user``'s ``device``, if it is in the table."""
        entry = self._users.get(user)
        found = entry.devices.get(device) if entry is not None else None
        return found.session if found is not None else None

    def status_of(self, user: str) -> PresenceStatus:
        """``user``'s aggregated status."""
        entry = self._users.get(user)
        return entry.aggregated() if entry is not None else PresenceStatus.OFFLINE

    def _change(
        self,
        user: str,
        device: str,
        *,
        status: PresenceStatus,
        note: str,
        kind: DeviceKind,
        session: bytes,
        now_ms: int,
        present: bool,
        take: bool = False,
    ) -> PresenceUpdate | None:
        """Apply a device's new status; the update to publish (§11.9.3)."""
        entry = self._users.get(user)
        if entry is None:
            if not present:
                return None  # never seen: nothing to tell
            entry = self._users[user] = _User(since_ms=now_ms)
        before = entry.aggregated()
        old = entry.devices.get(device)
        if old is not None and old.session != session and not take:
            return None  # a stale session: the device belongs to a newer one
        old_status = old.status if old is not None else PresenceStatus.OFFLINE
        if present:
            if old is not None and (old.status, old.note, old.kind) == (status, note, kind):
                old.session = session
                return None  # nothing changed
            entry.devices[device] = _Device(
                kind=kind, status=status, note=note, changed_ms=now_ms, session=session
            )
        else:
            entry.devices.pop(device, None)
        after = entry.aggregated()
        if after is not before:
            entry.since_ms = now_ms
        if not entry.devices:
            del self._users[user]
        if old_status is PresenceStatus.OFFLINE and status is PresenceStatus.OFFLINE:
            # An invisible device came or went: §11.9.3 lets us stay silent
            # while the aggregated status did not change, and must, or the
            # invisible device would be revealed.
            return None
        return PresenceUpdate(
            user=user,
            device=device,
            device_kind=kind,
            status=status,
            aggregated=after,
            note=note,
            at_ms=now_ms,
        )

    def entry(self, user: str) -> PresenceEntry:
        """``user``'s presence as QueryPresence returns it."""
        entry = self._users.get(user)
        if entry is None:
            return PresenceEntry(user=user, status=PresenceStatus.OFFLINE)
        status = entry.aggregated()
        visible = sorted(
            (
                (device_id, device)
                for device_id, device in entry.devices.items()
                if device.status is not PresenceStatus.OFFLINE
            ),
            key=lambda item: item[1].changed_ms,
            reverse=True,
        )
        note = next((d.note for _, d in visible if d.status is status), "")
        return PresenceEntry(
            user=user,
            status=status,
            note=note,
            since_ms=entry.since_ms,
            devices=tuple(
                DevicePresence(device=device_id, kind=device.kind, status=device.status)
                for device_id, device in visible[:MAX_DEVICES]
            ),
        )
