"""A minimal heavy-bus client for the file service tests: tickets over a
logged-in :class:`LoopbackClient`, transfers over a second loopback
connection with the heavy-bus configuration."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import trio

from elink_protocol import Connection, HandshakeComplete, Packet, Role, heavy_bus_config
from elink_protocol.app import (
    MAX_DATA_BLOCK,
    Admit,
    Admitted,
    ChunkAck,
    ChunkEnd,
    Data,
    Done,
    DownloadTicket,
    OpenDownload,
    OpenUpload,
    RequestFailed,
    TransferFailed,
    UploadTicket,
)
from tests.helpers.server import WAIT, LoopbackClient, client_config

_rids = iter(range(1000, 1 << 30))


async def request(client: LoopbackClient, packet: Packet) -> Packet:
    """Send a request and return its final answer (skipping pushes)."""
    await client.send(packet)
    rid = packet.rid  # type: ignore[attr-defined]
    while True:
        event = await client.next_event()
        if getattr(event, "rid", None) == rid:
            assert isinstance(event, Packet)
            return event


async def open_upload(
    client: LoopbackClient, data: bytes, *, name: str = "f.bin", upload_id: bytes = b"", **kw: Any
) -> UploadTicket | RequestFailed:
    answer = await request(
        client,
        OpenUpload(
            rid=next(_rids),
            name=name,
            size=kw.get("size", len(data)),
            sha256=kw.get("sha256", hashlib.sha256(data).digest()),
            media_type=kw.get("media_type", "application/octet-stream"),
            upload_id=upload_id,
        ),
    )
    assert isinstance(answer, UploadTicket | RequestFailed), answer
    return answer


async def open_download(
    client: LoopbackClient, file_id: bytes, msg_id: int = 0
) -> DownloadTicket | RequestFailed:
    answer = await request(client, OpenDownload(rid=next(_rids), file_id=file_id, msg_id=msg_id))
    assert isinstance(answer, DownloadTicket | RequestFailed), answer
    return answer


class HeavyClient:
    """One heavy-bus connection, driven step by step."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = Connection(
            role=Role.CLIENT, config=heavy_bus_config(client_config()), now=trio.current_time()
        )

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def send(self, packet: Packet) -> None:
        self.conn.queue(packet)
        await self.flush()

    async def next_packet(self) -> Packet:
        """The next packet (handshake events skipped); ConnectionClosed and
        EOF raise EOFError."""
        with trio.fail_after(WAIT):
            while True:
                event = self.conn.next_event()
                await self.flush()
                if isinstance(event, HandshakeComplete):
                    continue
                if isinstance(event, Packet):
                    return event
                if type(event).__name__ == "ConnectionClosed":
                    raise EOFError(str(event))
                try:
                    data = await self.stream.receive_some(262144)
                except trio.BrokenResourceError:
                    data = b""
                self.conn.receive_data(data, now=trio.current_time())
                if not data and self.conn.state.value == "CLOSED":
                    # drain what was decoded before EOF
                    continue


async def connect_heavy(port: int, token: bytes, user: str, **admit: Any) -> HeavyClient:
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = HeavyClient(stream)
    client.conn.initiate(now=trio.current_time())
    await client.send(Admit(token=token, user=user, **admit))
    return client


async def upload_bytes(
    client: LoopbackClient,
    user: str,
    data: bytes,
    *,
    name: str = "f.bin",
    media_type: str = "application/octet-stream",
    cut_after: int | None = None,
    corrupt_chunk: int | None = None,
    ticket: UploadTicket | None = None,
) -> Done | TransferFailed | int:
    """Upload ``data`` (resuming where the server says).  ``cut_after``:
    close the heavy connection after sending that many bytes and return the
    last acknowledged offset.  ``corrupt_chunk``: flip a byte of that chunk
    the first time it is sent (the ChunkEnd carries the true hash)."""
    if ticket is None:
        answer = await open_upload(client, data, name=name, media_type=media_type)
        assert isinstance(answer, UploadTicket), answer
        ticket = answer
    heavy = await connect_heavy(ticket.port, ticket.token, user)
    async with heavy.stream:
        first = await heavy.next_packet()
        if not isinstance(first, Admitted):
            assert isinstance(first, TransferFailed | Done), first
            return first
        offset, cs = first.offset, first.chunk_size
        sent = 0
        acked = offset
        corrupted = False
        while offset < len(data):
            chunk = data[offset : offset + cs]
            wire = chunk
            if corrupt_chunk is not None and offset // cs == corrupt_chunk and not corrupted:
                corrupted = True
                wire = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
            for i in range(0, len(wire), MAX_DATA_BLOCK):
                block = wire[i : i + MAX_DATA_BLOCK]
                await heavy.send(Data(offset=offset + i, data=block))
                sent += len(block)
                if cut_after is not None and sent >= cut_after:
                    return acked
            await heavy.send(
                ChunkEnd(offset=offset, length=len(chunk), sha256=hashlib.sha256(chunk).digest())
            )
            answer = await heavy.next_packet()
            if isinstance(answer, TransferFailed):
                return answer
            assert isinstance(answer, ChunkAck), answer
            acked = offset = answer.offset
        final = await heavy.next_packet()
        assert isinstance(final, Done | TransferFailed), final
        return final


async def download_bytes(
    port: int,
    token: bytes,
    user: str,
    *,
    offset: int = 0,
    length: int = 0,
    on_chunk: Callable[[int], None] | None = None,
    keep: bool = True,
) -> bytes | TransferFailed:
    """Download a range, checking every chunk's hash.  ``keep=False``
    returns the SHA-256 of the range instead of its bytes (streaming)."""
    heavy = await connect_heavy(port, token, user, offset=offset, length=length)
    async with heavy.stream:
        first = await heavy.next_packet()
        if isinstance(first, TransferFailed):
            return first
        assert isinstance(first, Admitted), first
        out = bytearray()
        received = 0
        whole = hashlib.sha256()
        chunk = bytearray()
        while True:
            packet = await heavy.next_packet()
            if isinstance(packet, Data):
                assert packet.offset == first.offset + received + len(chunk)
                chunk += packet.data
            elif isinstance(packet, ChunkEnd):
                assert hashlib.sha256(chunk).digest() == packet.sha256
                received += len(chunk)
                if keep:
                    out += chunk
                else:
                    whole.update(chunk)
                chunk.clear()
                if on_chunk is not None:
                    on_chunk(received)
            elif isinstance(packet, Done):
                assert received == first.length
                return bytes(out) if keep else whole.digest()
            else:
                assert isinstance(packet, TransferFailed), packet
                return packet
