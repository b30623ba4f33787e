"""Key update, the "dynamic key exchange" (docs/protocol.md §7.7).

Theory of operation: either side may move the connection from key epoch ``e``
to ``e + 1``.  The initiator sends ``REKEY`` (epoch ``e + 1``, 32 random
bytes, a fresh X25519 public key for modern suites); the responder answers
``REKEY_ACK`` (same epoch, its own random and key share) and can derive the
next master secret at once; the initiator derives it when the ack arrives::

    secret       = HKDF-Extract(salt = master_e, IKM = X25519(shares))   modern
                 = HKDF-Extract(salt = master_e, IKM = r_init || r_resp) legacy
    master_{e+1} = expand_label(secret, "rekey",
                                u32(e+1) || SHA-256(REKEY payload || REKEY_ACK payload), 32)

Modern suites gain forward secrecy per epoch: the ephemeral keys are dropped
as soon as the shared secret is computed.  Legacy suites change keys but keep
no forward secrecy: anyone who learns ``master_e`` (and sees the encrypted
packets) can follow every later epoch.

:class:`KeyUpdate` is the initiator's side, :func:`respond_to_rekey` the
responder's.  They only compute.  Which packet numbers carry REKEY / REKEY_ACK,
when each direction switches keys, how long old receive keys are kept and who
wins when both sides start at once are the connection's business (§7.7.2).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from elink_protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from elink_protocol.packets import Rekey, RekeyAck
from elink_protocol.payload import encode_payload

from .keyschedule import derive_next_master
from .suites import suite_params

RANDOM_LENGTH = 32
MAX_EPOCH = 0xFFFFFFFF


def _failure(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, ErrorCode.REKEY_FAILURE)


def _check_epoch(epoch: int) -> None:
    if not 0 <= epoch < MAX_EPOCH:
        raise LocalProtocolError(f"cannot update keys past epoch {epoch}")


def _fresh(
    legacy: bool, random: Callable[[int], bytes]
) -> tuple[bytes, bytes, X25519PrivateKey | None]:
    """A fresh random and, for modern suites, a fresh X25519 key and share."""
    nonce = random(RANDOM_LENGTH)
    if legacy:
        return nonce, b"", None
    ephemeral = X25519PrivateKey.from_private_bytes(random(32))
    return nonce, ephemeral.public_key().public_bytes_raw(), ephemeral


def _check_peer(legacy: bool, expected_epoch: int, epoch: int, key_share: bytes) -> None:
    if epoch != expected_epoch:
        raise _failure(f"key update to epoch {epoch}, expected {expected_epoch}")
    if len(key_share) != (0 if legacy else 32):
        raise _failure("key update key share does not fit the suite")


def _ikm(
    ephemeral: X25519PrivateKey | None,
    initiator_random: bytes,
    responder_random: bytes,
    peer_share: bytes,
) -> bytes:
    if ephemeral is None:  # legacy: no forward secrecy, see the module docstring
        return initiator_random + responder_random
    try:
        return ephemeral.exchange(X25519PublicKey.from_public_bytes(peer_share))
    except ValueError:  # all-zero / low-order share
        raise _failure("invalid X25519 key share in key update") from None


class KeyUpdate:
    """The initiator's side of one key update from ``epoch`` to ``epoch + 1``:
    :meth:`initiate` builds REKEY, :meth:`complete` takes the peer's REKEY_ACK
    and returns the next master secret.  One object per update; an initiator
    that must yield to the peer's simultaneous REKEY (§7.7.2) drops this object
    and answers with :func:`respond_to_rekey`."""

    def __init__(
        self,
        *,
        suite: int,
        master: bytes,
        epoch: int,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        _check_epoch(epoch)
        self._legacy = suite_params(suite).legacy
        self._master = master
        self._epoch = epoch
        self._random = random
        self._ephemeral: X25519PrivateKey | None = None
        self._sent: tuple[Rekey, bytes] | None = None
        self._done = False

    @property
    def next_epoch(self) -> int:
        return self._epoch + 1

    def initiate(self) -> tuple[Rekey, bytes]:
        """The REKEY packet to send, with its exact payload bytes."""
        if self._sent is not None:
            raise LocalProtocolError("initiate() was already called")
        nonce, share, self._ephemeral = _fresh(self._legacy, self._random)
        packet = Rekey(epoch=self.next_epoch, random=nonce, key_share=share)
        self._sent = (packet, encode_payload(packet.to_payload()))
        return self._sent

    def complete(self, ack: RekeyAck, payload: bytes) -> bytes:
        """Check the peer's REKEY_ACK (and its exact payload bytes); returns
        the master secret of :attr:`next_epoch`.  Raises
        ``RemoteProtocolError(REKEY_FAILURE)``."""
        if self._sent is None or self._done:
            raise LocalProtocolError("complete() needs exactly one initiate() before it")
        rekey, rekey_payload = self._sent
        self._done = True
        ephemeral, self._ephemeral = self._ephemeral, None
        _check_peer(self._legacy, self.next_epoch, ack.epoch, ack.key_share)
        ikm = _ikm(ephemeral, rekey.random, ack.random, ack.key_share)
        return derive_next_master(self._master, self.next_epoch, ikm, rekey_payload, payload)


def respond_to_rekey(
    *,
    suite: int,
    master: bytes,
    epoch: int,
    rekey: Rekey,
    rekey_payload: bytes,
    random: Callable[[int], bytes] = os.urandom,
) -> tuple[RekeyAck, bytes, bytes]:
    """The responder's side: check the peer's REKEY (and its exact payload
    bytes) against our current ``epoch``; returns the REKEY_ACK to send, its
    payload bytes, and the master secret of ``epoch + 1``.  Raises
    ``RemoteProtocolError(REKEY_FAILURE)``."""
    _check_epoch(epoch)
    legacy = suite_params(suite).legacy
    _check_peer(legacy, epoch + 1, rekey.epoch, rekey.key_share)
    nonce, share, ephemeral = _fresh(legacy, random)
    ack = RekeyAck(epoch=epoch + 1, random=nonce, key_share=share)
    ack_payload = encode_payload(ack.to_payload())
    ikm = _ikm(ephemeral, rekey.random, nonce, rekey.key_share)
    return ack, ack_payload, derive_next_master(master, epoch + 1, ikm, rekey_payload, ack_payload)
