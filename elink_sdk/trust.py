"""Which server keys the client trusts (docs/protocol.md §7.8).

Two ways, as with SSH:

* **Pinning**: ``server_fingerprint="SHA256:..."`` (or several).  Any other key
  is refused during the handshake.
* **Trust on first use** with a known-servers file: the first key a server
  shows is written to the file; from then on only the listed keys are
  accepted.  A server listed with other keys is a :class:`ServerKeyMismatch`,
  raised loudly and never retried.

The file is the one of §7.8.3 (``host:port SHA256:<hex>`` per line), by
default ``$ELINK_KNOWN_SERVERS`` or ``~/.config/elink/known_servers``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from elink_protocol.crypto.trust import KnownServers, TrustDecision, host_port, is_fingerprint

from .errors import ElinkError, ServerKeyMismatch

__all__ = ["ServerTrust", "default_known_servers_path"]


def default_known_servers_path() -> Path:
    """``$ELINK_KNOWN_SERVERS``, else ``$XDG_CONFIG_HOME/elink/known_servers``
    (``~/.config/elink/known_servers``)."""
    explicit = os.environ.get("ELINK_KNOWN_SERVERS")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "elink" / "known_servers"


class ServerTrust:
    """The trust decision for one client: pinned keys or a known-servers file."""

    def __init__(
        self, *, pinned: frozenset[str] | None = None, known_servers: Path | None = None
    ) -> None:
        if (pinned is None) == (known_servers is None):
            raise ValueError("give exactly one of pinned fingerprints or a known-servers file")
        self.pinned = pinned
        self.known_servers = known_servers

    @classmethod
    def pin(cls, fingerprints: str | Iterable[str]) -> ServerTrust:
        """Trust only these keys (``SHA256:<hex>`` fingerprints)."""
        keys = frozenset([fingerprints] if isinstance(fingerprints, str) else fingerprints)
        bad = [key for key in keys if not is_fingerprint(key)]
        if not keys or bad:
            raise ValueError(f"expected fingerprints like 'SHA256:<64 hex digits>', got {bad}")
        return cls(pinned=keys)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str] | None = None) -> ServerTrust:
        """Trust on first use, remembered in the known-servers file ``path``
        (default: :func:`default_known_servers_path`)."""
        return cls(known_servers=Path(path) if path is not None else default_known_servers_path())

    def _load(self) -> KnownServers:
        assert self.known_servers is not None
        try:
            text = self.known_servers.read_text(encoding="utf-8")
        except FileNotFoundError:
            return KnownServers()
        except OSError as exc:
            raise ElinkError(f"cannot read the known-servers file: {exc}") from None
        try:
            return KnownServers.parse(text)
        except ValueError as exc:
            raise ElinkError(f"{self.known_servers}: {exc}") from None

    def _source(self) -> str:
        return "the pinned fingerprint" if self.pinned is not None else str(self.known_servers)

    def keys_for(self, host: str, port: int) -> frozenset[str] | None:
        """The keys to give the protocol library for ``host:port``: pinned or
        listed keys (checked during the handshake), or ``None`` on first use."""
        if self.pinned is not None:
            return self.pinned
        return self._load().fingerprints(host_port(host, port)) or None

    def mismatch(self, host: str, port: int, presented: str) -> ServerKeyMismatch:
        """The error for a refused key."""
        expected = self.keys_for(host, port) or frozenset()
        return ServerKeyMismatch(host_port(host, port), presented, expected, self._source())

    def accept(self, host: str, port: int, presented: str) -> None:
        """Called once the handshake completed with ``presented``: records a
        first-use key, and refuses a key that changed since
        :meth:`keys_for` was asked (another process edited the file)."""
        if self.pinned is not None:
            if presented not in self.pinned:
                raise self.mismatch(host, port, presented)
            return
        server = host_port(host, port)
        known = self._load()
        decision = known.check(server, presented)
        if decision is TrustDecision.MISMATCH:
            raise self.mismatch(host, port, presented)
        if decision is TrustDecision.UNKNOWN:
            known.add(server, presented)
            self._save(known)

    def _save(self, known: KnownServers) -> None:
        """Write the file atomically (a temporary file renamed over it)."""
        assert self.known_servers is not None
        path = self.known_servers
        try:
            self._write(path, known.serialize())
        except OSError as exc:
            raise ElinkError(f"cannot record the server's key in {path}: {exc}") from None

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".known_servers.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
