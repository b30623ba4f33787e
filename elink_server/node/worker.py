"""``python -m elink_server.node.worker``: one worker process of a node.

Started by the supervisor (:mod:`.supervisor`), never by hand::

    python -m elink_server.node.worker --hub-fd N --listen-fd M [--listen-fd M2 ...]
        [--files-fd F ...]

``N`` is this worker's end of its link to the hub, ``M...`` the node's
listening sockets, all inherited.  The first message on the link is the
configuration: ``["config", index, count, settings, server key PEM]``.  The
worker then serves as :func:`~elink_server.host.open_server` with a
:class:`~elink_server.host.WorkerSpec`, until SIGTERM or SIGINT (a clean
shutdown, as a single server's) or until its hub link ends (the supervisor
is gone: it shuts down as well).  Exit status 0 after a clean shutdown, 1
when it could not start.
"""

from __future__ import annotations

import argparse
import signal
import socket as stdlib_socket
import struct
import sys
from collections.abc import Sequence
from typing import Any

import msgpack
import structlog
import trio

from elink_protocol import ServerIdentity
from elink_server.cli import configure_logging
from elink_server.host import WorkerSpec, open_server
from elink_server.settings import ServerSettings

from .link import MAX_FRAME

_HEADER = struct.Struct(">I")


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise EOFError("the hub closed the link before the configuration")
        data += chunk
    return data


async def receive_config(stream: trio.abc.ReceiveStream) -> list[Any]:
    """The first message of the link (read without reading past it)."""
    (size,) = _HEADER.unpack(await _receive_exactly(stream, _HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"configuration frame of {size} bytes")
    message = msgpack.unpackb(await _receive_exactly(stream, size), raw=False)
    if type(message) is not list or not message or message[0] != "config":
        raise ValueError("the first message is not the configuration")
    return message[1:]


async def run_worker(hub_fd: int, listen_fds: Sequence[int], files_fds: Sequence[int] = ()) -> None:
    hub_socket = trio.socket.from_stdlib_socket(stdlib_socket.socket(fileno=hub_fd))
    hub = trio.SocketStream(hub_socket)
    index, count, values, pem = await receive_config(hub)
    settings = ServerSettings(**values)
    configure_logging(settings.log_level, worker=index)
    identity = ServerIdentity.from_pem(pem)
    listeners = tuple(
        trio.SocketListener(trio.socket.from_stdlib_socket(stdlib_socket.socket(fileno=fd)))
        for fd in listen_fds
    )
    files_listeners = tuple(
        trio.SocketListener(trio.socket.from_stdlib_socket(stdlib_socket.socket(fileno=fd)))
        for fd in files_fds
    )
    spec = WorkerSpec(
        index=index, count=count, hub=hub, listeners=listeners, files_listeners=files_listeners
    )
    log = structlog.get_logger("elink_server")
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            open_server(settings, identity=identity, worker=spec) as server,
            trio.open_nursery() as nursery,
        ):

            async def on_signal() -> None:
                async for signum in signals:
                    log.info("shutting down", signal=signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()

            async def on_request() -> None:
                await server.wait_shutdown_requested()
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            nursery.start_soon(on_request)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elink_server.node.worker")
    parser.add_argument("--hub-fd", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, action="append", default=[])
    parser.add_argument("--files-fd", type=int, action="append", default=[])
    args = parser.parse_args(argv)
    try:
        trio.run(run_worker, args.hub_fd, args.listen_fd, args.files_fd)
    except (EOFError, ValueError, OSError) as exc:
        print(f"elink-server worker: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
