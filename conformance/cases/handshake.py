"""The handshake (§7.3, §7.6, §6.7.3): every suite the server offers, bad
offers, bad finished MACs, downgrades, replayed and reordered handshake
packets, and the handshake deadline."""

from __future__ import annotations

import os
import time

from cryptography.hazmat.primitives import serialization

from conformance.case import Context, case
from conformance.handshake import LEGACY, MODERN, ClientHandshake, Hello, ServerFlight
from conformance.requirements import Level
from conformance.results import Fail, ServerViolation, Skip, Unimplemented
from conformance.session import Client
from conformance.wire import Closed, code_name
from elink_protocol import CipherSuite, ErrorCode, SignatureAlgorithm
from elink_protocol import packets as p
from elink_protocol.app import DeviceKind, Login, Pull
from elink_protocol.crypto.record import record_protection
from elink_protocol.crypto.suites import suite_params

from ._util import expect_error, packed, plaintext_frame

MUST, SHOULD, MAY = Level.MUST, Level.SHOULD, Level.MAY


async def _offer(
    ctx: Context, hello: Hello
) -> tuple[Client, ClientHandshake, ServerFlight | Closed]:
    client = await ctx.connect()
    hs = ctx.handshaker(client)
    await hs.send_hello(hello)
    return client, hs, await hs.receive_server_flight()


async def _refused_offer(ctx: Context, hello: Hello, code: int, what: str) -> None:
    client, _, flight = await _offer(ctx, hello)
    if isinstance(flight, ServerFlight):
        raise Fail(
            f"{what}: the server accepted (suite {flight.hello.suite:#06x}), "
            f"expected Close {code_name(code)}"
        )
    if flight.code != code:
        raise Fail(f"{what}: expected Close {code_name(code)}, got {flight.describe()}")
    await client.expect_close(ctx.wait)


async def _exercise(ctx: Context, client: Client) -> None:
    """Traffic both ways under epoch 0, a key update, and traffic under
    epoch 1: the record protection works in both directions."""
    await client.ping(b"epoch 0")
    pong = await client.expect(p.Pong, ctx.wait)
    if pong.packet != p.Pong(data=b"epoch 0"):
        raise Fail(f"Pong {pong.packet} does not echo the Ping's data")
    await client.rekey()
    await client.expect(p.RekeyAck, ctx.wait)
    await client.ping(b"epoch 1")
    pong = await client.expect(p.Pong, ctx.wait)
    if pong.frame.key_phase != 1:
        raise ServerViolation(
            "7.7.2", f"Pong after the RekeyAck under phase {pong.frame.key_phase}"
        )


def _suite_case(suite: CipherSuite, number: int) -> None:
    legacy = suite_params(suite).legacy

    @case(
        f"EL-7.3-{number}",
        f"Handshake, traffic and a key update with {suite.name}",
        MAY,
        covers=["7.3.2-2", "7.5.1-1"],
    )
    async def run(ctx: Context) -> None:
        signatures = (
            (int(SignatureAlgorithm.RSA_PSS_RSAE_SHA256),)
            if legacy
            else Hello().signature_algorithms
        )
        client, hs, flight = await _offer(
            ctx, Hello(suites=(int(suite),), signature_algorithms=signatures)
        )
        if isinstance(flight, Closed):
            if flight.code != ErrorCode.INSUFFICIENT_SECURITY:
                raise Fail(
                    f"offering only {suite.name}: expected the handshake or Close "
                    f"INSUFFICIENT_SECURITY, got {flight.describe()}"
                )
            raise Unimplemented(f"the server does not offer {suite.name}")
        await hs.send_finished(hs.finished())
        info = await hs.receive_finished()
        if isinstance(info, Closed):
            raise Fail(f"the handshake failed after ClientFinished: {info.describe()}")
        await _exercise(ctx, client)

    run.__doc__ = (
        f"Offers only {suite.name}.  The server either refuses with "
        "INSUFFICIENT_SECURITY (the suite is not offered: UNIMPLEMENTED; a legacy suite "
        "accepted without --legacy-suites fails EL-7.6.1-1) or completes "
        "the handshake; then Ping/Pong under epoch 0, a client-initiated key update, "
        "and Ping/Pong under epoch 1 check the record protection both ways.  Every "
        "record is also checked for a (key, nonce) pair used twice."
    )


