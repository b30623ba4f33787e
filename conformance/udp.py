"""The suite's datagram transport (§6.9): the light bus over UDP.

Theory of operation
-------------------
:class:`UdpClient` is the suite's raw client (:class:`~conformance.session.
Client`) over a UDP socket: what the handshake driver and the cases write as
frames goes out in an envelope (§6.9.1) -- INITIALs padded to 1200 bytes
until the handshake completes, DATA afterwards -- and the frames of every
DATA datagram from the server are fed to the same strict receiver as on TCP,
which on a datagram transport also accepts fragment chains, drops duplicates
(and acknowledges them again) and drops frames that arrive out of order (the
server re-sends them).  A RETRY is followed as a client must (§6.9.3 item 4).

Every datagram from the server is checked as it arrives: at most 1200
bytes, a valid envelope of a kind a server sends, the connection's id.
Everything the client sends can be wrong on purpose: :meth:`UdpClient.
send_datagram` writes any bytes, :attr:`UdpClient.drop` loses chosen
datagrams from the server, and :class:`Endpoint` is a bare socket for
other source addresses (another source port counts as another address).

A server that serves no UDP makes the UDP cases UNIMPLEMENTED: no
requirement sentence of the spec obliges a server to listen on UDP (§2.1
names both transports; the rules of §6.9 bind a server that does).  The
suite probes once per run with a tokenless INITIAL; anything answering is
a UDP server.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

import trio

from elink_protocol import Priority
from elink_protocol.frame import ENCRYPTED, HEADER_SIZE, MORE_FRAGMENTS
from elink_protocol.udp import (
    DATA_FRAMES_LIMIT,
    INITIAL_SIZE,
    MAX_DATAGRAM_SIZE,
    Envelope,
    Kind,
    decode_envelope_untrusted,
    encode_data,
    encode_initial,
)

from .case import Context
from .handshake import ClientHandshake, HandshakeInfo
from .results import Fail, ServerViolation, Unimplemented
from .session import Client

__all__ = [
    "Endpoint",
    "UdpClient",
    "initial",
    "require_udp",
    "udp_client",
    "udp_endpoint",
    "udp_established",
]

#: After a Close on UDP: how long to watch for (forbidden) further datagrams.
AFTER_CLOSE_UDP = 0.3

_Address = Any

_IGNORED_ERRORS = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)


def initial(connection_id: bytes, token: bytes = b"", frames: bytes = b"") -> bytes:
    """A correct INITIAL (padded to 1200 bytes)."""
    return encode_initial(connection_id, token, frames)


def check_server_datagram(data: bytes, connection_id: bytes | None) -> Envelope:
    """A datagram from the server, checked (§6.9.1, §6.9.7)."""
    if len(data) > MAX_DATAGRAM_SIZE:
        raise ServerViolation("6.9.7", f"a datagram of {len(data)} bytes (limit 1200)")
    envelope = decode_envelope_untrusted(data)
    if envelope is None or envelope.kind is Kind.INITIAL:
        raise ServerViolation("6.9.1", f"an invalid envelope: {data[:16].hex()}...")
    if connection_id is not None and envelope.connection_id != connection_id:
        raise ServerViolation(
            "6.9.2", f"a datagram for connection id {envelope.connection_id.hex()}, not ours"
        )
    return envelope


async def _open_socket(host: str, port: int) -> tuple[trio.socket.SocketType, _Address]:
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    if not infos:
        raise Fail(f"cannot resolve {host!r}")
    family, type_, proto, _, sockaddr = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    await sock.bind(("::" if family == trio.socket.AF_INET6 else "0.0.0.0", 0))
    return sock, sockaddr


class Endpoint:
    """A bare UDP socket towards the server: any bytes out, raw datagrams in
    (only from the server's address; others are ignored, as a client does)."""

    def __init__(self, sock: trio.socket.SocketType, server: _Address, name: str) -> None:
        self.socket = sock
        self.server = server
        self.name = name
        self.received: list[bytes] = []

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    async def send(self, data: bytes) -> None:
        try:
            await self.socket.sendto(data, self.server)
        except OSError as exc:
            if exc.errno not in _IGNORED_ERRORS:
                raise

    async def receive(self, timeout: float) -> bytes | None:
        """The next datagram from the server, or None after ``timeout``."""
        with trio.move_on_after(timeout):
            while True:
                try:
                    data, address = await self.socket.recvfrom(65536)
                except OSError as exc:
                    if exc.errno in _IGNORED_ERRORS:
                        continue
                    raise
                if tuple(address[:2]) != tuple(self.server[:2]):
                    continue
                self.received.append(data)
                return bytes(data)
        return None

    async def close(self) -> None:
        self.socket.close()


class UdpClient(Client):
    """The suite's client over UDP (see the module docstring)."""

    def __init__(
        self,
        sock: trio.socket.SocketType,
        server: _Address,
        *,
        name: str,
        connection_id: bytes | None = None,
    ) -> None:
        super().__init__(None, name=name)
        self.datagram = True
        self.socket = sock
        self.server = server
        self.connection_id = connection_id or os.urandom(8)
        self.token = b""
        self.retries = 0
        """RETRYs followed."""
        self.follow_retry = True
        """Re-send the latest INITIAL with the token of a RETRY (§6.9.3)."""
        self.last_initial: bytes = b""
        """The frames of the latest INITIAL."""
        self.initial_bytes = 0
        """Bytes of every INITIAL sent."""
        self.bytes_before_keys = 0
        """Bytes of the server's DATA datagrams received before the handshake completed."""
        self.received: list[bytes] = []
        """Every datagram from the server, as it arrived."""
        self.sent_datagrams: list[bytes] = []
        self.drop: Callable[[bytes], bool] | None = None
        """Datagrams from the server for which this returns True are lost on purpose."""

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    async def rebind(self) -> None:
        """Continue from a new source port (a NAT that rebinds, §6.9.5)."""
        old = self.socket
        self.socket, _ = await _open_socket(str(self.server[0]), int(self.server[1]))
        old.close()
        self.note(f"-- now on source port {self.port}")

    async def send_datagram(self, data: bytes, *, note: str | None = None) -> None:
        """Send ``data`` as one datagram, exactly."""
        if note is not None:
            self.note(f"-> {note}")
        self.sent_datagrams.append(data)
        try:
            await self.socket.sendto(data, self.server)
        except OSError as exc:
            if exc.errno not in _IGNORED_ERRORS:
                raise

    def envelope(self, frames: bytes) -> bytes:
        """``frames`` as the client sends them now: INITIAL before the
        handshake completed, DATA afterwards."""
        if self.established:
            return encode_data(self.connection_id, frames)
        self.last_initial = frames
        return encode_initial(self.connection_id, self.token, frames)

    async def send_bytes(self, data: bytes, *, note: str | None = None) -> None:
        if self._we_closed and self.socket.fileno() == -1:
            return
        datagram = self.envelope(data)
        if datagram[0] == Kind.INITIAL:
            self.initial_bytes += len(datagram)
        await self.send_datagram(datagram, note=note)

    async def send_payload(
        self,
        type_: int,
        payload: bytes,
        *,
        numbered: bool = True,
        priority: int = Priority.INTERACTIVE,
        note: str | None = None,
        **overrides: Any,
    ) -> int:
        """As on a stream; a numbered packet too large for one datagram is
        sent as a fragment chain (§6.6), one datagram per fragment."""
        sealer = self._send
        if not numbered or sealer is None or overrides:
            return await super().send_payload(
                type_, payload, numbered=numbered, priority=priority, note=note, **overrides
            )
        if HEADER_SIZE + sealer.sealed_length(len(payload)) <= DATA_FRAMES_LIMIT:
            return await super().send_payload(
                type_, payload, numbered=True, priority=priority, note=note
            )
        piece = DATA_FRAMES_LIMIT - HEADER_SIZE
        while HEADER_SIZE + sealer.sealed_length(piece) > DATA_FRAMES_LIMIT:
            piece -= 1
        first = self.next_pid
        chunks = [payload[i : i + piece] for i in range(0, len(payload), piece)]
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            await super().send_payload(
                type_,
                chunk,
                numbered=True,
                priority=priority,
                note=f"{note or type_} fragment {index + 1}/{len(chunks)}",
                flags=ENCRYPTED if last else ENCRYPTED | MORE_FRAGMENTS,
            )
        return first

    async def send_eof(self) -> None:
        raise RuntimeError("a datagram transport has no end of stream")

    async def aclose(self) -> None:
        self.socket.close()
        self._peer_closed_stream = True

    async def _watch_after_close(self) -> None:
        with trio.move_on_after(AFTER_CLOSE_UDP):
            while True:
                await self._read_more()
                frame = self._next_frame()
                if frame is not None:
                    raise ServerViolation(
                        "8.3", f"sent a frame (type {frame.type:#06x}) after its Close"
                    )

    async def receive_datagram(self) -> bytes:
        """The next datagram from the server's address, checked."""
        while True:
            try:
                data, address = await self.socket.recvfrom(65536)
            except OSError as exc:
                if exc.errno in _IGNORED_ERRORS:
                    continue
                raise
            if tuple(address[:2]) != tuple(self.server[:2]):
                continue  # §6.9.5: a client discards datagrams from other sources
            data = bytes(data)
            self.received.append(data)
            check_server_datagram(data, self.connection_id)
            return data

    async def _read_more(self) -> None:
        if self.socket.fileno() == -1:
            await trio.sleep_forever()
        while True:
            data = await self.receive_datagram()
            envelope = check_server_datagram(data, self.connection_id)
            if self.drop is not None and self.drop(data):
                self.note(f"<- datagram of {len(data)} bytes lost on purpose")
                continue
            if envelope.kind is Kind.RETRY:
                self.note(f"<- RETRY ({len(data)} bytes)")
                if self.established or not self.follow_retry:
                    continue
                self.token = envelope.token
                self.retries += 1
                await self.send_bytes(self.last_initial, note="the INITIAL again, with the token")
                continue
            if not self.established:
                self.bytes_before_keys += len(data)
            self._buffer.feed(envelope.frames)
            return

    async def next_datagram(self, timeout: float) -> bytes | None:
        """The next raw datagram (bypassing the frame receiver)."""
        with trio.move_on_after(timeout):
            return await self.receive_datagram()
        return None


def _cache_key(ctx: Context) -> tuple[str, int, str]:
    return (ctx.options.host, udp_port(ctx), ctx.options.run_id)


_PROBED: dict[tuple[str, int, str], bool] = {}


def udp_port(ctx: Context) -> int:
    """The server's UDP port: ``--udp-port``, by default the TCP port (§6.9)."""
    return ctx.options.udp_port if ctx.options.udp_port is not None else ctx.options.port


async def require_udp(ctx: Context) -> None:
    """UNIMPLEMENTED unless something answers a tokenless INITIAL on the
    server's UDP port (probed once per run)."""
    key = _cache_key(ctx)
    if key not in _PROBED:
        sock, server = await _open_socket(ctx.options.host, udp_port(ctx))
        probe = Endpoint(sock, server, "probe")
        try:
            _PROBED[key] = await _answers(probe, ctx.wait)
        finally:
            await probe.close()
    if not _PROBED[key]:
        raise Unimplemented(
            f"nothing answers an INITIAL on UDP {ctx.options.host}:{udp_port(ctx)} (--udp-port)"
        )


async def _answers(probe: Endpoint, wait: float) -> bool:
    """Whether anything answers a tokenless INITIAL from the server's port
    (an ICMP port-unreachable, reported as a refused connection, is a no)."""
    hello = ClientHandshake(None, timeout=wait).hello_frame()  # type: ignore[arg-type]
    await probe.socket.connect(probe.server)  # so that a refusal is reported
    await probe.send(initial(os.urandom(8), b"", hello))
    with trio.move_on_after(wait):
        while True:
            try:
                _, address = await probe.socket.recvfrom(65536)
            except OSError as exc:
                if exc.errno in _IGNORED_ERRORS:
                    return False
                raise
            if tuple(address[:2]) == tuple(probe.server[:2]):
                return True
    return False


async def udp_endpoint(ctx: Context, name: str) -> Endpoint:
    """A bare socket towards the server's UDP port, closed when the case ends."""
    await require_udp(ctx)
    sock, server = await _open_socket(ctx.options.host, udp_port(ctx))
    endpoint = Endpoint(sock, server, name)
    ctx.on_close(endpoint.close)
    return endpoint


async def udp_client(
    ctx: Context, name: str | None = None, *, connection_id: bytes | None = None
) -> UdpClient:
    """A UDP client (nothing sent yet), closed when the case ends."""
    await require_udp(ctx)
    sock, server = await _open_socket(ctx.options.host, udp_port(ctx))
    client = UdpClient(
        sock, server, name=name or f"udp{len(ctx.clients) + 1}", connection_id=connection_id
    )
    ctx.clients.append(client)
    return client


async def udp_established(ctx: Context, name: str | None = None) -> tuple[UdpClient, HandshakeInfo]:
    """A UDP client with a completed handshake."""
    client = await udp_client(ctx, name)
    info = await ctx.handshaker(client).run(None)
    return client, info


async def udp_logged_in(ctx: Context, user_index: int = 0) -> UdpClient:
    """A UDP client, handshaken and logged in on a fresh device."""
    user, password = ctx.user(user_index), ctx.password
    client, _ = await udp_established(ctx, user)
    await client.login(user, password, ctx.unique("dev"), timeout=ctx.wait)
    return client


__all__ += ["INITIAL_SIZE", "udp_logged_in", "udp_port"]
