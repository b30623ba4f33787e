"""The heavy bus (§9): tickets on the light bus, admission, chunks,
downloads and folder manifests, over the suite's own heavy-bus connections
(:meth:`conformance.case.Context.heavy`), which can send wrong bytes on
purpose.  Files are small (one or two chunks of the server's size, 64 KiB
at the least), so the section takes a few seconds against a local server,
most of it waiting for a token to expire (EL-9.3-2) and for the admission
deadline (EL-9.5.1-2)."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import attrs
import msgpack
import trio

from conformance.case import Context, case
from conformance.requirements import Level
from conformance.results import Fail, Skip
from conformance.session import Client, failed
from conformance.wire import Closed, code_name
from elink_protocol import ErrorCode
from elink_protocol import packets as p
from elink_protocol.app import (
    FOLDER_MEDIA_TYPE,
    MAX_DATA_BLOCK,
    Admit,
    Admitted,
    AppErrorCode,
    ChunkAck,
    ChunkEnd,
    Data,
    Done,
    DownloadTicket,
    MessageAccepted,
    OpenDownload,
    OpenUpload,
    Recall,
    RecallOk,
    RequestFailed,
    SendMessage,
    TransferFailed,
    TransferRef,
    UploadTicket,
    file_content,
)
from elink_protocol.payload import encode_payload

MUST, SHOULD = Level.MUST, Level.SHOULD

#: The longest a token may live and still count as "a few minutes" (§9.3).
FEW_MINUTES_MS = 15 * 60 * 1000
#: How long a case watches for a ChunkAck that must not come yet.
EARLY_ACK_WATCH = 0.2


@attrs.frozen(kw_only=True)
class Stored:
    """A file the case uploaded."""

    id: bytes
    data: bytes
    name: str
    media_type: str

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.data).digest()

    def ref(self, token: bytes = b"") -> TransferRef:
        return TransferRef(
            id=self.id,
            size=len(self.data),
            sha256=self.sha256,
            name=self.name,
            media_type=self.media_type,
            token=token,
        )


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def content(size: int) -> bytes:
    """``size`` fresh random bytes (no two runs share content)."""
    return os.urandom(size)


# --- light bus: tickets -----------------------------------------------------------


async def upload_ticket(
    client: Client,
    ctx: Context,
    data: bytes,
    *,
    name: str = "conformance.bin",
    media_type: str = "application/octet-stream",
    upload_id: bytes = b"",
    sha256: bytes | None = None,
) -> UploadTicket:
    request = OpenUpload(
        rid=client.rid(),
        name=name,
        size=len(data),
        sha256=sha(data) if sha256 is None else sha256,
        media_type=media_type,
        upload_id=upload_id,
    )
    ticket = await client.expect_answer(request, UploadTicket, ctx.wait)
    assert isinstance(ticket, UploadTicket)
    return ticket


async def download_ticket(
    client: Client, ctx: Context, file_id: bytes, msg_id: int = 0
) -> DownloadTicket:
    request = OpenDownload(rid=client.rid(), file_id=file_id, msg_id=msg_id)
    ticket = await client.expect_answer(request, DownloadTicket, ctx.wait)
    assert isinstance(ticket, DownloadTicket)
    return ticket


async def download_refused(
    client: Client, ctx: Context, file_id: bytes, msg_id: int, code: int, *, what: str
) -> None:
    request = OpenDownload(rid=client.rid(), file_id=file_id, msg_id=msg_id)
    answer = await client.request(request, ctx.wait)
    if not isinstance(answer, RequestFailed) or answer.code != code:
        raise Fail(
            f"{client.name}: OpenDownload {what} was answered {failed(answer)}, "
            f"expected RequestFailed {code_name(code)}"
        )


# --- heavy bus ----------------------------------------------------------------------


async def heavy_next(client: Client, ctx: Context, what: str) -> p.Packet:
    """The next heavy-bus packet (control packets skipped); a Close or
    silence fails the case."""
    deadline = time.monotonic() + ctx.wait
    while True:
        event = await client.poll(max(0.0, deadline - time.monotonic()))
        if event is None:
            raise Fail(f"{client.name}: expected {what} within {ctx.wait:g} s, got nothing")
        if isinstance(event, Closed):
            raise Fail(f"{client.name}: expected {what}, got {event.describe()}")
        if event.packet.TYPE >= 0x0100:
            return event.packet


async def admit(
    ctx: Context,
    port: int,
    host: str,
    token: bytes,
    user: str,
    *,
    offset: int = 0,
    length: int = 0,
) -> tuple[Client, p.Packet]:
    """A heavy-bus connection that presents ``token``; returns it with the
    server's first answer (Admitted, Done or TransferFailed)."""
    heavy, _ = await ctx.heavy(port, host)
    await heavy.send(Admit(token=token, user=user, offset=offset, length=length))
    first = await heavy_next(heavy, ctx, "the answer to Admit")
    if not isinstance(first, Admitted | Done | TransferFailed):
        raise Fail(f"{heavy.name}: Admit was answered {type(first).__name__}")
    return heavy, first


async def admitted(
    ctx: Context, ticket: UploadTicket | DownloadTicket, user: str, **range_: int
) -> tuple[Client, Admitted]:
    token = ticket.token if isinstance(ticket, UploadTicket) else ticket.ref.token
    heavy, first = await admit(ctx, ticket.port, ticket.host, token, user, **range_)
    if not isinstance(first, Admitted):
        raise Fail(f"{heavy.name}: Admit was answered {_name(first)}, expected Admitted")
    return heavy, first


