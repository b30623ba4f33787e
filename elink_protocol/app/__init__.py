"""The e-Link application protocol (docs/protocol.md §11): login, messages,
multi-device sync, receipts, recall, history, search and presence.

Every class here is a packet type registered in
:data:`elink_protocol.packets.PACKET_TYPES` (types ``0x0100-0x03FF``), sent
with :meth:`Connection.queue` and received from :meth:`Connection.next_event`
like any other packet.  Clients send *requests* (each with a ``rid``); the
server answers each with its response, :class:`Ok` or :class:`RequestFailed`,
and sends *pushes* of its own.  Reply helpers build answers from requests::

    answer = request.failed(AppErrorCode.NOT_FOUND, "no such user")
    answer = send_message.accepted(msg_id=..., conversation=..., seq=..., created_at_ms=...)

A host SHOULD call :func:`check_sender` on every application packet it
receives, so that a peer sending the other side's packets is rejected.
"""

from __future__ import annotations

from .base import (
    APP_TYPES_FIRST,
    APP_TYPES_LAST,
    AppPacket,
    Ok,
    Push,
    Record,
    Request,
    RequestFailed,
    Response,
    check_sender,
)
from .content import (
    FILE_KINDS,
    MAX_CONTENT_SIZE,
    MAX_TEXT,
    MessageFlags,
    MessageKind,
    TransferRef,
    check_content,
    emoji_content,
    file_content,
    text_content,
)
from .errors import AppErrorCode
from .messaging import (
    DeliveryReceipt,
    DeliveryState,
    MarkRead,
    Message,
    MessageAccepted,
    MessageStatus,
    QueryStatus,
    ReadReceipt,
    Recall,
    RecallOk,
    ReceiptKind,
    SendMessage,
    StatusUpdate,
)
from .presence import (
    DevicePresence,
    Follow,
    PresenceEntry,
    PresenceResult,
    PresenceStatus,
    PresenceUpdate,
    QueryPresence,
    SetPresence,
    Unfollow,
    aggregate,
    query_users,
)
from .query import History, HistoryPage, Search, SearchResult
from .session import DeviceKind, GoingAway, Login, LoginOk, LoginQueued, Logout
from .sync import (
    Delivered,
    EventKind,
    EventPush,
    EventsAvailable,
    MessageEvent,
    Pull,
    PullResult,
    RecallEvent,
    StatusEvent,
    SyncEvent,
    UnknownEvent,
)

__all__ = [
    "APP_TYPES_FIRST",
    "APP_TYPES_LAST",
    "FILE_KINDS",
    "MAX_CONTENT_SIZE",
    "MAX_TEXT",
    "AppErrorCode",
    "AppPacket",
    "Delivered",
    "DeliveryReceipt",
    "DeliveryState",
    "DeviceKind",
    "DevicePresence",
    "EventKind",
    "EventPush",
    "EventsAvailable",
    "Follow",
    "GoingAway",
    "History",
    "HistoryPage",
    "Login",
    "LoginOk",
    "LoginQueued",
    "Logout",
    "MarkRead",
    "Message",
    "MessageAccepted",
    "MessageEvent",
    "MessageFlags",
    "MessageKind",
    "MessageStatus",
    "Ok",
    "PresenceEntry",
    "PresenceResult",
    "PresenceStatus",
    "PresenceUpdate",
    "Pull",
    "PullResult",
    "Push",
    "QueryPresence",
    "QueryStatus",
    "ReadReceipt",
    "Recall",
    "RecallEvent",
    "RecallOk",
    "ReceiptKind",
    "Record",
    "Request",
    "RequestFailed",
    "Response",
    "Search",
    "SearchResult",
    "SendMessage",
    "SetPresence",
    "StatusEvent",
    "StatusUpdate",
    "SyncEvent",
    "TransferRef",
    "Unfollow",
    "UnknownEvent",
    "aggregate",
    "check_content",
    "check_sender",
    "emoji_content",
    "file_content",
    "query_users",
    "text_content",
]
