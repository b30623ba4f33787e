"""A TCP proxy on loopback that can lose traffic and cut connections, to test
what clients do when the network fails under them."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator

import trio

from tests.helpers.server import WAIT


class _Pair:
    """One client connection and its upstream connection."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.up_bytes = 0
        """Bytes from the client forwarded to the server."""
        self.down_bytes = 0


class CuttingProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target``.

    * :meth:`cut` closes every connection through it at once, with no Close
      packet: to both ends the connection is simply lost.
    * ``drop_up`` / ``drop_down``: while set, bytes in that direction
      (client to server / server to client) are read and thrown away, as if
      lost in the network just before a cut.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.drop_up = False
        self.drop_down = False
        self.connections = 0
        self._pairs: set[_Pair] = set()

    @property
    def live(self) -> int:
        return len(self._pairs)

    def cut(self) -> int:
        """Close every connection now; returns how many were cut."""
        pairs = list(self._pairs)
        for pair in pairs:
            pair.scope.cancel()
        return len(pairs)

    async def wait_connections(self, count: int) -> None:
        """Wait until ``count`` connections were made through the proxy in all."""
        with trio.fail_after(WAIT):
            while self.connections < count:
                await trio.sleep(0.01)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, pair: _Pair, up: bool
    ) -> None:
        while True:
            try:
                data = await source.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                pair.scope.cancel()
                return
            if self.drop_up if up else self.drop_down:
                continue
            try:
                await sink.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pair.scope.cancel()
                return
            if up:
                pair.up_bytes += len(data)
            else:
                pair.down_bytes += len(data)

    async def _handle(self, client: trio.SocketStream) -> None:
        pair = _Pair()
        self.connections += 1
        async with client:
            try:
                with trio.fail_after(WAIT):
                    upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
            except (OSError, trio.TooSlowError):
                return  # the server is down: the client sees its connection close
            async with upstream:
                self._pairs.add(pair)
                try:
                    with pair.scope:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._pump, client, upstream, pair, True)
                            nursery.start_soon(self._pump, upstream, client, pair, False)
                finally:
                    self._pairs.discard(pair)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CuttingProxy]:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1")
            )
            self.port = listeners[0].socket.getsockname()[1]
            try:
                yield self
            finally:
                self.cut()
                nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def cutting_proxy(target: int) -> AsyncIterator[CuttingProxy]:
    """A :class:`CuttingProxy` to ``127.0.0.1:target`` for the block's duration."""
    async with CuttingProxy(target).running() as proxy:
        yield proxy
