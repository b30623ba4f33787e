"""The test vectors (§10, §11.11) replayed against the server, and what the
server's own encodings look like (§5.6, §11.1.7)."""

from __future__ import annotations

import hashlib
from typing import Any

import attrs

from conformance.case import Context, case
from conformance.handshake import Hello
from conformance.requirements import Level
from conformance.results import Fail
from conformance.session import Client, failed
from conformance.wire import Closed, Received, code_name
from elink_protocol import ErrorCode, Packet, vectors
from elink_protocol import packets as p
from elink_protocol.app import (
    Admit,
    AppErrorCode,
    Delivered,
    History,
    LoginOk,
    MarkRead,
    MessageAccepted,
    Ok,
    OpenUpload,
    Pull,
    PullResult,
    QueryPresence,
    QueryStatus,
    Request,
    RequestFailed,
    Search,
    SendMessage,
    TransferFailed,
    UploadTicket,
    text_content,
)
from elink_protocol.crypto.suites import suite_params
from elink_protocol.payload import decode_payload_untrusted, encode_payload
from elink_protocol.state import Role

from ._util import frame_vector

MUST, SHOULD = Level.MUST, Level.SHOULD


@case(
    "EL-10.1-1",
    "The ClientHellos of the handshake vectors are accepted, and their handshakes complete",
    MUST,
    covers=["10.1-1"],
)
async def handshake_vectors(ctx: Context) -> None:
    """For every handshake in crypto_vectors.json that creates a session
    (legacy ones with --legacy-suites only): sends the vector's exact
    ClientHello bytes, completes the handshake with the vector's X25519
    private key (from the recorded random draws), and exchanges a Ping.  The
    server's own answers differ from the vector's (its randomness is its
    own); what is checked is that it accepts the recorded client bytes."""
    data = vectors.load("crypto_vectors")
    ran = 0
    for vector in data["handshakes"]:
        if vector["resumed"]:
            continue
        legacy = suite_params(vector["suite"]).legacy
        if legacy and not ctx.options.legacy_suites:
            continue
        payload = bytes.fromhex(vector["packets"]["ClientHello"])
        hello = p.ClientHello.from_payload_untrusted(decode_payload_untrusted(payload))
        draws = vector["client"]["draws"]
        options = Hello(
            versions=hello.versions,
            suites=hello.suites,
            signature_algorithms=hello.signature_algorithms,
            features=hello.features,
            key_share=hello.key_share,
            random=hello.random,
            private_key=None if legacy else bytes.fromhex(draws[1]),
            payload=payload,
        )
        client = await ctx.connect(vector["name"])
        await ctx.handshaker(client).run(options)
        await client.ping(b"vector")
        await client.expect(p.Pong, ctx.wait)
        await client.close()
        ran += 1
    ctx.note(f"{ran} handshake vectors replayed")


@case(
    "EL-10.1-2",
    "Every invalid frame vector is refused with the error it names",
    MUST,
    covers=["10.1-1", "4.3-1", "4.4-1", "4.2-3", "4.5-2"],
)
async def invalid_frame_vectors(ctx: Context) -> None:
    """Sends each ``invalid`` vector of frames.json as the first bytes of its
    own connection (the truncated ones followed by the end of the stream)
    and expects a Close with the vector's error."""
    data = vectors.load("frames")
    for vector in data["invalid"]:
        client = await ctx.connect(vector["name"])
        await client.send_bytes(frame_vector(vector["name"]), note=vector["note"])
        if vector["name"].startswith("truncated"):
            await client.send_eof()
        closed = await client.expect_close(ctx.wait)
        expected = ErrorCode[vector["error"]]
        if closed.code != expected:
            raise Fail(
                f"vector {vector['name']!r}: expected Close {expected.name}, "
                f"got {closed.describe()}"
            )


