"""History and full-text search over a user's own conversations
(docs/protocol.md §11.8), and the membership check they share with the
receipt handlers."""

from __future__ import annotations

from elink_protocol import Packet
from elink_protocol.app import AppErrorCode, History, Search
from elink_server.peer import Handler, Peer
from elink_server.storage import (
    ConversationKind,
    ConversationRecord,
    direct_conversation_id,
    parse_conversation_id,
)

from .context import DeviceSession, ServiceContext
from .delivery import message_view
from .routing import Refused, route

#: Most messages the store returns per history or search call.
STORE_PAGE_LIMIT = 500


async def member_conversation(
    ctx: ServiceContext, user: str, conversation: str
) -> ConversationRecord | None:
    """The conversation if ``user`` may read it, or None for a direct
    conversation of ``user`` that has no message yet.  Refuses conversations
    of others (PERMISSION_DENIED) and unknown users or groups (NOT_FOUND)."""
    kind, members = parse_conversation_id(conversation)
    if kind is ConversationKind.DIRECT and user not in members:
        raise Refused(AppErrorCode.PERMISSION_DENIED, "not your conversation")
    record = await ctx.store.get_conversation(conversation)
    if record is None:
        if kind is ConversationKind.GROUP:
            raise Refused(AppErrorCode.NOT_FOUND, f"no group {conversation!r}")
        for member in members:
            if await ctx.store.get_user(member) is None:
                raise Refused(AppErrorCode.NOT_FOUND, f"no user {member!r}")
        return None
    if user not in record.members:
        raise Refused(AppErrorCode.PERMISSION_DENIED, "not a member of the conversation")
    return record


def install(ctx: ServiceContext, handlers: dict[type[Packet], Handler]) -> None:
    """Serve History and Search."""

    async def history(peer: Peer, session: DeviceSession, request: History) -> None:
        user = session.user
        conversation = request.conversation or direct_conversation_id(user, request.with_user)
        record = await member_conversation(ctx, user, conversation)
        before = request.before_seq
        if record is None or (before is not None and before <= 1):
            await peer.send(request.page((), more=False))
            return
        if before is not None:
            before = min(before, record.last_seq + 1)
        page = await ctx.store.history(
            conversation, before_seq=before, limit=min(request.limit, STORE_PAGE_LIMIT)
        )
        # Sequence numbers start at 1 without gaps: older messages exist
        # exactly when the oldest one returned is not number 1.
        more = bool(page) and page[-1].seq > 1
        await peer.send(request.page([message_view(m) for m in page], more=more))

    async def search(peer: Peer, session: DeviceSession, request: Search) -> None:
        user = session.user
        conversation = request.conversation or None
        if conversation is not None and await member_conversation(ctx, user, conversation) is None:
            await peer.send(request.result((), more=False))
            return
        # One more than wanted tells whether there are more.
        found = await ctx.store.search(
            user,
            request.query,
            limit=min(request.limit + 1, STORE_PAGE_LIMIT),
            conversation=conversation,
        )
        more = len(found) > request.limit
        await peer.send(request.result([message_view(m) for m in found], more=more))

    route(ctx, handlers, History, history)
    route(ctx, handlers, Search, search)
