"""The baseline: a plain Trio relay with e-Link's framing and nothing else.

    python -m benchmarks.load.relay [--host H] [--port P]

Frames are e-Link frames (docs/protocol.md §4: the 20-byte header, CRC-32,
msgpack payload) parsed with the protocol library's own codec, but carry no
encryption, no packet ids or acknowledgements, no storage and no login
check: the floor of what any Python/Trio relay pays per message on this
machine.  One reader task and one writer task per connection (the writer
drains its bounded queue into one ``send_all``), the design the FACTS file
measured as the relay reference.

Plain packet types (numbers private to the bench, outside e-Link's space):

* ``HELLO`` ``{"u": user}`` -> ``WELCOME`` ``{}``: names the connection;
* ``SEND`` ``{"to": user, "t": text}`` -> the recipient gets
  ``DELIVER`` ``{"fr": sender, "t": text}``; an unknown recipient drops it.

Prints ``listening on HOST:PORT`` and runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import signal
from typing import Any

import msgpack
import trio

from elink_protocol.frame import Frame, FrameBuffer

HELLO = 0xF001
WELCOME = 0xF002
SEND = 0xF003
DELIVER = 0xF004

#: Frames waiting for one slow reader before the relay drops that reader.
QUEUE_LIMIT = 4096


def encode(kind: int, body: dict[str, Any]) -> bytes:
    """One plain frame."""
    return Frame(type=kind, payload=msgpack.packb(body)).encode()


class _Relay:
    def __init__(self) -> None:
        self.sessions: dict[str, trio.MemorySendChannel[bytes]] = {}

    async def serve(self, stream: trio.SocketStream) -> None:
        send, receive = trio.open_memory_channel[bytes](QUEUE_LIMIT)
        user: str | None = None
        buffer = FrameBuffer(max_buffer=1 << 20)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, stream, receive)
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    buffer.feed(data)
                    while (frame := buffer.next_frame_untrusted()) is not None:
                        body = msgpack.unpackb(frame.payload)
                        if frame.type == SEND and user is not None:
                            peer = self.sessions.get(body["to"])
                            if peer is not None:
                                # A reader this far behind loses frames (the
                                # generator counts them as lost).
                                with contextlib.suppress(trio.WouldBlock):
                                    peer.send_nowait(encode(DELIVER, {"fr": user, "t": body["t"]}))
                        elif frame.type == HELLO and user is None:
                            user = str(body["u"])
                            self.sessions[user] = send
                            send.send_nowait(encode(WELCOME, {}))
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError, KeyError):
            pass
        finally:
            if user is not None and self.sessions.get(user) is send:
                del self.sessions[user]
            await stream.aclose()

    @staticmethod
    async def _write(stream: trio.SocketStream, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        async for first in receive:
            chunks = [first]
            while True:
                try:
                    chunks.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await stream.send_all(b"".join(chunks))


async def _main(host: str, port: int) -> None:
    relay = _Relay()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, relay.serve, port, host=host)
            )
            address = listeners[0].socket.getsockname()
            print(f"listening on {host}:{address[1]}", flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
    print("stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="plain Trio relay (the bench's baseline)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    trio.run(_main, args.host, args.port)


if __name__ == "__main__":
    main()
