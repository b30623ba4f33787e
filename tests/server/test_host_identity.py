"""The server key in the data directory: generated once, private, reloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from elink_protocol import SignatureAlgorithm
from elink_server.identity_store import (
    IdentityError,
    key_path,
    load_or_create_identity,
    primary_fingerprint,
)


def test_generated_on_first_start_then_reloaded(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"
    first, created = load_or_create_identity(data)
    assert created
    assert set(first.algorithms) == {
        SignatureAlgorithm.ED25519,
        SignatureAlgorithm.RSA_PSS_RSAE_SHA256,
    }
    assert key_path(data).stat().st_mode & 0o777 == 0o600
    assert data.stat().st_mode & 0o777 == 0o700
    again, created = load_or_create_identity(data)
    assert not created
    assert again.fingerprints() == first.fingerprints()
    assert primary_fingerprint(again) == first.fingerprints()[SignatureAlgorithm.ED25519]


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path)
    key_path(tmp_path).chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_or_create_identity(tmp_path)


def test_a_corrupt_key_file_is_refused(tmp_path: Path) -> None:
    path = key_path(tmp_path)
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="not a valid server key"):
        load_or_create_identity(tmp_path)
