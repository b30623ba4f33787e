"""An in-process e-Link server on 127.0.0.1 port 0, and a protocol-library
client that talks to it over a real loopback TCP connection."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import trio

from elink_protocol import (
    NEED_DATA,
    Config,
    ConnectionClosed,
    Event,
    HandshakeComplete,
    Packet,
    Role,
)
from elink_protocol.connection import Connection
from elink_server.host import Server, open_server
from elink_server.peer import Handler
from elink_server.settings import ServerSettings
from tests.helpers.pair import identity

#: Every wait in these helpers is bounded by this (seconds).
WAIT = 10.0


def test_settings(data_dir: Path, **overrides: Any) -> ServerSettings:
    """Settings for a loopback server on a free port in ``data_dir``."""
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "data_dir": data_dir}
    values.update(overrides)
    return ServerSettings(**values)


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


@contextlib.asynccontextmanager
async def open_test_server(
    data_dir: Path,
    *,
    services: Mapping[type[Packet], Handler] | None = None,
    **overrides: Any,
) -> AsyncIterator[Server]:
    """A server on 127.0.0.1:0 with the test run's shared identity."""
    async with open_server(
        test_settings(data_dir, **overrides), identity=identity(), services=services
    ) as server:
        yield server


class LoopbackClient:
    """A client :class:`Connection` over a TCP stream to the test server."""

    def __init__(self, stream: trio.SocketStream, connection: Connection) -> None:
        self.stream = stream
        self.connection = connection
        self.handshake: HandshakeComplete | None = None

    async def flush(self) -> None:
        data = self.connection.data_to_send()
        if data:
            with trio.fail_after(WAIT):
                await self.stream.send_all(data)

    async def send(self, packet: Packet) -> None:
        self.connection.queue(packet)
        await self.flush()

    async def next_event(self, *, timeout: float = WAIT) -> Event | Packet:
        """The next event from the server; the connection's own replies
        (acks, pongs) are written as they arise.  EOF yields the library's
        ConnectionClosed."""
        with trio.fail_after(timeout):
            while True:
                event = self.connection.next_event()
                if event is not NEED_DATA:
                    await self.flush()
                    assert not isinstance(event, type(NEED_DATA))
                    return event
                await self.flush()
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                self.connection.receive_data(data, now=trio.current_time())

    async def wait_closed(self, *, timeout: float = WAIT) -> ConnectionClosed:
        """Read until the connection ends; return how."""
        while True:
            event = await self.next_event(timeout=timeout)
            if isinstance(event, ConnectionClosed):
                return event

    async def do_handshake(self) -> HandshakeComplete:
        self.connection.initiate(now=trio.current_time())
        await self.flush()
        event = await self.next_event()
        assert isinstance(event, HandshakeComplete), event
        self.handshake = event
        await self.flush()  # ClientFinished may still be queued
        return event


def client_config(**overrides: Any) -> Config:
    """A client configuration that trusts the test identity."""
    values: dict[str, Any] = {"trusted_server_keys": frozenset(identity().fingerprints().values())}
    values.update(overrides)
    return Config(**values)


@contextlib.asynccontextmanager
async def connect_client(
    server: Server, *, handshake: bool = True, config: Config | None = None
) -> AsyncIterator[LoopbackClient]:
    """A client connected to ``server`` over loopback TCP, handshaken unless
    ``handshake=False``."""
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        client = LoopbackClient(
            stream,
            Connection(role=Role.CLIENT, config=config or client_config(), now=trio.current_time()),
        )
        if handshake:
            await client.do_handshake()
        yield client
