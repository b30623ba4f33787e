"""The light bus over UDP (§6.9) and the datagram rules it uses (§4.6,
§6.3-§6.4, §6.6, §6.8): the envelope, address validation and the
amplification limit, connection ids, migration, sizes, the handshake's
repeats, and the datagram reliability a client can observe.

Every check that something is *not* answered is causal where it can be: the
server handles the datagrams of one source in order, so after the datagram
under test the case sends a probe whose answer is known (a tokenless
INITIAL for a fresh id gets a RETRY, a Ping gets a Pong); an answer to the
datagram under test would arrive before the probe's.  A UDP server that
serves no UDP makes these cases UNIMPLEMENTED (:mod:`conformance.udp`).
"""

from __future__ import annotations

import os
import time

import trio

from conformance.case import Context, case
from conformance.handshake import ClientHandshake
from conformance.requirements import Level
from conformance.results import Fail, ServerViolation
from conformance.udp import (
    Endpoint,
    UdpClient,
    check_server_datagram,
    initial,
    udp_client,
    udp_endpoint,
    udp_established,
    udp_logged_in,
)
from conformance.wire import Closed
from elink_protocol import ErrorCode, Priority
from elink_protocol import packets as p
from elink_protocol.app import DeviceKind, Login
from elink_protocol.frame import MORE_FRAGMENTS, UNNUMBERED, Frame, FrameBuffer
from elink_protocol.udp import DATA_FRAMES_LIMIT, Kind, encode_data

from ._app import history_page, send_text
from ._util import expect_error, packed

MUST, SHOULD = Level.MUST, Level.SHOULD

#: An ignorable type: numbered, acknowledged, processed as a no-op (§5.3).
EXTENSION = 0x8001
#: Quiet period after a datagram that must get no answer, when no causal
#: probe can follow it.
QUIET = 0.3


# --- helpers ----------------------------------------------------------------------


def frames_of(data: bytes) -> list[Frame]:
    """The frames of a DATA datagram, parsed without opening them."""
    envelope = check_server_datagram(data, None)
    buffer = FrameBuffer(max_buffer=1 << 16, max_length=1 << 16)
    buffer.feed(envelope.frames)
    found = []
    while (frame := buffer.next_frame_untrusted()) is not None:
        found.append(frame)
    if sum(len(f.encode()) for f in found) != len(envelope.frames):
        raise ServerViolation("4.6", "a datagram that ends inside a frame")
    return found


def hello_frames() -> bytes:
    """A correct ClientHello frame (its handshake is not continued)."""
    return ClientHandshake(None, timeout=1.0).hello_frame()  # type: ignore[arg-type]


async def retry_for(endpoint: Endpoint, connection_id: bytes, wait: float, *, what: str) -> bytes:
    """The next datagram ``endpoint`` receives is a RETRY for
    ``connection_id``; returns its token."""
    data = await endpoint.receive(wait)
    if data is None:
        raise Fail(f"{endpoint.name}: no RETRY within {wait:g} s after {what}")
    envelope = check_server_datagram(data, None)
    if envelope.kind is not Kind.RETRY or envelope.connection_id != connection_id:
        raise Fail(
            f"{endpoint.name}: after {what}, expected a RETRY for id {connection_id.hex()}, got "
            f"a {envelope.kind.name} of {len(data)} bytes for id {envelope.connection_id.hex()}"
        )
    if len(data) > 74:
        raise ServerViolation("6.9.3", f"a RETRY of {len(data)} bytes (at most 74)")
    return envelope.token


async def nothing_before_probe(endpoint: Endpoint, wait: float, *, what: str) -> None:
    """Nothing answered what ``endpoint`` sent last: a tokenless INITIAL for a
    fresh id, sent now, gets the first datagram back (its RETRY)."""
    probe = os.urandom(8)
    await endpoint.send(initial(probe))
    await retry_for(endpoint, probe, wait, what=f"{what} (answered before the probe's RETRY)")


