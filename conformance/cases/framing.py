"""Framing and payloads (§4, §5): valid, truncated, oversized, corrupted
frames, bad versions, unknown types and hostile payloads."""

from __future__ import annotations

import os

import trio

from conformance.case import Context, case
from conformance.handshake import Hello
from conformance.requirements import Level
from conformance.results import Fail
from conformance.wire import Closed
from elink_protocol import ErrorCode
from elink_protocol import packets as p
from elink_protocol.app import (
    AppErrorCode,
    History,
    Logout,
    MessageAccepted,
    Ok,
    Pull,
    QueryPresence,
    RequestFailed,
    Search,
    SendMessage,
    text_content,
)

from ._util import (
    frame_vector,
    hello_payload,
    packed,
    refused_after_handshake,
    refused_bytes,
    refused_hello,
)

MUST, SHOULD = Level.MUST, Level.SHOULD


# --- §4 the frame header ------------------------------------------------------


@case(
    "EL-4.1-1",
    "Every frame the server sends is well-formed",
    MUST,
    covers=["4.1-1", "4.1-2", "4.2-2", "4.2-4", "5.4-2", "6.6.1-1", "6.5.2-1", "6.3.2-1"],
    users=1,
)
async def server_frames_are_well_formed(ctx: Context) -> None:
    """Runs a session touching most packet types (handshake, login, Ping, a
    message to the file assistant, Pull, History, Search, QueryPresence,
    Logout) and checks every frame the server sends: version 1, reserved
    flag bits 0, priority at most 3, a correct checksum on plaintext frames
    and 0 on encrypted ones, at most 4096 payload bytes, consecutive PIDs
    from 1, no fragments on a stream, Ack ranges that follow §6.3.2, and
    payloads with every required key.  (The suite's client makes these
    checks on every frame of every case; this case makes sure they run.)"""
    client, ok = await ctx.logged_in(0)
    await client.ping(b"conformance")
    await client.expect(p.Pong, ctx.wait)
    me = client.user
    await client.expect_answer(
        SendMessage(
            rid=client.rid(),
            client_msg_id=ctx.unique("cm"),
            to=me,
            kind="text",
            content=text_content("frames " + ctx.unique("t")),
        ),
        MessageAccepted,
        ctx.wait,
    )
    head = ok.cursor + ok.pending
    await client.request(Pull(rid=client.rid(), after=head, limit=10), ctx.wait)
    await client.request(History(rid=client.rid(), with_user=me, limit=5), ctx.wait)
    await client.request(Search(rid=client.rid(), query="frames"), ctx.wait)
    await client.request(
        QueryPresence(rid=client.rid(), users=(me, "nobody-" + ctx.unique("u"))), ctx.wait
    )
    await client.expect_answer(Logout(rid=client.rid()), Ok, ctx.wait)
    closed = await client.expect_close(ctx.wait)
    if closed.code != ErrorCode.NO_ERROR:
        raise Fail(f"after Logout the server closed with {closed.describe()}, not NO_ERROR")


@case(
    "EL-4.1-2",
    "A frame of framing version 2 is refused with UNSUPPORTED_VERSION",
    MUST,
    covers=["4.1-1", "4.4-1"],
)
async def bad_version(ctx: Context) -> None:
    """Sends the ``bad_version`` vector of frames.json (a ClientHello frame
    whose version byte is 2) as the first bytes of a connection."""
    await refused_bytes(
        ctx, frame_vector("bad_version"), ErrorCode.UNSUPPORTED_VERSION, what="a version-2 frame"
    )


@case(
    "EL-4.1-3",
    "A header with a reserved flag bit is refused with FRAME_MALFORMED before its payload",
    MUST,
    covers=["4.1-2", "4.4-1"],
)
async def reserved_flag(ctx: Context) -> None:
    """Sends only the 20 header bytes of the ``reserved_flag`` vector (flag
    bit 7 set); the server must reject it without waiting for the payload
    the header announces."""
    await refused_bytes(
        ctx, frame_vector("reserved_flag"), ErrorCode.FRAME_MALFORMED, what="flag bit 7 set"
    )


