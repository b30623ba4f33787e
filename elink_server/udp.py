"""The server's UDP endpoint: one datagram socket for every UDP connection.

Theory of operation
-------------------
:class:`UdpEndpoint` owns one UDP socket.  Its receive loop reads a datagram,
decodes the envelope (§6.9.1) and then:

* a datagram whose connection id is known goes to that connection's bounded
  queue (a full queue drops it: on UDP that is loss, which the protocol
  recovers from, and it keeps a flooding source from holding memory);
* an INITIAL with an unknown connection id and no valid token is answered
  with one RETRY (74 bytes at most, for a 1200-byte INITIAL) and forgotten:
  no state per unvalidated source (§6.9.3);
* an INITIAL with a valid token opens a :class:`UdpConnection` and hands it
  to the host, which admits and serves it exactly as a TCP connection
  (``Server._serve``: the same :class:`~elink_server.peer.Peer`, services,
  sessions and resumption);
* anything else is discarded silently.

A :class:`UdpConnection` is the :class:`~elink_server.peer.PeerTransport` of
one connection: the peer's reader takes batches of datagrams from its queue
and feeds them to the sans-IO connection; writing wraps the connection's
datagrams in DATA envelopes and sends them to the connection's *current
address*.  That address moves when a fresh authentic datagram (the library's
``receive_datagram`` says so) arrives from another one, at most once per
:data:`MIGRATION_INTERVAL` (§6.9.5).  Until the handshake completes the
connection sends no more bytes than it received (§6.9.3).
"""

from __future__ import annotations

import errno
import os
from typing import Any

import attrs
import structlog
import trio

from elink_protocol import Config
from elink_protocol.connection import Connection, Transport
from elink_protocol.state import ConnectionState, Role
from elink_protocol.udp import (
    DATA_FRAMES_LIMIT,
    Kind,
    TokenMinter,
    address_bytes,
    decode_envelope_untrusted,
    encode_data,
    encode_retry,
)

from .peer import PeerTransport

#: Datagrams queued per connection before more are dropped.
QUEUE_DATAGRAMS = 64

#: Datagrams fed to the connection per batch: bounds the control replies
#: (pongs, acks) one batch can queue, as ``RECEIVE_SIZE`` does on TCP.
BATCH_DATAGRAMS = 16

#: Least time between two moves of a connection's address (§6.9.5).
MIGRATION_INTERVAL = 1.0

#: Largest datagram read (anything larger than 1200 bytes is discarded by the
#: envelope check; the buffer just has to hold it whole).
RECEIVE_BUFFER = 65536

logger = structlog.get_logger("elink_server")

Address = Any
"""A socket address as the socket returns it: ``(host, port)`` or the IPv6
4-tuple."""


def format_address(address: Address) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen(kw_only=True)
class UdpStatistics:
    """An immutable snapshot of the UDP endpoint's counters."""

    connections: int
    """UDP connections open now."""
    datagrams_in: int
    datagrams_out: int
    bytes_in: int
    bytes_out: int
    retries_sent: int
    """RETRYs sent (INITIALs without a valid token)."""
    retry_bytes_out: int
    """Bytes of those RETRYs."""
    initial_bytes_unvalidated: int
    """Bytes of the INITIALs that were answered with a RETRY."""
    discarded: int
    """Datagrams discarded: bad envelope, unknown connection, no room."""
    migrations: int
    """Times a connection's address moved (§6.9.5)."""


class UdpConnection(PeerTransport):
    """One UDP connection of the endpoint, as a peer's transport."""

    def __init__(self, endpoint: UdpEndpoint, connection_id: bytes, address: Address) -> None:
        self.endpoint = endpoint
        self.connection_id = connection_id
        self.current_address: Address = address
        self.opened_from: Address = address
        self._send, self._receive = trio.open_memory_channel[tuple[bytes, Address, int]](
            QUEUE_DATAGRAMS
        )
        self._credit = 0  # bytes received in INITIALs: the pre-handshake send budget
        self._spent = 0
        self._established = False
        self._moved_at = -float("inf")
        self._finished = False

    @property
    def address(self) -> str:
        return format_address(self.current_address)

    def deliver(self, frames: bytes, address: Address, size: int, initial: bool) -> None:
        """From the endpoint's receive loop: queue one datagram's frames."""
        if initial:
            self._credit += size
        try:
            self._send.send_nowait((frames, address, size))
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.endpoint._discarded += 1

    async def receive(self) -> list[tuple[bytes, Address, int]]:
        batch = [await self._receive.receive()]
        while len(batch) < BATCH_DATAGRAMS:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    def feed(self, connection: Connection, data: object, now: float) -> None:
        assert isinstance(data, list)
        for frames, address, _ in data:
            fresh = connection.receive_datagram(frames, now)
            if fresh and address != self.current_address and self._may_move(now):
                logger.info(
                    "udp address changed",
                    old=format_address(self.current_address),
                    new=format_address(address),
                )
                self.current_address = address
                self._moved_at = now
                self.endpoint._migrations += 1

    def _may_move(self, now: float) -> bool:
        return now - self._moved_at >= MIGRATION_INTERVAL

    async def write(self, connection: Connection) -> None:
        if self._finished:
            raise trio.BrokenResourceError("udp connection finished")
        if not self._established and connection.state is ConnectionState.ESTABLISHED:
            self._established = True
        for datagram in connection.datagrams_to_send(trio.current_time()):
            wrapped = encode_data(self.connection_id, datagram)
            if not self._established:
                # Anti-amplification (§6.9.3): the client's retransmitted
                # INITIALs bring more credit if this one is not sent.
                if self._spent + len(wrapped) > self._credit:
                    continue
                self._spent += len(wrapped)
            await self.endpoint.send(wrapped, self.current_address)

    async def finish(self, *, sent_close: bool) -> None:
        # The Close (if any) was written by the last flush; on UDP there is
        # nothing to linger for.  A later datagram for this id is unknown.
        self._finished = True
        self.endpoint._forget(self)
        self._send.close()