async def token_for(endpoint: Endpoint, connection_id: bytes, wait: float) -> bytes:
    await endpoint.send(initial(connection_id))
    return await retry_for(endpoint, connection_id, wait, what="a tokenless INITIAL")


async def expect_flight(endpoint: Endpoint, connection_id: bytes, wait: float, what: str) -> None:
    """The server answers with DATA for ``connection_id`` (its first flight)."""
    data = await endpoint.receive(wait)
    if data is None:
        raise Fail(f"{endpoint.name}: no answer within {wait:g} s to {what}")
    envelope = check_server_datagram(data, None)
    if envelope.kind is not Kind.DATA or envelope.connection_id != connection_id:
        raise Fail(f"{endpoint.name}: {what} was answered with a {envelope.kind.name}, not DATA")


async def ping_pong(client: UdpClient, wait: float, *, what: str) -> bytes:
    """A Ping with fresh data; its Pong arrives at ``client``'s socket."""
    data = os.urandom(8)
    await client.ping(data)
    await client.expect(
        lambda pkt: isinstance(pkt, p.Pong) and pkt.data == data, wait, what=f"the Pong {what}"
    )
    return data


def sealed_ping(client: UdpClient) -> tuple[bytes, bytes]:
    """(datagram, data): a fresh authentic Ping of ``client``'s connection,
    for another socket to send."""
    data = os.urandom(8)
    frame = client.seal(p.Ping.TYPE, packed({"d": data}), numbered=False)
    return encode_data(client.connection_id, frame), data


# --- the envelope (§6.9.1) ----------------------------------------------------------


@case(
    "EL-6.9.1-1",
    "Datagrams the envelope rules discard, unpadded INITIALs included, are never answered",
    MUST,
    covers=["6.9.1-2", "6.9.1-3"],
)
async def bad_envelopes(ctx: Context) -> None:
    """From one socket: a 5-byte datagram, 1200 bytes of an unknown kind, a
    RETRY (a kind a server does not receive), an INITIAL whose token length
    is 65, one whose frames length overruns the datagram, an INITIAL of 1199
    bytes, one whose padding is not zero, and a DATA for an id the server
    does not know, each carrying a ClientHello where it can.  Then a correct
    tokenless INITIAL: the first datagram back must be its RETRY."""
    endpoint = await udp_endpoint(ctx, "udp1")
    hello = hello_frames()
    cid = os.urandom(8)
    good = initial(cid, b"", hello)
    head = bytes([Kind.INITIAL]) + cid
    bad = {
        "a 5-byte datagram": good[:5],
        "an unknown kind 0x42": bytes([0x42]) + good[1:],
        "a RETRY from a client": bytes([Kind.RETRY]) + cid + b"\x14" + bytes(20),
        "a token length of 65": head + b"\x41" + bytes(65) + len(hello).to_bytes(2, "big") + hello,
        "a frames length that overruns": head + b"\x00" + (2000).to_bytes(2, "big") + hello,
        "an INITIAL of 1199 bytes": good[:1199],
        "non-zero padding": good[:-1] + b"\x01",
        "a DATA for an unknown id": encode_data(os.urandom(8), hello),
    }
    for what, datagram in bad.items():
        await endpoint.send(datagram)
        ctx.note(f"sent {what} ({len(datagram)} bytes)")
    await nothing_before_probe(endpoint, ctx.wait, what="the malformed datagrams")


# --- address validation (§6.9.3) ------------------------------------------------------


@case(
    "EL-6.9.3-1",
    "An INITIAL without a token gets one RETRY of at most 74 bytes, and no state",
    MUST,
    covers=["6.9.3-1"],
)
async def retry_without_token(ctx: Context) -> None:
    """A tokenless INITIAL with a ClientHello: one RETRY with the same id and
    a token of 1-64 bytes, at most 74 bytes in all; nothing else (a probe's
    RETRY comes next).  No connection was opened: a DATA for that id is not
    answered, and the same INITIAL again gets a RETRY again."""
    endpoint = await udp_endpoint(ctx, "udp1")
    cid = os.urandom(8)
    hello = hello_frames()
    await endpoint.send(initial(cid, b"", hello))
    token = await retry_for(endpoint, cid, ctx.wait, what="a tokenless INITIAL")
    if not 1 <= len(token) <= 64:
        raise ServerViolation("6.9.1", f"a RETRY token of {len(token)} bytes")
    await nothing_before_probe(endpoint, ctx.wait, what="the RETRY (a second answer)")
    await endpoint.send(encode_data(cid, hello))
    await nothing_before_probe(endpoint, ctx.wait, what="a DATA for the id of the RETRY")
    await endpoint.send(initial(cid, b"", hello))
    await retry_for(endpoint, cid, ctx.wait, what="the same tokenless INITIAL again")


