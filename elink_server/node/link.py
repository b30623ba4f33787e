"""A link between a worker and its node's hub: msgpack messages in
length-prefixed frames over a stream (a Unix socketpair).

Theory of operation
-------------------
Each frame is a 4-byte big-endian length and a msgpack array, the
*message*: ``[op, arg...]``.  Three ops are the link's own:

* ``["?", call_id, op, arg...]`` -- a call; the other side answers it with
* ``["=", call_id, value]`` -- its result, or
* ``["!", call_id, reason]`` -- its failure (:class:`CallFailed`).

Any other op is a one-way message.  Both sides may call and send.

**Order.**  Messages leave in the order :meth:`Link.send` was called, and
the reader hands them to ``on_message`` / ``on_call`` one at a time, in the
order they arrived, synchronously: a handler that must await starts a task
(and answers a call later with :meth:`Link.reply`).  The routing of the
node relies on this: what a worker sent before a message reaches the hub
before it, and the hub's effects of a message happen before the next one
is read.

**Memory.**  Sending never blocks: messages are queued and one writer task
writes everything queued in one ``send_all``.  Messages marked
``droppable`` (pushes, which are hints) are dropped and counted once
:data:`MAX_QUEUED_BYTES` wait; the others are always queued (they are small
and few, or a session's state, which has its own bounds).  The reader
refuses frames over :data:`MAX_FRAME` bytes.

The peer is a process of the same node (trusted, but bugs happen): a frame
that does not decode, or a message that does not fit its op, ends the link
with :class:`LinkBroken` rather than anything worse.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import structlog
import trio

logger = structlog.get_logger("elink_server")

#: Largest frame accepted: a session handed over with a full resend window
#: (``max_unacked_packets`` packets of up to 4 KiB) fits.
MAX_FRAME = 64 * 1024 * 1024
#: Bytes waiting to be written beyond which droppable messages are dropped.
MAX_QUEUED_BYTES = 32 * 1024 * 1024
#: Bytes read per receive.
RECEIVE_SIZE = 256 * 1024

_HEADER = struct.Struct(">I")  # frame length, big-endian


class LinkClosed(Exception):
    """The link is closed (the other process stopped or died)."""


class LinkBroken(Exception):
    """The other side sent something that is not a valid message."""


class CallFailed(Exception):
    """The other side answered a call with a failure."""


def pack(message: list[Any]) -> bytes:
    """One frame holding ``message``."""
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


def unpack_value(data: bytes) -> Any:
    """A msgpack value from a blob nested in a message."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def pack_value(value: Any) -> bytes:
    """A blob for a value that is forwarded without being looked at."""
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


OnMessage = Callable[[str, list[Any]], None]
"""``on_message(op, args)``: a one-way message arrived."""
OnCall = Callable[[int, str, list[Any]], None]
"""``on_call(call_id, op, args)``: a call arrived; answer with
:meth:`Link.reply` or :meth:`Link.fail` (now or later)."""


class _Call:
    __slots__ = ("done", "error", "on_reply", "value")

    def __init__(self, on_reply: Callable[[Any], Any] | None) -> None:
        self.done = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.on_reply = on_reply