@case(
    "EL-7.3-1",
    "The default offer completes; ServerAuth verifies over the client's own transcript",
    MUST,
    covers=["7.3.3-1", "7.3.5-1", "7.3.2-2"],
)
async def default_handshake(ctx: Context) -> None:
    """Offers both modern suites and both signature algorithms.  ServerHello
    must pick what was offered, ServerAuth's signature must verify over T1 of
    the client's own transcript, ServerFinished's MAC must verify and its
    ``rl`` be 0 for a new session."""
    client, info = await ctx.established()
    if info.suite not in MODERN:
        raise Fail(f"the server chose {info.suite:#06x} from a modern offer")
    ctx.note(
        f"suite {CipherSuite(info.suite).name}, signature "
        f"{SignatureAlgorithm(info.signature_algorithm).name}, key {info.fingerprint}"
    )
    await _exercise(ctx, client)


for _number, _suite in enumerate(CipherSuite, start=2):
    _suite_case(_suite, _number)


@case(
    "EL-7.2.2-1",
    "Each signature algorithm is served or refused; RSA keys are canonical and >= 2048 bits",
    MAY,
    covers=["7.2.2-2", "7.2.2-3"],
)
async def signature_algorithms(ctx: Context) -> None:
    """Offers the modern suites with only ED25519, then with only
    RSA_PSS_RSAE_SHA256.  Each offer is either refused with
    INSUFFICIENT_SECURITY or signed with that algorithm (and verified).  An
    RSA key must be the DER SubjectPublicKeyInfo encoding, byte for byte, of
    a key of at least 2048 bits.  UNIMPLEMENTED if the server has no RSA key."""
    served = []
    for algorithm in (SignatureAlgorithm.ED25519, SignatureAlgorithm.RSA_PSS_RSAE_SHA256):
        client, _, flight = await _offer(ctx, Hello(signature_algorithms=(int(algorithm),)))
        if isinstance(flight, Closed):
            if flight.code != ErrorCode.INSUFFICIENT_SECURITY:
                raise Fail(f"offering only {algorithm.name}: got {flight.describe()}")
            continue
        if flight.auth.signature_algorithm != algorithm:
            raise ServerViolation("7.3.2", f"signed with {flight.auth.signature_algorithm:#06x}")
        served.append(algorithm.name)
        if algorithm is SignatureAlgorithm.RSA_PSS_RSAE_SHA256:
            key = serialization.load_der_public_key(flight.auth.public_key)
            canonical = key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            if canonical != flight.auth.public_key:
                raise Fail("the RSA public key is not in canonical SubjectPublicKeyInfo DER")
            bits = getattr(key, "key_size", 0)
            if bits < 2048:
                raise Fail(f"the server's RSA key has {bits} bits, at least 2048 required")
        await client.close()
    if not served:
        raise Fail("the server refused both signature algorithms")
    if "RSA_PSS_RSAE_SHA256" not in served:
        raise Unimplemented("the server has no RSA key (ED25519 only)")
    ctx.note("signature algorithms served: " + ", ".join(served))


@case(
    "EL-7.2.4-1",
    "Server randoms, key shares and session ids are fresh in every handshake",
    MUST,
    covers=["7.2.4-1"],
)
async def fresh_randomness(ctx: Context) -> None:
    """Four handshakes: the ServerHello randoms, the server's X25519 key
    shares and the session ids must all differ (and none be all zeros).  A
    repeat means the server's generator is not fresh per use; randomness
    itself cannot be judged from four samples."""
    randoms, shares, sessions = set(), set(), set()
    for i in range(4):
        client, info = await ctx.established(f"conn{i + 1}")
        randoms.add(info.server_random)
        shares.add(info.server_key_share)
        sessions.add(info.session_id)
        await client.close()
    for label, values in (("randoms", randoms), ("key shares", shares), ("session ids", sessions)):
        if len(values) != 4 or any(v == bytes(len(v)) for v in values):
            raise Fail(
                f"server {label} repeat or are zero across 4 handshakes: "
                f"{sorted(v.hex() for v in values)}"
            )