@case(
    "EL-6.9.3-2",
    "A token used from another source address gets a RETRY again",
    MUST,
    covers=["6.9.3-1"],
)
async def token_from_elsewhere(ctx: Context) -> None:
    """Socket A gets a token for an id; socket B (another source port, so
    another address) sends the INITIAL with that token and a ClientHello:
    B gets a RETRY, not the server's flight.  With the token of its own
    RETRY, B gets the flight (the token binds the address, nothing else)."""
    first, second = await udp_endpoint(ctx, "udpA"), await udp_endpoint(ctx, "udpB")
    cid = os.urandom(8)
    hello = hello_frames()
    token = await token_for(first, cid, ctx.wait)
    await second.send(initial(cid, token, hello))
    own = await retry_for(second, cid, ctx.wait, what="A's token sent from B")
    await second.send(initial(cid, own, hello))
    await expect_flight(second, cid, ctx.wait, "B's INITIAL with its own token")


@case(
    "EL-6.9.3-3",
    "A forged token, or one issued for another connection id, gets a RETRY again",
    MUST,
    covers=["6.9.3-1"],
)
async def forged_token(ctx: Context) -> None:
    """A token with its last byte changed, and a genuine token of this
    address for another connection id, each in an INITIAL with a
    ClientHello: RETRY both times.  The genuine token then gets the flight."""
    endpoint = await udp_endpoint(ctx, "udp1")
    cid, other = os.urandom(8), os.urandom(8)
    hello = hello_frames()
    token = await token_for(endpoint, cid, ctx.wait)
    foreign = await token_for(endpoint, other, ctx.wait)
    await endpoint.send(initial(cid, token[:-1] + bytes([token[-1] ^ 0x01]), hello))
    await retry_for(endpoint, cid, ctx.wait, what="a forged token")
    await endpoint.send(initial(cid, foreign, hello))
    await retry_for(endpoint, cid, ctx.wait, what="a token for another connection id")
    await endpoint.send(initial(cid, token, hello))
    await expect_flight(endpoint, cid, ctx.wait, "the genuine token")


@case(
    "EL-6.9.3-4",
    "A token older than its lifetime gets a RETRY again",
    MUST,
    covers=["6.9.3-1"],
)
async def expired_token(ctx: Context) -> None:
    """A token is used after its lifetime (``--token-lifetime``, the spec's
    10 s) plus 1.5 s (tokens count whole seconds): RETRY.  SKIPPED when that
    wait exceeds ``--max-wait``."""
    wait = ctx.options.token_lifetime + 1.5
    ctx.need_wait(wait, "waiting for a token to expire")
    endpoint = await udp_endpoint(ctx, "udp1")
    cid = os.urandom(8)
    token = await token_for(endpoint, cid, ctx.wait)
    await trio.sleep(wait)
    await endpoint.send(initial(cid, token, hello_frames()))
    await retry_for(endpoint, cid, ctx.wait, what=f"a token {wait:g} s old")


