"""Record protection: sealing and opening encrypted payloads (docs/protocol.md
§7.5).

One :class:`RecordProtection` object protects one direction of one key epoch.
The caller (the connection) supplies a 64-bit ``nonce_counter`` per record --
``(UNNUMBERED flag << 32) | pid`` -- and guarantees that it never seals two
records with the same counter under one key; the receiver recomputes the same
counter from the frame header, so nothing nonce-related travels on the wire.

Two constructions:

* AEAD suites (AES-256-GCM, ChaCha20-Poly1305): ``nonce = iv XOR counter``
  (counter as a 12-byte big-endian integer), the frame-header prefix as
  associated data, 16-byte tag.
* Legacy CBC suites (AES-256, 3DES, DES): encrypt-then-MAC.  The CBC IV is
  never sent: it is ``E_k(counter)``, the counter encrypted as one block under
  the record key (NIST SP 800-38A, appendix C), so it is unpredictable and
  unique per record.  PKCS#7 padding, then ``tag = HMAC-SHA256(mac_key, aad ||
  u64 counter || ciphertext)`` appended in full.  The tag is checked (in
  constant time) before anything is decrypted, so padding is never examined
  for a forged record and there is no padding oracle.

Every failure to open -- short record, bad length, bad tag, bad padding --
raises the same ``RemoteProtocolError(DECRYPT_ERROR)`` with the same message.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import struct
from typing import ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.ciphers.algorithms import AES

from elink_protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

from .keyschedule import derive_record_keys
from .suites import RecordCipher, SuiteParams, suite_params

_U64 = struct.Struct("!Q")
_COUNTER_LIMIT = 1 << 64
_DECRYPT_FAILED = "record failed authentication"

AEAD_TAG_LENGTH = 16
CBC_TAG_LENGTH = 32

#: Largest number of bytes any suite adds to a plaintext: AES-CBC's worst-case
#: padding (a whole 16-byte block) plus the 32-byte HMAC.  ``frame.MAX_WIRE_PAYLOAD``
#: leaves 64 bytes for this.
MAX_RECORD_OVERHEAD = 16 + CBC_TAG_LENGTH


def _check_counter(counter: int) -> None:
    if not 0 <= counter < _COUNTER_LIMIT:
        raise LocalProtocolError(f"nonce counter {counter} is not a 64-bit unsigned integer")


class RecordProtection(abc.ABC):
    """Seals and opens the records of one direction in one key epoch."""

    MAX_OVERHEAD: ClassVar[int] = MAX_RECORD_OVERHEAD
    """Upper bound of ``sealed_length(n) - n`` over all suites."""

    def __init__(self, params: SuiteParams, epoch: int) -> None:
        self.params = params
        self.epoch = epoch

    @abc.abstractmethod
    def seal(self, nonce_counter: int, aad: bytes, plaintext: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext``; ``aad`` is authenticated only."""

    @abc.abstractmethod
    def open_untrusted(self, nonce_counter: int, aad: bytes, record: bytes) -> bytes:
        """Check and decrypt a peer's record.  Raises only
        ``RemoteProtocolError(DECRYPT_ERROR)``, whatever the cause."""

    @abc.abstractmethod
    def sealed_length(self, plaintext_length: int) -> int:
        """Exact length of ``seal()``'s output for a plaintext of this length
        (the frame header, which is the AAD, needs it before sealing)."""


class AeadRecordProtection(RecordProtection):
    """AES-256-GCM or ChaCha20-Poly1305 (§7.5.1)."""

    MAX_OVERHEAD: ClassVar[int] = AEAD_TAG_LENGTH

    def __init__(self, params: SuiteParams, epoch: int, key: bytes, iv: bytes) -> None:
        super().__init__(params, epoch)
        # One cipher object per key: constructing one costs more than a
        # 256-byte encryption (FACTS.md).
        self._aead: AESGCM | ChaCha20Poly1305 = (
            AESGCM(key) if params.cipher is RecordCipher.AES_256_GCM else ChaCha20Poly1305(key)
        )
        self._iv = int.from_bytes(iv, "big")

    def nonce(self, nonce_counter: int) -> bytes:
        """The 12-byte AEAD nonce for a counter: ``iv XOR counter``."""
        _check_counter(nonce_counter)
        return (self._iv ^ nonce_counter).to_bytes(12, "big")

    def seal(self, nonce_counter: int, aad: bytes, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self.nonce(nonce_counter), plaintext, aad)

    def open_untrusted(self, nonce_counter: int, aad: bytes, record: bytes) -> bytes:
        nonce = self.nonce(nonce_counter)
        try:
            return self._aead.decrypt(nonce, record, aad)
        except InvalidTag:
            raise RemoteProtocolError(_DECRYPT_FAILED, ErrorCode.DECRYPT_ERROR) from None

    def sealed_length(self, plaintext_length: int) -> int:
        return plaintext_length + AEAD_TAG_LENGTH


