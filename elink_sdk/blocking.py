"""The e-Link client for code that is not async: scripts, cron jobs, threads.

::

    from elink_sdk import blocking

    with blocking.connect("127.0.0.1", 7420, user="alice", password=pw) as alice:
        sent = alice.send_text("bob", "hello")  # returns once stored durably
        sent.wait_delivered(timeout=30)
        for event in alice.events(timeout=5):  # ends after 5 s without an event
            print(event)

Theory of operation
-------------------
:func:`connect` starts an event loop (Trio, through anyio's blocking portal)
in a background thread and runs the asynchronous :class:`~elink_sdk.Client`
there.  Every method of :class:`BlockingClient` hands its call to that loop
and waits for the answer, so any number of threads may call it at once: the
calls run concurrently in the loop, each as its own task.  What a call
raises is the SDK's own error (:class:`~elink_sdk.NotFound`,
:class:`~elink_sdk.DeadlineExceeded`...), exactly as the async client raises
it.  A call interrupted in the calling thread (Ctrl-C) is cancelled in the
loop too.  Leaving the ``with`` block logs out and stops the thread; calls
made afterwards raise :class:`~elink_sdk.ConnectionLost`.

Do not call these methods from inside the loop itself (an async bot handler,
say): use the async client there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import anyio.abc
from anyio.from_thread import BlockingPortal, start_blocking_portal

from elink_protocol import Config
from elink_protocol.app import DeliveryState, DeviceKind, Message, PresenceStatus, TransferRef

from . import client as _client
from ._files import ProgressCallback
from .client import DEFAULT_PORT, Client, ClientStatistics, ReconnectPolicy
from .errors import ConnectionLost
from .events import Event, MessageReceived
from .results import DeliveryReport, HistoryPage, Presence, SearchResults, SentMessage

__all__ = ["BlockingClient", "BlockingSentMessage", "connect"]

T = TypeVar("T")

#: The name of the thread each client's event loop runs in.
THREAD_NAME = "elink-blocking-client"


class _Loop:
    """The background event loop one :class:`BlockingClient` runs in."""

    def __init__(self, portal: BlockingPortal) -> None:
        self._portal = portal
        self._thread = portal.call(threading.get_ident)

    def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call()`` in the loop and wait for its result in this thread."""
        if threading.get_ident() == self._thread:
            raise RuntimeError(
                "a blocking e-Link call from inside the client's own event loop would "
                "wait for itself forever: use the async client there"
            )
        try:
            future = self._portal.start_task_soon(call)
        except RuntimeError:  # the portal stopped (RunFinishedError is one too)
            raise ConnectionLost("the client is closed") from None
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            # The loop was torn down under the call (the client closed).
            raise ConnectionLost("the client is closed") from None
        except BaseException:
            # KeyboardInterrupt and the like arrive in this thread: stop the
            # call in the loop as well.  (A finished future ignores cancel.)
            future.cancel()
            raise


class _Leave(Exception):
    """Raised inside the session's block when the caller's block failed, so
    that the async client closes as it does for a failing block."""


class _Session:
    """The async client's ``connect()`` block, held open by a task in the
    loop until :meth:`close`."""

    def __init__(self, session: AbstractAsyncContextManager[Client], portal: BlockingPortal):
        self._session = session
        self._portal = portal
        self._leave: anyio.Event | None = None
        self._failed = False
        self._done: concurrent.futures.Future[None] | None = None

    def open(self) -> Client:
        """Connect and log in; raises what the async ``connect()`` raises."""
        self._done, client = self._portal.start_task(self._hold)
        return cast(Client, client)

    async def _hold(self, *, task_status: anyio.abc.TaskStatus[Client]) -> None:
        leave = self._leave = anyio.Event()
        with contextlib.suppress(_Leave):
            async with self._session as client:
                task_status.started(client)
                await leave.wait()
                if self._failed:
                    raise _Leave

    def _signal(self, failed: bool) -> None:
        if self._leave is not None and not self._leave.is_set():
            self._failed = failed
            self._leave.set()

    def close(self, *, failed: bool) -> None:
        """Leave the block (logging out unless ``failed``) and wait until
        the client is closed.  Any thread, any number of times."""
        with contextlib.suppress(RuntimeError):  # the portal already stopped
            self._portal.call(self._signal, failed)
        if self._done is not None:
            # A cancelled session (the loop torn down) is closed all the same.
            with contextlib.suppress(concurrent.futures.CancelledError):
                self._done.result()