@case(
    "EL-6.9.3-5",
    "Until the handshake completes, the server sends no more bytes than it received",
    MUST,
    covers=["6.9.3-1", "6.9.3-3"],
)
async def amplification(ctx: Context) -> None:
    """A handshake over UDP in steps, the ClientHello sent three times:
    after each answer, the bytes of the server's DATA datagrams so far are
    at most the bytes of the INITIALs that carried a valid token; before the
    token, only the RETRY came back."""
    client = await udp_client(ctx)
    shake = ctx.handshaker(client)
    await shake.send_hello()
    flight = await shake.receive_server_flight()
    if isinstance(flight, Closed):
        raise Fail(f"handshake refused: {flight.describe()}")
    if client.retries != 1:
        raise Fail(f"expected one RETRY before the flight, got {client.retries}")
    credit = client.initial_bytes - 1200  # the tokenless INITIAL validated nothing

    def check(step: str) -> None:
        if client.bytes_before_keys > credit:
            raise ServerViolation(
                "6.9.3",
                f"{step}: sent {client.bytes_before_keys} bytes towards an address that sent "
                f"{credit} in validated INITIALs",
            )

    check("the first flight")
    for n in (2, 3):
        await client.send_bytes(client.last_initial, note=f"the ClientHello again ({n})")
        credit = client.initial_bytes - 1200
        datagram = await client.next_datagram(ctx.wait)
        if datagram is not None:
            client.bytes_before_keys += len(datagram)
        check(f"ClientHello {n}")
    await shake.send_finished(shake.finished())
    info = await shake.receive_finished()
    if isinstance(info, Closed):
        raise Fail(f"handshake refused after ClientFinished: {info.describe()}")
    credit = client.initial_bytes - 1200
    check("ServerFinished")


# --- connection ids (§6.9.2) -----------------------------------------------------------


@case(
    "EL-6.9.2-1",
    "An INITIAL with a valid token for an id opened from another address is discarded",
    MUST,
    covers=["6.9.2-1"],
)
async def id_taken(ctx: Context) -> None:
    """Socket B gets a valid token for id X; then client A opens a connection
    with id X.  B's INITIAL with its token and a ClientHello for X gets no
    answer (a probe's RETRY comes first), and A's connection goes on (a Ping
    gets its Pong)."""
    other = await udp_endpoint(ctx, "udpB")
    cid = os.urandom(8)
    token = await token_for(other, cid, ctx.wait)
    client = await udp_client(ctx, "udpA", connection_id=cid)
    await ctx.handshaker(client).run(None)
    await other.send(initial(cid, token, hello_frames()))
    await nothing_before_probe(other, ctx.wait, what="B's INITIAL for A's connection id")
    await ping_pong(client, ctx.wait, what="on A's connection")


# --- migration (§6.9.5) ---------------------------------------------------------------


@case(
    "EL-6.9.5-1",
    "A fresh datagram from a new address moves the connection, but not twice within 1 s",
    MUST,
    covers=["6.9.5-1"],
)
async def migration(ctx: Context) -> None:
    """After the handshake the client moves to a new source port and sends
    a Ping: the Pong comes to the new port.  At once, a fresh Ping of the
    connection from a third socket: its Pong still comes to the second
    port (the address moved less than a second ago), none to the third.
    After that second has passed, a fresh Ping from the third socket moves
    the connection there."""
    client, _ = await udp_established(ctx)
    await client.rebind()
    await ping_pong(client, ctx.wait, what="after the move to a new port")
    moved = time.monotonic()
    third = await udp_endpoint(ctx, "udp3")
    datagram, data = sealed_ping(client)
    await third.send(datagram)
    ctx.note("a fresh Ping sent from a third port within 1 s of the move")
    await client.expect(
        lambda pkt: isinstance(pkt, p.Pong) and pkt.data == data,
        ctx.wait,
        what="the Pong at the second port (a second move within 1 s)",
    )
    if await third.receive(QUIET) is not None:
        raise Fail("the server sent to a third address within 1 s of a move")
    await trio.sleep(max(0.0, moved + 1.1 - time.monotonic()))
    datagram, data = sealed_ping(client)
    await third.send(datagram)
    answer = await third.receive(ctx.wait)
    if answer is None:
        raise Fail("a fresh Ping from a new address more than 1 s after the move got no answer")