@case(
    "EL-4.4-1",
    "A header with priority 4 is refused with FRAME_MALFORMED before its payload",
    MUST,
    covers=["4.4-1"],
)
async def bad_priority(ctx: Context) -> None:
    """Sends only the header of the ``bad_priority`` vector."""
    await refused_bytes(
        ctx, frame_vector("bad_priority"), ErrorCode.FRAME_MALFORMED, what="priority 4"
    )


@case(
    "EL-4.4-2",
    "A plaintext header with a key phase is refused with FRAME_MALFORMED",
    MUST,
    covers=["4.4-1"],
)
async def phase_on_plaintext(ctx: Context) -> None:
    """Sends only the header of the ``phase_on_plaintext`` vector."""
    await refused_bytes(
        ctx,
        frame_vector("phase_on_plaintext"),
        ErrorCode.FRAME_MALFORMED,
        what="a plaintext frame with key phase 1",
    )


@case(
    "EL-4.2-1",
    "A header announcing 4161 payload bytes is refused with FRAME_TOO_LARGE from the header alone",
    MUST,
    covers=["4.2-2", "4.2-3"],
)
async def too_long_header(ctx: Context) -> None:
    """Sends only the 20 bytes of the ``too_long`` vector and nothing else:
    the server must answer FRAME_TOO_LARGE without buffering a payload."""
    await refused_bytes(
        ctx, frame_vector("too_long"), ErrorCode.FRAME_TOO_LARGE, what="a header with length 4161"
    )


@case(
    "EL-4.2-2",
    "An encrypted packet with a 4097-byte payload is refused with FRAME_TOO_LARGE",
    MUST,
    covers=["4.2-1", "4.2-4", "11.9.5-1"],
)
async def oversized_payload(ctx: Context) -> None:
    """After the handshake, seals a QueryPresence whose plaintext payload is
    4097 bytes (its frame length, 4113, is within the 4160 the header
    allows): the payload limit of 4096 must be enforced after decryption."""
    names = tuple(f"u{i:03d}" + "x" * 30 for i in range(100))
    fields = QueryPresence(rid=1, users=names).to_payload()
    fields["zz"] = ""
    while len(packed(fields)) < 4097:
        fields["zz"] += "y"
    payload = packed(fields)
    if len(payload) != 4097:
        raise RuntimeError(f"probe payload of {len(payload)} bytes")
    await refused_after_handshake(
        ctx, QueryPresence.TYPE, payload, ErrorCode.FRAME_TOO_LARGE, what="a 4097-byte payload"
    )


@case(
    "EL-4.3-1",
    "A frame with a wrong checksum is refused with CHECKSUM_MISMATCH",
    MUST,
    covers=["4.3-1"],
)
async def bad_checksum(ctx: Context) -> None:
    """Sends the ``bad_checksum`` vector (a ClientHello whose last payload
    byte was flipped after the CRC-32 was computed)."""
    await refused_bytes(
        ctx, frame_vector("bad_checksum"), ErrorCode.CHECKSUM_MISMATCH, what="a corrupted frame"
    )


@case(
    "EL-4.3-2",
    "An encrypted frame with a non-zero pck is refused with FRAME_MALFORMED",
    MUST,
    covers=["4.3-2"],
)
async def encrypted_with_pck(ctx: Context) -> None:
    """First the header of the ``encrypted_with_pck`` vector on a new
    connection; then, after a handshake, a correctly sealed Ping whose pck
    field is 1."""
    await refused_bytes(
        ctx,
        frame_vector("encrypted_with_pck"),
        ErrorCode.FRAME_MALFORMED,
        what="an ENCRYPTED header with pck 1",
    )
    await refused_after_handshake(
        ctx,
        p.Ping.TYPE,
        packed({}),
        ErrorCode.FRAME_MALFORMED,
        what="a sealed Ping with pck 1",
        numbered=False,
        pck=1,
    )


@case(
    "EL-4.5-1",
    "A handshake and packets split into 1-byte writes are understood",
    MUST,
    covers=["4.5-1"],
)
async def split_writes(ctx: Context) -> None:
    """Sends the ClientHello one byte per write (with a short pause between
    writes so that they arrive as separate segments), the ClientFinished in
    three pieces, and then a Ping split inside its header; the handshake
    must complete and the Ping be answered."""
    client = await ctx.connect()
    hs = ctx.handshaker(client)
    data = hs.hello_frame(Hello())
    client.note(f"-> ClientHello in {len(data)} one-byte writes")
    for i in range(len(data)):
        await client.send_bytes(data[i : i + 1])
        await trio.sleep(0.002)
    flight = await hs.receive_server_flight()
    if isinstance(flight, Closed):
        raise Fail(f"the split ClientHello was refused: {flight.describe()}")
    frame = hs.finished_frame(hs.finished())
    for piece in (frame[:7], frame[7:30], frame[30:]):
        await client.send_bytes(piece, note="a piece of ClientFinished")
        await trio.sleep(0.01)
    info = await hs.receive_finished()
    if isinstance(info, Closed):
        raise Fail(f"the split ClientFinished was refused: {info.describe()}")
    ping = client.seal(p.Ping.TYPE, packed({"d": b"split"}), numbered=False)
    for piece in (ping[:3], ping[3:19], ping[19:]):
        await client.send_bytes(piece, note="a piece of Ping")
        await trio.sleep(0.01)
    pong = await client.expect(p.Pong, ctx.wait)
    assert isinstance(pong.packet, p.Pong)
    if pong.packet.data != b"split":
        raise Fail(f"Pong carries {pong.packet.data!r}, not the Ping's b'split'")


@case(
    "EL-4.5-2",
    "A stream that ends inside a frame is FRAME_MALFORMED",
    MUST,
    covers=["4.5-2"],
)
async def truncated_frames(ctx: Context) -> None:
    """Sends the ``truncated`` vector (a ClientHello cut inside its payload)
    and ends the stream; then the ``truncated_header`` vector (11 bytes) the
    same way.  Each must be answered with FRAME_MALFORMED."""
    await refused_bytes(
        ctx,
        frame_vector("truncated"),
        ErrorCode.FRAME_MALFORMED,
        what="a frame cut inside its payload, then end of stream",
        eof=True,
    )
    await refused_bytes(
        ctx,
        frame_vector("truncated_header"),
        ErrorCode.FRAME_MALFORMED,
        what="11 header bytes, then end of stream",
        eof=True,
    )


# --- §5 payloads ---------------------------------------------------------------


@case("EL-5.2-1", "A payload that is not a map is PAYLOAD_INVALID", MUST, covers=["5.2-1"])
async def payload_not_a_map(ctx: Context) -> None:
    """A ClientHello frame whose payload is a MessagePack array."""
    await refused_hello(ctx, bytes([0x92, 0x01, 0x02]), ErrorCode.PAYLOAD_INVALID, what="an array")


@case("EL-5.2-2", "Bytes after the payload map are PAYLOAD_INVALID", MUST, covers=["5.2-1"])
async def payload_trailing_bytes(ctx: Context) -> None:
    """A valid ClientHello map followed by one more byte."""
    await refused_hello(
        ctx, packed(hello_payload()) + b"\xc0", ErrorCode.PAYLOAD_INVALID, what="a trailing byte"
    )


@case("EL-5.2-3", "MessagePack extension types are PAYLOAD_INVALID", MUST, covers=["5.2-1"])
async def payload_ext_type(ctx: Context) -> None:
    """A ClientHello map with an extra key whose value is a fixext 1."""
    body = packed(hello_payload())
    # Raise the map's entry count by one and append "x": fixext1(type 5, 0x00).
    count = body[0] & 0x0F
    data = bytes([0x80 | (count + 1)]) + body[1:] + b"\xa1x" + b"\xd4\x05\x00"
    await refused_hello(ctx, data, ErrorCode.PAYLOAD_INVALID, what="an ext value")