def _name(packet: p.Packet) -> str:
    if isinstance(packet, TransferFailed):
        reason = f" ({packet.reason!r})" if packet.reason else ""
        return f"TransferFailed {code_name(packet.code)}{reason}"
    return type(packet).__name__


async def expect_transfer_failed(heavy: Client, ctx: Context, code: int, *, what: str) -> None:
    """The server answers TransferFailed ``code`` after ``what``, then
    closes the connection (§9.8)."""
    answer = await heavy_next(heavy, ctx, f"TransferFailed {code_name(code)} after {what}")
    while isinstance(answer, ChunkAck):  # acks of chunks sent before
        answer = await heavy_next(heavy, ctx, f"TransferFailed {code_name(code)} after {what}")
    if not isinstance(answer, TransferFailed) or answer.code != code:
        raise Fail(
            f"{heavy.name}: {what} was answered {_name(answer)}, "
            f"expected TransferFailed {code_name(code)}"
        )
    await heavy.expect_close(ctx.wait)


async def send_chunk(
    heavy: Client,
    offset: int,
    chunk: bytes,
    *,
    wire: bytes | None = None,
    end: bool = True,
    length: int | None = None,
) -> None:
    """Data packets for ``wire`` (default ``chunk``) at ``offset``, then a
    ChunkEnd carrying ``chunk``'s true hash and ``length`` (default its
    length)."""
    body = chunk if wire is None else wire
    for i in range(0, len(body), MAX_DATA_BLOCK):
        await heavy.send(Data(offset=offset + i, data=body[i : i + MAX_DATA_BLOCK]))
    if end:
        await heavy.send(
            ChunkEnd(
                offset=offset,
                length=len(chunk) if length is None else length,
                sha256=sha(chunk),
            )
        )


async def expect_ack(heavy: Client, ctx: Context, offset: int, *, ok: bool = True) -> ChunkAck:
    answer = await heavy_next(heavy, ctx, "ChunkAck")
    if not isinstance(answer, ChunkAck):
        raise Fail(f"{heavy.name}: expected ChunkAck o={offset}, got {_name(answer)}")
    if answer.offset != offset or answer.ok != ok:
        raise Fail(
            f"{heavy.name}: ChunkAck o={answer.offset} ok={answer.ok}, expected o={offset} ok={ok}"
        )
    return answer


async def send_rest(heavy: Client, ctx: Context, data: bytes, start: int, cs: int) -> None:
    """Every chunk from ``start``, each acknowledged before the next."""
    offset = start
    while offset < len(data):
        chunk = data[offset : offset + cs]
        await send_chunk(heavy, offset, chunk)
        offset += len(chunk)
        await expect_ack(heavy, ctx, offset)


async def expect_done(heavy: Client, ctx: Context, file_id: bytes, data: bytes) -> Done:
    done = await heavy_next(heavy, ctx, "Done")
    if not isinstance(done, Done):
        raise Fail(f"{heavy.name}: expected Done, got {_name(done)}")
    if (done.file_id, done.size, done.sha256) != (file_id, len(data), sha(data)):
        raise Fail(
            f"{heavy.name}: Done names id {done.file_id.hex()} size {done.size} hash "
            f"{done.sha256.hex()[:16]}..., expected id {file_id.hex()} size {len(data)} "
            f"hash {sha(data).hex()[:16]}..."
        )
    await heavy.expect_close(ctx.wait)
    return done


async def upload(
    client: Client,
    ctx: Context,
    data: bytes,
    *,
    name: str = "conformance.bin",
    media_type: str = "application/octet-stream",
) -> Stored:
    """A whole, correct upload, every step checked."""
    ticket = await upload_ticket(client, ctx, data, name=name, media_type=media_type)
    heavy, first = await admitted(ctx, ticket, client.user)
    check_admitted(first, ticket.upload_id, 0, len(data))
    await send_rest(heavy, ctx, data, 0, first.chunk_size)
    await expect_done(heavy, ctx, ticket.upload_id, data)
    return Stored(id=ticket.upload_id, data=data, name=name, media_type=media_type)


def check_admitted(first: Admitted, file_id: bytes, offset: int, size: int) -> None:
    if first.file_id != file_id or first.offset != offset or first.size != size:
        raise Fail(
            f"Admitted id={first.file_id.hex()} o={first.offset} sz={first.size}, "
            f"expected id={file_id.hex()} o={offset} sz={size}"
        )
    if first.length != size - offset:
        raise Fail(f"Admitted n={first.length} for an upload of {size} bytes from {offset}")


async def chunk_size(client: Client, ctx: Context) -> int:
    """The server's upload chunk size, from a ticket for an empty file (a
    new upload reserves nothing)."""
    ticket = await upload_ticket(client, ctx, b"", name="probe.bin")
    return ticket.chunk_size