class UdpEndpoint:
    """The server's UDP socket and the connections on it."""

    def __init__(
        self,
        *,
        socket: trio.socket.SocketType,
        config: Config,
        serve: Any,
        random: Any = os.urandom,
    ) -> None:
        """``serve(transport, connection, accepted_at)`` admits and serves one
        new connection (the host's ``Server._serve``)."""
        self.socket = socket
        self.config = attrs.evolve(config, max_datagram_size=DATA_FRAMES_LIMIT)
        self._serve = serve
        self._random = random
        self._minter = TokenMinter(now=trio.current_time(), random=random)
        self._connections: dict[bytes, UdpConnection] = {}
        self._nursery: trio.Nursery | None = None
        self._accepting = True
        self._datagrams_in = 0
        self._datagrams_out = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._retries = 0
        self._retry_bytes = 0
        self._unvalidated_bytes = 0
        self._discarded = 0
        self._migrations = 0

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    def statistics(self) -> UdpStatistics:
        return UdpStatistics(
            connections=len(self._connections),
            datagrams_in=self._datagrams_in,
            datagrams_out=self._datagrams_out,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            retries_sent=self._retries,
            retry_bytes_out=self._retry_bytes,
            initial_bytes_unvalidated=self._unvalidated_bytes,
            discarded=self._discarded,
            migrations=self._migrations,
        )

    def stop_accepting(self) -> None:
        """Shutdown: new INITIALs are discarded; open connections continue
        until the host tells them it is going away."""
        self._accepting = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive until cancelled.  Connections run in a nursery of their
        own, cancelled when this returns."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._receive_loop()

    async def _receive_loop(self) -> None:
        while True:
            try:
                data, address = await self.socket.recvfrom(RECEIVE_BUFFER)
            except OSError as exc:
                # An ICMP error reported on the socket (a client's port went
                # away): it concerns one datagram, not the endpoint.
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                raise
            self._datagrams_in += 1
            self._bytes_in += len(data)
            await self._on_datagram(data, address)

    async def _on_datagram(self, data: bytes, address: Address) -> None:
        envelope = decode_envelope_untrusted(data)
        if envelope is None or envelope.kind is Kind.RETRY:
            self._discarded += 1
            return
        initial = envelope.kind is Kind.INITIAL
        known = self._connections.get(envelope.connection_id)
        if known is not None:
            if initial and address != known.opened_from:
                self._discarded += 1  # §6.9.2: the id belongs to another address
                return
            known.deliver(envelope.frames, address, len(data), initial)
            return
        if not initial or not self._accepting:
            self._discarded += 1
            return
        now = trio.current_time()
        try:
            source = address_bytes(address[0], address[1])
        except ValueError:
            self._discarded += 1
            return
        if not self._minter.check(envelope.token, envelope.connection_id, source, now):
            retry = encode_retry(
                envelope.connection_id, self._minter.issue(envelope.connection_id, source, now)
            )
            self._retries += 1
            self._retry_bytes += len(retry)
            self._unvalidated_bytes += len(data)
            await self.send(retry, address)
            return
        transport = UdpConnection(self, envelope.connection_id, address)
        self._connections[envelope.connection_id] = transport
        transport.deliver(envelope.frames, address, len(data), True)
        connection = Connection(
            role=Role.SERVER, config=self.config, transport=Transport.DATAGRAM, now=now
        )
        assert self._nursery is not None
        self._nursery.start_soon(self._serve, transport, connection, now)

    async def send(self, datagram: bytes, address: Address) -> None:
        """Send one datagram; a local send error is loss, like any other."""
        try:
            await self.socket.sendto(datagram, address)
        except OSError:
            self._discarded += 1
            return
        self._datagrams_out += 1
        self._bytes_out += len(datagram)

    def _forget(self, transport: UdpConnection) -> None:
        if self._connections.get(transport.connection_id) is transport:
            del self._connections[transport.connection_id]


async def open_udp_socket(host: str, port: int) -> trio.socket.SocketType:
    """A UDP socket bound to ``host``/``port`` (the first address family the
    name resolves to)."""
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, type_, proto, _, sockaddr = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        if family == trio.socket.AF_INET6:
            sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
        await sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock
