"""Server key fingerprints and the known-servers file (docs/protocol.md §7.8).

No file IO here: :class:`KnownServers` parses text and serializes back to
text; the host reads and writes the file.  The format is line based::

    # comment
    chat.example.com:7443 SHA256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    [2001:db8::1]:7443    SHA256:...

A host may have several lines (a server with both an Ed25519 and an RSA key
shows a different key to legacy clients; keys are rotated).  Comments and
blank lines survive a parse/serialize round trip.
"""

from __future__ import annotations

import enum
import hashlib
import re

FINGERPRINT_PREFIX = "SHA256:"
_FINGERPRINT = re.compile(r"SHA256:[0-9a-f]{64}")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]#]+):([0-9]{1,5})")


def fingerprint(public_key_bytes: bytes) -> str:
    """``"SHA256:" + lowercase hex of SHA-256(public key bytes)`` (§7.8)."""
    return FINGERPRINT_PREFIX + hashlib.sha256(public_key_bytes).hexdigest()


def is_fingerprint(text: str) -> bool:
    return _FINGERPRINT.fullmatch(text) is not None


def host_port(host: str, port: int) -> str:
    """The key of a server in the known-servers file: ``host:port``, IPv6
    literals in brackets, host names lower-cased."""
    if not 0 < port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    host = host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    text = f"{host}:{port}"
    if _HOST_PORT.fullmatch(text) is None:
        raise ValueError(f"not a valid host: {host!r}")
    return text


def _normalize(server: str) -> str:
    match = _HOST_PORT.fullmatch(server)
    if match is None:
        raise ValueError(f"expected 'host:port', got {server!r}")
    return host_port(match.group(1).strip("[]"), int(match.group(2)))


class TrustDecision(enum.Enum):
    """What the known-servers file says about a presented key."""

    TRUSTED = "trusted"
    """The fingerprint is listed for this server."""
    UNKNOWN = "unknown"
    """Nothing is listed for this server: first use."""
    MISMATCH = "mismatch"
    """The server is listed with other keys only: possibly an attack."""


class KnownServers:
    """An in-memory known-servers file."""

    def __init__(self) -> None:
        # Each line is kept as (raw text, parsed entry or None for comments and
        # blank lines), so that serialize() reproduces the user's comments.
        self._lines: list[tuple[str, tuple[str, str] | None]] = []

    @classmethod
    def parse(cls, text: str) -> KnownServers:
        """Parse a known-servers file.  ``ValueError`` names the first bad line."""
        known = cls()
        for number, raw in enumerate(text.splitlines(), start=1):
            content = raw.split("#", 1)[0].strip()
            if not content:
                known._lines.append((raw, None))
                continue
            parts = content.split()
            try:
                if len(parts) != 2 or not is_fingerprint(parts[1]):
                    raise ValueError("expected 'host:port SHA256:<64 lowercase hex digits>'")
                known._lines.append((raw, (_normalize(parts[0]), parts[1])))
            except ValueError as exc:
                raise ValueError(f"known-servers line {number}: {exc}") from None
        return known

    def serialize(self) -> str:
        return "".join(raw + "\n" for raw, _ in self._lines)

    def fingerprints(self, server: str) -> frozenset[str]:
        """Every fingerprint listed for ``server`` (``host:port``)."""
        server = _normalize(server)
        return frozenset(e[1] for _, e in self._lines if e is not None and e[0] == server)

    def check(self, server: str, presented: str) -> TrustDecision:
        listed = self.fingerprints(server)
        if presented in listed:
            return TrustDecision.TRUSTED
        return TrustDecision.MISMATCH if listed else TrustDecision.UNKNOWN

    def add(self, server: str, presented: str) -> None:
        """List ``presented`` for ``server`` (no-op when already listed)."""
        server = _normalize(server)
        if not is_fingerprint(presented):
            raise ValueError(f"not a SHA256: fingerprint: {presented!r}")
        if presented not in self.fingerprints(server):
            self._lines.append((f"{server} {presented}", (server, presented)))

    def remove(self, server: str) -> None:
        """Forget every key of ``server`` (after a deliberate key change)."""
        server = _normalize(server)
        self._lines = [(raw, e) for raw, e in self._lines if e is None or e[0] != server]
