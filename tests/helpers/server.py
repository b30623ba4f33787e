"""An in-process e-Link server on 127.0.0.1 port 0, and a protocol-library
client that talks to it over a real loopback TCP connection."""

from __future__ import annotations

import contextlib
import time
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
from elink_protocol.app import DeviceKind, Login, LoginOk, LoginQueued, RequestFailed
from elink_protocol.connection import Connection
from elink_server.accounts import hash_password
from elink_server.host import Server, open_server
from elink_server.peer import Handler
from elink_server.settings import ServerSettings
from tests.helpers.pair import identity

#: Every wait in these helpers is bounded by this (seconds).
WAIT = 10.0


def test_settings(data_dir: Path, **overrides: Any) -> ServerSettings:
    """Settings for a loopback server on a free port in ``data_dir``."""
    # Every listener on a free port (the heavy bus's default 7421 included),
    # so test runs in parallel never collide.
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "files_port": 0, "data_dir": data_dir}
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


#: scrypt cost for test accounts: the hash carries its parameters, so the
#: server verifies these quickly (the production default is 2**14).
TEST_SCRYPT_N = 2**10


async def add_user(server: Server, name: str, password: str = "secret") -> None:
    """Create an account on ``server`` (cheap hash, see TEST_SCRYPT_N)."""
    password_hash = hash_password(password, n=TEST_SCRYPT_N)
    with trio.fail_after(WAIT):
        await server.store.create_user(name, password_hash=password_hash, now=time.time())


async def login(
    client: LoopbackClient,
    user: str,
    password: str = "secret",
    device_id: str = "pc",
    kind: DeviceKind | str = DeviceKind.PC,
    *,
    rid: int = 1,
    queued: list[LoginQueued] | None = None,
) -> LoginOk:
    """Log ``client`` in and return LoginOk; fails the test on any other
    final answer.  LoginQueued notices are skipped (appended to ``queued``
    when given); pushes that arrive meanwhile fail the test, since the
    server sends none before LoginOk (§11.3.6)."""
    answer = await login_answer(client, user, password, device_id, kind, rid=rid, queued=queued)
    assert isinstance(answer, LoginOk), answer
    return answer


async def login_answer(
    client: LoopbackClient,
    user: str,
    password: str = "secret",
    device_id: str = "pc",
    kind: DeviceKind | str = DeviceKind.PC,
    *,
    rid: int = 1,
    queued: list[LoginQueued] | None = None,
) -> LoginOk | RequestFailed:
    """Send a Login and return its final answer (LoginOk or RequestFailed)."""
    await client.send(
        Login(
            rid=rid, user=user, password=password, device_id=device_id, device_kind=DeviceKind(kind)
        )
    )
    while True:
        event = await client.next_event()
        if isinstance(event, LoginQueued) and event.rid == rid:
            if queued is not None:
                queued.append(event)
            continue
        assert isinstance(event, LoginOk | RequestFailed), event
        assert event.rid == rid, event
        return event