async def download(
    ctx: Context, ticket: DownloadTicket, user: str, *, offset: int = 0, length: int = 0
) -> bytes:
    """The bytes of a range, checked as §9.6 says: Data in order without
    gaps, never across a chunk boundary (chunks counted from the range's
    start), every chunk's SHA-256 verified, Done after the last chunk."""
    heavy, first = await admitted(ctx, ticket, user, offset=offset, length=length)
    ref = ticket.ref
    want = length or ref.size - offset
    if (first.file_id, first.offset, first.length, first.size) != (ref.id, offset, want, ref.size):
        raise Fail(
            f"{heavy.name}: Admitted id={first.file_id.hex()} o={first.offset} "
            f"n={first.length} sz={first.size} for the range o={offset} n={length} "
            f"of {ref.size} bytes"
        )
    cs = first.chunk_size
    out = bytearray()
    chunk = bytearray()
    while True:
        packet = await heavy_next(heavy, ctx, "Data, ChunkEnd or Done")
        position = offset + len(out) + len(chunk)
        if isinstance(packet, Data):
            if packet.offset != position:
                raise Fail(f"{heavy.name}: Data at {packet.offset}, expected {position}")
            if len(chunk) + len(packet.data) > cs:
                raise Fail(
                    f"{heavy.name}: Data at {packet.offset} ({len(packet.data)} bytes) "
                    f"crosses a chunk boundary (cs={cs}, §9.6.1)"
                )
            chunk += packet.data
        elif isinstance(packet, ChunkEnd):
            start = offset + len(out)
            expected_n = min(cs, offset + want - start)
            if packet.offset != start or packet.length != len(chunk) or len(chunk) != expected_n:
                raise Fail(
                    f"{heavy.name}: ChunkEnd o={packet.offset} n={packet.length} after "
                    f"{len(chunk)} bytes from {start} (expected n={expected_n})"
                )
            if sha(bytes(chunk)) != packet.sha256:
                raise Fail(f"{heavy.name}: the chunk at {start} does not match its SHA-256")
            out += chunk
            chunk.clear()
        elif isinstance(packet, Done):
            if chunk or len(out) != want:
                raise Fail(
                    f"{heavy.name}: Done after {len(out)} bytes in chunks "
                    f"(+{len(chunk)} unended), expected {want}"
                )
            if (packet.file_id, packet.size, packet.sha256) != (ref.id, ref.size, ref.sha256):
                raise Fail(f"{heavy.name}: Done does not name the file of the ticket")
            await heavy.expect_close(ctx.wait)
            return bytes(out)
        else:
            raise Fail(f"{heavy.name}: during a download the server sent {_name(packet)}")


def server_now_ms(client: Client) -> float:
    """The server's clock now, from LoginOk ``st`` and the time since it
    arrived (an upper bound: the answer took some time to come)."""
    assert client.login_ok is not None
    return client.login_ok.server_time_ms + (time.monotonic() - client.logged_in_at) * 1000


# --- §9.1 ---------------------------------------------------------------------------


@case(
    "EL-9.1-1",
    "Each bus refuses the other's packets with UNEXPECTED_PACKET",
    MUST,
    covers=["9.1-1"],
    users=1,
)
async def wrong_bus(ctx: Context) -> None:
    """On a logged-in light-bus connection, an Admit (0x0440, well-formed)
    must be answered Close UNEXPECTED_PACKET.  On a heavy-bus connection
    admitted for an upload, an OpenDownload (0x0402, well-formed) must be
    answered Close UNEXPECTED_PACKET."""
    a, _ = await ctx.logged_in(0, name="A")
    ticket = await upload_ticket(a, ctx, content(100))
    light, _ = await ctx.logged_in(0, name="light")
    await light.send(Admit(token=ticket.token, user=light.user))
    await ctx.expect_close(light, ErrorCode.UNEXPECTED_PACKET, what="Admit on the light bus")
    heavy, _ = await admitted(ctx, ticket, a.user)
    await heavy.send(OpenDownload(rid=1, file_id=ticket.upload_id))
    await ctx.expect_close(heavy, ErrorCode.UNEXPECTED_PACKET, what="OpenDownload on the heavy bus")


# --- §9.2 ---------------------------------------------------------------------------


@case(
    "EL-9.2.1-1",
    "An upload claiming stored content's hash is not skipped: wrong bytes get HASH_MISMATCH",
    MUST,
    covers=["9.2.1-1"],
    users=2,
)
async def no_upload_by_claim(ctx: Context) -> None:
    """A uploads a file.  B asks to upload a file of the same size and
    SHA-256: the ticket and Admitted must start at offset 0 (no Done), and
    when B sends other bytes (each chunk with its own correct hash), the
    server must answer TransferFailed HASH_MISMATCH after the last ChunkAck,
    not Done; resuming, B's upload starts again at 0 (§9.7.1).  B resuming
    A's upload id (with its size and hash) gets NOT_FOUND (§9.2.1)."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    original = await upload(a, ctx, content(1000))
    ticket = await upload_ticket(b, ctx, original.data, name="claim.bin")
    if ticket.offset != 0:
        raise Fail(f"B's ticket for content it never sent starts at offset {ticket.offset}")
    heavy, first = await admit(ctx, ticket.port, ticket.host, ticket.token, b.user)
    if not isinstance(first, Admitted):
        raise Fail(f"B's Admit was answered {_name(first)}: the upload was skipped")
    check_admitted(first, ticket.upload_id, 0, len(original.data))
    other = content(len(original.data))
    await send_chunk(heavy, 0, other)
    await expect_ack(heavy, ctx, len(other))
    await expect_transfer_failed(
        heavy, ctx, AppErrorCode.HASH_MISMATCH, what="bytes that do not match OpenUpload h"
    )
    again = await upload_ticket(b, ctx, original.data, upload_id=ticket.upload_id)
    if again.offset != 0:
        raise Fail(f"after HASH_MISMATCH the resuming ticket says o={again.offset}, expected 0")
    request = OpenUpload(
        rid=b.rid(),
        name="claim.bin",
        size=len(original.data),
        sha256=original.sha256,
        media_type=original.media_type,
        upload_id=original.id,
    )
    await b.expect_failure(request, AppErrorCode.NOT_FOUND, ctx.wait)


# --- §9.3 ---------------------------------------------------------------------------


@case(
    "EL-9.3-1",
    "Forged tokens and tokens presented by another user get TOKEN_INVALID",
    MUST,
    covers=["9.3-1"],
    users=2,
)
async def forged_tokens(ctx: Context) -> None:
    """With A's upload ticket, heavy-bus connections present: the token
    with its first byte changed, with its last byte changed, random bytes of
    the same length, and the true token with B's name as ``u``.  Each must
    be answered TransferFailed TOKEN_INVALID.  Then B presents B's own
    download token for B's file with A's name: TOKEN_INVALID too."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    ticket = await upload_ticket(a, ctx, content(100))
    tok = ticket.token
    attempts = [
        ("a token with its first byte changed", bytes([tok[0] ^ 1]) + tok[1:], a.user),
        ("a token with its last byte changed", tok[:-1] + bytes([tok[-1] ^ 1]), a.user),
        ("random bytes of a token's length", os.urandom(len(tok)), a.user),
        ("A's token presented as B", tok, b.user),
    ]
    mine = await upload(b, ctx, content(100))
    dl = await download_ticket(b, ctx, mine.id)
    attempts.append(("B's download token presented as A", dl.ref.token, a.user))
    for what, token, user in attempts:
        heavy, first = await admit(ctx, ticket.port, ticket.host, token, user)
        if not isinstance(first, TransferFailed) or first.code != AppErrorCode.TOKEN_INVALID:
            raise Fail(
                f"{heavy.name}: {what} was answered {_name(first)}, "
                "expected TransferFailed TOKEN_INVALID"
            )
        await heavy.expect_close(ctx.wait)


@case(
    "EL-9.3-2",
    "A token past its expiry gets TOKEN_INVALID",
    MUST,
    covers=["9.3-1"],
    users=1,
)
async def expired_token(ctx: Context) -> None:
    """A asks for an upload ticket, waits until its ``ex`` has passed on the
    server's clock (learnt from LoginOk ``st``), then presents the token:
    TransferFailed TOKEN_INVALID.  Skipped when the token lives longer than
    --max-wait."""
    a, _ = await ctx.logged_in(0, name="A")
    ticket = await upload_ticket(a, ctx, content(100))
    wait = (ticket.expires_at_ms - server_now_ms(a)) / 1000 + 0.1
    ctx.need_wait(wait, "waiting for the token to expire")
    await trio.sleep(max(0.0, wait))
    heavy, first = await admit(ctx, ticket.port, ticket.host, ticket.token, a.user)
    if not isinstance(first, TransferFailed) or first.code != AppErrorCode.TOKEN_INVALID:
        raise Fail(
            f"{heavy.name}: an expired token was answered {_name(first)}, "
            "expected TransferFailed TOKEN_INVALID"
        )


@case(
    "EL-9.3-3",
    "Admission tokens live a few minutes, not longer",
    SHOULD,
    covers=["9.3-2"],
    users=1,
)
async def token_lifetime(ctx: Context) -> None:
    """A's upload ticket's ``ex`` must lie in the future on the server's
    clock and at most 15 minutes ahead."""
    a, _ = await ctx.logged_in(0, name="A")
    ticket = await upload_ticket(a, ctx, content(100))
    left = (ticket.expires_at_ms - server_now_ms(a)) / 1000
    ctx.note(f"the token lives {left:.1f} s")
    if left <= 0:
        raise Fail(f"the ticket's token expired {-left:.1f} s before it was issued")
    if left * 1000 > FEW_MINUTES_MS:
        raise Fail(f"the token lives {left / 60:.0f} minutes")


# --- §9.4 ---------------------------------------------------------------------------


@case(
    "EL-9.4-1",
    "The heavy bus takes payloads up to 65,471 bytes and refuses larger with FRAME_TOO_LARGE",
    MUST,
    covers=["9.4-1"],
    users=1,
)
async def heavy_frame_sizes(ctx: Context) -> None:
    """Uploading a file of 65,280 bytes (one chunk), the client sends one
    Data packet carrying all of it, padded with an unknown key (§5.4) to a
    plaintext of exactly 65,471 bytes; the chunk must be acknowledged and
    the upload end with Done.  On another admitted upload a Data payload of
    65,472 bytes (frame length still within a u16) must be answered Close
    FRAME_TOO_LARGE."""
    a, _ = await ctx.logged_in(0, name="A")
    data = content(MAX_DATA_BLOCK)
    ticket = await upload_ticket(a, ctx, data)
    heavy, first = await admitted(ctx, ticket, a.user)
    if first.chunk_size < len(data):
        raise Fail(f"Admitted cs={first.chunk_size}, below the 65,536 of §9.2.2")
    payload = _padded_data(0, data, 65_471)
    await heavy.send_payload(Data.TYPE, payload, priority=Data.PRIORITY, note="Data 65,471 bytes")
    await heavy.send(ChunkEnd(offset=0, length=len(data), sha256=sha(data)))
    await expect_ack(heavy, ctx, len(data))
    await expect_done(heavy, ctx, ticket.upload_id, data)
    more = content(MAX_DATA_BLOCK)
    ticket = await upload_ticket(a, ctx, more)
    heavy, _ = await admitted(ctx, ticket, a.user)
    payload = _padded_data(0, more, 65_472)
    await heavy.send_payload(Data.TYPE, payload, priority=Data.PRIORITY, note="Data 65,472 bytes")
    await ctx.expect_close(heavy, ErrorCode.FRAME_TOO_LARGE, what="a 65,472-byte payload")