@case(
    "EL-6.9.5-2",
    "A replayed datagram from another address does not move the connection",
    MUST,
    covers=["6.9.5-1"],
)
async def replay_does_not_move(ctx: Context) -> None:
    """After the handshake, an extension packet with PID 1 (acknowledged); an
    attacker's socket then sends a copy of that datagram.  The copy is a
    duplicate, which the server acknowledges again (§6.3.3): that Ack must
    come to the client, and nothing to the attacker.  A Ping from the client
    then gets its Pong."""
    client, _ = await udp_established(ctx)
    await _extension(client, 1)
    copy = client.sent_datagrams[-1]
    await _acknowledged(client, ctx, 1)
    attacker = await udp_endpoint(ctx, "attacker")
    await attacker.send(copy)
    ctx.note("the attacker replayed the client's datagram with PID 1")
    await client.expect(
        lambda pkt: isinstance(pkt, p.Ack), ctx.wait, what="the Ack of the replayed duplicate"
    )
    if await attacker.receive(QUIET) is not None:
        raise Fail("the server sent to the address of a replayed datagram")
    await ping_pong(client, ctx.wait, what="after the replay")


# --- sizes and fragments (§4.6, §6.6, §6.9.7) -------------------------------------------


async def _large_answer(ctx: Context) -> UdpClient:
    """A logged-in UDP client that received a HistoryPage of about 2.6 KB
    (a message of 2500 characters), which must come as a fragment chain."""
    client = await udp_logged_in(ctx, 0)
    peer = ctx.user(1)
    await send_text(client, ctx, peer, "x" * 2500)
    await history_page(client, ctx, peer, limit=1)
    return client


@case(
    "EL-6.9.7-1",
    "No server datagram exceeds 1200 bytes; a large packet arrives fragmented",
    MUST,
    covers=["6.9.7-1", "4.6-1"],
    users=2,
)
async def sizes(ctx: Context) -> None:
    """Over UDP, log in, send a 2500-character message and read it back with
    History: every datagram the server sent is at most 1200 bytes, holds
    whole frames, and the HistoryPage came as a chain of 2 or more frames."""
    client = await _large_answer(ctx)
    for data in client.received:
        if check_server_datagram(data, client.connection_id).kind is Kind.DATA:
            frames_of(data)
    if not any(n >= 2 for n in client.chains):
        raise Fail(f"no packet came fragmented (frames per packet: {client.chains})")


@case(
    "EL-6.6.2-1",
    "Every fragment but the last fills the datagram",
    SHOULD,
    covers=["6.6.2-2"],
    users=2,
)
async def full_fragments(ctx: Context) -> None:
    """As EL-6.9.7-1; every frame with MORE_FRAGMENTS is 1191 bytes (the
    datagram size limit on UDP), so its datagram is exactly 1200."""
    client = await _large_answer(ctx)
    short = [
        len(frame.encode())
        for data in client.received
        if data[0] == Kind.DATA
        for frame in frames_of(data)
        if frame.flags & MORE_FRAGMENTS
    ]
    if not short:
        raise Fail("no fragment arrived")
    if any(size != DATA_FRAMES_LIMIT for size in short):
        raise Fail(f"fragment frames of {short} bytes; as large as fits is {DATA_FRAMES_LIMIT}")


@case(
    "EL-4.6-1",
    "A corrupted or truncated datagram is dropped silently and the connection goes on",
    MUST,
    covers=["4.6-2"],
)
async def corrupted_datagram(ctx: Context) -> None:
    """After the handshake, a Ping whose record has one byte changed, and a
    Ping datagram cut short inside its frame: no Close, no answer; the next
    correct Ping gets the first Pong."""
    client, _ = await udp_established(ctx)
    datagram, _ = sealed_ping(client)
    await client.send_datagram(
        datagram[:-1] + bytes([datagram[-1] ^ 0x40]), note="a Ping with a corrupted record"
    )
    datagram, _ = sealed_ping(client)
    await client.send_datagram(datagram[:-5], note="a Ping datagram cut 5 bytes short")
    await ping_pong(client, ctx.wait, what="after the corrupted datagrams")