class BlockingSentMessage:
    """A message the server has stored durably: the blocking twin of
    :class:`~elink_sdk.SentMessage`, returned by the send methods of
    :class:`BlockingClient`."""

    def __init__(self, sent: SentMessage, loop: _Loop) -> None:
        self._sent = sent
        self._loop = loop

    def __repr__(self) -> str:
        return repr(self._sent)

    @property
    def msg_id(self) -> int:
        """The server's id for the message."""
        return self._sent.msg_id

    @property
    def conversation(self) -> str:
        """The conversation it was sent in (``d:alice:bob``...)."""
        return self._sent.conversation

    @property
    def seq(self) -> int:
        """Its position in the conversation."""
        return self._sent.seq

    @property
    def created_at_ms(self) -> int:
        """When the server stored it (ms since the Unix epoch)."""
        return self._sent.created_at_ms

    @property
    def client_msg_id(self) -> str:
        """The idempotency key it was sent with."""
        return self._sent.client_msg_id

    @property
    def duplicate(self) -> bool:
        """The server had stored it before (this send was a retry)."""
        return self._sent.duplicate

    @property
    def recipient_backlog_full(self) -> bool:
        """A recipient is far behind; the message is stored and will be
        delivered all the same."""
        return self._sent.recipient_backlog_full

    @property
    def status(self) -> DeliveryState:
        """``sent``, ``delivered`` or ``read``, from the receipts heard so far."""
        return self._sent.status

    def refresh(self) -> DeliveryReport:
        """Ask the server for the message's receipts (and update ``status``)."""
        return self._loop.run(self._sent.refresh)

    def wait_delivered(self, *, timeout: float | None = None) -> None:
        """Wait until a device of the recipient has the message.  Raises
        :class:`~elink_sdk.DeadlineExceeded` after ``timeout`` seconds."""
        self._loop.run(partial(self._sent.wait_delivered, timeout=timeout))

    def wait_read(self, *, timeout: float | None = None) -> None:
        """Wait until the recipient has read the message.  Raises
        :class:`~elink_sdk.DeadlineExceeded` after ``timeout`` seconds."""
        self._loop.run(partial(self._sent.wait_read, timeout=timeout))


