"""The server's long-term identity, kept in the data directory.

On first start the server generates an Ed25519 key and an RSA-2048 key (RSA
signs for clients that only know RSA-PSS and decrypts the legacy suites' key
transport, when the operator allows those suites) and writes both, as PKCS#8
PEM, to ``<data_dir>/server_key.pem`` with mode 0600.  Later starts load that
file, so clients that pinned the fingerprint keep trusting the server.

The file is created with ``O_CREAT | O_EXCL`` and mode 0600 from the first
byte (never written world-readable and chmod-ed afterwards), through a
temporary name renamed into place, so a crash never leaves half a key.  A key
file that other users can read is refused: a leaked server key lets anyone
impersonate the server.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from elink_protocol import ServerIdentity, SignatureAlgorithm

KEY_FILE_NAME = "server_key.pem"
RSA_BITS = 2048


class IdentityError(Exception):
    """The key file exists but cannot be used (unreadable, corrupt, or
    readable by other users).  The message says which and where."""


def key_path(data_dir: Path) -> Path:
    """Where the server key of ``data_dir`` lives."""
    return Path(data_dir) / KEY_FILE_NAME


def load_or_create_identity(
    data_dir: Path, *, rsa_bits: int = RSA_BITS
) -> tuple[ServerIdentity, bool]:
    """The identity stored in ``data_dir``, generated there first if absent.

    Returns ``(identity, created)``.  Creates ``data_dir`` (mode 0700) when it
    does not exist.  Raises :class:`IdentityError`.
    """
    data_dir = Path(data_dir)
    path = key_path(data_dir)
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise IdentityError(
            f"{data_dir}: cannot create the data directory: {exc.strerror}"
        ) from None
    if path.exists():
        return _load(path), False
    identity = ServerIdentity.generate(ed25519=True, rsa_bits=rsa_bits)
    _write_private(path, identity.to_pem())
    return identity, True


def _load(path: Path) -> ServerIdentity:
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(
                f"{path}: the server key is accessible to other users (mode {mode & 0o777:o});"
                f" run: chmod 600 {path}"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read the server key: {exc.strerror}") from None
    try:
        return ServerIdentity.from_pem(data)
    except ValueError as exc:
        raise IdentityError(f"{path}: not a valid server key file: {exc}") from None


def _write_private(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.unlink(missing_ok=True)  # left by a crash during an earlier first start
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise IdentityError(f"{path}: cannot write the server key: {exc.strerror}") from None


def primary_fingerprint(identity: ServerIdentity) -> str:
    """The fingerprint to show operators and pin in clients: the Ed25519
    key's when there is one (modern suites sign with it), else the RSA key's."""
    prints = identity.fingerprints()
    return prints.get(SignatureAlgorithm.ED25519) or prints[SignatureAlgorithm.RSA_PSS_RSAE_SHA256]
