"""e-Link SDK: embed an e-Link endpoint in any Python program.

::

    import elink_sdk

    async with elink_sdk.connect("127.0.0.1", 7420, user="alice", password=pw) as alice:
        sent = await alice.send_text("bob", "hello")  # returns once stored durably
        await sent.wait_delivered()
        async for event in alice.events():
            ...

Works under Trio and asyncio (through anyio).  For code that is not async,
:mod:`elink_sdk.blocking`; for integration bots, :mod:`elink_sdk.bots`; on the
command line, ``elink``.  Guide: docs/sdk.md.  The SDK never imports
:mod:`elink_server`.
"""

from __future__ import annotations

from elink_protocol.app import (
    DeliveryReceipt,
    DeliveryState,
    DeviceKind,
    DevicePresence,
    Message,
    PresenceStatus,
    ReadReceipt,
    TransferRef,
)

from ._files import TransferProgress
from .client import DEFAULT_PORT, Client, ClientStatistics, EventStream, ReconnectPolicy, connect
from .errors import (
    AuthenticationError,
    ConnectionLost,
    DeadlineExceeded,
    ElinkError,
    FileExpired,
    FileTooLarge,
    NotFound,
    PermissionDenied,
    ProtocolError,
    QuotaExceeded,
    RateLimited,
    RecallWindowExpired,
    RequestRejected,
    ServerKeyMismatch,
    ServerUnavailable,
    SessionEnded,
)
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
from .results import DeliveryReport, HistoryPage, Presence, SearchResults, SentMessage
from .trust import ServerTrust, default_known_servers_path

__all__ = [
    "DEFAULT_PORT",
    "AuthenticationError",
    "Client",
    "ClientStatistics",
    "ConnectionLost",
    "DeadlineExceeded",
    "DeliveryReceipt",
    "DeliveryReport",
    "DeliveryState",
    "DeviceKind",
    "DevicePresence",
    "Disconnected",
    "ElinkError",
    "Event",
    "EventStream",
    "FileExpired",
    "FileTooLarge",
    "HistoryPage",
    "Message",
    "MessageDelivered",
    "MessageRead",
    "MessageRecalled",
    "MessageReceived",
    "NotFound",
    "PermissionDenied",
    "Presence",
    "PresenceChanged",
    "PresenceStatus",
    "ProtocolError",
    "QuotaExceeded",
    "RateLimited",
    "ReadReceipt",
    "RecallWindowExpired",
    "ReconnectPolicy",
    "Reconnected",
    "RequestRejected",
    "SearchResults",
    "SentMessage",
    "ServerKeyMismatch",
    "ServerTrust",
    "ServerUnavailable",
    "SessionEnded",
    "TransferProgress",
    "TransferRef",
    "connect",
    "default_known_servers_path",
]