@case(
    "EL-7.3.2-1",
    "No common version: Close UNSUPPORTED_VERSION listing the server's versions",
    MUST,
    covers=["7.3.2-1"],
)
async def no_common_version(ctx: Context) -> None:
    """A ClientHello offering versions 2 and 3 only."""
    _, _, flight = await _offer(ctx, Hello(versions=(2, 3)))
    if not isinstance(flight, Closed) or flight.code != ErrorCode.UNSUPPORTED_VERSION:
        raise Fail(f"expected Close UNSUPPORTED_VERSION, got {_what(flight)}")
    ctx.note("the Close's 'v' lists the versions the server speaks (checked by its schema)")


@case(
    "EL-7.3.2-2",
    "Only unknown suites offered: Close INSUFFICIENT_SECURITY",
    MUST,
    covers=["7.3.2-2"],
)
async def unknown_suites_only(ctx: Context) -> None:
    """A ClientHello offering the suites 0x9999 and 0x1303, which do not exist."""
    await _refused_offer(
        ctx,
        Hello(suites=(0x9999, 0x1303), key_share=os.urandom(32)),
        ErrorCode.INSUFFICIENT_SECURITY,
        "unknown suites",
    )


@case(
    "EL-7.3.2-3",
    "Modern suites without a key share: Close INSUFFICIENT_SECURITY",
    MUST,
    covers=["7.3.2-2"],
)
async def modern_without_key_share(ctx: Context) -> None:
    """A ClientHello offering the modern suites with an empty ``ks``: no
    modern suite qualifies (§7.3.2 step 2)."""
    await _refused_offer(ctx, Hello(key_share=b""), ErrorCode.INSUFFICIENT_SECURITY, "no key share")


@case(
    "EL-7.3.2-4",
    "No usable signature algorithm: Close INSUFFICIENT_SECURITY",
    MUST,
    covers=["7.3.2-2"],
)
async def no_signature_algorithm(ctx: Context) -> None:
    """A ClientHello whose ``sa`` lists only ECDSA (0x0403), which e-Link
    does not define."""
    await _refused_offer(
        ctx, Hello(signature_algorithms=(0x0403,)), ErrorCode.INSUFFICIENT_SECURITY, "sa=[0x0403]"
    )


@case(
    "EL-7.3.2-5",
    "A low-order X25519 key share: Close HANDSHAKE_FAILURE",
    MUST,
    covers=["7.3.2-3"],
)
async def low_order_key_share(ctx: Context) -> None:
    """Two ClientHellos, with the key shares 0 (32 zero bytes) and 1 (the
    little-endian encoding of 1): both give an all-zero X25519 output."""
    for share in (bytes(32), b"\x01" + bytes(31)):
        await _refused_offer(
            ctx,
            Hello(key_share=share),
            ErrorCode.HANDSHAKE_FAILURE,
            f"key share {share[:1].hex()}...",
        )


@case(
    "EL-7.3.4-1",
    "A key transport on a modern suite: Close HANDSHAKE_FAILURE",
    MUST,
    covers=["7.3.4-2", "7.3.4-3"],
)
async def key_transport_on_modern(ctx: Context) -> None:
    """Completes the server's flight normally, then sends a ClientFinished
    carrying a 256-byte ``kt`` on a modern suite (its MAC computed over it)."""
    client, hs, flight = await _offer(ctx, Hello())
    if isinstance(flight, Closed):
        raise Fail(f"the default offer was refused: {flight.describe()}")
    await hs.send_finished(hs.finished(key_transport=os.urandom(256)))
    await expect_error(ctx, client, ErrorCode.HANDSHAKE_FAILURE, what="kt on a modern suite")


@case(
    "EL-7.3.4-2",
    "A wrong finished MAC: Close HANDSHAKE_FAILURE",
    MUST,
    covers=["7.4.2-1"],
)
async def bad_finished_mac(ctx: Context) -> None:
    """A ClientFinished whose ``vd`` has its last bit flipped.  (That the
    comparison takes constant time cannot be observed over the network; the
    case checks that the comparison happens.)"""
    client, hs, flight = await _offer(ctx, Hello())
    if isinstance(flight, Closed):
        raise Fail(f"the default offer was refused: {flight.describe()}")
    hs.finished()
    good = hs.client_verify
    await hs.send_finished(hs.finished(verify=good[:-1] + bytes([good[-1] ^ 1])))
    await expect_error(ctx, client, ErrorCode.HANDSHAKE_FAILURE, what="a wrong c_verify")


