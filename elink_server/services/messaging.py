"""1:1 messaging: sending, read receipts, message status and recall
(docs/protocol.md §11.4, §11.6, §11.7), and :func:`messaging_handlers`, which
also serves sync (:mod:`.sync`) and history and search (:mod:`.queries`).

Every answer that acknowledges a write is sent only after the store's await
returned, i.e. after the group commit that holds the write is on disk.  The
pushes a write causes (log entries to every online device of every member,
StatusUpdate to the sender's devices) are handed to the router
(:mod:`.router`: this worker's outboxes of :mod:`.delivery`, and the other
workers' through the node's hub) before the answer is awaited: delivering
never blocks, so neither a slow recipient nor the sender's own socket delays
the other.
"""

from __future__ import annotations

import functools

from elink_protocol import Packet
from elink_protocol.app import (
    AppErrorCode,
    DeliveryReceipt,
    DeliveryState,
    MarkRead,
    QueryStatus,
    ReadReceipt,
    Recall,
    RecallEvent,
    ReceiptKind,
    SendMessage,
    StatusEvent,
    StatusUpdate,
)
from elink_server.peer import Handler, Peer
from elink_server.storage import (
    ConversationKind,
    MessageFlags,
    MessageRecord,
    ReceiptResult,
    direct_conversation_id,
    parse_conversation_id,
)

from . import queries, sync
from .context import DeviceSession, ServiceContext, Spawn
from .delivery import message_entries, to_ms
from .queries import member_conversation
from .routing import Refused, gather, route

#: Message flags this server stores (as markers, §11.4.3); others are refused.
SUPPORTED_FLAGS = int(MessageFlags.SECRET | MessageFlags.SIGN_RECEIPT)
#: Messages read per history page while applying a MarkRead.
MARK_READ_PAGE = 500
#: Largest message id the store can hold; any larger one cannot exist.
MAX_MSG_ID = 1 << 62


def message_id(value: int) -> int:
    """A requested message id, or NOT_FOUND for one that cannot exist."""
    if not 1 <= value <= MAX_MSG_ID:
        raise Refused(AppErrorCode.NOT_FOUND, f"no message {value}")
    return value


