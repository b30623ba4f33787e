"""One generated session: a raw non-blocking socket driven by one Trio task.

Theory of operation
-------------------
A generator process holds thousands of sessions, so each costs as little as
the protocol allows: a stdlib socket (no Trio stream object), one task that
waits for it to become readable or for the protocol's next timer, and a few
slotted fields.  Writes are attempted at once (``socket.send`` on a loopback
socket with room almost always takes everything); only a short write leaves
bytes in ``outbuf`` and starts a drain task, so the open-loop rate scheduler
never blocks on a session.

Two drivers share the shape:

* :func:`run_elink` -- the real protocol: :class:`elink_protocol.Connection`
  (handshake, encryption, acknowledgements, heartbeats), Login, then
  EventPush / EventsAvailable + Pull for incoming messages, and Delivered
  confirmations of the cursor as the SDK sends them (``CONFIRM_DELAY``: each
  costs the server a durable write and the sender a receipt);
* :func:`run_plain` -- the baseline relay's HELLO / SEND / DELIVER frames.

Message texts carry ``step:seq:scheduled_time:`` and padding to 256 bytes;
the receiver (always in the same process as its sender, so one clock) takes
the latency from the *scheduled* send time, which keeps a late scheduler from
hiding latency (coordinated omission).
"""

from __future__ import annotations

import errno
import socket
import time
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from elink_protocol import NEED_DATA, Config, Connection, ConnectionClosed, HandshakeComplete, Role
from elink_protocol.app import (
    Delivered,
    DeviceKind,
    EventPush,
    EventsAvailable,
    Login,
    LoginOk,
    LoginQueued,
    MessageAccepted,
    MessageEvent,
    Pull,
    PullResult,
    RequestFailed,
    SendMessage,
)
from elink_protocol.frame import Frame, FrameBuffer

from . import relay

if TYPE_CHECKING:
    from .generator import Worker

#: Linux: let connect() choose the source port per 4-tuple (not per address).
IP_BIND_ADDRESS_NO_PORT = 24
MESSAGE_SIZE = 256
#: Like the SDK: a confirmation that carries someone's delivery receipt goes
#: out promptly (coalescing what arrives meanwhile); one that only moves the
#: cursor past this device's own messages waits up to a second.
CONFIRM_DELAY = 0.05
LAZY_CONFIRM_DELAY = 1.0
LOGIN_RID = 1


class Session:
    """One user's connection in the generator."""

    __slots__ = (
        "closed",
        "confirm_due",
        "conn",
        "cursor",
        "draining",
        "frames",
        "index",
        "logged_in",
        "login_started",
        "outbuf",
        "peer",
        "pulling",
        "rid",
        "sock",
        "src",
        "user",
    )

    def __init__(self, index: int, user: str, peer: str, src: str) -> None:
        self.index = index
        self.user = user
        self.peer = peer
        self.src = src
        self.sock: socket.socket | None = None
        self.conn: Connection | None = None
        self.frames: FrameBuffer | None = None
        self.outbuf = b""
        self.draining = False
        self.logged_in = False
        self.closed = False
        self.login_started = 0.0
        self.rid = LOGIN_RID
        self.cursor = 0
        self.confirm_due: float | None = None
        self.pulling = False


def message_text(step: int, seq: int, scheduled: float) -> str:
    head = f"{step}:{seq}:{scheduled:.6f}:"
    return head + "x" * (MESSAGE_SIZE - len(head))


# ------------------------------------------------------------------ sockets