class Link:
    """One end of a link (see the module docstring)."""

    def __init__(self, stream: trio.abc.Stream, *, name: str) -> None:
        self.name = name
        self._stream = stream
        self._queued: list[bytes] = []
        self._queued_bytes = 0
        self._wake = trio.Event()
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self.dropped = 0
        """Droppable messages dropped because too much was queued."""
        self.sent = 0
        """Messages sent."""
        self.received = 0
        """Messages received."""

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting to be written."""
        return self._queued_bytes

    # ----------------------------------------------------------------- sending

    def send(self, op: str, *args: Any, droppable: bool = False) -> bool:
        """Queue a one-way message.  False if it was dropped (see the module
        docstring); raises :class:`LinkClosed` if the link is closed."""
        return self._queue([op, *args], droppable=droppable)

    def _queue(self, message: list[Any], *, droppable: bool = False) -> bool:
        if self._closed:
            raise LinkClosed(f"link {self.name} is closed")
        if droppable and self._queued_bytes > MAX_QUEUED_BYTES:
            self.dropped += 1
            return False
        frame = pack(message)
        self._queued.append(frame)
        self._queued_bytes += len(frame)
        self.sent += 1
        self._wake.set()
        return True

    async def call(
        self,
        op: str,
        *args: Any,
        timeout: float = math.inf,
        on_reply: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Call ``op`` on the other side and return its result.  Raises
        :class:`CallFailed`, :class:`LinkClosed`, or ``trio.TooSlowError``
        after ``timeout`` seconds.

        ``on_reply(value)``, when given, runs in the reader the moment the
        result arrives -- before any later message is handled -- and what
        it returns (or raises) is the call's result."""
        call_id = next(self._ids)
        call = self._calls[call_id] = _Call(on_reply)
        try:
            self._queue(["?", call_id, op, *args])
            with trio.fail_after(timeout):
                await call.done.wait()
        finally:
            # A caller that left before the answer: ``on_reply`` still runs
            # when it arrives (its effects must not be lost), its result not.
            if call.on_reply is None or call.done.is_set() or self._closed:
                self._calls.pop(call_id, None)
        if call.error is not None:
            raise call.error
        return call.value

    def reply(self, call_id: int, value: Any) -> None:
        """Answer call ``call_id`` with ``value`` (ignored once closed)."""
        if not self._closed:
            self._queue(["=", call_id, value])

    def fail(self, call_id: int, reason: str) -> None:
        """Answer call ``call_id`` with a failure (ignored once closed)."""
        if not self._closed:
            self._queue(["!", call_id, reason])

    # ----------------------------------------------------------------- running

    async def run(self, on_message: OnMessage, on_call: OnCall) -> None:
        """Read and write until the stream ends or breaks.  Closes the link
        (pending calls fail with :class:`LinkClosed`) and returns; raises
        :class:`LinkBroken` for an invalid message."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                await self._read_loop(on_message, on_call)
                nursery.cancel_scope.cancel()
        finally:
            self.close()

    def close(self) -> None:
        """Close the link now: nothing more is sent or read."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        for call in self._calls.values():
            call.error = LinkClosed(f"link {self.name} closed during the call")
            call.done.set()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if not self._queued:
                if self._closed:
                    return
                continue
            data = b"".join(self._queued)
            self._queued.clear()
            self._queued_bytes = 0
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.close()
                return

    async def _read_loop(self, on_message: OnMessage, on_call: OnCall) -> None:
        buffer = bytearray()
        while True:
            try:
                chunk = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not chunk:
                return
            buffer += chunk
            offset = 0
            while len(buffer) - offset >= _HEADER.size:
                (size,) = _HEADER.unpack_from(buffer, offset)
                if size > MAX_FRAME:
                    raise LinkBroken(f"link {self.name}: frame of {size} bytes")
                end = offset + _HEADER.size + size
                if end > len(buffer):
                    break
                body = bytes(buffer[offset + _HEADER.size : end])
                offset = end
                self._dispatch(body, on_message, on_call)
                if self._closed:
                    return
            del buffer[:offset]

    def _dispatch(self, body: bytes, on_message: OnMessage, on_call: OnCall) -> None:
        try:
            message = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise LinkBroken(f"link {self.name}: undecodable frame: {exc}") from None
        if type(message) is not list or not message or type(message[0]) is not str:
            raise LinkBroken(f"link {self.name}: not a message: {message!r:.100}")
        self.received += 1
        op = message[0]
        if op in ("?", "=", "!") and (len(message) < 3 or type(message[1]) is not int):
            raise LinkBroken(f"link {self.name}: bad {op!r} message {message!r:.100}")
        if op in ("=", "!"):
            call = self._calls.get(message[1])
            if call is not None:
                self._answered(call, op, message[2])
                if call.on_reply is not None:
                    self._calls.pop(message[1], None)
            return
        try:
            if op == "?":
                on_call(message[1], str(message[2]), message[3:])
            else:
                on_message(op, message[1:])
        except Exception:
            # A message that does not fit its op, or a bug in its handler:
            # only this message is lost, and it is logged.
            logger.exception("link message failed", link=self.name, op=op)
            if op == "?":
                self.fail(message[1], "internal error")

    @staticmethod
    def _answered(call: _Call, op: str, value: Any) -> None:
        if op == "!":
            call.error = CallFailed(str(value))
        elif call.on_reply is None:
            call.value = value
        else:
            try:
                call.value = call.on_reply(value)
            except Exception as exc:
                call.error = exc
        call.done.set()