@case(
    "EL-7.3.4-3",
    "Inconsistent resumption fields: Close PAYLOAD_INVALID",
    MUST,
    covers=["7.3.4-4"],
)
async def inconsistent_resumption_fields(ctx: Context) -> None:
    """Two ClientFinished packets (MACs computed over them): one names a
    session in ``rs`` without a proof ``rp``; the other carries ``rl`` = 5
    without ``rs``."""
    for label, fields in (
        ("rs without rp", (os.urandom(16), 0, b"")),
        ("rl without rs", (b"", 5, b"")),
    ):
        client, hs, flight = await _offer(ctx, Hello())
        if isinstance(flight, Closed):
            raise Fail(f"the default offer was refused: {flight.describe()}")
        await hs.send_finished(hs.finished(resume_fields=fields))
        await expect_error(ctx, client, ErrorCode.PAYLOAD_INVALID, what=label)


@case(
    "EL-7.3.4-4",
    "Legacy suites: an undecryptable key transport fails exactly like a wrong MAC",
    MUST,
    covers=["7.3.4-6", "7.3.4-7"],
)
async def implicit_rejection(ctx: Context) -> None:
    """With --legacy-suites: on RSA_AES_256_CBC_HMAC_SHA256, one ClientFinished
    with a valid key transport and a wrong MAC, one with 256 random bytes as
    ``kt`` (and a MAC over a made-up secret).  Both must end with the same
    Close code and the same reason text.  (Timing differences are not
    measured.)"""
    if not ctx.options.legacy_suites:
        raise Skip("needs --legacy-suites")
    closes = []
    for label in ("a wrong MAC", "an undecryptable kt"):
        client, hs, flight = await _offer(
            ctx,
            Hello(
                suites=(LEGACY[0],),
                signature_algorithms=(int(SignatureAlgorithm.RSA_PSS_RSAE_SHA256),),
            ),
        )
        if isinstance(flight, Closed):
            raise Fail(f"the legacy offer was refused: {flight.describe()}")
        if label == "a wrong MAC":
            payload = hs.finished(verify=os.urandom(32))
        else:
            payload = hs.finished(key_transport=os.urandom(256), premaster=os.urandom(48))
        await hs.send_finished(payload)
        closes.append(await client.expect_close(ctx.wait))
    first, second = closes
    if first.code != ErrorCode.HANDSHAKE_FAILURE:
        raise Fail(f"a wrong MAC gave {first.describe()}, expected HANDSHAKE_FAILURE")
    if (first.code, first.reason) != (second.code, second.reason):
        raise Fail(
            f"the failures differ: {first.describe()} for a wrong MAC, "
            f"{second.describe()} for an undecryptable kt"
        )


@case(
    "EL-7.3.4-5",
    "Legacy suites: an empty key transport is HANDSHAKE_FAILURE",
    MUST,
    covers=["7.3.4-2", "7.3.4-3"],
)
async def legacy_without_key_transport(ctx: Context) -> None:
    """With --legacy-suites: a ClientFinished without ``kt`` on a legacy suite."""
    if not ctx.options.legacy_suites:
        raise Skip("needs --legacy-suites")
    client, hs, flight = await _offer(
        ctx,
        Hello(
            suites=(LEGACY[0],), signature_algorithms=(int(SignatureAlgorithm.RSA_PSS_RSAE_SHA256),)
        ),
    )
    if isinstance(flight, Closed):
        raise Fail(f"the legacy offer was refused: {flight.describe()}")
    await hs.send_finished(hs.finished(key_transport=b""))
    await expect_error(ctx, client, ErrorCode.HANDSHAKE_FAILURE, what="no kt on a legacy suite")