class BlockingClient:
    """A logged-in e-Link endpoint whose methods block: the same methods as
    :class:`~elink_sdk.Client`, with the same arguments, results and errors.
    Create it with :func:`connect`.  Safe to use from several threads."""

    def __init__(self, client: Client, loop: _Loop, session: _Session) -> None:
        self._client = client
        self._loop = loop
        self._session = session

    def _sent(self, call: Callable[[], Awaitable[SentMessage]]) -> BlockingSentMessage:
        return BlockingSentMessage(self._loop.run(call), self._loop)

    # ------------------------------------------------------------ status

    @property
    def user(self) -> str:
        """The user logged in."""
        return self._client.user

    @property
    def device_id(self) -> str:
        """This client's device id."""
        return self._client.device_id

    @property
    def connected(self) -> bool:
        """Logged in on a live connection right now."""
        return self._client.connected

    @property
    def server_fingerprint(self) -> str:
        """``SHA256:...`` of the server key of the last handshake."""
        return self._client.server_fingerprint

    @property
    def recall_window(self) -> float:
        """The server's recall window in seconds."""
        return self._client.recall_window

    def statistics(self) -> ClientStatistics:
        """A snapshot of the client's state."""
        return self._client.statistics()

    def direct(self, peer: str) -> str:
        """The id of the direct conversation with ``peer``."""
        return self._client.direct(peer)

    # ------------------------------------------------------------ messages

    def send_text(
        self, to: str, text: str, *, client_msg_id: str | None = None, timeout: float | None = None
    ) -> BlockingSentMessage:
        """Send a text message to a user (or a conversation id such as
        ``d:alice:bob``).  Returns once the server stored it durably."""
        return self._sent(
            partial(self._client.send_text, to, text, client_msg_id=client_msg_id, timeout=timeout)
        )

    def send_emoji(
        self,
        to: str,
        emoji: str,
        *,
        client_msg_id: str | None = None,
        timeout: float | None = None,
    ) -> BlockingSentMessage:
        """Send an emoji sequence or sticker code."""
        return self._sent(
            partial(
                self._client.send_emoji, to, emoji, client_msg_id=client_msg_id, timeout=timeout
            )
        )

    def send_link(
        self,
        to: str,
        url: str,
        *,
        title: str = "",
        client_msg_id: str | None = None,
        timeout: float | None = None,
    ) -> BlockingSentMessage:
        """Send a link."""
        return self._sent(
            partial(
                self._client.send_link,
                to,
                url,
                title=title,
                client_msg_id=client_msg_id,
                timeout=timeout,
            )
        )

    def send(
        self,
        to: str,
        kind: str,
        content: dict[str, Any],
        *,
        flags: int = 0,
        client_msg_id: str | None = None,
        timeout: float | None = None,
    ) -> BlockingSentMessage:
        """Send a message of any kind (docs/protocol.md §11.4).  Sending again
        with the same ``client_msg_id`` never stores the message twice."""
        return self._sent(
            partial(
                self._client.send,
                to,
                kind,
                content,
                flags=flags,
                client_msg_id=client_msg_id,
                timeout=timeout,
            )
        )

    def recall(
        self, message: int | SentMessage | BlockingSentMessage, *, timeout: float | None = None
    ) -> int:
        """Recall one of the user's messages; returns when it was recalled
        (ms since the epoch).  Raises RecallWindowExpired when it is too late."""
        msg_id = message if isinstance(message, int) else message.msg_id
        return self._loop.run(partial(self._client.recall, msg_id, timeout=timeout))

    def mark_read(self, conversation: str, up_to_seq: int, *, timeout: float | None = None) -> None:
        """Mark every message of ``conversation`` (or of the direct
        conversation with a user) up to ``up_to_seq`` read."""
        self._loop.run(partial(self._client.mark_read, conversation, up_to_seq, timeout=timeout))

    def message_status(self, msg_id: int, *, timeout: float | None = None) -> DeliveryReport:
        """Receipts of one of the user's own messages."""
        return self._loop.run(partial(self._client.message_status, msg_id, timeout=timeout))

    # ------------------------------------------------------------ files and folders

    def send_file(
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
    ) -> BlockingSentMessage:
        """Upload a file and send a message that refers to it (see
        :meth:`elink_sdk.Client.send_file`).  ``progress`` is called in the
        client's event-loop thread, not in the calling thread: keep it short
        and thread-safe."""
        return self._sent(
            partial(
                self._client.send_file,
                to,
                path,
                name=name,
                media_type=media_type,
                caption=caption,
                kind=kind,
                width=width,
                height=height,
                duration_ms=duration_ms,
                progress=progress,
                client_msg_id=client_msg_id,
                timeout=timeout,
            )
        )

    def send_folder(
        self,
        to: str,
        path: str | os.PathLike[str],
        *,
        caption: str = "",
        progress: ProgressCallback | None = None,
        client_msg_id: str | None = None,
        timeout: float | None = None,
    ) -> BlockingSentMessage:
        """Send a whole folder as one message (see
        :meth:`elink_sdk.Client.send_folder`); ``progress`` is called in the
        event-loop thread."""
        return self._sent(
            partial(
                self._client.send_folder,
                to,
                path,
                caption=caption,
                progress=progress,
                client_msg_id=client_msg_id,
                timeout=timeout,
            )
        )

    def download(
        self,
        message: Message | MessageReceived | TransferRef,
        dest: str | os.PathLike[str],
        *,
        only: Iterable[str] | None = None,
        progress: ProgressCallback | None = None,
        resume: bool = True,
        timeout: float | None = None,
    ) -> Path:
        """Download a message's file or folder (see
        :meth:`elink_sdk.Client.download`); returns the path written.
        ``progress`` is called in the event-loop thread."""
        return self._loop.run(
            partial(
                self._client.download,
                message,
                dest,
                only=None if only is None else list(only),
                progress=progress,
                resume=resume,
                timeout=timeout,
            )
        )

    def get_message(
        self, conversation: str, msg_id: int, *, timeout: float | None = None
    ) -> Message:
        """The message ``msg_id`` of ``conversation``, looked up in its history."""
        return self._loop.run(
            partial(self._client.get_message, conversation, msg_id, timeout=timeout)
        )

    # ------------------------------------------------------------ history, search

    def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        limit: int = 50,
        timeout: float | None = None,
    ) -> HistoryPage:
        """One page of a conversation (a user name or a conversation id),
        newest first."""
        return self._loop.run(
            partial(self._client.history, conversation, before=before, limit=limit, timeout=timeout)
        )

    def iter_history(self, conversation: str, *, page_size: int = 100) -> Iterator[Message]:
        """Every message of a conversation, newest first, fetched page by page."""
        before: int | None = None
        while True:
            page = self.history(conversation, before=before, limit=page_size)
            yield from page.messages
            before = page.next_before
            if before is None:
                return

    def search(
        self,
        text: str,
        *,
        conversation: str | None = None,
        limit: int = 50,
        timeout: float | None = None,
    ) -> SearchResults:
        """Messages of the user's conversations whose text contains ``text``,
        newest first."""
        return self._loop.run(
            partial(
                self._client.search, text, conversation=conversation, limit=limit, timeout=timeout
            )
        )

    # ------------------------------------------------------------ presence

    def set_presence(
        self, status: PresenceStatus | str, note: str = "", *, timeout: float | None = None
    ) -> None:
        """Set this device's presence (``online``, ``away``, ``busy`` or
        ``offline``)."""
        self._loop.run(partial(self._client.set_presence, status, note, timeout=timeout))

    def presence(self, *users: str, timeout: float | None = None) -> dict[str, Presence]:
        """The presence of ``users``, by name."""
        return self._loop.run(partial(self._client.presence, *users, timeout=timeout))

    def follow(self, user: str, *, timeout: float | None = None) -> None:
        """Receive PresenceChanged events about ``user``."""
        self._loop.run(partial(self._client.follow, user, timeout=timeout))

    def unfollow(self, user: str, *, timeout: float | None = None) -> None:
        """Stop receiving PresenceChanged events about ``user``."""
        self._loop.run(partial(self._client.unfollow, user, timeout=timeout))

    # ------------------------------------------------------------ events

    def next_event(self, *, timeout: float | None = None) -> Event:
        """The next event.  Raises :class:`~elink_sdk.DeadlineExceeded` after
        ``timeout`` seconds, :class:`~elink_sdk.ConnectionLost` once the
        client is closed."""
        return self._loop.run(partial(self._client.next_event, timeout=timeout))

    def events(self, *, timeout: float | None = None) -> Iterator[Event]:
        """Every event for this device, in order, across reconnects (see
        :meth:`elink_sdk.Client.events`)::

            for event in client.events(timeout=60):
                ...

        With ``timeout``, the iteration ends once no event arrived for that
        many seconds; without, it ends only when the client is closed.  It
        raises the error that ended the session, if one did."""
        while True:
            event = self._loop.run(partial(self._next_or_none, timeout))
            if event is None:
                return
            yield event

    async def _next_or_none(self, timeout: float | None) -> Event | None:
        """The next event; None when the client closed or ``timeout`` passed."""
        stream = self._client.events()
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            try:
                return await stream.__anext__()
            except StopAsyncIteration:
                return None
        return None

    # ------------------------------------------------------------ closing

    def logout(self) -> None:
        """End the session for good: the device goes offline and the client
        closes.  Leaving :func:`connect`'s block does the same."""
        self._session.close(failed=False)


