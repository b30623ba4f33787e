"""A seeded lossy UDP proxy on loopback: the bad network of the UDP tests.

Clients send to ``127.0.0.1:proxy.port``; the proxy forwards to the target
port from one upstream socket per client address (as a NAT does) and sends
the answers back.  Each datagram, in each direction, independently:

* is dropped with probability ``drop``;
* is corrupted (one to three random bytes changed) with ``corrupt``;
* is sent twice with ``duplicate`` (each copy with its own delay);
* is held back by ``spike`` seconds with ``delay`` (a latency spike);
* swaps places with the datagram after it with ``reorder``;

and always takes ``latency`` seconds.  The random generator is seeded, so a
test sees the same sequence of decisions for the same traffic.
:meth:`rebind` gives every client a new upstream socket: the server sees the
client's source port change mid-connection (NAT rebinding).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio


@attrs.define
class ProxyStats:
    forwarded: int = 0
    dropped: int = 0
    corrupted: int = 0
    duplicated: int = 0
    delayed: int = 0
    reordered: int = 0


class _Mapping:
    """One client address and its upstream socket."""

    def __init__(self, client: Any, upstream: trio.socket.SocketType) -> None:
        self.client = client
        self.upstream = upstream
        self.scope = trio.CancelScope()


class LossyUdpProxy:
    def __init__(
        self,
        target: int,
        *,
        seed: int,
        drop: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        delay: float = 0.0,
        corrupt: float = 0.0,
        latency: float = 0.001,
        spike: float = 0.02,
    ) -> None:
        self.target = ("127.0.0.1", target)
        self.random = random.Random(seed)
        self.drop, self.duplicate, self.reorder = drop, duplicate, reorder
        self.delay, self.corrupt = delay, corrupt
        self.latency, self.spike = latency, spike
        self.stats = ProxyStats()
        self.port = 0
        self._socket: trio.socket.SocketType | None = None
        self._mappings: dict[Any, _Mapping] = {}
        self._queue: list[tuple[float, int, bytes, trio.socket.SocketType, Any]] = []
        self._order = itertools.count()
        self._wake = trio.Event()
        self._held: dict[int, tuple[bytes, trio.socket.SocketType, Any]] = {}
        self._nursery: trio.Nursery | None = None

    def set_rates(self, **rates: float) -> None:
        for name, value in rates.items():
            assert hasattr(self, name) and name in (
                "drop",
                "duplicate",
                "reorder",
                "delay",
                "corrupt",
            ), name
            setattr(self, name, value)

    def rebind(self) -> None:
        """Every client gets a new upstream socket (a new source port)."""
        assert self._nursery is not None
        for mapping in list(self._mappings.values()):
            mapping.scope.cancel()  # its task closes the old socket
            self._open_mapping(mapping.client)

    # ------------------------------------------------------------ plumbing

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        self._socket = sock
        self.port = sock.getsockname()[1]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._deliver_loop)
            task_status.started()
            while True:
                data, client = await sock.recvfrom(65536)
                mapping = self._mappings.get(client) or self._open_mapping(client)
                self._schedule(data, mapping.upstream, self.target, direction=0)

    def _open_mapping(self, client: Any) -> _Mapping:
        # Bound here, before anything can be sent from it (a send would bind
        # it to some port first).
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.bind(("127.0.0.1", 0))
        upstream = trio.socket.from_stdlib_socket(raw)
        mapping = _Mapping(client, upstream)
        self._mappings[client] = mapping
        assert self._nursery is not None
        self._nursery.start_soon(self._upstream_loop, mapping)
        return mapping

    async def _upstream_loop(self, mapping: _Mapping) -> None:
        with mapping.upstream, mapping.scope:
            while True:
                try:
                    data, _ = await mapping.upstream.recvfrom(65536)
                except OSError:
                    continue
                assert self._socket is not None
                self._schedule(data, self._socket, mapping.client, direction=1)

    def _schedule(
        self, data: bytes, sock: trio.socket.SocketType, to: Any, *, direction: int
    ) -> None:
        rnd = self.random
        if rnd.random() < self.drop:
            self.stats.dropped += 1
            return
        copies = 1
        if rnd.random() < self.duplicate:
            self.stats.duplicated += 1
            copies = 2
        for _ in range(copies):
            payload = data
            if rnd.random() < self.corrupt:
                self.stats.corrupted += 1
                payload = self._corrupted(payload)
            wait = self.latency
            if rnd.random() < self.delay:
                self.stats.delayed += 1
                wait += self.spike * (0.5 + rnd.random())
            if direction in self._held:
                # The previous datagram waited for this one: this one goes first.
                held = self._held.pop(direction)
                self._push(wait, payload, sock, to)
                self._push(wait, *held)
                continue
            if rnd.random() < self.reorder:
                self.stats.reordered += 1
                self._held[direction] = (payload, sock, to)
                continue
            self._push(wait, payload, sock, to)

    def _corrupted(self, data: bytes) -> bytes:
        buf = bytearray(data)
        for _ in range(self.random.randint(1, 3)):
            i = self.random.randrange(len(buf))
            buf[i] ^= self.random.randint(1, 255)
        return bytes(buf)

    def _push(self, wait: float, data: bytes, sock: trio.socket.SocketType, to: Any) -> None:
        due = trio.current_time() + wait
        heapq.heappush(self._queue, (due, next(self._order), data, sock, to))
        self._wake.set()

    async def _deliver_loop(self) -> None:
        while True:
            # A held datagram is released after a moment even if nothing
            # follows it (reordering must not turn into loss).
            for direction, (data, sock, to) in list(self._held.items()):
                del self._held[direction]
                self._push(self.latency + 0.005, data, sock, to)
            now = trio.current_time()
            while self._queue and self._queue[0][0] <= now:
                _, _, data, sock, to = heapq.heappop(self._queue)
                with contextlib.suppress(OSError):
                    await sock.sendto(data, to)
                    self.stats.forwarded += 1
            self._wake = trio.Event()
            deadline = self._queue[0][0] if self._queue else trio.current_time() + 0.005
            with trio.move_on_at(min(deadline, trio.current_time() + 0.005)):
                await self._wake.wait()


@contextlib.asynccontextmanager
async def open_lossy_udp_proxy(target: int, **options: Any) -> AsyncIterator[LossyUdpProxy]:
    """Run a :class:`LossyUdpProxy` to ``127.0.0.1:target`` for the block."""
    proxy = LossyUdpProxy(target, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy._run)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
            if proxy._socket is not None:
                proxy._socket.close()