def _padded_data(offset: int, data: bytes, size: int) -> bytes:
    """A Data payload of exactly ``size`` bytes: ``o`` and ``d``, and an
    unknown key ``zz`` that a receiver ignores (§5.4)."""
    base = len(encode_payload({"o": offset, "d": data, "zz": b""}))
    pad = size - base
    for extra in range(pad, max(-1, pad - 6), -1):
        body = encode_payload({"o": offset, "d": data, "zz": b"\0" * extra})
        if len(body) == size:
            return body
    raise AssertionError(f"cannot pad a Data payload to {size} bytes")


# --- §9.5 ---------------------------------------------------------------------------


@case(
    "EL-9.5.1-1",
    "The first packet on the heavy bus must be Admit: anything else is INVALID_REQUEST",
    MUST,
    covers=["9.5.1-1"],
    users=1,
)
async def admit_first(ctx: Context) -> None:
    """On a heavy-bus connection, right after the handshake, the client
    sends Data (o=0, one byte) instead of Admit: TransferFailed
    INVALID_REQUEST, then the server closes.  The same with a ChunkEnd."""
    a, _ = await ctx.logged_in(0, name="A")
    ticket = await upload_ticket(a, ctx, content(10))
    for packet in (
        Data(offset=0, data=b"x"),
        ChunkEnd(offset=0, length=1, sha256=sha(b"x")),
    ):
        heavy, _ = await ctx.heavy(ticket.port, ticket.host)
        await heavy.send(packet)
        await expect_transfer_failed(
            heavy, ctx, AppErrorCode.INVALID_REQUEST, what=f"{type(packet).__name__} before Admit"
        )


@case(
    "EL-9.5.1-2",
    "A heavy-bus connection that sends no Admit is closed within the handshake timeout",
    MUST,
    covers=["9.5.1-2"],
    users=1,
)
async def admit_deadline(ctx: Context) -> None:
    """A heavy-bus connection completes the handshake and sends nothing (it
    answers Pings).  The server must close it within --handshake-timeout
    (plus --wait)."""
    limit = ctx.options.handshake_timeout + ctx.wait
    ctx.need_wait(limit, "waiting for the heavy-bus admission deadline")
    a, _ = await ctx.logged_in(0, name="A")
    ticket = await upload_ticket(a, ctx, content(10))
    heavy, _ = await ctx.heavy(ticket.port, ticket.host)
    started = time.monotonic()
    closed = await heavy.expect_close(limit)
    ctx.note(f"closed after {time.monotonic() - started:.2f} s with {closed.describe()}")


@case(
    "EL-9.5.3-1",
    "A resumed upload continues at Admitted o; bytes sent before that point are RANGE_INVALID",
    MUST,
    covers=["9.5.3-1"],
    users=1,
)
async def resume_at_durable_offset(ctx: Context) -> None:
    """A uploads the first chunk of a two-chunk file (acknowledged) and the
    Data of the second without its ChunkEnd, then drops the connection.
    OpenUpload with the upload's ``id`` must give a ticket at the first
    chunk's end, and Admitted must say the same offset; Data continuing
    where the client had got to must be answered TransferFailed
    RANGE_INVALID.  A new connection that continues at Admitted ``o`` must
    complete the upload (Done), and the downloaded file must be the bytes
    sent."""
    a, _ = await ctx.logged_in(0, name="A")
    cs = await chunk_size(a, ctx)
    data = content(cs + 1000)
    ticket = await upload_ticket(a, ctx, data)
    heavy, first = await admitted(ctx, ticket, a.user)
    await send_chunk(heavy, 0, data[:cs])
    await expect_ack(heavy, ctx, cs)
    await send_chunk(heavy, cs, data[cs:], end=False)
    await heavy.aclose()
    again = await upload_ticket(a, ctx, data, upload_id=ticket.upload_id)
    if again.offset != cs or again.upload_id != ticket.upload_id:
        raise Fail(
            f"the resuming ticket says id {again.upload_id.hex()} o={again.offset}, "
            f"expected id {ticket.upload_id.hex()} o={cs}"
        )
    heavy, first = await admitted(ctx, again, a.user)
    check_admitted(first, ticket.upload_id, cs, len(data))
    await heavy.send(Data(offset=len(data), data=b"z"))
    await expect_transfer_failed(
        heavy, ctx, AppErrorCode.RANGE_INVALID, what="Data beyond the durable offset"
    )
    again = await upload_ticket(a, ctx, data, upload_id=ticket.upload_id)
    heavy, first = await admitted(ctx, again, a.user)
    check_admitted(first, ticket.upload_id, cs, len(data))
    await send_rest(heavy, ctx, data, first.offset, first.chunk_size)
    await expect_done(heavy, ctx, ticket.upload_id, data)
    back = await download(ctx, await download_ticket(a, ctx, ticket.upload_id), a.user)
    if back != data:
        raise Fail("the resumed upload's stored content differs from the bytes sent")