@case(
    "EL-7.3.7-1",
    "The server hashes the ClientHello bytes it received, not a re-encoding",
    MUST,
    covers=["7.3.7.2-1"],
)
async def exact_transcript(ctx: Context) -> None:
    """Sends a ClientHello in a valid but non-canonical MessagePack encoding
    (keys in reverse order, the version as a uint16, the suites as uint32s).
    The server's signature must still verify over the client's transcript of
    exactly these bytes, and the handshake complete."""
    client = await ctx.connect()
    hs = ctx.handshaker(client)
    hello, _ = hs.build_hello(Hello())
    body = bytearray()
    entries = [
        (b"ks", b"\xc4\x20" + hello.key_share),
        (b"r", b"\xc4\x20" + hello.random),
        (
            b"sa",
            b"\x92" + b"".join(b"\xce" + a.to_bytes(4, "big") for a in hello.signature_algorithms),
        ),
        (b"cs", b"\x92" + b"".join(b"\xce" + s.to_bytes(4, "big") for s in hello.suites)),
        (b"v", b"\x91\xcd\x00\x01"),
    ]
    body.append(0x80 | len(entries))
    for key, value in entries:
        body += bytes([0xA0 | len(key)]) + key + value
    await hs.send_hello(Hello(key_share=hello.key_share, random=hello.random, payload=bytes(body)))
    flight = await hs.receive_server_flight()
    if isinstance(flight, Closed):
        raise Fail(f"a non-canonical (valid) ClientHello was refused: {flight.describe()}")
    await hs.send_finished(hs.finished())
    info = await hs.receive_finished()
    if isinstance(info, Closed):
        raise Fail(f"the handshake failed: {info.describe()}")


@case(
    "EL-7.3.8-1",
    "ClientFinished before ClientHello: Close UNEXPECTED_PACKET",
    MUST,
    covers=["3.1-1"],
)
async def finished_first(ctx: Context) -> None:
    """The first frame of the connection is a (well-formed) ClientFinished."""
    client = await ctx.connect()
    await client.send_plaintext(p.ClientFinished(verify=os.urandom(32)))
    await expect_error(ctx, client, ErrorCode.UNEXPECTED_PACKET, what="ClientFinished first")


@case(
    "EL-7.3.8-2",
    "A second ClientHello: Close UNEXPECTED_PACKET",
    MUST,
    covers=["3.1-1"],
)
async def second_hello(ctx: Context) -> None:
    """After the server's flight, the ClientHello again (same bytes)."""
    client, hs, flight = await _offer(ctx, Hello())
    if isinstance(flight, Closed):
        raise Fail(f"the default offer was refused: {flight.describe()}")
    await client.send_bytes(
        plaintext_frame(p.ClientHello.TYPE, hs.hello_payload), note="ClientHello again"
    )
    await expect_error(ctx, client, ErrorCode.UNEXPECTED_PACKET, what="a second ClientHello")


@case(
    "EL-7.3.8-3",
    "A client sending a server's handshake packet: Close UNEXPECTED_PACKET",
    MUST,
    covers=["3.1-1"],
)
async def client_sends_server_hello(ctx: Context) -> None:
    """The first frame is a well-formed ServerHello; on another connection,
    after the server's flight, a ServerFinished instead of ClientFinished."""
    client = await ctx.connect()
    await client.send_plaintext(
        p.ServerHello(version=1, suite=0x1301, random=os.urandom(32), key_share=os.urandom(32))
    )
    await expect_error(
        ctx, client, ErrorCode.UNEXPECTED_PACKET, what="a ServerHello from the client"
    )
    client, _, flight = await _offer(ctx, Hello())
    if isinstance(flight, Closed):
        raise Fail(f"the default offer was refused: {flight.describe()}")
    await client.send_plaintext(p.ServerFinished(verify=os.urandom(32), session_id=os.urandom(16)))
    await expect_error(
        ctx, client, ErrorCode.UNEXPECTED_PACKET, what="a ServerFinished from the client"
    )


@case(
    "EL-7.3.8-4",
    "An application packet before the handshake: Close UNEXPECTED_PACKET",
    MUST,
    covers=["3.1-1"],
)
async def application_before_handshake(ctx: Context) -> None:
    """The first frame is a plaintext Login (UNNUMBERED, pid 0)."""
    client = await ctx.connect()
    login = Login(rid=1, user="conf-x", password="x", device_id="d", device_kind=DeviceKind.BOT)
    await client.send_plaintext(login)
    await expect_error(ctx, client, ErrorCode.UNEXPECTED_PACKET, what="a plaintext Login")


