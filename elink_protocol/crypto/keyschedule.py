"""The e-Link v1 key schedule (docs/protocol.md §7.4).

Theory of operation: everything is HKDF-SHA256 (RFC 5869) with TLS-1.3-style
labels.  One pseudo-random key (PRK) is extracted per handshake from both
hellos' randoms and the pre-master secret; the finished keys, the epoch-0
master secret and the resumption secret are expanded from it, each bound to a
transcript hash so that both sides agree on every handshake byte before any
key is used.  Record keys are expanded per (epoch, direction) from that
epoch's master secret; a key update (§7.7) makes the next master secret from
the current one plus fresh key material.

Every function here is pure: bytes in, bytes out.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Literal

import attrs

from .suites import SuiteParams, suite_params

HASH_LEN = 32
LABEL_PREFIX = b"elink1 "

Direction = Literal["c2s", "s2c"]
DIRECTIONS: tuple[Direction, Direction] = ("c2s", "s2c")

#: AEAD nonce / IV length for the AEAD suites (§7.5.1).
AEAD_IV_LENGTH = 12

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
# transcript entry header: u16 packet type || u32 payload length
_ENTRY = struct.Struct("!HI")


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869 §2.2)."""
    return hmac.digest(salt, ikm, "sha256")


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-256 (RFC 5869 §2.3)."""
    if not 0 < length <= 255 * HASH_LEN:
        raise ValueError(f"HKDF-Expand length {length} out of range")
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), "sha256")
        out += block
        counter += 1
    return out[:length]


def expand_label(secret: bytes, label: str, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label (§7.4.1)::

    info = u16 length || u8 len(full_label) || full_label
           || u8 len(context) || context
    full_label = "elink1 " || label   (ASCII)
    """
    full_label = LABEL_PREFIX + label.encode("ascii")
    if len(full_label) > 255 or len(context) > 255 or not 0 < length <= 0xFFFF:
        raise ValueError("expand_label: label, context or length too long")
    info = (
        _U16.pack(length)
        + bytes((len(full_label),))
        + full_label
        + bytes((len(context),))
        + context
    )
    return hkdf_expand(secret, info, length)


def u32(value: int) -> bytes:
    return _U32.pack(value)