@case("EL-5.2-4", "A map key that is not a string is PAYLOAD_INVALID", MUST, covers=["5.2-1"])
async def payload_int_key(ctx: Context) -> None:
    """A ClientHello map with one extra entry whose key is the integer 7."""
    body = packed(hello_payload())
    count = body[0] & 0x0F
    data = bytes([0x80 | (count + 1)]) + body[1:] + b"\x07\x01"
    await refused_hello(ctx, data, ErrorCode.PAYLOAD_INVALID, what="an integer map key")


@case("EL-5.2-5", "Nesting deeper than 8 levels is PAYLOAD_INVALID", MUST, covers=["5.2-1"])
async def payload_too_deep(ctx: Context) -> None:
    """A ClientHello with an extra key holding arrays nested 9 deep."""
    value: object = 1
    for _ in range(9):
        value = [value]
    await refused_hello(
        ctx, packed(hello_payload(zz=value)), ErrorCode.PAYLOAD_INVALID, what="9 nested arrays"
    )


@case(
    "EL-5.2-6",
    "Arrays over 1024 items and maps over 256 entries are PAYLOAD_INVALID",
    MUST,
    covers=["5.2-1"],
)
async def payload_too_many_items(ctx: Context) -> None:
    """Two ClientHellos: one with an extra 1025-item array, one with an
    extra map of 257 entries."""
    await refused_hello(
        ctx,
        packed(hello_payload(zz=[0] * 1025)),
        ErrorCode.PAYLOAD_INVALID,
        what="a 1025-item array",
    )
    await refused_hello(
        ctx,
        packed(hello_payload(zz={f"k{i}": 0 for i in range(257)})),
        ErrorCode.PAYLOAD_INVALID,
        what="a 257-entry map",
    )


@case(
    "EL-5.2-7",
    "A string header declaring 4 GiB is refused with PAYLOAD_INVALID",
    MUST,
    covers=["5.2-2"],
)
async def payload_huge_declared_size(ctx: Context) -> None:
    """A ClientHello whose extra key's value is a str32 header declaring
    2^32-1 bytes, followed by 3 bytes.  A receiver that allocates the
    declared size first would exhaust its memory; the case can only observe
    the answer, PAYLOAD_INVALID, and that it comes promptly."""
    body = packed(hello_payload())
    count = body[0] & 0x0F
    data = bytes([0x80 | (count + 1)]) + body[1:] + b"\xa1z\xdb\xff\xff\xff\xffabc"
    await refused_hello(ctx, data, ErrorCode.PAYLOAD_INVALID, what="a str32 of 2^32-1 bytes")


@case(
    "EL-5.2-8",
    "A missing required key or a value of the wrong type is PAYLOAD_INVALID",
    MUST,
    covers=["5.2-1"],
)
async def payload_missing_key(ctx: Context) -> None:
    """A ClientHello without ``r``, then one whose ``r`` is a string, then one
    whose ``r`` is 31 bytes long."""
    fields = hello_payload()
    del fields["r"]
    await refused_hello(ctx, packed(fields), ErrorCode.PAYLOAD_INVALID, what="no 'r'")
    await refused_hello(
        ctx, packed(hello_payload(r="x" * 32)), ErrorCode.PAYLOAD_INVALID, what="'r' as a string"
    )
    await refused_hello(
        ctx,
        packed(hello_payload(r=os.urandom(31))),
        ErrorCode.PAYLOAD_INVALID,
        what="a 31-byte 'r'",
    )


