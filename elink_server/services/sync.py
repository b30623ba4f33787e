"""Multi-device pull sync and delivery receipts (docs/protocol.md §11.5).

A device pulls its user's event log after its cursor (Pull) and confirms
what it applied (Delivered).  Delivered is also the delivery receipt: every
message of another user (or of the user's own file assistant, sent from
another device) in the newly confirmed range is recorded as delivered to the
device, and the sender's online devices get a StatusUpdate.  The receipts are
written before the cursor moves, so a crash in between only repeats them
(first receipt wins) and never loses one.
"""

from __future__ import annotations

import functools

from elink_protocol import Packet
from elink_protocol.app import AppErrorCode, Delivered, Pull, ReceiptKind, StatusUpdate
from elink_server.peer import Handler, Peer
from elink_server.storage import (
    EventKind,
    InvalidArgument,
    MessageRecord,
    UnknownDevice,
    direct_conversation_id,
)

from .context import DeviceSession, ServiceContext
from .delivery import sync_event
from .routing import Refused, gather, route

#: Log entries read per page while recording delivery receipts.
DELIVERED_PAGE = 1000


def _cursor_invalid(cursor: int) -> Refused:
    return Refused(
        AppErrorCode.CURSOR_INVALID, f"cursor {cursor} is beyond the log; resynchronise from 0"
    )


class SyncService:
    """Pull and Delivered; one instance per server."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def install(self, handlers: dict[type[Packet], Handler]) -> None:
        route(self.ctx, handlers, Pull, self.pull)
        route(self.ctx, handlers, Delivered, self.delivered)

    async def pull(self, peer: Peer, session: DeviceSession, request: Pull) -> None:
        try:
            page = await self.ctx.store.events_since(
                session.user, request.after, limit=request.limit
            )
        except InvalidArgument:
            raise _cursor_invalid(request.after) from None
        await peer.send(request.result([sync_event(e) for e in page.events], head=page.head))

    async def delivered(self, peer: Peer, session: DeviceSession, request: Delivered) -> None:
        store, user, device = self.ctx.store, session.user, session.device_id
        stored = {d.device_id: d.cursor for d in await store.list_devices(user)}
        if device not in stored:
            raise UnknownDevice(f"user {user!r} has no device {device!r}")
        target = request.cursor
        cursor = stored[device]
        now_ms = self.ctx.now_ms()
        while cursor < target:
            page = await store.events_since(user, cursor, limit=DELIVERED_PAGE)
            if target > page.head:
                raise _cursor_invalid(target)
            received = [
                e.message
                for e in page.events
                if e.user_seq <= target
                and e.kind is EventKind.MESSAGE
                and e.message is not None
                and self._is_delivery(e.message, user, device)
            ]
            mark = functools.partial(store.mark_delivered, user=user, device_id=device)
            results = await gather(
                [functools.partial(mark, m.msg_id, now=now_ms / 1000) for m in received]
            )
            for message, result in zip(received, results, strict=True):
                if result.recorded:
                    self.ctx.router.deliver_notice(
                        [message.sender],
                        StatusUpdate(
                            msg_id=message.msg_id,
                            conversation=message.conversation,
                            status=ReceiptKind.DELIVERED,
                            user=user,
                            device=device,
                            at_ms=now_ms,
                        ),
                    )
            if not page.events:
                break
            cursor = page.next_cursor
        try:
            await store.set_device_cursor(user, device, min(target, 1 << 62))
        except InvalidArgument:
            raise _cursor_invalid(target) from None
        await peer.send(request.ok())

    @staticmethod
    def _is_delivery(message: MessageRecord, user: str, device: str) -> bool:
        """Whether confirming this message is a delivery receipt (§11.5.6)."""
        if message.sender != user:
            return True
        own_notes = message.conversation == direct_conversation_id(user, user)
        return own_notes and message.sender_device != device