class CbcHmacRecordProtection(RecordProtection):
    """Legacy CBC + HMAC-SHA256, encrypt-then-MAC (§7.5.3).

    Building a cipher context costs more than encrypting a whole record, so
    one CBC encryptor and one CBC decryptor live as long as the key and are
    never finalized; records are fed through them back to back:

    * Sealing: CBC chains each block on the previous ciphertext block ``c``.
      Feeding first the *steering* block ``E^-1(IV) XOR c = counter XOR c``
      makes the cipher output exactly ``E(counter) = IV`` and leaves ``IV``
      as the chaining value, so the record's blocks come out as a fresh
      ``CBC(key, IV)`` would produce them.  The steering block's output is
      dropped.
    * Opening: CBC decryption of a block needs only the previous *ciphertext*
      block, so feeding ``IV`` before the record sets the chain for it; the
      first output block is dropped.
    """

    MAX_OVERHEAD: ClassVar[int] = MAX_RECORD_OVERHEAD

    def __init__(self, params: SuiteParams, epoch: int, key: bytes, mac_key: bytes) -> None:
        super().__init__(params, epoch)
        if params.cipher is RecordCipher.AES_256_CBC:
            algorithm: AES | TripleDES = AES(key)
        elif params.cipher is RecordCipher.TRIPLE_DES_CBC:
            algorithm = TripleDES(key)
        else:
            # Single DES as EDE with three equal keys: TripleDES(k, k, k) is DES.
            algorithm = TripleDES(key * 3)
        block = params.block_size
        self._block = block
        self._iv_maker: CipherContext = Cipher(algorithm, modes.ECB()).encryptor()
        self._encryptor: CipherContext = Cipher(algorithm, modes.CBC(bytes(block))).encryptor()
        self._decryptor: CipherContext = Cipher(algorithm, modes.CBC(bytes(block))).decryptor()
        self._chain = 0  # the encryptor's chaining value: its last output block
        self._mac = hmac.new(mac_key, digestmod=hashlib.sha256)

    def cbc_iv(self, nonce_counter: int) -> bytes:
        """The record's CBC IV: the counter, as a big-endian block, encrypted."""
        _check_counter(nonce_counter)
        return self._iv_maker.update(nonce_counter.to_bytes(self._block, "big"))

    def _tag(self, nonce_counter: int, aad: bytes, ciphertext: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(aad + _U64.pack(nonce_counter) + ciphertext)
        return mac.digest()

    def seal(self, nonce_counter: int, aad: bytes, plaintext: bytes) -> bytes:
        _check_counter(nonce_counter)
        block = self._block
        pad = block - len(plaintext) % block
        steer = (nonce_counter ^ self._chain).to_bytes(block, "big")
        out = self._encryptor.update(steer + plaintext + bytes((pad,)) * pad)
        ciphertext = out[block:]
        self._chain = int.from_bytes(out[-block:], "big")
        return ciphertext + self._tag(nonce_counter, aad, ciphertext)

    def open_untrusted(self, nonce_counter: int, aad: bytes, record: bytes) -> bytes:
        iv = self.cbc_iv(nonce_counter)
        body = len(record) - CBC_TAG_LENGTH
        if body < self._block or body % self._block:
            raise RemoteProtocolError(_DECRYPT_FAILED, ErrorCode.DECRYPT_ERROR)
        ciphertext = record[:body]
        if not hmac.compare_digest(self._tag(nonce_counter, aad, ciphertext), record[body:]):
            raise RemoteProtocolError(_DECRYPT_FAILED, ErrorCode.DECRYPT_ERROR)
        padded = self._decryptor.update(iv + ciphertext)[self._block :]
        pad = padded[-1]
        # Only reachable with a valid tag, i.e. a peer that holds the MAC key
        # and padded wrongly: no oracle for outsiders, still DECRYPT_ERROR.
        if not 1 <= pad <= self._block or padded[-pad:] != bytes((pad,)) * pad:
            raise RemoteProtocolError(_DECRYPT_FAILED, ErrorCode.DECRYPT_ERROR)
        return padded[:-pad]

    def sealed_length(self, plaintext_length: int) -> int:
        return (plaintext_length // self._block + 1) * self._block + CBC_TAG_LENGTH


def record_protection(
    suite: int, master_secret: bytes, epoch: int, direction: str
) -> RecordProtection:
    """The record protection of ``direction`` (``"c2s"`` or ``"s2c"``) in
    ``epoch``, keyed from that epoch's master secret (§7.4.3)."""
    params = suite_params(suite)
    keys = derive_record_keys(params, master_secret, epoch, direction)
    if params.aead:
        return AeadRecordProtection(params, epoch, keys.key, keys.iv)
    return CbcHmacRecordProtection(params, epoch, keys.key, keys.mac_key)