class MessagingService:
    """The handlers of this module; one instance per server."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    # --- sending (§11.4.7) ---------------------------------------------------

    async def send_message(self, peer: Peer, session: DeviceSession, request: SendMessage) -> None:
        ctx, user = self.ctx, session.user
        if request.to:
            conversation = direct_conversation_id(user, request.to)
        else:
            conversation = request.conversation
            kind, members = parse_conversation_id(conversation)
            if kind is ConversationKind.DIRECT and user not in members:
                raise Refused(AppErrorCode.PERMISSION_DENIED, "not your conversation")
        # Every kind is served: the protocol layer checked its syntax and the
        # content's size, and kinds this server does not know are stored and
        # relayed unchanged for newer clients (§11.4.1).
        if request.flags & ~SUPPORTED_FLAGS:
            raise Refused(AppErrorCode.UNSUPPORTED_CONTENT, f"flags {request.flags:#x}")
        result = await ctx.store.append_message(
            conversation=conversation,
            sender=user,
            sender_device=session.device_id,
            client_msg_id=request.client_msg_id,
            kind=request.kind,
            content=request.content,
            now=ctx.now_ms() / 1000,
            flags=MessageFlags(request.flags),
        )
        message = result.message
        if not result.duplicate:
            # Durable now.  Deliver before answering: see the module docstring.
            ctx.counters.messages_stored += 1
            ctx.router.deliver_entries(message_entries(result.events, message))
        await peer.send(
            request.accepted(
                msg_id=message.msg_id,
                conversation=message.conversation,
                seq=message.seq,
                created_at_ms=to_ms(message.created_at),
                duplicate=result.duplicate,
                recipient_backlog_full=result.recipient_backlog_full,
            )
        )

    # --- recall (§11.7) ------------------------------------------------------

    async def recall(self, peer: Peer, session: DeviceSession, request: Recall) -> None:
        ctx = self.ctx
        result = await ctx.store.recall(
            message_id(request.msg_id),
            by_user=session.user,
            now=ctx.now_ms() / 1000,
            window_seconds=ctx.settings.recall_window,
        )
        message = result.message
        assert message.recalled_at is not None
        at_ms = to_ms(message.recalled_at)
        ctx.router.deliver_entries(
            [
                (
                    ref.user,
                    RecallEvent(
                        cursor=ref.user_seq,
                        conversation=message.conversation,
                        msg_id=message.msg_id,
                        by=session.user,
                        at_ms=at_ms,
                    ),
                )
                for ref in result.events
            ]
        )
        await peer.send(request.ok(recalled_at_ms=at_ms))

    # --- receipts (§11.6) ----------------------------------------------------

    async def mark_read(self, peer: Peer, session: DeviceSession, request: MarkRead) -> None:
        """Read receipts for every message of others up to ``sq``.

        Pages backwards from ``sq``; each page's receipts are written
        concurrently (one group commit).  A page in which some message was
        already read ends the walk: an earlier MarkRead covered everything
        below it."""
        ctx, user = self.ctx, session.user
        record = await member_conversation(ctx, user, request.conversation)
        if record is None:
            raise Refused(AppErrorCode.NOT_FOUND, "no message in this conversation yet")
        now_ms = ctx.now_ms()
        before = min(request.up_to_seq, record.last_seq) + 1
        while before > 1:
            page = await ctx.store.history(record.id, before_seq=before, limit=MARK_READ_PAGE)
            theirs = [m for m in page if m.sender != user]
            read = self.ctx.store.mark_read
            results = await gather(
                [functools.partial(read, m.msg_id, user=user, now=now_ms / 1000) for m in theirs]
            )
            for message, result in zip(theirs, results, strict=True):
                if result.recorded:
                    self._announce_read(message, result, user, now_ms)
            if not all(r.recorded for r in results) or len(page) < MARK_READ_PAGE:
                break
            before = page[-1].seq
        await peer.send(request.ok())

    def _announce_read(
        self, message: MessageRecord, result: ReceiptResult, reader: str, at_ms: int
    ) -> None:
        router = self.ctx.router
        router.deliver_entries(
            [
                (
                    ref.user,
                    StatusEvent(
                        cursor=ref.user_seq,
                        conversation=message.conversation,
                        msg_id=message.msg_id,
                        status=ReceiptKind.READ,
                        by=reader,
                        at_ms=at_ms,
                    ),
                )
                for ref in result.events
            ]
        )
        router.deliver_notice(
            [message.sender],
            StatusUpdate(
                msg_id=message.msg_id,
                conversation=message.conversation,
                status=ReceiptKind.READ,
                user=reader,
                at_ms=at_ms,
            ),
        )

    async def query_status(self, peer: Peer, session: DeviceSession, request: QueryStatus) -> None:
        store = self.ctx.store
        message = await store.get_message(message_id(request.msg_id))
        if message is None:
            raise Refused(AppErrorCode.NOT_FOUND, f"no message {request.msg_id}")
        if message.sender != session.user:
            raise Refused(AppErrorCode.PERMISSION_DENIED, "only the sender may ask")
        status = await store.message_status(message.msg_id)
        await peer.send(
            request.status(
                state=DeliveryState(status.state.value),
                sent_at_ms=to_ms(message.created_at),
                delivered=[
                    DeliveryReceipt(user=r.user, device=r.device_id, at_ms=to_ms(r.at))
                    for r in status.delivered
                ],
                read=[ReadReceipt(user=r.user, at_ms=to_ms(r.at)) for r in status.read],
            )
        )


def messaging_handlers(
    ctx: ServiceContext, *, spawn: Spawn | None = None
) -> dict[type[Packet], Handler]:
    """The handlers of messaging, sync, receipts, recall, history and search.

    ``spawn`` starts the outbox tasks (:mod:`.delivery`), e.g. a server
    nursery's ``start_soon``; by default they run as Trio system tasks, which
    end by themselves when their connection closes or stays idle.  It must be
    given before the context's router is first used."""
    if spawn is not None:
        ctx.spawn = spawn
    messaging = MessagingService(ctx)
    syncing = sync.SyncService(ctx)
    handlers: dict[type[Packet], Handler] = {}
    route(ctx, handlers, SendMessage, messaging.send_message)
    route(ctx, handlers, Recall, messaging.recall)
    route(ctx, handlers, MarkRead, messaging.mark_read)
    route(ctx, handlers, QueryStatus, messaging.query_status)
    syncing.install(handlers)
    queries.install(ctx, handlers)
    return handlers