@case(
    "EL-7.3.8-5",
    "An encrypted frame before ClientFinished: Close UNEXPECTED_PACKET",
    MUST,
    covers=["3.1-1", "3.4-1"],
)
async def encrypted_too_early(ctx: Context) -> None:
    """After the server's flight and before ClientFinished, an ENCRYPTED
    frame (a Pull sealed under keys the server cannot have yet).  A client
    MUST NOT send application packets before ServerFinished; a server sees
    such a packet before ClientFinished as out of state."""
    client, _, flight = await _offer(ctx, Hello())
    if isinstance(flight, Closed):
        raise Fail(f"the default offer was refused: {flight.describe()}")
    # Any key will do: the server has none yet.
    early = record_protection(flight.hello.suite, os.urandom(32), 0, "c2s")
    frame = client.seal(
        Pull.TYPE,
        packed(Pull(rid=1, after=0).to_payload()),
        numbered=True,
        priority=Pull.PRIORITY,
        protection=early,
        remember=False,
    )
    await client.send_bytes(frame, note="Pull, encrypted before ClientFinished")
    closed = await client.expect_close(ctx.wait)
    if closed.code != ErrorCode.UNEXPECTED_PACKET:
        raise Fail(f"expected Close UNEXPECTED_PACKET, got {closed.describe()}")


@case(
    "EL-7.3.8-6",
    "A plaintext handshake packet after the handshake: Close UNEXPECTED_PACKET",
    MUST,
    covers=["3.1-1"],
)
async def hello_after_handshake(ctx: Context) -> None:
    """After a completed handshake, the ClientHello frame again, in plaintext."""
    client, info = await ctx.established()
    await client.send_bytes(
        plaintext_frame(p.ClientHello.TYPE, info.client_hello),
        note="ClientHello after the handshake",
    )
    closed = await client.expect_close(ctx.wait)
    if closed.code != ErrorCode.UNEXPECTED_PACKET:
        raise Fail(f"expected Close UNEXPECTED_PACKET, got {closed.describe()}")


@case(
    "EL-7.4.2-1",
    "A ClientHello and ClientFinished replayed into a new connection fail",
    MUST,
    covers=["7.3.1-1", "7.4.2-1"],
)
async def replayed_handshake(ctx: Context) -> None:
    """Records a complete handshake, then opens a second connection and
    replays its ClientHello (same random, same key share: what a client
    that breaks §7.3.1 or an attacker sends) and, after the server's new
    flight, its ClientFinished.  The server's fresh random changes T2, so
    the recorded MAC must not verify: Close HANDSHAKE_FAILURE."""
    first = await ctx.connect("original")
    hs1 = ctx.handshaker(first)
    info = await hs1.run(Hello())
    await first.close()
    replay = await ctx.connect("replay")
    await replay.send_bytes(
        plaintext_frame(p.ClientHello.TYPE, info.client_hello), note="recorded ClientHello"
    )
    for _ in range(2):
        event = await replay.receive(ctx.wait)
        if isinstance(event, Closed):
            raise Fail(f"the replayed ClientHello was refused: {event.describe()}")
    await replay.send_bytes(
        plaintext_frame(p.ClientFinished.TYPE, info.client_finished), note="recorded ClientFinished"
    )
    closed = await replay.expect_close(ctx.wait)
    if closed.code != ErrorCode.HANDSHAKE_FAILURE:
        raise Fail(
            f"a replayed ClientFinished gave {closed.describe()}, expected HANDSHAKE_FAILURE"
        )


@case(
    "EL-7.6.1-1",
    "A legacy-only offer is refused unless the server was configured for legacy suites",
    MUST,
    covers=["7.6.1-1"],
)
async def legacy_refused_by_default(ctx: Context) -> None:
    """Offers only the three legacy suites (what a man in the middle who
    strips the modern suites from a ClientHello leaves).  Without
    --legacy-suites the server must refuse with INSUFFICIENT_SECURITY; with
    it, the server must pick one of them."""
    _, _, flight = await _offer(
        ctx,
        Hello(suites=LEGACY, signature_algorithms=(int(SignatureAlgorithm.RSA_PSS_RSAE_SHA256),)),
    )
    if ctx.options.legacy_suites:
        if isinstance(flight, Closed):
            raise Fail(f"--legacy-suites was given but the offer was refused: {flight.describe()}")
        ctx.note(f"legacy suite chosen: {CipherSuite(flight.hello.suite).name}")
        return
    if isinstance(flight, ServerFlight):
        raise Fail(
            f"the server accepted the legacy suite {CipherSuite(flight.hello.suite).name} although "
            "it is not configured for legacy suites (--legacy-suites not given)"
        )
    if flight.code != ErrorCode.INSUFFICIENT_SECURITY:
        raise Fail(f"expected Close INSUFFICIENT_SECURITY, got {flight.describe()}")