async def open_socket(host: str, port: int, src: str) -> socket.socket:
    """A connected non-blocking TCP socket from ``src`` (any free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((src, 0))
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, errno.errorcode.get(err, str(err)))
        await trio.lowlevel.wait_writable(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, errno.errorcode.get(err, str(err)))
    except BaseException:
        close_socket(sock)
        raise
    return sock


def close_socket(sock: socket.socket) -> None:
    trio.lowlevel.notify_closing(sock)
    sock.close()


def send_now(worker: Worker, s: Session, data: bytes) -> None:
    """Write ``data`` without waiting; a remainder is drained by a task."""
    sock = s.sock
    if not data or sock is None or s.closed:
        return
    if s.outbuf:
        s.outbuf += data
        return
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        s.closed = True
        return
    if sent < len(data):
        s.outbuf = data[sent:]
        if not s.draining:
            s.draining = True
            worker.nursery.start_soon(_drain, s)


async def _drain(s: Session) -> None:
    try:
        while s.outbuf and s.sock is not None and not s.closed:
            await trio.lowlevel.wait_writable(s.sock)
            try:
                sent = s.sock.send(s.outbuf)
            except BlockingIOError:
                continue
            except OSError:
                s.closed = True
                return
            s.outbuf = s.outbuf[sent:]
    finally:
        s.draining = False


def _receive(s: Session) -> bytes | None:
    """Bytes read, ``b""`` at EOF or on a reset, None when nothing was there."""
    assert s.sock is not None
    try:
        return s.sock.recv(262144)
    except BlockingIOError:
        return None
    except OSError:
        return b""


# -------------------------------------------------------------------- e-Link


def flush(worker: Worker, s: Session) -> None:
    assert s.conn is not None
    data = s.conn.data_to_send()
    if data:
        send_now(worker, s, data)


def send_chat(worker: Worker, s: Session, text: str, key: str) -> None:
    """Queue one 256-byte text message to ``s.peer`` and send it now.
    ``key`` must be unique per sender for the run: the server treats a
    repeated ``client_msg_id`` as a retry of the same message."""
    if s.conn is not None:
        s.rid = s.rid % 0xFFFFFFF0 + 1
        s.conn.queue(
            SendMessage(
                rid=s.rid,
                client_msg_id=key,
                to=s.peer,
                kind="text",
                content={"text": text},
            )
        )
        flush(worker, s)
    else:
        send_now(worker, s, relay.encode(relay.SEND, {"to": s.peer, "t": text}))


async def run_elink(worker: Worker, s: Session) -> str | None:
    """Connect, log in and serve ``s`` until its connection ends.  Returns
    None after a login, else why the login did not happen (``refused...``
    when the server turned the connection away or the handshake timed out:
    worth a retry)."""
    s.sock = await open_socket(worker.host, worker.port, s.src)
    s.conn = conn = Connection(role=Role.CLIENT, config=worker.protocol_config)
    s.closed = False
    s.cursor = 0
    s.pulling = False
    s.confirm_due = None
    try:
        conn.initiate(trio.current_time())
        flush(worker, s)
        while True:
            deadline = conn.get_timer()
            if s.confirm_due is not None and (deadline is None or s.confirm_due < deadline):
                deadline = s.confirm_due
            readable = False
            if deadline is None:
                await trio.lowlevel.wait_readable(s.sock)
                readable = True
            else:
                with trio.move_on_at(deadline):
                    await trio.lowlevel.wait_readable(s.sock)
                    readable = True
            now = trio.current_time()
            if readable:
                data = _receive(s)
                if data is not None:
                    conn.receive_data(data, now)
            if deadline is not None and now >= deadline:
                conn.handle_timer(now)
                if s.confirm_due is not None and now >= s.confirm_due and s.logged_in:
                    s.confirm_due = None
                    s.rid = s.rid % 0xFFFFFFF0 + 1
                    conn.queue(Delivered(rid=s.rid, cursor=s.cursor))
                    worker.confirms += 1
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, ConnectionClosed):
                    flush(worker, s)
                    return _closed(worker, s, event)
                _on_elink_event(worker, s, event)
                if s.closed and not s.logged_in:
                    return worker.last_login_failure.get(s.index, "login failed")
            flush(worker, s)
            if s.closed:
                return None if s.logged_in else "refused: connection lost"
    finally:
        s.closed = True
        close_socket(s.sock)


def _closed(worker: Worker, s: Session, event: ConnectionClosed) -> str | None:
    s.closed = True
    if s.logged_in:
        worker.dropped += 1
        worker.count_reason(f"closed after login: {_code_name(event.code)}")
        return None
    who = "by the server" if event.by_peer else "locally"
    if event.code in worker.retry_codes or not event.graceful:
        # Turned away (busy, no handshake slot in time), the handshake timed
        # out, or the connection was cut: a client tries again later.
        return f"refused {who}: {_code_name(event.code)} {event.reason}"
    return f"closed before login {who}: {_code_name(event.code)} {event.reason}"


def _code_name(code: int) -> str:
    from elink_protocol import ErrorCode

    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


def _on_elink_event(worker: Worker, s: Session, event: Any) -> None:
    conn = s.conn
    assert conn is not None
    if isinstance(event, EventPush):
        worker.pushes += 1
        _on_sync_event(worker, s, event.event)
    elif isinstance(event, MessageAccepted):
        worker.accepted += 1
    elif isinstance(event, PullResult):
        worker.pulls += 1
        for item in event.events:
            _on_sync_event(worker, s, item)
        s.pulling = False
        s.cursor = max(s.cursor, event.next_cursor)
        if event.more:
            _pull(s)
    elif isinstance(event, EventsAvailable):
        if event.latest > s.cursor and not s.pulling:
            _pull(s)
    elif isinstance(event, HandshakeComplete):
        conn.queue(
            Login(
                rid=LOGIN_RID,
                user=s.user,
                password=worker.password,
                device_id="bench",
                device_kind=DeviceKind.PC,
                client_version="elink-bench",
            )
        )
    elif isinstance(event, LoginOk):
        s.logged_in = True
        s.cursor = event.cursor
        worker.on_login_ok(s, time.perf_counter() - s.login_started)
    elif isinstance(event, LoginQueued):
        worker.longest_queue = max(worker.longest_queue, event.position + 1)
    elif isinstance(event, RequestFailed):
        error = event.error
        name = error.name if error is not None else str(event.code)
        if event.rid == LOGIN_RID and not s.logged_in:
            worker.last_login_failure[s.index] = f"login refused: {name} {event.reason}"
            s.closed = True
        else:
            worker.count_reason(f"request failed: {name}")


def _pull(s: Session) -> None:
    assert s.conn is not None
    s.pulling = True
    s.rid = s.rid % 0xFFFFFFF0 + 1
    s.conn.queue(Pull(rid=s.rid, after=s.cursor, limit=100))


def _on_sync_event(worker: Worker, s: Session, event: Any) -> None:
    if event.cursor <= s.cursor:
        return  # already applied (a push and a pull may overlap)
    s.cursor = event.cursor
    now = trio.current_time()
    if isinstance(event, MessageEvent) and event.message.sender != s.user:
        if s.confirm_due is None or s.confirm_due > now + CONFIRM_DELAY:
            s.confirm_due = now + CONFIRM_DELAY
        text = event.message.text
        if text is not None:
            worker.on_message(text, event.cursor)
    elif s.confirm_due is None:
        s.confirm_due = now + LAZY_CONFIRM_DELAY


# --------------------------------------------------------------------- plain


async def run_plain(worker: Worker, s: Session) -> str | None:
    """The baseline relay's session: HELLO, then DELIVER frames."""
    s.sock = await open_socket(worker.host, worker.port, s.src)
    s.frames = frames = FrameBuffer(max_buffer=1 << 22)
    s.closed = False
    try:
        send_now(worker, s, relay.encode(relay.HELLO, {"u": s.user}))
        while True:
            await trio.lowlevel.wait_readable(s.sock)
            data = _receive(s)
            if data is None:
                continue
            if not data:
                if s.logged_in:
                    worker.dropped += 1
                    worker.count_reason("closed after login")
                    return None
                return "refused: connection closed before login"
            frames.feed(data)
            frame: Frame | None
            while (frame := frames.next_frame_untrusted()) is not None:
                if frame.type == relay.DELIVER:
                    worker.on_message(msgpack.unpackb(frame.payload)["t"], None)
                elif frame.type == relay.WELCOME and not s.logged_in:
                    s.logged_in = True
                    worker.on_login_ok(s, time.perf_counter() - s.login_started)
    finally:
        s.closed = True
        close_socket(s.sock)


def elink_config(pin: frozenset[str], heartbeat: float | None = None) -> Config:
    """The generator's protocol settings: the library's defaults, or a
    heartbeat of ``heartbeat`` seconds (idle timeout three times that)."""
    if heartbeat is None:
        return Config(trusted_server_keys=pin)
    return Config(trusted_server_keys=pin, heartbeat_interval=heartbeat, idle_timeout=3 * heartbeat)
