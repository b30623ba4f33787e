"""Typed results of the client's requests."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import anyio
import attrs

from elink_protocol.app import (
    DeliveryReceipt,
    DeliveryState,
    DevicePresence,
    Message,
    PresenceStatus,
    ReadReceipt,
)

from .errors import DeadlineExceeded

__all__ = [
    "DeliveryReport",
    "HistoryPage",
    "Presence",
    "SearchResults",
    "SentMessage",
]

_RANK = {DeliveryState.SENT: 0, DeliveryState.DELIVERED: 1, DeliveryState.READ: 2}


@attrs.frozen(kw_only=True)
class DeliveryReport:
    """Where one of the user's messages stands (QueryStatus, §11.6.4)."""

    msg_id: int
    state: DeliveryState
    """``sent``, ``delivered`` (a recipient device has it) or ``read``."""
    sent_at_ms: int
    deliveries: tuple[DeliveryReceipt, ...]
    """Oldest first; may be a prefix of all of them (see ``delivered_count``)."""
    reads: tuple[ReadReceipt, ...]
    delivered_count: int
    read_count: int


class SentMessage:
    """A message the server has stored durably (the answer to a send).

    ``status`` follows the receipts the client hears about while it is
    connected; :meth:`wait_delivered` and :meth:`wait_read` wait for them, and
    :meth:`refresh` asks the server for the full record."""

    def __init__(
        self,
        *,
        msg_id: int,
        conversation: str,
        seq: int,
        created_at_ms: int,
        client_msg_id: str,
        duplicate: bool,
        recipient_backlog_full: bool,
        query: Callable[[int], Awaitable[DeliveryReport]],
    ) -> None:
        self.msg_id = msg_id
        """The server's id for the message."""
        self.conversation = conversation
        self.seq = seq
        """Its position in the conversation."""
        self.created_at_ms = created_at_ms
        self.client_msg_id = client_msg_id
        """The idempotency key it was sent with."""
        self.duplicate = duplicate
        """The server had stored it before (this send was a retry)."""
        self.recipient_backlog_full = recipient_backlog_full
        """A recipient is far behind (its backlog passed the server's cap);
        the message is stored and will be delivered all the same."""
        self._status = DeliveryState.SENT
        self._query = query
        self._changed = anyio.Event()
        self._waiters = 0

    def __repr__(self) -> str:
        return (
            f"SentMessage(msg_id={self.msg_id}, conversation={self.conversation!r}, "
            f"seq={self.seq}, status={self._status.value!r})"
        )

    @property
    def status(self) -> DeliveryState:
        """``sent``, ``delivered`` or ``read``, as far as this client knows."""
        return self._status

    def _advance(self, state: DeliveryState) -> None:
        """Record a receipt; statuses only move forward."""
        if _RANK[state] > _RANK[self._status]:
            self._status = state
            self._changed.set()
            self._changed = anyio.Event()

    async def refresh(self) -> DeliveryReport:
        """Ask the server for the message's receipts (and update ``status``)."""
        report = await self._query(self.msg_id)
        self._advance(report.state)
        return report

    async def wait_delivered(self, *, timeout: float | None = None) -> None:
        """Wait until a device of the recipient has the message.

        Raises :class:`~elink_sdk.DeadlineExceeded` after ``timeout`` seconds."""
        await self._wait(DeliveryState.DELIVERED, timeout)

    async def wait_read(self, *, timeout: float | None = None) -> None:
        """Wait until the recipient has read the message."""
        await self._wait(DeliveryState.READ, timeout)

    def _has_waiters(self) -> bool:
        return self._waiters > 0

    async def _wait(self, state: DeliveryState, timeout: float | None) -> None:
        self._waiters += 1
        try:
            with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
                # A receipt may have arrived before this object existed (answers
                # and pushes are not ordered, §11.1.4): ask once, then listen.
                if _RANK[self._status] < _RANK[state]:
                    await self.refresh()
                while _RANK[self._status] < _RANK[state]:
                    await self._changed.wait()
        finally:
            self._waiters -= 1
        if scope.cancelled_caught:
            raise DeadlineExceeded(
                f"message {self.msg_id} not {state.value} within {timeout} s "
                f"(status: {self._status.value})"
            )


@attrs.frozen(kw_only=True)
class HistoryPage:
    """Messages of one conversation, newest first (§11.8.2)."""

    messages: tuple[Message, ...]
    has_more: bool
    """Older messages exist: ask again with ``before=page.next_before``."""

    @property
    def next_before(self) -> int | None:
        """The ``before`` value for the next (older) page, or ``None``."""
        if not self.has_more or not self.messages:
            return None
        return self.messages[-1].seq


@attrs.frozen(kw_only=True)
class SearchResults:
    """Messages whose text contains the query, newest first (§11.8.4)."""

    messages: tuple[Message, ...]
    has_more: bool
    """There may be more matches: refine the query or raise the limit."""


@attrs.frozen(kw_only=True)
class Presence:
    """A user's presence (§11.9.7)."""

    user: str
    status: PresenceStatus
    """Aggregated over the user's devices."""
    note: str
    since_ms: int
    """When the aggregated status last changed (0 if unknown)."""
    devices: tuple[DevicePresence, ...]
    """Devices that do not appear offline, most recently active first."""