# --- the handshake over datagrams (§6.8) --------------------------------------------------


@case(
    "EL-6.8.1-1",
    "The server's first flight travels in one datagram",
    SHOULD,
    covers=["6.8.1-1"],
)
async def one_datagram_flight(ctx: Context) -> None:
    """A handshake over UDP: ServerHello and ServerAuth arrive together."""
    client, _ = await udp_established(ctx)
    data = [d for d in client.received if d[0] == Kind.DATA]
    types = [f.type for f in frames_of(data[0])] if data else []
    if types[:2] != [p.ServerHello.TYPE, p.ServerAuth.TYPE]:
        raise Fail(f"the first DATA datagram held frame types {types}")


@case(
    "EL-6.8.3-2",
    "A repeated ClientHello or ClientFinished gets the same answer again",
    MUST,
    covers=["6.8.3-1"],
)
async def repeated_flights(ctx: Context) -> None:
    """Over UDP: the ClientHello INITIAL is sent again after the flight came:
    the server's flight comes again (the same ServerHello).  After
    ServerFinished, the ClientFinished INITIAL is sent again: ServerFinished
    comes again, the same bytes, and the connection goes on."""
    client = await udp_client(ctx)
    shake = ctx.handshaker(client)
    await shake.send_hello()
    flight = await shake.receive_server_flight()
    if isinstance(flight, Closed):
        raise Fail(f"handshake refused: {flight.describe()}")
    await client.send_bytes(client.last_initial, note="the ClientHello again")
    again = await client.next_datagram(ctx.wait)
    if again is None:
        raise Fail("a repeated ClientHello got no answer")
    frames = frames_of(again)
    if not frames or frames[0].type != p.ServerHello.TYPE:
        raise Fail("a repeated ClientHello was not answered with the first flight")
    if frames[0].payload != flight.hello_payload:
        raise Fail("a repeated ClientHello was answered with a different ServerHello")
    await shake.send_finished(shake.finished())
    finished_datagram = client.sent_datagrams[-1]
    info = await shake.receive_finished()
    if isinstance(info, Closed):
        raise Fail(f"handshake refused after ClientFinished: {info.describe()}")
    first = [f for d in client.received for f in frames_of(d) if f.type == p.ServerFinished.TYPE]
    await client.send_datagram(finished_datagram, note="the ClientFinished INITIAL again")
    again = await client.next_datagram(ctx.wait)
    if again is None:
        raise Fail("a repeated ClientFinished got no answer")
    repeat = [f for f in frames_of(again) if f.type == p.ServerFinished.TYPE]
    if not repeat or repeat[0].payload != first[0].payload:
        raise Fail("a repeated ClientFinished was not answered with the same ServerFinished")
    await ping_pong(client, ctx.wait, what="after the repeats")


@case(
    "EL-6.8.3-1",
    "A different ClientHello or an encrypted frame during the handshake is discarded",
    MUST,
    covers=["6.8.3-1"],
)
async def discarded_during_handshake(ctx: Context) -> None:
    """Over UDP, after the server's flight: an INITIAL with a different
    ClientHello, then one with an encrypted frame of random bytes.  Neither
    is answered nor ends the handshake: after the ClientFinished, the next
    packet is ServerFinished."""
    client = await udp_client(ctx)
    shake = ctx.handshaker(client)
    await shake.send_hello()
    flight = await shake.receive_server_flight()
    if isinstance(flight, Closed):
        raise Fail(f"handshake refused: {flight.describe()}")
    original = client.last_initial
    await client.send_bytes(hello_frames(), note="a different ClientHello")
    junk = Frame(type=p.Ping.TYPE, flags=0x01 | UNNUMBERED, payload=os.urandom(40)).encode()
    await client.send_bytes(junk, note="an encrypted frame before the handshake completed")
    client.last_initial = original
    await shake.send_finished(shake.finished())
    info = await shake.receive_finished()
    if isinstance(info, Closed):
        raise Fail(f"the handshake ended: {info.describe()}")


# --- acknowledgements and reliability (§6.3, §6.4) -----------------------------------------


