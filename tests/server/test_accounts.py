"""Password hashing: format, verification, malformed hashes, async helpers."""

from __future__ import annotations

import base64
import hashlib

import pytest
import trio

from elink_server.accounts import (
    InvalidPasswordHash,
    hash_password,
    hash_password_async,
    needs_rehash,
    verify_password,
    verify_password_async,
)


def fixed_random(n: int) -> bytes:
    return bytes(range(n))


def test_format_is_self_describing_and_matches_hashlib() -> None:
    encoded = hash_password("correct horse", random=fixed_random)
    prefix, n, r, p, salt_b64, key_b64 = encoded.split("$")
    assert (prefix, n, r, p) == ("scrypt", "16384", "8", "1")
    salt = base64.b64decode(salt_b64 + "==")
    assert salt == bytes(range(16))
    expected = hashlib.scrypt(b"correct horse", salt=salt, n=2**14, r=8, p=1, dklen=32)
    assert base64.b64decode(key_b64 + "=") == expected
    assert "=" not in encoded


def test_verify() -> None:
    encoded = hash_password("pässwörd")
    assert verify_password("pässwörd", encoded)
    assert not verify_password("passwörd", encoded)
    assert not verify_password("", encoded)
    # NFC: a decomposed "ä" is the same password.
    assert verify_password("pa\u0308sswo\u0308rd", encoded)
    # Fresh salt every time.
    assert hash_password("pässwörd") != encoded
    assert not needs_rehash(encoded)


def test_unknown_account_costs_a_check_and_fails() -> None:
    assert not verify_password("anything", None)
    assert not verify_password("", None)


def test_other_parameters_still_verify_and_need_rehash() -> None:
    cheap = hash_password("pw", n=2**10)
    assert verify_password("pw", cheap)
    assert needs_rehash(cheap)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "bcrypt$x",
        "scrypt$16384$8$1$AAAA",
        "scrypt$16385$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,  # n not a power of 2
        "scrypt$+16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,
        "scrypt$16384$0$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,
        "scrypt$1048576$64$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,  # 8 GiB of memory
        "scrypt$16384$8$1$!!!!$" + "A" * 43,
        "scrypt$16384$8$1$$" + "A" * 43,
        "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAA",  # 3-byte key
    ],
)
def test_malformed_hashes_are_errors_not_mismatches(encoded: str) -> None:
    with pytest.raises(InvalidPasswordHash):
        verify_password("pw", encoded)


def test_refusals() -> None:
    with pytest.raises(ValueError):
        hash_password("")
    with pytest.raises(ValueError):
        hash_password("x" * 1025)
    encoded = hash_password("x")
    assert not verify_password("x" * 1025, encoded)  # too long: just wrong


async def test_async_helpers_run_in_threads() -> None:
    limiter = trio.CapacityLimiter(2)
    with trio.fail_after(30):
        encoded = await hash_password_async("secret", limiter=limiter)
        assert await verify_password_async("secret", encoded, limiter=limiter)
        assert not await verify_password_async("wrong", encoded)
        assert not await verify_password_async("secret", None)