@case(
    "EL-11.11-1",
    "Every client packet vector is decoded: each request is answered under its request id",
    MUST,
    covers=["11.11-1"],
    users=1,
)
async def client_packet_vectors(ctx: Context) -> None:
    """After the handshake, sends the exact payload of every light-bus client
    packet in app_packets.json, one at a time, before logging in.  Each
    request must get a final answer with its own request id: RequestFailed
    NOT_LOGGED_IN, or for the Login vector any final Login answer (a server
    that knows the vector's user may even accept it; then it goes last).
    Each heavy-bus client vector (§9.5-§9.6) is sent as the first packet of
    its own heavy-bus connection (the port from an upload ticket): the
    server must decode it and answer TransferFailed -- TOKEN_INVALID for an
    Admit (its token is not this server's), INVALID_REQUEST for anything
    else (Admit must come first)."""
    data = vectors.load("app_packets")
    client, _ = await ctx.established()
    entries = [
        v
        for v in data["vectors"]
        if getattr(p.PACKET_TYPES[v["type"]], "SENDER", None) is Role.CLIENT
        and p.PACKET_TYPES[v["type"]].BUS & p.Bus.LIGHT
    ]
    entries.sort(key=lambda v: v["packet"] == "Login")
    for vector in entries:
        cls = p.PACKET_TYPES[vector["type"]]
        payload = bytes.fromhex(vector["payload"])
        request = cls.from_payload_untrusted(decode_payload_untrusted(payload))
        assert isinstance(request, Request)
        await client.send_payload(
            cls.TYPE, payload, priority=cls.PRIORITY, note=f"vector {vector['name']}"
        )
        answer = await client.answer(request, ctx.wait)
        if vector["packet"] == "Login":
            if not isinstance(answer, LoginOk | RequestFailed):
                raise Fail(f"the Login vector was answered {failed(answer)}")
        elif not isinstance(answer, RequestFailed) or answer.code != AppErrorCode.NOT_LOGGED_IN:
            raise Fail(
                f"vector {vector['name']!r} was answered {failed(answer)}, expected NOT_LOGGED_IN"
            )
    heavy_entries = [
        v
        for v in data["vectors"]
        if p.PACKET_TYPES[v["type"]].BUS is p.Bus.HEAVY
        and getattr(p.PACKET_TYPES[v["type"]], "SENDER", None) in (Role.CLIENT, None)
    ]
    if not heavy_entries:
        return
    a, _ = await ctx.logged_in(0, name="A")
    ticket = await a.expect_answer(
        OpenUpload(
            rid=a.rid(),
            name="vectors.bin",
            size=1,
            sha256=hashlib.sha256(b"v").digest(),
            media_type="application/octet-stream",
        ),
        UploadTicket,
        ctx.wait,
    )
    assert isinstance(ticket, UploadTicket)
    for vector in heavy_entries:
        cls = p.PACKET_TYPES[vector["type"]]
        expected = AppErrorCode.TOKEN_INVALID if cls is Admit else AppErrorCode.INVALID_REQUEST
        heavy, _ = await ctx.heavy(ticket.port, ticket.host)
        await heavy.send_payload(
            cls.TYPE,
            bytes.fromhex(vector["payload"]),
            priority=cls.PRIORITY,
            note=f"vector {vector['name']}",
        )
        event = await heavy.receive(ctx.wait)
        while not isinstance(event, Closed) and event.packet.TYPE < 0x0100:
            event = await heavy.receive(ctx.wait)
        got = event.describe() if isinstance(event, Closed) else type(event.packet).__name__
        if isinstance(event, Received) and isinstance(event.packet, TransferFailed):
            got = f"TransferFailed {code_name(event.packet.code)}"
            if event.packet.code == expected:
                continue
        raise Fail(
            f"heavy-bus vector {vector['name']!r} was goted {got}, "
            f"expected TransferFailed {code_name(expected)}"
        )


async def _busy_session(ctx: Context) -> list[Client]:
    """Two users exchange a message and use most requests: material for the
    cases that look at how the server encodes its packets."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    sent = await a.expect_answer(
        SendMessage(
            rid=a.rid(),
            client_msg_id=ctx.unique("cm"),
            to=b.user,
            kind="text",
            content=text_content("encodings"),
        ),
        MessageAccepted,
        ctx.wait,
    )
    assert isinstance(sent, MessageAccepted) and b.login_ok is not None
    head = b.login_ok.cursor + b.login_ok.pending
    pulled = await b.expect_answer(Pull(rid=b.rid(), after=head), PullResult, ctx.wait)
    assert isinstance(pulled, PullResult)
    await b.expect_answer(Delivered(rid=b.rid(), cursor=pulled.next_cursor), Ok, ctx.wait)
    await b.expect_answer(
        MarkRead(rid=b.rid(), conversation=sent.conversation, up_to_seq=sent.seq), Ok, ctx.wait
    )
    for request in (
        QueryStatus(rid=a.rid(), msg_id=sent.msg_id),
        History(rid=a.rid(), with_user=b.user, limit=3),
        Search(rid=a.rid(), query="encodings", limit=3),
        QueryPresence(rid=a.rid(), users=(a.user, b.user)),
    ):
        await a.request(request, ctx.wait)
    await a.ping(b"x")
    await a.expect(p.Pong, ctx.wait)
    await a.quiet(0.3)
    return [a, b]


def _defaults_sent(cls: type[Packet], fields: dict[str, Any]) -> list[str]:
    """Keys of ``fields`` whose value equals the field's default."""
    found = []
    for field in attrs.fields(cls):
        spec = field.metadata.get("wire")
        if spec is None or field.default is attrs.NOTHING or spec[0] not in fields:
            continue
        value = fields[spec[0]]
        default = list(field.default) if isinstance(field.default, tuple) else field.default
        if value == default:
            found.append(spec[0])
    return found


@case(
    "EL-5.6-1",
    "The server leaves out keys whose value is the default",
    SHOULD,
    covers=["5.6-1", "11.1.7-1"],
    users=2,
)
async def defaults_left_out(ctx: Context) -> None:
    """Looks at every packet the server sends during a session of two users
    (handshake, login, a message, pull, receipts, status, history, search,
    presence, Ping) and lists the keys sent with their default value."""
    clients = await _busy_session(ctx)
    found = set()
    for client in clients:
        for cls, _, fields in client.observed:
            for key in _defaults_sent(cls, fields):
                found.add(f"{cls.__name__}.{key}")
    if found:
        raise Fail(f"keys sent with their default value: {sorted(found)}")


@case(
    "EL-11.11-2",
    "The server encodes its packets as the vectors do (canonical MessagePack)",
    SHOULD,
    covers=["11.11-1", "10.1-1"],
    users=2,
)
async def canonical_encoding(ctx: Context) -> None:
    """Re-encodes every packet the server sent during a session of two users
    the way the vectors were made (the fields in table order, defaults left
    out, the shortest MessagePack forms) and compares the bytes."""
    clients = await _busy_session(ctx)
    differing = set()
    for client in clients:
        for cls, plaintext, fields in client.observed:
            packet = cls.from_payload_untrusted(fields)
            if encode_payload(packet.to_payload()) != plaintext:
                differing.add(cls.__name__)
    if differing:
        raise Fail(f"encoded unlike the vectors: {sorted(differing)}")