@case(
    "EL-5.3-1",
    "Unknown packet types below 0x8000 are refused with UNKNOWN_PACKET_TYPE",
    MUST,
    covers=["5.3-1"],
)
async def unknown_critical_types(ctx: Context) -> None:
    """After the handshake, one numbered packet per connection of the types
    0x0006 (handshake range), 0x00FF (control range), 0x03FF (application
    range), 0x043F (unassigned in the light-bus file range, §9.1), 0x0500
    (first reserved type after the heavy bus) and 0x7FFF (reserved), each
    with an empty-map payload."""
    for type_ in (0x0006, 0x00FF, 0x03FF, 0x043F, 0x0500, 0x7FFF):
        await refused_after_handshake(
            ctx, type_, packed({}), ErrorCode.UNKNOWN_PACKET_TYPE, what=f"type {type_:#06x}"
        )


@case(
    "EL-5.3-2",
    "Unknown extension types are acknowledged (numbered) or ignored (unnumbered)",
    MUST,
    covers=["5.3-2"],
)
async def unknown_extension_types(ctx: Context) -> None:
    """After the handshake: a numbered packet of type 0x8001 and an
    unnumbered one of type 0x9000, then a Ping.  The connection must stay
    open, the Ping be answered, and the numbered extension packet be
    acknowledged (a later frame's cumulative ack reaches its PID)."""
    client, _ = await ctx.established()
    pid = await client.send_payload(0x8001, packed({"x": 1}), numbered=True)
    await client.send_payload(0x9000, packed({"y": 2}), numbered=False)
    await client.ping(b"after extensions")
    await client.expect(p.Pong, ctx.wait)
    with trio.move_on_after(ctx.wait):
        while client.server_ack != pid:
            event = await client.receive(ctx.wait)
            if isinstance(event, Closed):
                raise Fail(f"the connection ended: {event.describe()}")
    if client.server_ack != pid:
        raise Fail(f"the numbered extension packet (PID {pid}) was not acknowledged")


@case(
    "EL-5.3-3",
    "An extension packet with an invalid payload is PAYLOAD_INVALID",
    MUST,
    covers=["5.3-3"],
)
async def extension_bad_payload(ctx: Context) -> None:
    """After the handshake, a numbered packet of type 0x8001 whose payload
    is a MessagePack array."""
    await refused_after_handshake(
        ctx, 0x8001, bytes([0x91, 0x01]), ErrorCode.PAYLOAD_INVALID, what="an array payload"
    )


@case("EL-5.4-1", "Unknown payload keys are ignored", MUST, covers=["5.4-1", "11.1.7-1"])
async def unknown_keys(ctx: Context) -> None:
    """A ClientHello with an extra key ``zz``, a ClientFinished with one, a
    Ping with one, and a Pull (answered NOT_LOGGED_IN before login) with
    one: everything must work as without them."""
    client = await ctx.connect()
    hs = ctx.handshaker(client)
    await hs.send_hello(Hello(extra={"zz": "later versions may add this"}))
    flight = await hs.receive_server_flight()
    if isinstance(flight, Closed):
        raise Fail(f"a ClientHello with an unknown key was refused: {flight.describe()}")
    await hs.send_finished(hs.finished(fields={"zz": [1, 2, 3]}))
    info = await hs.receive_finished()
    if isinstance(info, Closed):
        raise Fail(f"a ClientFinished with an unknown key was refused: {info.describe()}")
    await client.send_payload(p.Ping.TYPE, packed({"d": b"k", "zz": True}), numbered=False)
    pong = await client.expect(p.Pong, ctx.wait)
    assert isinstance(pong.packet, p.Pong)
    if pong.packet.data != b"k":
        raise Fail(f"Pong carries {pong.packet.data!r}, expected b'k'")
    rid = client.rid()
    fields = Pull(rid=rid, after=0).to_payload()
    fields["zz"] = {"nested": "value"}
    await client.send_payload(Pull.TYPE, packed(fields), numbered=True)
    answer = await client.answer(Pull(rid=rid, after=0), ctx.wait)
    if not isinstance(answer, RequestFailed) or answer.code != AppErrorCode.NOT_LOGGED_IN:
        raise Fail(f"a Pull with an unknown key before login was answered {answer}")