class Transcript:
    """Running SHA-256 over the handshake packets (§7.3).

    Each packet contributes ``u16 type || u32 payload_length || payload`` --
    the exact payload bytes as sent or received, so a peer that re-encodes a
    field differently changes the hash."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, packet_type: int, payload: bytes) -> None:
        self._hash.update(_ENTRY.pack(packet_type, len(payload)))
        self._hash.update(payload)

    def digest(self) -> bytes:
        """The hash of everything added so far (the running state is kept)."""
        return self._hash.copy().digest()


# --- handshake secrets (§7.4.2) ----------------------------------------------


def derive_prk(client_random: bytes, server_random: bytes, premaster: bytes) -> bytes:
    """PRK = HKDF-Extract(salt = CH.random || SH.random, IKM = pre-master)."""
    return hkdf_extract(client_random + server_random, premaster)


def finished_mac(prk: bytes, label: str, transcript_hash: bytes, binding: bytes) -> bytes:
    """A finished MAC: ``HMAC(expand_label(PRK, label, T, 32), T || binding)``.

    ``binding`` is the fixed encoding of the finished packet's other fields
    (:func:`client_finished_binding`, :func:`server_finished_binding`), so a
    man in the middle cannot alter them either."""
    key = expand_label(prk, label, transcript_hash, HASH_LEN)
    return hmac.digest(key, transcript_hash + binding, "sha256")


def client_finished_binding(
    *, key_transport: bytes, resume_session: bytes, resume_last_processed: int, resume_proof: bytes
) -> bytes:
    """CF fields covered by ``c_verify``::

    u16 len || key_transport || u8 len || resume_session
    || u32 resume_last_processed || u8 len || resume_proof
    """
    return (
        _U16.pack(len(key_transport))
        + key_transport
        + bytes((len(resume_session),))
        + resume_session
        + _U32.pack(resume_last_processed)
        + bytes((len(resume_proof),))
        + resume_proof
    )


def server_finished_binding(
    *, session_id: bytes, resumed: bool, resume_last_processed: int
) -> bytes:
    """SF fields covered by ``s_verify``: ``session_id (16) || u8 resumed ||
    u32 resume_last_processed``."""
    return session_id + bytes((int(resumed),)) + _U32.pack(resume_last_processed)


def derive_master(prk: bytes, t3: bytes) -> bytes:
    """Epoch-0 master secret: ``expand_label(PRK, "master", T3, 32)``."""
    return expand_label(prk, "master", t3, HASH_LEN)


def derive_resumption_secret(master0: bytes, t3: bytes) -> bytes:
    """``expand_label(master_0, "resumption", T3, 32)``."""
    return expand_label(master0, "resumption", t3, HASH_LEN)


def resume_proof(resumption_secret: bytes, t2: bytes) -> bytes:
    """Proof of holding a session's resumption secret, bound to this handshake:
    ``HMAC(expand_label(secret, "resume", "", 32), T2)``."""
    key = expand_label(resumption_secret, "resume", b"", HASH_LEN)
    return hmac.digest(key, t2, "sha256")


# --- record keys (§7.4.3) -------------------------------------------------------


@attrs.frozen(kw_only=True, repr=False)
class RecordKeys:
    """Keys protecting one direction of one epoch."""

    key: bytes
    """The cipher key (``key_length`` of the suite)."""
    iv: bytes
    """AEAD suites: the 12-byte IV XORed with the counter.  Empty for CBC."""
    mac_key: bytes
    """CBC suites: the 32-byte HMAC-SHA256 key.  Empty for AEAD."""

    def __repr__(self) -> str:  # never put key bytes into logs
        return f"RecordKeys(<{len(self.key)}-byte key>)"


def derive_record_keys(
    params: SuiteParams | int, master_secret: bytes, epoch: int, direction: str
) -> RecordKeys:
    """Keys of ``direction`` in ``epoch``, from that epoch's master secret::

    key     = expand_label(master_e, d + " key", u32(e), key_length)
    iv      = expand_label(master_e, d + " iv",  u32(e), 12)   (AEAD suites)
    mac_key = expand_label(master_e, d + " mac", u32(e), 32)   (CBC suites)
    """
    if not isinstance(params, SuiteParams):
        params = suite_params(params)
    if direction not in DIRECTIONS:  # "c2s" or "s2c", see Direction
        raise ValueError(f"direction must be 'c2s' or 's2c', not {direction!r}")
    context = u32(epoch)
    key = expand_label(master_secret, direction + " key", context, params.key_length)
    if params.aead:
        iv = expand_label(master_secret, direction + " iv", context, AEAD_IV_LENGTH)
        return RecordKeys(key=key, iv=iv, mac_key=b"")
    mac_key = expand_label(master_secret, direction + " mac", context, HASH_LEN)
    return RecordKeys(key=key, iv=b"", mac_key=mac_key)


# --- key update (§7.7.1) --------------------------------------------------------


def derive_next_master(
    master_secret: bytes, next_epoch: int, ikm: bytes, rekey_payload: bytes, ack_payload: bytes
) -> bytes:
    """Master secret of ``next_epoch``::

    secret = HKDF-Extract(salt = master_e, IKM = ikm)
    master_{e+1} = expand_label(secret, "rekey",
                                u32(e+1) || SHA-256(Rekey payload || RekeyAck payload), 32)
    """
    secret = hkdf_extract(master_secret, ikm)
    exchange = hashlib.sha256(rekey_payload + ack_payload).digest()
    return expand_label(secret, "rekey", u32(next_epoch) + exchange, HASH_LEN)
