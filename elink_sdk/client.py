"""The asynchronous e-Link client: :func:`connect` and :class:`Client`.

Theory of operation
-------------------
A :class:`Client` owns one *session* with the server (docs/protocol.md §6.5)
and keeps it alive over as many TCP connections as it takes.  A supervisor
task loops: connect, handshake (asking to resume the session when it has
one), log in unless the session was resumed, serve until the connection
ends, wait a backoff, and again.

Requests live in a table keyed by request id until their final answer
arrives.  On a resumed session the protocol library re-sends, under their
original packet ids, the requests the server had not processed, and the
server re-sends answers the client had not processed: each request is
processed once (§6.5.5).  When the server could not resume the session (it
restarted, say), the client logs in again and re-sends every request still
without an answer: they are all idempotent (a message by its client message
id, §11.1.4), so none is stored twice.  Requests made while disconnected wait
in the same table, bounded in number (``max_pending``) and in time (each
call's ``timeout``).

The event log is applied by :class:`~elink_sdk._inbox.Inbox`: pushes when
they are the next entry, pulls otherwise, and Delivered once the application
finished with an event.  Its cursor lives in the client, so
:meth:`Client.events` continues across reconnects without losing or
repeating an event.

Files and folders (:meth:`Client.send_file`, :meth:`Client.send_folder`,
:meth:`Client.download`) ask for tickets on this session and move their
bytes on heavy-bus connections of their own, one per transfer attempt, with
the same trust as the light bus: see :mod:`elink_sdk._files` and
:mod:`elink_sdk._heavy`.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import socket
import sys
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import attrs

from elink_protocol import (
    Config,
    ErrorCode,
    HandshakeComplete,
    LocalProtocolError,
    Packet,
    Role,
    UntrustedServerKey,
    udp,
)
from elink_protocol.app import (
    FOLDER_MEDIA_TYPE,
    AppErrorCode,
    Delivered,
    DeliveryState,
    DeviceKind,
    EventPush,
    EventsAvailable,
    Follow,
    GoingAway,
    History,
    Login,
    LoginOk,
    LoginQueued,
    Logout,
    MarkRead,
    Message,
    MessageAccepted,
    MessageStatus,
    Ok,
    PresenceResult,
    PresenceStatus,
    PresenceUpdate,
    Pull,
    PullResult,
    QueryPresence,
    QueryStatus,
    Recall,
    RecallOk,
    ReceiptKind,
    Request,
    RequestFailed,
    Response,
    Search,
    SearchResult,
    SendMessage,
    SetPresence,
    StatusUpdate,
    TransferRef,
    Unfollow,
    check_sender,
)
from elink_protocol.app import (
    HistoryPage as HistoryPagePacket,
)
from elink_protocol.connection import Connection, Transport
from elink_protocol.events import Event as ProtocolEvent
from elink_protocol.resumption import ResumptionState

from . import _files
from ._files import ProgressCallback
from ._inbox import Inbox
from ._link import DatagramLink, Link, StreamLink
from .errors import (
    AuthenticationError,
    ConnectionLost,
    DeadlineExceeded,
    ElinkError,
    NotFound,
    ProtocolError,
    RateLimited,
    ServerKeyMismatch,
    ServerUnavailable,
    SessionEnded,
    error_for_code,
)
from .events import (
    Disconnected,
    Event,
    MessageDelivered,
    MessageReceived,
    PresenceChanged,
    Reconnected,
)
from .results import DeliveryReport, HistoryPage, Presence, SearchResults, SentMessage
from .trust import ServerTrust

__all__ = [
    "DEFAULT_PORT",
    "Client",
    "ClientStatistics",
    "EventStream",
    "ReconnectPolicy",
    "connect",
]

#: The server's default port (elink-server's ``port`` setting).
DEFAULT_PORT = 7420

#: The transports :func:`connect` takes.
TRANSPORTS = ("tcp", "udp")

#: Over UDP the client pings at least this often (seconds), so that a NAT
#: keeps its binding (many forget one after ~30 s of silence, §6.9.6).
UDP_HEARTBEAT = 15.0

#: Most users per QueryPresence (§11.9.5).
_PRESENCE_BATCH = 100

#: Longest wait before confirming entries that carry no delivery receipt.
LAZY_CONFIRM = 0.5

#: Messages per history page when looking a message up by id.
_HISTORY_SCAN_PAGE = 200

#: How long closing waits for the last Delivered and the Logout.
_CLOSE_GRACE = 2.0

R = TypeVar("R", bound=Response)


@attrs.frozen(kw_only=True)
class ReconnectPolicy:
    """When the client reconnects after losing its connection.

    The n-th consecutive attempt waits ``min(max_delay, initial_delay *
    multiplier**n)``, shortened by a random fraction of up to ``jitter`` so
    that many clients do not come back at the same instant.  A server that
    said GoingAway is given at least the delay it asked for (§11.3.9)."""

    enabled: bool = True
    initial_delay: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the ``attempt``-th consecutive reconnect (from 0)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** min(attempt, 30))
        return base * (1.0 - self.jitter * random.random())


@attrs.frozen(kw_only=True)
class ClientStatistics:
    """A snapshot of a client's state (:meth:`Client.statistics`)."""

    connected: bool
    """Logged in on a live connection right now."""
    connections: int
    """Connections that reached a session (the first one included)."""
    resumed: int
    """Reconnections where the server kept the session."""
    pending_requests: int
    """Requests waiting for their answer (also those waiting to be sent)."""
    buffered_events: int
    """Events waiting for :meth:`Client.events`."""
    cursor: int
    """The last log entry applied."""
    confirmed_cursor: int
    """The last log entry the server knows this device has."""
    dropped_live_events: int
    """Live notices dropped because nobody read events() fast enough."""
    transport: str = "tcp"
    """``"tcp"`` or ``"udp"``."""
    key_epoch: int = 0
    """The current connection's key epoch: how many key updates (§7.7) it
    went through (0 when not connected)."""
    retransmissions: int = 0
    """Packets the current connection re-sent (UDP; 0 on TCP)."""


