"""Record protection (§7.5), key updates (§7.7) and closing (§8)."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.algorithms import AES

from conformance.case import Context, case
from conformance.handshake import LEGACY, Hello
from conformance.requirements import Level
from conformance.results import Fail, Skip
from conformance.session import Client
from conformance.wire import Closed
from elink_protocol import ErrorCode, Priority, SignatureAlgorithm
from elink_protocol import packets as p
from elink_protocol.app import SendMessage, text_content
from elink_protocol.crypto.keyschedule import derive_record_keys
from elink_protocol.crypto.suites import RecordCipher, suite_params

from ._util import expect_error, packed

MUST = Level.MUST

EXTENSION = 0x8001


def _ping(client: Client, **overrides: object) -> bytes:
    return client.seal(p.Ping.TYPE, packed({"d": b"probe"}), numbered=False, **overrides)  # type: ignore[arg-type]


async def _decrypt_failure(ctx: Context, client: Client, data: bytes, what: str) -> Closed:
    await client.send_bytes(data, note=what)
    return await expect_error(ctx, client, ErrorCode.DECRYPT_ERROR, what=what)


@case(
    "EL-7.5.5-1",
    "Every record that fails to open is DECRYPT_ERROR, and all failures look the same",
    MUST,
    covers=["7.5.5-1"],
)
async def record_failures(ctx: Context) -> None:
    """Four connections, each after a handshake: a Ping whose last tag byte
    is flipped; a Ping whose priority byte was changed after sealing (the
    header is associated data); a Ping whose record is 5 bytes (shorter
    than any tag); a Ping under key phase 7, for which the server has no
    key.  Each must end with DECRYPT_ERROR, and the Close reasons of the
    first three must be equal: nothing may tell which cryptographic check
    failed.  (The key phase is public header data, so naming it in the
    reason reveals nothing; its reason is not compared.)"""
    reasons = []
    client, _ = await ctx.established("tag")
    frame = bytearray(_ping(client))
    frame[-1] ^= 0x01
    reasons.append((await _decrypt_failure(ctx, client, bytes(frame), "a flipped tag bit")).reason)

    client, _ = await ctx.established("header")
    frame = bytearray(_ping(client))
    frame[14] = Priority.BULK
    reasons.append((await _decrypt_failure(ctx, client, bytes(frame), "a changed priority")).reason)

    client, _ = await ctx.established("short")
    frame = bytearray(_ping(client))
    header = bytearray(frame[:20])
    header[12:14] = struct.pack("!H", 5)
    reasons.append(
        (
            await _decrypt_failure(
                ctx, client, bytes(header) + bytes(frame[20:25]), "a 5-byte record"
            )
        ).reason
    )

    if len(set(reasons)) != 1:
        raise Fail(f"the Close reasons differ by failure: {reasons}")
    client, _ = await ctx.established("phase")
    await _decrypt_failure(ctx, client, _ping(client, key_phase=7), "key phase 7")


@case(
    "EL-7.5.3-1",
    "CBC suites: bad length, bad tag and bad padding are all DECRYPT_ERROR, alike",
    MUST,
    covers=["7.5.3-1", "7.5.5-1"],
)
async def cbc_record_checks(ctx: Context) -> None:
    """With --legacy-suites, on each legacy suite the server accepts: a
    record whose length minus the tag is not a multiple of the block size;
    one with a flipped tag bit; and one with a *valid* tag over a ciphertext
    whose padding is wrong (only a holder of the keys can make one).  All
    must be DECRYPT_ERROR with the same reason text."""
    if not ctx.options.legacy_suites:
        raise Skip("needs --legacy-suites")
    for suite in LEGACY:
        reasons = []
        for probe in ("length", "tag", "padding"):
            hello = Hello(
                suites=(suite,), signature_algorithms=(int(SignatureAlgorithm.RSA_PSS_RSAE_SHA256),)
            )
            client = await ctx.connect(f"{probe}-{suite:#06x}")
            hs = ctx.handshaker(client)
            await hs.send_hello(hello)
            flight = await hs.receive_server_flight()
            if isinstance(flight, Closed):
                break  # this legacy suite is not offered
            await hs.send_finished(hs.finished())
            info = await hs.receive_finished()
            if isinstance(info, Closed):
                raise Fail(f"handshake on {suite:#06x} failed: {info.describe()}")
            frame = _cbc_probe(client, suite, probe)
            closed = await _decrypt_failure(ctx, client, frame, f"{probe} ({suite:#06x})")
            reasons.append(closed.reason)
        if len(set(reasons)) > 1:
            raise Fail(f"suite {suite:#06x}: the reasons differ by failure: {reasons}")


def _cbc_probe(client: Client, suite: int, probe: str) -> bytes:
    params = suite_params(suite)
    block = params.block_size
    if probe == "length":
        good = _ping(client)
        longer = bytearray(good[:20])
        record = good[20:] + b"\x00"
        longer[12:14] = struct.pack("!H", len(record))
        return bytes(longer) + record
    if probe == "tag":
        frame = bytearray(_ping(client))
        frame[-1] ^= 0x80
        return bytes(frame)
    # A valid tag over a ciphertext whose last byte decrypts to 0 (bad padding).
    keys = derive_record_keys(params, client.latest_master, client.send_epoch, "c2s")
    algorithm = (
        AES(keys.key)
        if params.cipher is RecordCipher.AES_256_CBC
        else TripleDES(keys.key if params.cipher is RecordCipher.TRIPLE_DES_CBC else keys.key * 3)
    )
    counter = (1 << 32) | client.unnumbered
    pid = client.unnumbered
    client.unnumbered += 1
    iv = bytes(Cipher(algorithm, modes.ECB()).encryptor().update(counter.to_bytes(block, "big")))
    plaintext = packed({"d": b"probe"})
    body = plaintext + bytes(block - len(plaintext) % block)  # zero bytes: invalid PKCS#7
    ciphertext = bytes(Cipher(algorithm, modes.CBC(iv)).encryptor().update(body))
    length = len(ciphertext) + 32
    header = _header(p.Ping.TYPE, pid, client.ack_value(), length, client.send_epoch)
    tag = hmac.new(
        keys.mac_key, header + struct.pack("!Q", counter) + ciphertext, hashlib.sha256
    ).digest()
    return header + bytes(4) + ciphertext + tag


def _header(type_: int, pid: int, ack: int, length: int, epoch: int) -> bytes:
    from elink_protocol.frame import ENCRYPTED, UNNUMBERED, prefix_for

    return prefix_for(
        type=type_,
        pid=pid,
        ack=ack,
        flags=ENCRYPTED | UNNUMBERED,
        priority=Priority.CONTROL,
        key_phase=epoch & 0xFF,
        length=length,
    )


# --- key updates (§7.7) -------------------------------------------------------------


async def _bad_rekey(ctx: Context, fields: dict[str, object], what: str) -> None:
    client, _ = await ctx.established()
    await client.send_payload(p.Rekey.TYPE, packed(fields), priority=Priority.CONTROL, note=what)
    await expect_error(ctx, client, ErrorCode.REKEY_FAILURE, what=what)


@case(
    "EL-7.7.1-1",
    "A Rekey to the wrong epoch is refused with REKEY_FAILURE",
    MUST,
    covers=["7.7.1-1"],
)
async def rekey_wrong_epoch(ctx: Context) -> None:
    """In epoch 0, a Rekey announcing epoch 2 (with a valid key share)."""
    await _bad_rekey(ctx, {"e": 2, "r": os.urandom(32), "ks": _share()}, "a Rekey to epoch 2")


@case(
    "EL-7.7.1-2",
    "A Rekey without the key share a modern suite needs is refused with REKEY_FAILURE",
    MUST,
    covers=["7.7.1-1"],
)
async def rekey_without_share(ctx: Context) -> None:
    """On a modern suite, a Rekey to epoch 1 with an empty ``ks``."""
    await _bad_rekey(ctx, {"e": 1, "r": os.urandom(32)}, "a Rekey without ks")


@case(
    "EL-7.7.1-3",
    "A Rekey with a low-order key share is refused with REKEY_FAILURE",
    MUST,
    covers=["7.7.1-1"],
)
async def rekey_low_order(ctx: Context) -> None:
    """A Rekey to epoch 1 whose ``ks`` is 32 zero bytes."""
    await _bad_rekey(ctx, {"e": 1, "r": os.urandom(32), "ks": bytes(32)}, "a zero key share")


@case(
    "EL-7.7.2-1",
    "A second Rekey before the first is answered is refused with REKEY_FAILURE",
    MUST,
    covers=["7.7.2-1"],
)
async def rekey_twice(ctx: Context) -> None:
    """Two valid Rekeys to epoch 1 in one write, the second before the
    RekeyAck of the first could arrive: a key update is already in progress
    (and the second names an epoch that is no longer next)."""
    client, _ = await ctx.established()
    first = client.seal(
        p.Rekey.TYPE, packed({"e": 1, "r": os.urandom(32), "ks": _share()}), numbered=True
    )
    second = client.seal(
        p.Rekey.TYPE, packed({"e": 1, "r": os.urandom(32), "ks": _share()}), numbered=True
    )
    await client.send_bytes(first + second, note="two Rekeys to epoch 1")
    with_ack = await client.expect_close(ctx.wait)
    if with_ack.code != ErrorCode.REKEY_FAILURE:
        raise Fail(f"expected Close REKEY_FAILURE, got {with_ack.describe()}")


def _share() -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.generate().public_key().public_bytes_raw()


# --- closing (§8) --------------------------------------------------------------------


@case(
    "EL-8.1-1",
    "A Close with an unknown code ends the connection; the server sends nothing after it",
    MUST,
    covers=["8.1-1", "8.3-2"],
)
async def close_unknown_code(ctx: Context) -> None:
    """After the handshake, an encrypted Close with the code 0x7A7A (not
    defined anywhere).  The server must accept it, stop sending and end the
    connection: the stream ends with no packet (not even an error Close)."""
    client, _ = await ctx.established()
    await client.send(p.Close(code=0x7A7A, reason="conformance"))
    event = await client.receive(ctx.wait)
    if not isinstance(event, Closed) or event.code is not None:
        raise Fail(f"after the client's Close the server sent {getattr(event, 'packet', event)}")


@case(
    "EL-8.2-1",
    "After a protocol error the server processes nothing more of that connection",
    MUST,
    covers=["8.2-1"],
    users=1,
)
async def nothing_after_error(ctx: Context) -> None:
    """Logged in; one write carries a Ping with a corrupted tag followed by a
    valid SendMessage to the client's own file assistant.  The server must
    close with DECRYPT_ERROR, and the message must not exist: a second
    connection finds nothing under its client message id in the history."""
    from elink_protocol.app import History, HistoryPage

    client, _ = await ctx.logged_in(0, name="broken")
    bad = bytearray(_ping(client))
    bad[-1] ^= 0x01
    cm = ctx.unique("cm")
    message = SendMessage(
        rid=client.rid(),
        client_msg_id=cm,
        to=client.user,
        kind="text",
        content=text_content("after an error"),
    )
    good = client.seal(
        SendMessage.TYPE, packed(message.to_payload()), numbered=True, priority=Priority.INTERACTIVE
    )
    await client.send_bytes(bytes(bad) + good, note="a corrupted Ping, then a SendMessage")
    await expect_error(ctx, client, ErrorCode.DECRYPT_ERROR, what="a corrupted record")
    checker, _ = await ctx.logged_in(0, name="checker")
    page = await checker.expect_answer(
        History(rid=checker.rid(), with_user=checker.user, limit=20), HistoryPage, ctx.wait
    )
    assert isinstance(page, HistoryPage)
    if any(m.client_msg_id == cm for m in page.messages):
        raise Fail("the SendMessage sent after the protocol error was stored")