async def _extension(client: UdpClient, pid: int, *, sent: bool = True) -> None:
    """An extension packet with ``pid``; unless ``sent`` is False the client
    counts the PID as sent (an acknowledgement of it is then legitimate)."""
    if sent and pid >= client.next_pid:
        client.next_pid = pid + 1
    await client.send_payload(
        EXTENSION, packed({"n": pid}), numbered=True, priority=Priority.CONTROL, pid=pid
    )


async def _ack(
    client: UdpClient, ctx: Context, ack: int, ranges: tuple[tuple[int, int], ...]
) -> None:
    await client.expect(
        lambda pkt: isinstance(pkt, p.Ack) and pkt.ranges == ranges,
        ctx.wait,
        what=f"an Ack with ranges {list(ranges)}",
    )
    if client.server_ack != ack:
        raise Fail(f"the cumulative ack is {client.server_ack}, expected {ack}")


async def _acknowledged(client: UdpClient, ctx: Context, pid: int) -> None:
    """Read until the server's cumulative ack reaches ``pid``."""
    with trio.move_on_after(ctx.wait):
        while client.server_ack != pid:
            await client.receive(ctx.wait)
    if client.server_ack != pid:
        raise Fail(f"the cumulative ack is {client.server_ack}, expected {pid} by now")


@case(
    "EL-6.3.3-1",
    "Out-of-order and duplicate packets are acknowledged at once, with the right ranges",
    MUST,
    covers=["6.3.3-1", "6.3.2-3"],
)
async def selective_acks(ctx: Context) -> None:
    """Over UDP, extension packets with PIDs 3, then 1, then 2, then 2 again.
    PID 3 opens a gap: an Ack with cumulative 0 and range [3, 3].  PID 1:
    cumulative 1, range [3, 3].  PID 2 fills the gap and the server
    processes 3 without it being re-sent: cumulative 3.  The duplicate 2 is
    acknowledged again (an Ack with no ranges)."""
    client, _ = await udp_established(ctx)
    client.next_pid = 4
    await _extension(client, 3)
    await _ack(client, ctx, 0, ((3, 3),))
    await _extension(client, 1)
    await _ack(client, ctx, 1, ((3, 3),))
    await _extension(client, 2)
    await _acknowledged(client, ctx, 3)
    await _extension(client, 2)
    await _ack(client, ctx, 3, ())


@case(
    "EL-6.4.7-1",
    "A packet 256 PIDs ahead is inside the receive window",
    MUST,
    covers=["6.4.7-2"],
)
async def window_of_256(ctx: Context) -> None:
    """Over UDP, the first numbered packet carries PID 256: the server holds
    it and acknowledges it selectively (range [256, 256])."""
    client, _ = await udp_established(ctx)
    client.next_pid = 257
    await _extension(client, 256)
    await _ack(client, ctx, 0, ((256, 256),))


@case(
    "EL-6.4.6-1",
    "A packet beyond the receive window is discarded and not acknowledged",
    MUST,
    covers=["6.4.6-1"],
)
async def out_of_window(ctx: Context) -> None:
    """Over UDP, an extension packet with PID 2^30 (beyond any window), then
    PID 2 and PID 1: the Acks name 2 and then cumulative 2, never 2^30, and
    the connection stays open."""
    client, _ = await udp_established(ctx)
    far = 1 << 30
    client.next_pid = 3
    await _extension(client, far, sent=False)
    await _extension(client, 2)
    await _ack(client, ctx, 0, ((2, 2),))
    await _extension(client, 1)
    await _ack(client, ctx, 2, ())
    await ping_pong(client, ctx.wait, what="after the packet beyond the window")


@case(
    "EL-6.3.4-1",
    "On UDP, an acknowledgement of a PID the server never sent is refused with PID_ERROR",
    MUST,
    covers=["6.3.4-1"],
)
async def udp_ack_never_sent(ctx: Context) -> None:
    """Right after the handshake over UDP, a Ping whose header acknowledges
    PID 5 (the server has sent no numbered packet)."""
    client, _ = await udp_established(ctx)
    await client.send_payload(
        p.Ping.TYPE,
        packed({}),
        numbered=False,
        priority=Priority.CONTROL,
        ack=5,
        note="a Ping acknowledging PID 5",
    )
    await expect_error(ctx, client, ErrorCode.PID_ERROR, what="a cumulative ack of PID 5")