# --- §9.6 ---------------------------------------------------------------------------


@case(
    "EL-9.6.1-1",
    "Data across a chunk boundary, out of order or repeated is RANGE_INVALID",
    MUST,
    covers=["9.6.1-1"],
    users=1,
)
async def data_ranges(ctx: Context) -> None:
    """For a file of one chunk and 1000 bytes: (1) Data filling the first
    chunk but 100 bytes, then a Data of 200 bytes that crosses the chunk
    boundary; (2) on a new connection, Data at offset 10 first (a gap);
    (3) Data at 0 then the same Data again (a repeat).  Each must be
    answered TransferFailed RANGE_INVALID."""
    a, _ = await ctx.logged_in(0, name="A")
    cs = await chunk_size(a, ctx)
    data = content(cs + 1000)
    ticket = await upload_ticket(a, ctx, data)
    heavy, _ = await admitted(ctx, ticket, a.user)
    await send_chunk(heavy, 0, data[: cs - 100], end=False)
    await heavy.send(Data(offset=cs - 100, data=data[cs - 100 : cs + 100]))
    await expect_transfer_failed(
        heavy, ctx, AppErrorCode.RANGE_INVALID, what="Data across the chunk boundary"
    )
    for what, blocks in (
        ("Data at offset 10 first", [(10, data[10:20])]),
        ("the same Data twice", [(0, data[:10]), (0, data[:10])]),
    ):
        again = await upload_ticket(a, ctx, data, upload_id=ticket.upload_id)
        heavy, first = await admitted(ctx, again, a.user)
        check_admitted(first, ticket.upload_id, 0, len(data))
        for offset, block in blocks:
            await heavy.send(Data(offset=offset, data=block))
        await expect_transfer_failed(heavy, ctx, AppErrorCode.RANGE_INVALID, what=what)


@case(
    "EL-9.6.4-1",
    "A chunk is acknowledged only once durable: the ack follows ChunkEnd and survives a cut",
    MUST,
    covers=["9.6.4-1"],
    users=1,
)
async def ack_means_durable(ctx: Context) -> None:
    """A sends the Data of the first of two chunks and waits: no ChunkAck may
    come before the ChunkEnd.  After the ChunkEnd, ChunkAck o=cs; the client
    drops the connection at once.  A resuming OpenUpload must say o=cs (the
    acknowledged bytes are durable) and so must Admitted; the client sends
    the rest: ChunkAck o=size, then Done with the upload id, size and hash.
    The download must return the bytes sent.  A completed upload asked for
    again (OpenUpload ``id``) must get a ticket whose connection answers
    Admit with Done."""
    a, _ = await ctx.logged_in(0, name="A")
    cs = await chunk_size(a, ctx)
    data = content(cs + 1000)
    ticket = await upload_ticket(a, ctx, data)
    heavy, _ = await admitted(ctx, ticket, a.user)
    await send_chunk(heavy, 0, data[:cs], end=False)
    early = await heavy.poll(EARLY_ACK_WATCH)
    while early is not None and not isinstance(early, Closed) and early.packet.TYPE < 0x0100:
        early = await heavy.poll(EARLY_ACK_WATCH)
    if early is not None:
        what = early.describe() if isinstance(early, Closed) else _name(early.packet)
        raise Fail(f"{heavy.name}: before the ChunkEnd the server sent {what}")
    await heavy.send(ChunkEnd(offset=0, length=cs, sha256=sha(data[:cs])))
    await expect_ack(heavy, ctx, cs)
    await heavy.aclose()
    again = await upload_ticket(a, ctx, data, upload_id=ticket.upload_id)
    if again.offset != cs:
        raise Fail(f"after ChunkAck o={cs} and a cut, the resuming ticket says o={again.offset}")
    heavy, first = await admitted(ctx, again, a.user)
    check_admitted(first, ticket.upload_id, cs, len(data))
    await send_rest(heavy, ctx, data, cs, first.chunk_size)
    await expect_done(heavy, ctx, ticket.upload_id, data)
    back = await download(ctx, await download_ticket(a, ctx, ticket.upload_id), a.user)
    if back != data:
        raise Fail("the stored content differs from the bytes sent")
    again = await upload_ticket(a, ctx, data, upload_id=ticket.upload_id)
    heavy, final = await admit(ctx, again.port, again.host, again.token, a.user)
    if not isinstance(final, Done):
        raise Fail(f"{heavy.name}: Admit for a completed upload was answered {_name(final)}")
    if (final.file_id, final.size, final.sha256) != (ticket.upload_id, len(data), sha(data)):
        raise Fail(f"{heavy.name}: the repeated Done does not name the stored file")