@case(
    "EL-7.6.1-2",
    "The server does not enable the legacy suites",
    SHOULD,
    covers=["7.1.2-1", "7.11.1-1"],
)
async def legacy_not_enabled(ctx: Context) -> None:
    """Offers only the legacy suites.  NON-STRICT when the server accepts:
    legacy suites give no forward secrecy and SHOULD NOT be enabled unless
    old clients must be served."""
    _, _, flight = await _offer(
        ctx,
        Hello(suites=LEGACY, signature_algorithms=(int(SignatureAlgorithm.RSA_PSS_RSAE_SHA256),)),
    )
    if isinstance(flight, ServerFlight):
        raise Fail(f"legacy suite {CipherSuite(flight.hello.suite).name} is enabled")


@case(
    "EL-6.7.3-1",
    "A connection that sends nothing is closed with TIMEOUT at the handshake deadline",
    MUST,
    covers=["6.7.3-1"],
)
async def silent_connection(ctx: Context) -> None:
    """Opens a connection and sends nothing.  The server must close it with
    a plaintext Close TIMEOUT within the handshake deadline
    (--handshake-timeout, 10 s by default) plus a second."""
    deadline = ctx.options.handshake_timeout
    ctx.need_wait(deadline + 1, "waiting for the handshake deadline")
    client = await ctx.connect()
    started = time.monotonic()
    closed = await client.expect_close(deadline + 1)
    if closed.code != ErrorCode.TIMEOUT:
        raise Fail(f"expected Close TIMEOUT, got {closed.describe()}")
    ctx.note(f"closed after {time.monotonic() - started:.2f} s")


@case(
    "EL-6.7.3-2",
    "A handshake stalled after the server's flight is closed with TIMEOUT",
    MUST,
    covers=["6.7.3-1"],
)
async def stalled_handshake(ctx: Context) -> None:
    """Sends a ClientHello, receives ServerHello and ServerAuth, and then
    sends nothing; Close TIMEOUT must come within the handshake deadline
    plus a second of the connection's start."""
    deadline = ctx.options.handshake_timeout
    ctx.need_wait(deadline + 1, "waiting for the handshake deadline")
    started = time.monotonic()
    client, _, flight = await _offer(ctx, Hello())
    if isinstance(flight, Closed):
        raise Fail(f"the default offer was refused: {flight.describe()}")
    closed = await client.expect_close(max(deadline + 1 - (time.monotonic() - started), 0.1))
    if closed.code != ErrorCode.TIMEOUT:
        raise Fail(f"expected Close TIMEOUT, got {closed.describe()}")


@case(
    "EL-8.3-2",
    "A plaintext Close during the handshake ends the connection quietly",
    MUST,
    covers=["8.3-2", "8.1-1"],
)
async def close_during_handshake(ctx: Context) -> None:
    """After the server's flight, the client sends a plaintext Close with the
    unknown code 0x7A7A.  The server must stop sending: the stream ends with
    nothing after (no ServerFinished, no error Close)."""
    client, _, flight = await _offer(ctx, Hello())
    if isinstance(flight, Closed):
        raise Fail(f"the default offer was refused: {flight.describe()}")
    await client.send_plaintext(p.Close(code=0x7A7A, reason="conformance"))
    event = await client.receive(ctx.wait)
    if not isinstance(event, Closed) or event.code is not None:
        raise Fail(f"after the client's Close the server sent {_what(event)}")


def _what(event: object) -> str:
    if isinstance(event, Closed):
        return event.describe()
    if isinstance(event, ServerFlight):
        return f"a ServerHello choosing {event.hello.suite:#06x}"
    return repr(event)