@case(
    "EL-6.4.3-1",
    "The server re-sends a numbered packet that was not acknowledged",
    MUST,
    covers=["6.4.3-1"],
    users=1,
)
async def retransmission(ctx: Context) -> None:
    """Over UDP, the first datagram carrying a numbered frame (the answer to
    Login) is lost on purpose: the same PID arrives again (within the
    initial RTO of 1.5 s plus the wait) and the login completes."""
    client, _ = await udp_established(ctx)
    lost: list[int] = []

    def lose_first(data: bytes) -> bool:
        if lost or data[0] != Kind.DATA:
            return False
        pids = [f.pid for f in frames_of(data) if not f.flags & UNNUMBERED]
        lost.extend(pids)
        return bool(pids)

    client.drop = lose_first
    user = ctx.user(0)
    await client.login(user, ctx.password, ctx.unique("dev"), timeout=ctx.wait + 1.5)
    if not lost or not set(lost) <= set(client.numbered_pids):
        raise Fail(f"lost PIDs {lost}, received afterwards {client.numbered_pids}")


def retry_limit_bound(max_rto: float, limit: int) -> float:
    """Seconds from a packet's first transmission until a sender that never
    hears back must give up (§6.4.5): the first RTO is 1.5 s (§6.4.2),
    doubling per expiry up to ``max_rto``, ``limit + 1`` expiries."""
    return float(sum(min(1.5 * 2.0**i, max_rto) for i in range(limit + 1)))


@case(
    "EL-6.4.5-1",
    "A packet never acknowledged is re-sent at most the retry limit, then TIMEOUT",
    MUST,
    covers=["6.4.5-1", "6.4.5-2"],
    users=1,
)
async def retry_limit(ctx: Context) -> None:
    """Over UDP, a Login whose answer never gets through: every datagram from
    the server with a numbered frame is lost on purpose, while the client
    sends Pings (so the idle timeout does not end the connection first).
    The server re-sends the answer at most ``--max-retransmissions`` times
    and closes with TIMEOUT, within the backoff of ``--max-rto`` (70.5 s
    with the spec's defaults).  SKIPPED when that exceeds ``--max-wait``."""
    options = ctx.options
    bound = retry_limit_bound(options.max_rto, options.max_retransmissions)
    ctx.need_wait(bound + ctx.wait, "waiting for the server's retry limit")
    client, _ = await udp_established(ctx)
    copies: dict[int, int] = {}

    def lose_numbered(data: bytes) -> bool:
        if data[0] != Kind.DATA:
            return False
        pids = [f.pid for f in frames_of(data) if not f.flags & UNNUMBERED]
        for pid in pids:
            copies[pid] = copies.get(pid, 0) + 1
        return bool(pids)

    client.drop = lose_numbered
    user = ctx.user(0)
    await client.send(
        Login(
            rid=client.rid(),
            user=user,
            password=ctx.password,
            device_id=ctx.unique("dev"),
            device_kind=DeviceKind.BOT,
        )
    )
    every = min(ctx.options.idle_timeout / 4, 1.0)

    async def keep_alive() -> None:
        while True:
            await trio.sleep(every)
            await client.ping(os.urandom(4))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_alive)
        await ctx.expect_close(
            client, ErrorCode.TIMEOUT, timeout=bound + ctx.wait, what="a Login never acknowledged"
        )
        nursery.cancel_scope.cancel()
    if not copies:
        raise Fail("the server sent no numbered packet")
    most = max(copies.values())
    ctx.note(f"copies received per PID: {copies}")
    if most > options.max_retransmissions + 1:
        raise Fail(f"a packet was sent {most} times (at most 1 + {options.max_retransmissions})")
