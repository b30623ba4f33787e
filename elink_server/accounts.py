"""Password hashing for accounts: scrypt, stored as a self-describing string.

Format (all on one line, ``$``-separated, base64 without padding)::

    scrypt$<n>$<r>$<p>$<salt_b64>$<hash_b64>

e.g. ``scrypt$16384$8$1$...$...``.  The parameters travel with the hash, so
raising the cost later only needs :func:`needs_rehash` at the next login.

Hashing costs tens of milliseconds of CPU and 16 MiB of memory by design: the
Trio server must never call :func:`hash_password` or :func:`verify_password`
on the event loop.  Use the ``*_async`` helpers, which run them in a worker
thread, behind a :class:`trio.CapacityLimiter` that bounds the login storm's
CPU and memory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import unicodedata
from collections.abc import Callable

import trio

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32

#: Refuse stored parameters that would need more memory than this (a
#: tampered hash must not exhaust the server).  scrypt uses 128 * n * r bytes.
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
#: Longest password accepted, in UTF-8 bytes.
MAX_PASSWORD_BYTES = 1024

_PREFIX = "scrypt"


class InvalidPasswordHash(ValueError):
    """A stored hash string is malformed or has unacceptable parameters.  This
    is corrupt data, not a wrong password."""


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidPasswordHash("bad base64 in password hash") from None


def _password_bytes(password: str) -> bytes:
    if type(password) is not str:
        raise TypeError("password must be a str")
    # NFC: the same password typed on different systems (composed or
    # decomposed accents) must hash the same.
    data = unicodedata.normalize("NFC", password).encode("utf-8")
    if len(data) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password longer than {MAX_PASSWORD_BYTES} bytes")
    return data


def _scrypt(password: bytes, salt: bytes, *, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=128 * n * r + 1024 * 1024
    )


def hash_password(
    password: str, *, random: Callable[[int], bytes] = os.urandom, n: int = SCRYPT_N
) -> str:
    """Hash a new password (with a fresh 16-byte salt from ``random``).  An
    empty password is refused.  ``n`` is for tests that need speed."""
    data = _password_bytes(password)
    if not data:
        raise ValueError("empty password")
    salt = random(SALT_BYTES)
    key = _scrypt(data, salt, n=n, r=SCRYPT_R, p=SCRYPT_P, length=KEY_BYTES)
    return "$".join(
        (_PREFIX, str(n), str(SCRYPT_R), str(SCRYPT_P), _b64encode(salt), _b64encode(key))
    )


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    if type(encoded) is not str:
        raise InvalidPasswordHash("password hash must be a str")
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _PREFIX:
        raise InvalidPasswordHash("not an scrypt password hash")
    try:
        # isdigit() first: int() would also accept "+8", " 8" or "8_0".
        if not all(part.isascii() and part.isdigit() for part in parts[1:4]):
            raise ValueError
        n, r, p = (int(part) for part in parts[1:4])
    except ValueError:
        raise InvalidPasswordHash("bad scrypt parameters") from None
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16:
        raise InvalidPasswordHash(f"bad scrypt parameters n={n} r={r} p={p}")
    if 128 * n * r > MAX_SCRYPT_MEMORY:
        raise InvalidPasswordHash(f"scrypt parameters n={n} r={r} need too much memory")
    salt, key = _b64decode(parts[4]), _b64decode(parts[5])
    if not salt or not 16 <= len(key) <= 64:
        raise InvalidPasswordHash("bad salt or key length")
    return n, r, p, salt, key


# Verifying against this when the account does not exist costs the same time
# as a real check, so response timing does not reveal which names exist.
_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43


def verify_password(password: str, encoded: str | None) -> bool:
    """``True`` if ``password`` matches the stored hash, compared in constant
    time.  ``encoded=None`` (no such account) does the same work and returns
    ``False``.  A malformed hash raises :class:`InvalidPasswordHash`."""
    n, r, p, salt, expected = _parse(_DUMMY_HASH if encoded is None else encoded)
    try:
        data = _password_bytes(password)
    except ValueError:
        data = b""  # too long: still spend the time, then fail
        encoded = None
    actual = _scrypt(data, salt, n=n, r=r, p=p, length=len(expected))
    return hmac.compare_digest(actual, expected) and encoded is not None


def needs_rehash(encoded: str) -> bool:
    """``True`` if the hash uses other parameters than the current defaults."""
    n, r, p, salt, key = _parse(encoded)
    return (n, r, p, len(salt), len(key)) != (SCRYPT_N, SCRYPT_R, SCRYPT_P, SALT_BYTES, KEY_BYTES)


async def hash_password_async(password: str, *, limiter: trio.CapacityLimiter | None = None) -> str:
    """:func:`hash_password` in a worker thread (``limiter``: Trio's default
    thread limiter if ``None``)."""
    return await trio.to_thread.run_sync(hash_password, password, limiter=limiter)


async def verify_password_async(
    password: str, encoded: str | None, *, limiter: trio.CapacityLimiter | None = None
) -> bool:
    """:func:`verify_password` in a worker thread."""
    return await trio.to_thread.run_sync(verify_password, password, encoded, limiter=limiter)