class EventStream:
    """The async iterator :meth:`Client.events` returns."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        event = await self._client._next_event()
        if event is None:
            raise StopAsyncIteration
        return event


class _Pending:
    """One request waiting for its final answer."""

    __slots__ = ("answer", "done", "packet", "session")

    def __init__(self, packet: Request) -> None:
        self.packet = packet
        self.done = anyio.Event()
        self.answer: Response | ElinkError | None = None
        self.session: bytes | None = None
        """The session that carries it (None: not sent yet)."""


class _Retry(Exception):
    """This connection attempt failed; try again after ``delay`` seconds at
    least (0: the policy decides)."""

    def __init__(self, reason: str, delay: float = 0.0, error: ElinkError | None = None) -> None:
        super().__init__(reason)
        self.delay = delay
        self.error = error
        """The server's refusal behind it, if there was one."""


def _default_device_id() -> str:
    """``<host>-<program>``: stable across restarts, and two programs of one
    user on one machine (a bot and a cron job) do not replace each other."""
    program = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
    raw = f"{socket.gethostname()}-{program or 'python'}"
    name = "".join(ch for ch in raw if ch.isalnum() or ch in "-_.")
    return name[:64] or "python-sdk"


def _connect_failure(exc: BaseException) -> str:
    """The real reason behind anyio's "All connection attempts failed"."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(exc) or type(exc).__name__


def _is_conversation(target: str) -> bool:
    return ":" in target  # names cannot contain ':' (§11.2.2)


class Client:
    """A logged-in e-Link endpoint.  Create it with :func:`connect`.

    Every method may be called from any task of the event loop the client
    was created in.  Methods that talk to the server wait while the client
    reconnects; ``timeout`` (seconds, default ``request_timeout``) bounds the
    wait, after which :class:`~elink_sdk.DeadlineExceeded` is raised."""

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        user: str,
        password: str,
        device_id: str | None = None,
        device_kind: DeviceKind | str = DeviceKind.BOT,
        trust: ServerTrust | None = None,
        reconnect: ReconnectPolicy | bool = True,
        connect_timeout: float = 10.0,
        request_timeout: float | None = 60.0,
        max_pending: int = 1000,
        event_buffer: int = 1000,
        config: Config | None = None,
        client_version: str = "",
        transport: str = "tcp",
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
        if isinstance(reconnect, bool):
            reconnect = ReconnectPolicy(enabled=reconnect)
        self.host = host
        self.port = port
        self.user = user
        self.device_id = device_id or _default_device_id()
        self.device_kind = DeviceKind(device_kind)
        self._password = password
        self._trust = trust or ServerTrust.from_file()
        self._policy = reconnect
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._base_config = config or Config()
        self._client_version = client_version
        self.transport = transport
        """``"tcp"`` or ``"udp"`` (§6.9)."""

        self._pending: dict[int, _Pending] = {}
        self._slots = anyio.Semaphore(max_pending)
        self._next_rid = 0
        self._inbox = Inbox(user=user, device_id=self.device_id, capacity=event_buffer)
        self._inbox_changed = anyio.Event()
        self._sync_wake = anyio.Event()
        self._tracked: weakref.WeakValueDictionary[int, SentMessage] = weakref.WeakValueDictionary()

        self._link: Link | None = None
        self._session_id: bytes | None = None
        self._resume: ResumptionState | None = None
        self._ready = False
        self._ready_changed = anyio.Event()
        self._fatal: ElinkError | None = None
        self._closing = False
        self._closed = False
        self._going_away_delay = 0.0
        self._heartbeat_hint = 0
        self._login_ok: LoginOk | None = None
        self._server_offset_ms = 0
        self._startup_deadline = math.inf
        self._server_fingerprint = ""
        self._connections = 0
        self._resumed = 0
        self._tasks: anyio.abc.TaskGroup | None = None
        """The client's own background tasks (supervisor, sync, refreshes):
        a task group of their own, so closing the client cancels them and
        never the caller's code around it."""

        # Per connection attempt:
        self._handshake: HandshakeComplete | None = None
        self._handshake_done = anyio.Event()
        self._login_rid = -1
        self._login_answer: Response | None = None
        self._login_done = anyio.Event()
        self._login_progress: Callable[[LoginQueued], None] | None = None

    # ================================================================ status

    @property
    def connected(self) -> bool:
        """Logged in on a live connection right now."""
        return self._ready

    @property
    def server_fingerprint(self) -> str:
        """``SHA256:...`` of the server key of the last handshake."""
        return self._server_fingerprint

    @property
    def recall_window(self) -> float:
        """The server's recall window in seconds (from the last login)."""
        return float(self._login_ok.recall_window_s) if self._login_ok else 0.0

    @property
    def server_time_offset_ms(self) -> int:
        """Server clock minus local clock at the last login, in milliseconds
        (0 before the first login)."""
        return self._server_offset_ms if self._login_ok else 0

    def statistics(self) -> ClientStatistics:
        """A snapshot of the client's connection, requests and event log."""
        link_stats = self._link.connection.statistics() if self._link is not None else None
        return ClientStatistics(
            connected=self._ready,
            connections=self._connections,
            resumed=self._resumed,
            pending_requests=len(self._pending),
            buffered_events=len(self._inbox),
            cursor=self._inbox.applied,
            confirmed_cursor=self._inbox.confirmed,
            dropped_live_events=self._inbox.dropped_live,
            transport=self.transport,
            key_epoch=link_stats.send_epoch if link_stats else 0,
            retransmissions=link_stats.retransmissions if link_stats else 0,
        )

    # ================================================================ messages

    async def send_text(
        self,
        to: str,
        text: str,
        *,
        client_msg_id: str | None = None,
        timeout: float | None = None,
    ) -> SentMessage:
        """Send a text message to a user (or a conversation id such as
        ``d:alice:bob``).  Returns once the server stored it durably."""
        return await self.send(
            to, "text", {"text": text}, client_msg_id=client_msg_id, timeout=timeout
        )

    async def send_emoji(
        self,
        to: str,
        emoji: str,
        *,
        client_msg_id: str | None = None,
        timeout: float | None = None,
    ) -> SentMessage:
        """Send an emoji sequence or sticker code."""
        return await self.send(
            to, "emoji", {"emoji": emoji}, client_msg_id=client_msg_id, timeout=timeout
        )

    async def send_link(
        self,
        to: str,
        url: str,
        *,
        title: str = "",
        client_msg_id: str | None = None,
        timeout: float | None = None,
    ) -> SentMessage:
        """Send a link (for example back into another business system)."""
        content: dict[str, Any] = {"url": url}
        if title:
            content["title"] = title
        return await self.send(to, "link", content, client_msg_id=client_msg_id, timeout=timeout)

    async def send(
        self,
        to: str,
        kind: str,
        content: dict[str, Any],
        *,
        flags: int = 0,
        client_msg_id: str | None = None,
        timeout: float | None = None,
    ) -> SentMessage:
        """Send a message of any kind (docs/protocol.md §11.4).

        ``client_msg_id`` is the idempotency key; a fresh one is made when it
        is not given.  Sending again with the same key never stores the
        message twice (the result then has ``duplicate`` set)."""
        cm = client_msg_id or uuid.uuid4().hex
        target = {"conversation": to} if _is_conversation(to) else {"to": to}

        def make(rid: int) -> SendMessage:
            return SendMessage(
                rid=rid, client_msg_id=cm, kind=kind, content=content, flags=flags, **target
            )

        answer = await self._call(make, MessageAccepted, timeout)
        sent = SentMessage(
            msg_id=answer.msg_id,
            conversation=answer.conversation,
            seq=answer.seq,
            created_at_ms=answer.created_at_ms,
            client_msg_id=answer.client_msg_id,
            duplicate=answer.duplicate,
            recipient_backlog_full=answer.recipient_backlog_full,
            query=self.message_status,
        )
        self._tracked[sent.msg_id] = sent
        return sent

    async def recall(self, message: int | SentMessage, *, timeout: float | None = None) -> int:
        """Recall one of the user's messages; returns when it was recalled
        (ms since the epoch).  Raises RecallWindowExpired when it is too late."""
        msg_id = message.msg_id if isinstance(message, SentMessage) else message
        answer = await self._call(lambda rid: Recall(rid=rid, msg_id=msg_id), RecallOk, timeout)
        return answer.recalled_at_ms

    async def mark_read(
        self, conversation: str, up_to_seq: int, *, timeout: float | None = None
    ) -> None:
        """Mark every message of ``conversation`` up to ``up_to_seq`` read
        (the senders get read receipts).  ``conversation`` may be a user name
        for the direct conversation with that user."""
        cv = conversation if _is_conversation(conversation) else self.direct(conversation)
        await self._call(
            lambda rid: MarkRead(rid=rid, conversation=cv, up_to_seq=up_to_seq), Ok, timeout
        )

    async def message_status(self, msg_id: int, *, timeout: float | None = None) -> DeliveryReport:
        """Receipts of one of the user's own messages."""
        answer = await self._call(
            lambda rid: QueryStatus(rid=rid, msg_id=msg_id), MessageStatus, timeout
        )
        tracked = self._tracked.get(msg_id)
        if tracked is not None:
            tracked._advance(answer.state)
        return DeliveryReport(
            msg_id=answer.msg_id,
            state=answer.state,
            sent_at_ms=answer.sent_at_ms,
            deliveries=answer.delivered,
            reads=answer.read,
            delivered_count=answer.delivered_count,
            read_count=answer.read_count,
        )

    def direct(self, peer: str) -> str:
        """The id of the direct conversation with ``peer`` (§11.2.3)."""
        a, b = sorted((self.user, peer))
        return f"d:{a}:{b}"

    # ================================================================ files and folders

    async def send_file(
        self,
        to: str,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        media_type: str | None = None,
        caption: str = "",
        kind: str | None = None,
        width: int | None = None,
        height: int | None = None,
        duration_ms: int | None = None,
        progress: ProgressCallback | None = None,
        client_msg_id: str | None = None,
        timeout: float | None = None,
    ) -> SentMessage:
        """Upload the file at ``path`` on the heavy bus, then send a message
        that refers to it (docs/protocol.md §9).

        ``kind`` is ``"file"`` (the default), ``"image"`` (with ``width``
        and ``height`` in pixels), ``"voice"`` or ``"video"`` (with
        ``duration_ms``).  ``name`` defaults to the file's name,
        ``media_type`` is guessed from its extension, ``caption`` is the
        message's searchable text.  The file is read a chunk at a time; a
        cut connection is resumed where the server's durable copy ends.
        ``progress`` is called with a :class:`TransferProgress` a few times
        per second at most; ``timeout`` bounds the whole call (default: no
        overall limit, but a transfer that makes no progress gives up)."""
        file = Path(path)
        kind = kind or "file"
        upload_as = _files.upload_name(file, name)
        mt = media_type or _files.guess_media_type(file)

        def content_for(ref: TransferRef) -> dict[str, Any]:
            return _files.file_content(
                kind, ref, caption=caption, width=width, height=height, duration_ms=duration_ms
            )

        # Checked before the upload: a message the server would refuse.
        content_for(_files.placeholder_ref(upload_as, mt))
        if not file.is_file():
            raise ValueError(f"{file} is not a file")
        deadline = _files._Deadline(timeout)
        with anyio.move_on_after(deadline.remaining()) as scope:
            size = file.stat().st_size
            reporter = _files._Reporter(progress, upload_as, size, 1, 1)
            ref = await _files.upload_file(
                self, file, name=upload_as, media_type=mt, reporter=reporter, deadline=deadline
            )
            return await self.send(
                to,
                kind,
                content_for(ref),
                client_msg_id=client_msg_id,
                timeout=deadline.request_timeout(self),
            )
        assert scope.cancelled_caught
        raise deadline.expired(f"sending {file.name}")

    async def send_folder(
        self,
        to: str,
        path: str | os.PathLike[str],
        *,
        caption: str = "",
        progress: ProgressCallback | None = None,
        client_msg_id: str | None = None,
        timeout: float | None = None,
    ) -> SentMessage:
        """Send a whole folder as one ``folder`` message (§9.9): every file
        under ``path`` is uploaded, then a manifest that lists them with
        their paths relative to the folder.  Empty folders are not sent.

        Raises :class:`ValueError` before uploading anything when the folder
        holds a symbolic link that leads out of it (or to a folder), a file
        that is not a regular file, or a path a manifest cannot carry.
        ``progress`` is called per file with ``index`` and ``count`` set;
        ``timeout`` bounds the whole call."""
        root = Path(path)
        name = _files.folder_name(root)
        _files.file_content(
            "file",
            _files.placeholder_ref(name, FOLDER_MEDIA_TYPE),
            caption=caption,
            width=None,
            height=None,
            duration_ms=None,
        )
        deadline = _files._Deadline(timeout)
        with anyio.move_on_after(deadline.remaining()) as scope:
            ref = await _files.upload_folder(
                self, root, name=name, progress=progress, deadline=deadline
            )
            content: dict[str, Any] = {"ref": ref.to_wire()}
            if caption:
                content["text"] = caption
            return await self.send(
                to,
                "folder",
                content,
                client_msg_id=client_msg_id,
                timeout=deadline.request_timeout(self),
            )
        assert scope.cancelled_caught
        raise deadline.expired(f"sending the folder {root.name}")

    async def download(
        self,
        message: Message | MessageReceived | TransferRef,
        dest: str | os.PathLike[str],
        *,
        only: Iterable[str] | None = None,
        progress: ProgressCallback | None = None,
        resume: bool = True,
        timeout: float | None = None,
    ) -> Path:
        """Download the file or folder of a message (from :meth:`events`,
        :meth:`history` or :meth:`get_message`), or one's own file by its
        :class:`~elink_protocol.app.TransferRef`; returns the path written.

        A file goes to ``dest`` itself, or into ``dest`` under its (sanitized)
        name when ``dest`` is a folder.  The bytes go to ``<target>.part``
        first: a download that was cut (in this call, or in an earlier one,
        when ``resume`` is true) continues from its size; every chunk and the
        whole file's SHA-256 are checked, then the file is renamed into
        place.  A folder's files go into the folder ``dest`` (created if
        needed) under their relative paths; ``only`` keeps the files whose
        path equals one of its entries, lies under one (a folder), or
        matches one as a glob pattern (``"*.txt"``, ``"docs/*"``).  Paths in
        a folder's manifest that could leave ``dest`` are refused
        (:class:`ProtocolError`) before anything is written.

        Raises :class:`NotFound` when the message was recalled or the file is
        not visible, :class:`FileExpired` when the server deleted it after
        its retention period."""
        ref, msg_id, kind = _files.file_ref(message)
        target = Path(dest)
        deadline = _files._Deadline(timeout)
        with anyio.move_on_after(deadline.remaining()) as scope:
            if kind == "folder":
                return await _files.download_folder(
                    self,
                    ref,
                    msg_id,
                    target,
                    only=only,
                    progress=progress,
                    resume=resume,
                    deadline=deadline,
                )
            if only is not None:
                raise ValueError("only= selects files of a folder; this is a single file")
            path = _files.download_target(target, ref)
            return await _files.download_file(
                self,
                ref.id,
                msg_id,
                path,
                expected=(ref.size, ref.sha256),
                reporter=_files._Reporter(progress, path.name, ref.size, 1, 1),
                resume=resume,
                deadline=deadline,
            )
        assert scope.cancelled_caught
        raise deadline.expired(f"downloading {ref.name}")

    async def get_message(
        self, conversation: str, msg_id: int, *, timeout: float | None = None
    ) -> Message:
        """The message ``msg_id`` of ``conversation`` (a user name for the
        direct conversation, or a conversation id), found by paging through
        its history, newest first.  Raises :class:`NotFound` when the
        conversation has no such message."""
        before: int | None = None
        while True:
            page = await self.history(
                conversation, before=before, limit=_HISTORY_SCAN_PAGE, timeout=timeout
            )
            for message in page.messages:
                if message.msg_id == msg_id:
                    return message
            before = page.next_before
            if before is None:
                raise NotFound(
                    f"no message {msg_id} with {conversation}", code=AppErrorCode.NOT_FOUND
                )

    # ================================================================ history, search

    async def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        limit: int = 50,
        timeout: float | None = None,
    ) -> HistoryPage:
        """One page of a conversation, newest first.  ``conversation`` is a
        user name (the direct conversation) or a conversation id; ``before``
        a sequence number (see :attr:`HistoryPage.next_before`)."""
        target = (
            {"conversation": conversation}
            if _is_conversation(conversation)
            else {"with_user": conversation}
        )
        answer = await self._call(
            lambda rid: History(rid=rid, before_seq=before, limit=limit, **target),
            HistoryPagePacket,
            timeout,
        )
        return HistoryPage(messages=answer.messages, has_more=answer.more)

    async def iter_history(
        self, conversation: str, *, page_size: int = 100
    ) -> AsyncIterator[Message]:
        """Every message of a conversation, newest first, page by page."""
        before: int | None = None
        while True:
            page = await self.history(conversation, before=before, limit=page_size)
            for message in page.messages:
                yield message
            before = page.next_before
            if before is None:
                return

    async def search(
        self,
        text: str,
        *,
        conversation: str | None = None,
        limit: int = 50,
        timeout: float | None = None,
    ) -> SearchResults:
        """Messages of the user's conversations whose text contains ``text``
        (case-insensitive for ASCII letters, any script), newest first."""
        cv = ""
        if conversation:
            cv = conversation if _is_conversation(conversation) else self.direct(conversation)
        answer = await self._call(
            lambda rid: Search(rid=rid, query=text, limit=limit, conversation=cv),
            SearchResult,
            timeout,
        )
        return SearchResults(messages=answer.messages, has_more=answer.more)

    # ================================================================ presence

    async def set_presence(
        self, status: PresenceStatus | str, note: str = "", *, timeout: float | None = None
    ) -> None:
        """Set this device's presence (``online``, ``away``, ``busy``, or
        ``offline`` to appear offline)."""
        value = PresenceStatus(status)
        await self._call(lambda rid: SetPresence(rid=rid, status=value, note=note), Ok, timeout)

    async def presence(self, *users: str, timeout: float | None = None) -> dict[str, Presence]:
        """The presence of ``users`` (any number), by name."""
        wanted = list(dict.fromkeys(users))
        found: dict[str, Presence] = {}
        while wanted:
            batch = tuple(wanted[:_PRESENCE_BATCH])

            def make(rid: int, batch: tuple[str, ...] = batch) -> QueryPresence:
                return QueryPresence(rid=rid, users=batch)

            answer = await self._call(make, PresenceResult, timeout)
            if not answer.entries:
                raise ProtocolError("the server answered a presence query with no entries")
            for entry in answer.entries:
                found[entry.user] = Presence(
                    user=entry.user,
                    status=entry.status,
                    note=entry.note,
                    since_ms=entry.since_ms,
                    devices=entry.devices,
                )
            wanted = [user for user in wanted if user not in found]
        return found

    async def follow(self, user: str, *, timeout: float | None = None) -> None:
        """Receive PresenceChanged events about ``user`` (stored on the server)."""
        await self._call(lambda rid: Follow(rid=rid, user=user), Ok, timeout)

    async def unfollow(self, user: str, *, timeout: float | None = None) -> None:
        """Stop receiving PresenceChanged events about ``user``."""
        await self._call(lambda rid: Unfollow(rid=rid, user=user), Ok, timeout)

    # ================================================================ events

    def events(self) -> EventStream:
        """Every event for this device, in order, across reconnects::

            async for event in client.events():
                ...

        Log events (messages, recalls, read receipts) are handed over exactly
        once per client, in log order; once handed over, the server is told
        that this device has them (for a message, that is its delivery
        receipt).  If several tasks read at once, each event goes to one of
        them.  The iteration ends when the client is closed, and raises the
        error that ended the session (for example SessionEnded).  Breaking
        out of the loop loses nothing: the next iteration continues."""
        return EventStream(self)

    async def next_event(self, *, timeout: float | None = None) -> Event:
        """The next event (see :meth:`events`).  Raises DeadlineExceeded after
        ``timeout`` seconds, ConnectionLost once the client is closed."""
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            event = await self._next_event()
            if event is None:
                raise ConnectionLost("the client is closed")
            return event
        raise DeadlineExceeded(f"no event within {timeout} s")

    async def _next_event(self) -> Event | None:
        while True:
            changed = self._inbox_changed
            event = self._inbox.take()
            self._wake_sync()
            if event is not None:
                return event
            if self._fatal is not None:
                raise self._fatal
            if self._closing:
                return None
            await changed.wait()

    # ================================================================ closing

    async def logout(self) -> None:
        """End the session for good: the device goes offline and the client
        closes.  Leaving :func:`connect`'s block does the same."""
        await self._shutdown(clean=True)

    # ================================================================ requests

    def _take_rid(self) -> int:
        while True:
            self._next_rid = (self._next_rid + 1) & 0xFFFFFFFF
            if self._next_rid not in self._pending and self._next_rid != self._login_rid:
                return self._next_rid

    async def _call(
        self,
        make: Callable[[int], Request],
        answer_type: type[R],
        timeout: float | None,
        *,
        internal: bool = False,
    ) -> R:
        """Send a request (now, or once connected) and return its answer."""
        limit = self._request_timeout if timeout is None else timeout
        with anyio.move_on_after(math.inf if limit is None else limit) as scope:
            async with contextlib.nullcontext() if internal else self._slots:
                self._check_usable(internal)
                pending = _Pending(make(self._take_rid()))
                if not internal:
                    _check_request(pending.packet)
                self._pending[pending.packet.rid] = pending
                try:
                    if self._ready:
                        self._transmit(pending)
                    await pending.done.wait()
                finally:
                    del self._pending[pending.packet.rid]
        if scope.cancelled_caught:
            what = type(make(0)).__name__
            state = "connected" if self._ready else "not connected"
            raise DeadlineExceeded(f"no answer to {what} within {limit} s ({state})")
        answer = pending.answer
        if isinstance(answer, ElinkError):
            raise answer
        if isinstance(answer, RequestFailed):
            raise error_for_code(answer.code, answer.reason, retry_after_ms=answer.retry_after_ms)
        if not isinstance(answer, answer_type):
            raise ProtocolError(
                f"the server answered {type(pending.packet).__name__} with {type(answer).__name__}",
                code=ErrorCode.UNEXPECTED_PACKET,
            )
        return answer

    def _check_usable(self, internal: bool = False) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closed or (self._closing and not internal):
            raise ConnectionLost("the client is closed")

    def _transmit(self, pending: _Pending) -> None:
        link = self._link
        if link is None or pending.session == self._session_id:
            return
        try:
            link.send(pending.packet)
        except LocalProtocolError:
            return  # the connection is going away; sent again on the next one
        pending.session = self._session_id

    def _fail_pending(self, error: ElinkError) -> None:
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.answer = error
                pending.done.set()

    # ================================================================ packets in

    def _on_event(self, event: ProtocolEvent | Packet) -> None:
        """Everything the connection produced (called from the link's reader)."""
        if isinstance(event, HandshakeComplete):
            self._handshake = event
            self._handshake_done.set()
            return
        if not isinstance(event, Packet):
            return  # KeyUpdated and the like: nothing to do
        check_sender(event, Role.CLIENT)
        if isinstance(event, Response):
            self._on_answer(event)
        elif isinstance(event, EventPush):
            if self._inbox.offer_push(event.event):
                self._wake_sync()
            self._notify_events()
        elif isinstance(event, EventsAvailable):
            self._inbox.note_head(event.latest)
            self._wake_sync()
        elif isinstance(event, StatusUpdate):
            self._on_status(event)
        elif isinstance(event, PresenceUpdate):
            self._inbox.add_live(
                PresenceChanged(
                    user=event.user,
                    device=event.device,
                    device_kind=event.device_kind,
                    status=event.status,
                    aggregated=event.aggregated,
                    note=event.note,
                    at_ms=event.at_ms,
                )
            )
            self._notify_events()
        elif isinstance(event, GoingAway):
            self._going_away_delay = event.reconnect_after_ms / 1000
        # Other packets (extensions of later revisions) are ignored (§5.3).

    def _on_answer(self, answer: Response) -> None:
        if answer.rid == self._login_rid:
            if isinstance(answer, LoginQueued):
                # A queued login is progress: give it its estimated wait.
                self._startup_deadline = max(
                    self._startup_deadline,
                    anyio.current_time() + answer.estimated_wait_ms / 1000 + self._connect_timeout,
                )
                if self._login_progress is not None:
                    self._login_progress(answer)
                return
            self._login_answer = answer
            self._login_done.set()
            return
        pending = self._pending.get(answer.rid)
        if pending is not None and not pending.done.is_set():
            pending.answer = answer
            pending.done.set()

    def _on_status(self, update: StatusUpdate) -> None:
        state = (
            DeliveryState.READ if update.status is ReceiptKind.READ else (DeliveryState.DELIVERED)
        )
        tracked = self._tracked.get(update.msg_id)
        if tracked is not None:
            tracked._advance(state)
        if update.status is ReceiptKind.DELIVERED:
            self._inbox.add_live(
                MessageDelivered(
                    conversation=update.conversation,
                    msg_id=update.msg_id,
                    recipient=update.user,
                    device=update.device,
                    at_ms=update.at_ms,
                )
            )
            self._notify_events()

    def _notify_events(self) -> None:
        self._inbox_changed.set()
        self._inbox_changed = anyio.Event()

    def _wake_sync(self) -> None:
        self._sync_wake.set()

    def _set_ready(self, ready: bool) -> None:
        self._ready = ready
        self._ready_changed.set()
        self._ready_changed = anyio.Event()

    # ================================================================ the supervisor

    async def _start(self, tasks: anyio.abc.TaskGroup) -> None:
        """Start the background tasks in ``tasks``; return once logged in (or raise)."""
        await tasks.start(self._run_background)
        while not self._ready:
            if self._fatal is not None:
                raise self._fatal
            await self._ready_changed.wait()

    async def _run_background(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as background:
            self._tasks = background
            background.start_soon(self._supervise)
            background.start_soon(self._sync_loop)
            task_status.started()

    async def _supervise(self) -> None:
        attempt = 0
        first = True
        self._startup_deadline = anyio.current_time() + self._connect_timeout
        while not self._closing:
            delay = 0.0
            reached = False
            try:
                reached = await self._connection_lifetime(first)
            except ElinkError as exc:
                self._fail(exc)
                return
            except _Retry as retry:
                delay = retry.delay
                if first and anyio.current_time() + delay > self._startup_deadline:
                    # Give up; a refusal (rate limited, busy) says more than "unavailable".
                    self._fail(retry.error or ServerUnavailable(f"could not log in: {retry}"))
                    return
            except Exception as exc:  # a bug: never hide it, never hang the caller
                error = ElinkError(f"internal error in the e-Link client: {exc!r}")
                error.__cause__ = exc
                self._fail(error)
                return
            if self._closing:
                return
            if reached:
                first = False
                attempt = 0
            if not first and not self._policy.enabled:
                self._fail(ConnectionLost("the connection was lost and reconnect is off"))
                return
            delay = max(
                delay, self._going_away_delay * (1 + random.random()), self._policy.delay(attempt)
            )
            self._going_away_delay = 0.0
            attempt += 1
            await anyio.sleep(delay)

    def _fail(self, error: ElinkError) -> None:
        """End the client for good with ``error`` (raised by every call)."""
        if self._fatal is None and not self._closing:
            self._fatal = error
        self._set_ready(False)
        self._fail_pending(error)
        self._notify_events()

    def _config(self) -> Config:
        keys = self._trust.keys_for(self.host, self.port)
        config = attrs.evolve(
            self._base_config, trusted_server_keys=keys, trust_on_first_use=keys is None
        )
        if self._heartbeat_hint and self._heartbeat_hint < config.heartbeat_interval:
            config = attrs.evolve(config, heartbeat_interval=float(self._heartbeat_hint))
        return config

    async def _open_link(self) -> Link:
        """A new connection on a new transport (handshake not started)."""
        now = anyio.current_time()
        if self.transport == "udp":
            # No handshake with the socket itself: an unreachable server
            # shows as a handshake that never completes (§6.8.2).
            socket = await anyio.create_connected_udp_socket(self.host, self.port)
            config = self._config()
            config = attrs.evolve(
                config,
                max_datagram_size=udp.DATA_FRAMES_LIMIT,
                heartbeat_interval=min(config.heartbeat_interval, UDP_HEARTBEAT),
            )
            connection = Connection(
                role=Role.CLIENT, config=config, transport=Transport.DATAGRAM, now=now
            )
            return DatagramLink(socket, connection, self._on_event, connection_id=os.urandom(8))
        with anyio.fail_after(self._connect_timeout):
            stream = await anyio.connect_tcp(self.host, self.port)
        connection = Connection(role=Role.CLIENT, config=self._config(), now=now)
        return StreamLink(stream, connection, self._on_event)

    async def _connection_lifetime(self, first: bool) -> bool:
        """One connection, from connect to its end.  Returns True when it
        reached a session (logged in or resumed)."""
        try:
            link = await self._open_link()
        except (OSError, TimeoutError) as exc:
            reason = _connect_failure(exc)
            if first:
                raise ServerUnavailable(
                    f"cannot connect to {self.host}:{self.port}: {reason}"
                ) from None
            raise _Retry(f"cannot connect: {reason}") from None
        connection = link.connection
        resume = self._resume
        if resume is not None:
            connection.request_resume(resume)
        connection.initiate(anyio.current_time())
        self._handshake = None
        self._handshake_done = anyio.Event()
        reached = False
        # Exceptions are carried out of the task group by hand, so callers
        # see them as themselves rather than wrapped in an ExceptionGroup.
        failure: Exception | None = None
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(link.run)
            link.kick()
            try:
                reached = await self._establish(link, resume)
                if reached:
                    await link.ended.wait()
            except Exception as exc:
                failure = exc
            finally:
                link.close()
                self._link = None
                self._set_ready(False)
        if failure is not None:
            if resume is not None and self._handshake is None:
                self._resume = None  # the resumption itself may be what fails
            raise failure
        self._after_link(link, connection, reached)
        return reached

    async def _establish(self, link: Link, resume: ResumptionState | None) -> bool:
        """Handshake and login (or resumption) on ``link``."""
        with anyio.move_on_after(self._connect_timeout + 1):
            await _wait_any(self._handshake_done, link.ended)
        handshake = self._handshake
        if handshake is None:
            error = link.error
            if isinstance(error, UntrustedServerKey):
                raise self._trust.mismatch(self.host, self.port, error.fingerprint)
            reason = link.closed.reason if link.closed else "handshake timed out"
            raise _Retry(f"handshake failed: {reason}")
        try:
            self._trust.accept(self.host, self.port, handshake.server_fingerprint)
        except ServerKeyMismatch:
            link.close(ErrorCode.HANDSHAKE_FAILURE, "server key not trusted")
            raise
        self._server_fingerprint = handshake.server_fingerprint
        self._link = link
        if handshake.resumed:
            self._resumed += 1
        else:
            self._resume = None
            self._session_id = handshake.session_id
            if not await self._login(link):
                return False
        self._session_id = handshake.session_id
        self._connections += 1
        if self._connections > 1:
            self._inbox.add_live(Reconnected(resumed=handshake.resumed))
            self._notify_events()
        self._set_ready(True)
        for pending in list(self._pending.values()):
            self._transmit(pending)
        self._refresh_waiting_messages()
        self._wake_sync()
        return True

    async def _login(self, link: Link) -> bool:
        self._login_rid = self._take_rid()
        self._login_answer = None
        self._login_done = anyio.Event()
        link.send(
            Login(
                rid=self._login_rid,
                user=self.user,
                password=self._password,
                device_id=self.device_id,
                device_kind=self.device_kind,
                client_version=self._client_version,
            )
        )
        await _wait_any(self._login_done, link.ended)
        answer = self._login_answer
        self._login_rid = -1
        if answer is None:
            return False  # the connection ended first
        if isinstance(answer, LoginOk):
            self._login_ok = answer
            self._server_offset_ms = answer.server_time_ms - int(_wall_ms())
            self._heartbeat_hint = answer.heartbeat_s
            self._inbox.start(answer.cursor, answer.pending)
            return True
        if isinstance(answer, RequestFailed):
            error = error_for_code(answer.code, answer.reason, retry_after_ms=answer.retry_after_ms)
            if isinstance(error, AuthenticationError):
                link.close()
                raise error
            link.close()
            delay = error.retry_after if isinstance(error, RateLimited) else 0.0
            raise _Retry(f"login refused: {error}", delay, error)
        raise ProtocolError(
            f"the server answered Login with {type(answer).__name__}",
            code=ErrorCode.UNEXPECTED_PACKET,
        )

    def _after_link(self, link: Link, connection: Connection, reached: bool) -> None:
        closed = link.closed
        assert closed is not None
        self._resume = None
        if self._closing:
            return
        code = closed.code
        if closed.by_peer and code in (
            AppErrorCode.SESSION_REPLACED,
            AppErrorCode.ACCOUNT_DISABLED,
        ):
            raise SessionEnded(f"the server ended the session: {closed.reason}", code=code)
        if reached and link.error is None:
            # Resume next time (a server that broke the protocol is not
            # trusted with its old session; a login cut short is not one).
            with contextlib.suppress(LocalProtocolError):
                self._resume = connection.resumption_state()
        if reached:
            self._inbox.add_live(Disconnected(reason=closed.reason or "connection lost"))
            self._notify_events()
        if not reached:
            raise _Retry(f"connection ended: {closed.reason}")

    def _refresh_waiting_messages(self) -> None:
        """After a reconnect, receipts may have been missed: ask again for
        the messages someone is waiting on."""
        assert self._tasks is not None
        for sent in list(self._tracked.values()):
            if sent.status is not DeliveryState.READ and sent._has_waiters():
                self._tasks.start_soon(self._refresh_quietly, sent)

    async def _refresh_quietly(self, sent: SentMessage) -> None:
        with contextlib.suppress(ElinkError):
            await sent.refresh()

    # ================================================================ sync

    async def _sync_loop(self) -> None:
        """Pull while entries wait and there is room; confirm what the
        application finished.  One Pull and one Delivered at a time.

        A confirmation that carries someone's delivery receipt goes out at
        once; one that only moves the cursor past entries nobody waits on
        (this device's own messages, skipped kinds) waits up to
        :data:`LAZY_CONFIRM` seconds so that a burst costs one Delivered
        (§11.5.6 allows a device to wait up to a second)."""
        lazy_since: float | None = None
        while True:
            wait = math.inf
            if lazy_since is not None:
                wait = max(0.0, lazy_since + LAZY_CONFIRM - anyio.current_time())
            with anyio.move_on_after(wait):
                await self._sync_wake.wait()
            self._sync_wake = anyio.Event()
            if not self._ready:
                continue
            try:
                inbox = self._inbox
                if inbox.wants_confirm:
                    now = anyio.current_time()
                    if lazy_since is None and not inbox.receipt_due:
                        lazy_since = now
                    if inbox.receipt_due or (
                        lazy_since is not None and now >= lazy_since + LAZY_CONFIRM
                    ):
                        lazy_since = None
                        await self._confirm()
                else:
                    lazy_since = None
                if inbox.wants_pull:
                    await self._pull()
            except ElinkError as exc:
                if exc.code == AppErrorCode.CURSOR_INVALID:
                    self._inbox.reset()
                    self._wake_sync()
                elif isinstance(exc, DeadlineExceeded | RateLimited):
                    self._wake_sync()
                    await anyio.sleep(getattr(exc, "retry_after", 0.0) or 0.5)
                # Fatal errors end the client; other refusals are retried
                # on the next wake.

    async def _pull(self) -> None:
        after = self._inbox.applied
        limit = self._inbox.pull_limit
        page = await self._call(
            lambda rid: Pull(rid=rid, after=after, limit=limit), PullResult, None, internal=True
        )
        self._inbox.apply_page(page)
        self._notify_events()
        if self._inbox.wants_pull:
            self._wake_sync()

    async def _confirm(self) -> None:
        cursor = self._inbox.consumed
        await self._call(lambda rid: Delivered(rid=rid, cursor=cursor), Ok, None, internal=True)
        self._inbox.confirmed_up_to(cursor)
        if self._inbox.wants_confirm:
            self._wake_sync()

    # ================================================================ shutdown

    async def _shutdown(self, *, clean: bool) -> None:
        if self._closing:
            return
        self._closing = True  # from now on the supervisor does not reconnect
        with anyio.CancelScope(shield=True):
            if clean and self._fatal is None and self._ready:
                with anyio.move_on_after(_CLOSE_GRACE), contextlib.suppress(ElinkError):
                    if self._inbox.wants_confirm:
                        await self._confirm()
                    await self._call(lambda rid: Logout(rid=rid), Ok, _CLOSE_GRACE, internal=True)
            self._closed = True
            self._resume = None
            if self._link is not None:
                self._link.close()
            self._set_ready(False)
            self._fail_pending(ConnectionLost("the client is closed"))
            self._notify_events()
            if self._tasks is not None:
                self._tasks.cancel_scope.cancel()


def _check_request(packet: Request) -> None:
    """Refuse, before anything is sent, a request the server would reject as
    malformed (which would close the connection, §11.1.5)."""
    try:
        packet.validate()
    except LocalProtocolError as exc:
        raise ValueError(f"invalid {type(packet).__name__}: {exc}") from None


def _wall_ms() -> float:
    return time.time() * 1000


async def _wait_any(*events: anyio.Event) -> None:
    """Return as soon as one of ``events`` is set."""
    if any(event.is_set() for event in events):
        return
    async with anyio.create_task_group() as tasks:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            tasks.cancel_scope.cancel()

        for event in events:
            tasks.start_soon(wait, event)


@contextlib.asynccontextmanager
async def connect(
    host: str,
    port: int = DEFAULT_PORT,
    *,
    user: str,
    password: str,
    device_id: str | None = None,
    device_kind: DeviceKind | str = DeviceKind.BOT,
    server_fingerprint: str | Iterable[str] | None = None,
    known_servers: str | None = None,
    reconnect: ReconnectPolicy | bool = True,
    connect_timeout: float = 10.0,
    request_timeout: float | None = 60.0,
    max_pending: int = 1000,
    event_buffer: int = 1000,
    config: Config | None = None,
    client_version: str = "",
    transport: str = "tcp",
) -> AsyncIterator[Client]:
    """Connect, log in, and yield a :class:`Client`; log out on exit.

    Trust: pass ``server_fingerprint`` (``SHA256:...``, printed by
    ``elink-server serve``) to pin the server's key; otherwise the key is
    checked against the known-servers file ``known_servers`` (default
    ``~/.config/elink/known_servers``), recorded there on first use, and a
    changed key raises :class:`~elink_sdk.ServerKeyMismatch`.

    ``transport="udp"`` runs the session over UDP (§6.9 of the protocol)
    instead of TCP, with the same semantics: resumption, re-login and
    exactly-once events; the server listens on the same port number.

    Raises :class:`~elink_sdk.ServerUnavailable` when the server cannot be
    reached, :class:`~elink_sdk.AuthenticationError` for a refused login.
    Works under Trio and asyncio."""
    trust = (
        ServerTrust.pin(server_fingerprint)
        if server_fingerprint is not None
        else ServerTrust.from_file(known_servers)
    )
    client = Client(
        host,
        port,
        user=user,
        password=password,
        device_id=device_id,
        device_kind=device_kind,
        trust=trust,
        reconnect=reconnect,
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
        max_pending=max_pending,
        event_buffer=event_buffer,
        config=config,
        client_version=client_version,
        transport=transport,
    )
    # The caller's exception is carried out of the task group by hand, so
    # it comes out as itself rather than inside an ExceptionGroup.
    failure: BaseException | None = None
    async with anyio.create_task_group() as tasks:
        try:
            await client._start(tasks)
        except BaseException as exc:
            failure = exc
        else:
            try:
                yield client
            except BaseException as exc:
                failure = exc
        await client._shutdown(clean=failure is None)
    if failure is not None:
        raise failure