@case(
    "EL-9.6.4-2",
    "A chunk with a wrong hash or length gets ok=false and the unchanged offset",
    MUST,
    covers=["9.6.4-2"],
    users=1,
)
async def bad_chunks(ctx: Context) -> None:
    """Of a two-chunk file: the first chunk with one byte flipped (ChunkEnd
    carrying the true hash) must get ChunkAck ok=false o=0; sent again
    correctly, ChunkAck o=cs.  The second chunk sent one byte short (its
    ChunkEnd consistent with what was sent) must get ok=false o=cs; sent
    again correctly, ChunkAck o=size and Done.  The download must return
    the bytes sent (the bad ones were discarded)."""
    a, _ = await ctx.logged_in(0, name="A")
    cs = await chunk_size(a, ctx)
    data = content(cs + 1000)
    ticket = await upload_ticket(a, ctx, data)
    heavy, _ = await admitted(ctx, ticket, a.user)
    first = data[:cs]
    await send_chunk(heavy, 0, first, wire=bytes([first[0] ^ 0xFF]) + first[1:])
    await expect_ack(heavy, ctx, 0, ok=False)
    await send_chunk(heavy, 0, first)
    await expect_ack(heavy, ctx, cs)
    short = data[cs:-1]
    await send_chunk(heavy, cs, short)
    await expect_ack(heavy, ctx, cs, ok=False)
    await send_rest(heavy, ctx, data, cs, cs)
    await expect_done(heavy, ctx, ticket.upload_id, data)
    back = await download(ctx, await download_ticket(a, ctx, ticket.upload_id), a.user)
    if back != data:
        raise Fail("the stored content differs from the bytes sent")


@case(
    "EL-9.6.6-1",
    "Downloads: chunks that verify, ranges as asked, bad ranges RANGE_INVALID",
    MUST,
    covers=["9.6.6-1", "9.6.1-1"],
    users=1,
)
async def downloads(ctx: Context) -> None:
    """A uploads a file of one chunk and 1000 bytes and downloads: all of
    it; 1 chunk's worth from offset 100 (chunks counted from 100); the last
    10 bytes (n=0: to the end).  Every Data must follow the previous one and
    stay inside its chunk, every ChunkEnd's SHA-256 must match the bytes,
    Done must follow the last chunk, and the bytes must be the file's.
    Admit with o beyond the end, and with o+n beyond the end, must be
    answered TransferFailed RANGE_INVALID."""
    a, _ = await ctx.logged_in(0, name="A")
    cs = await chunk_size(a, ctx)
    stored = await upload(a, ctx, content(cs + 1000))
    size = len(stored.data)
    for offset, length in ((0, 0), (100, cs), (size - 10, 0)):
        ticket = await download_ticket(a, ctx, stored.id)
        got = await download(ctx, ticket, a.user, offset=offset, length=length)
        end = offset + length if length else size
        if got != stored.data[offset:end]:
            raise Fail(f"the bytes of the range o={offset} n={length} differ from the file's")
    for offset, length in ((size + 1, 0), (10, size)):
        ticket = await download_ticket(a, ctx, stored.id)
        heavy, first = await admit(
            ctx, ticket.port, ticket.host, ticket.ref.token, a.user, offset=offset, length=length
        )
        if not isinstance(first, TransferFailed) or first.code != AppErrorCode.RANGE_INVALID:
            raise Fail(
                f"{heavy.name}: the range o={offset} n={length} of a {size}-byte file "
                f"was answered {_name(first)}, expected RANGE_INVALID"
            )


# --- grants (§9.2.3, §9.10.3) ---------------------------------------------------------