@contextlib.contextmanager
def connect(
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
) -> Iterator[BlockingClient]:
    """Connect, log in, and yield a :class:`BlockingClient`; log out on exit.

    The arguments are those of :func:`elink_sdk.connect` (trust: pin
    ``server_fingerprint``, or use the known-servers file).  Raises
    :class:`~elink_sdk.ServerUnavailable` when the server cannot be reached,
    :class:`~elink_sdk.AuthenticationError` for a refused login,
    :class:`~elink_sdk.ServerKeyMismatch` for a key that is not trusted.

    When the block raises, the client closes without logging out, as the
    async client does (events handed over are not confirmed)."""
    session = _client.connect(
        host,
        port,
        user=user,
        password=password,
        device_id=device_id,
        device_kind=device_kind,
        server_fingerprint=server_fingerprint,
        known_servers=known_servers,
        reconnect=reconnect,
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
        max_pending=max_pending,
        event_buffer=event_buffer,
        config=config,
        client_version=client_version,
        transport=transport,
    )
    with start_blocking_portal("trio", name=THREAD_NAME) as portal:
        held = _Session(session, portal)
        client = BlockingClient(held.open(), _Loop(portal), held)
        try:
            yield client
        except BaseException:
            held.close(failed=True)
            raise
        held.close(failed=False)