@case(
    "EL-9.2.3-1",
    "OpenDownload: one's own file, a file through a message, nothing after a recall",
    MUST,
    covers=["11.7.3-2"],
    users=3,
)
async def download_grants(ctx: Context) -> None:
    """A uploads a file.  B may not download it as its own (m=0):
    NOT_FOUND.  A sends it to B in a file message: B's OpenDownload naming
    the message gets a ticket whose download returns the file; C (not in
    the conversation) naming the message gets NOT_FOUND, and so does B
    naming the message for another of A's files.  A recalls the
    message (inside the window): B's OpenDownload naming it is NOT_FOUND."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    c, _ = await ctx.logged_in(2, name="C")
    stored = await upload(a, ctx, content(1000))
    other = await upload(a, ctx, content(10))
    await download_refused(b, ctx, stored.id, 0, AppErrorCode.NOT_FOUND, what="of A's file, m=0")
    sent = await a.expect_answer(
        SendMessage(
            rid=a.rid(),
            client_msg_id=ctx.unique("cm"),
            to=b.user,
            kind="file",
            content=file_content(stored.ref()),
        ),
        MessageAccepted,
        ctx.wait,
    )
    assert isinstance(sent, MessageAccepted)
    ticket = await download_ticket(b, ctx, stored.id, sent.msg_id)
    if ticket.ref.id != stored.id or ticket.ref.sha256 != stored.sha256:
        raise Fail("B's download ticket names another file")
    if await download(ctx, ticket, b.user) != stored.data:
        raise Fail("B downloaded other bytes than A uploaded")
    await download_refused(
        c, ctx, stored.id, sent.msg_id, AppErrorCode.NOT_FOUND, what="by a non-member"
    )
    await download_refused(
        b, ctx, other.id, sent.msg_id, AppErrorCode.NOT_FOUND, what="of a file not in the message"
    )
    recall = await a.request(Recall(rid=a.rid(), msg_id=sent.msg_id), ctx.wait)
    if isinstance(recall, RequestFailed) and recall.code == AppErrorCode.RECALL_WINDOW_EXPIRED:
        raise Skip("the recall window passed before the case could recall the message")
    if not isinstance(recall, RecallOk):
        raise Fail(f"A's Recall was answered {failed(recall)}")
    await download_refused(
        b, ctx, stored.id, sent.msg_id, AppErrorCode.NOT_FOUND, what="through a recalled message"
    )


# --- §9.9 ---------------------------------------------------------------------------

#: Paths §9.9.4 makes a server refuse, each with what is wrong with it.
HOSTILE_PATHS: tuple[tuple[str, list[str]], ...] = (
    ("an empty path", [""]),
    ("an absolute path", ["/etc/passwd"]),
    ("an empty component", ["a//b"]),
    ("a '.' component", ["./a"]),
    ("a '..' component", ["a/../../b"]),
    ("a backslash", ["a\\b"]),
    ("a colon", ["C:x"]),
    ("a NUL", ["a\x00b"]),
    ("a Cc character", ["a\x1bb"]),
    ("a Cf character", ["a\u202eb"]),
    ("a Co character", ["a\ue000b"]),
    ("a Cn character", ["a\u0378b"]),
    ("a Cs character", ["a\ud800b"]),
    ("a component of 256 bytes", ["x" * 256]),
    ("a path twice", ["a", "a"]),
    ("a path inside another entry", ["a", "a/b"]),
)


def manifest(entries: list[dict[str, Any]]) -> bytes:
    """A manifest file, packed as it is (surrogates allowed, to be wrong)."""
    data: bytes = msgpack.packb(
        {"v": 1, "e": entries}, use_bin_type=True, unicode_errors="surrogatepass"
    )
    return data


def entry(path: str, stored: Stored, **changes: Any) -> dict[str, Any]:
    fields = {"p": path, "id": stored.id, "sz": len(stored.data), "h": stored.sha256}
    fields.update(changes)
    return fields


async def refused_manifests(
    client: Client, ctx: Context, manifests: list[tuple[str, bytes]], code: int
) -> None:
    """Uploading each manifest is acknowledged chunk by chunk and then
    refused with TransferFailed ``code``.  The tickets are asked for one by
    one; the uploads run at the same time, each on its own connection."""
    tickets = [
        (what, data, await upload_ticket(client, ctx, data, media_type=FOLDER_MEDIA_TYPE))
        for what, data in manifests
    ]
    problems: list[str] = []

    async def one(what: str, data: bytes, ticket: UploadTicket) -> None:
        try:
            heavy, _ = await admitted(ctx, ticket, client.user)
            await send_chunk(heavy, 0, data)
            await expect_transfer_failed(heavy, ctx, code, what=f"a manifest with {what}")
        except Fail as exc:
            problems.append(str(exc))

    async with trio.open_nursery() as nursery:
        for what, data, ticket in tickets:
            nursery.start_soon(one, what, data, ticket)
    if problems:
        raise Fail("\n".join(problems))


@case(
    "EL-9.9.4-1",
    "A manifest with a hostile path is refused with PATH_INVALID",
    MUST,
    covers=["9.9.4-1"],
    users=1,
)
async def hostile_paths(ctx: Context) -> None:
    """A uploads a file, then folder manifests (media type
    application/vnd.elink.folder-manifest) that list it under: an empty
    path, an absolute path, an empty, '.' or '..' component, a backslash, a
    colon, NUL, characters of Cc, Cf, Co, Cn and Cs, a 256-byte component,
    the same path twice, a path inside another entry's.  Each upload must
    end with TransferFailed PATH_INVALID.  A manifest listing the file as
    'docs/a.bin' must end with Done."""
    a, _ = await ctx.logged_in(0, name="A")
    stored = await upload(a, ctx, content(100))
    hostile = [
        (what, manifest([entry(path, stored) for path in paths])) for what, paths in HOSTILE_PATHS
    ]
    await refused_manifests(a, ctx, hostile, AppErrorCode.PATH_INVALID)
    await upload(
        a, ctx, manifest([entry("docs/a.bin", stored)]), name="ok", media_type=FOLDER_MEDIA_TYPE
    )


@case(
    "EL-9.9.4-2",
    "A manifest listing a file not the uploader's own, or not as stored, is NOT_FOUND",
    MUST,
    covers=["9.9.4-2"],
    users=2,
)
async def foreign_manifest_entries(ctx: Context) -> None:
    """A and B each upload a file.  A's manifests that list B's file, A's
    file with another size, A's file with another hash, or an id never
    stored must each end with TransferFailed NOT_FOUND.  A valid manifest
    of A's file ends with Done; sent to B in a folder message, it lets B
    download the file it lists (OpenDownload naming the message)."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    mine = await upload(a, ctx, content(100))
    theirs = await upload(b, ctx, content(100))
    foreign = [
        ("B's file", entry("f", theirs)),
        ("another size", entry("f", mine, sz=len(mine.data) + 1)),
        ("another hash", entry("f", mine, h=sha(b"other"))),
        ("an unknown id", entry("f", mine, id=os.urandom(16))),
    ]
    await refused_manifests(
        a, ctx, [(what, manifest([item])) for what, item in foreign], AppErrorCode.NOT_FOUND
    )
    folder = await upload(
        a, ctx, manifest([entry("sub/f.bin", mine)]), name="dir", media_type=FOLDER_MEDIA_TYPE
    )
    sent = await a.expect_answer(
        SendMessage(
            rid=a.rid(),
            client_msg_id=ctx.unique("cm"),
            to=b.user,
            kind="folder",
            content=file_content(folder.ref()),
        ),
        MessageAccepted,
        ctx.wait,
    )
    assert isinstance(sent, MessageAccepted)
    ticket = await download_ticket(b, ctx, mine.id, sent.msg_id)
    if await download(ctx, ticket, b.user) != mine.data:
        raise Fail("B downloaded other bytes than the folder's file")
