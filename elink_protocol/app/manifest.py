"""Folder manifests (docs/protocol.md §9.9).

A folder travels as its files, each uploaded on its own, plus one *manifest*
file that lists them with their paths relative to the folder.  The manifest
is itself a stored file with media type :data:`FOLDER_MEDIA_TYPE`; a
``folder`` message refers to it (§11.4.1).

The manifest comes from a peer, so paths are hostile until checked:
:func:`check_relative_path` refuses anything that could leave the folder or
mean different things on different systems (``..``, absolute paths,
backslashes, empty components, NUL, control characters, drive letters).
"""

from __future__ import annotations

import unicodedata
from typing import Any

import attrs
import msgpack

from elink_protocol.packets import text, uint, wire

from .base import Record, fields_to_wire, records
from .files import FILE_ID, SHA256

#: Media type of a folder manifest (§9.9).
FOLDER_MEDIA_TYPE = "application/vnd.elink.folder-manifest"
#: Manifest format version.
MANIFEST_VERSION = 1
#: Most files in one folder.
MAX_MANIFEST_ENTRIES = 10_000
#: Longest relative path, and longest path component, in UTF-8 bytes.
MAX_PATH = 1024
MAX_COMPONENT = 255
#: Largest manifest file in bytes (every entry at its largest fits).
MAX_MANIFEST_SIZE = 16 * 1024 * 1024


def check_relative_path(v: Any) -> str:
    """A path inside a folder: components joined by ``/``, none empty, ``.``
    or ``..``; no leading ``/``, no ``\\``, NUL, ``:`` or control or
    format characters; at most 1024 bytes with components of at most 255.
    Raises :class:`ValueError`."""
    if type(v) is not str or not v:
        raise ValueError("a path is a non-empty string")
    if len(v.encode()) > MAX_PATH:
        raise ValueError(f"path longer than {MAX_PATH} bytes")
    if "\\" in v or ":" in v:
        raise ValueError(f"path {v!r:.80} contains a backslash or a colon")
    for char in v:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise ValueError(f"path {v!r:.80} contains a control character")
    for part in v.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"path {v!r:.80} has an empty, '.' or '..' component")
        if len(part.encode()) > MAX_COMPONENT:
            raise ValueError(f"a component of {v!r:.80} is longer than {MAX_COMPONENT} bytes")
    return v


@attrs.frozen(kw_only=True)
class ManifestEntry(Record):
    """One file of a folder (§9.9)."""

    path: str = wire("p", check_relative_path)
    """Where the file goes, relative to the folder."""
    file_id: bytes = wire("id", FILE_ID)
    """The stored file."""
    size: int = wire("sz", uint(64))
    """Its size."""
    sha256: bytes = wire("h", SHA256)
    """Its SHA-256."""
    media_type: str = wire("mt", text(127), default="application/octet-stream")
    """Its media type."""


@attrs.frozen(kw_only=True)
class Manifest(Record):
    """The manifest of a folder (§9.9)."""

    version: int = wire("v", uint(8), default=MANIFEST_VERSION)
    """Format version; 1."""
    entries: tuple[ManifestEntry, ...] = wire(
        "e", records(ManifestEntry, MAX_MANIFEST_ENTRIES), converter=tuple
    )
    """The files."""

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.entries)

    def _check_untrusted(self) -> None:
        if self.version != MANIFEST_VERSION:
            raise ValueError(f"unknown manifest version {self.version}")
        check_entries(self.entries)

    def encode(self) -> bytes:
        """The manifest file's bytes (msgpack)."""
        data: bytes = msgpack.packb(fields_to_wire(self), use_bin_type=True)
        return data


def check_entries(entries: tuple[ManifestEntry, ...]) -> None:
    """No path twice, and no path inside another one (a file is not a folder)."""
    paths = {e.path for e in entries}
    if len(paths) != len(entries):
        raise ValueError("a path appears twice")
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in paths:
                raise ValueError(f"{path!r:.80} is inside the file {'/'.join(parts[:i])!r:.80}")


def decode_manifest_untrusted(data: bytes) -> Manifest:
    """Parse a peer's manifest file.  Raises :class:`ValueError` only."""
    if len(data) > MAX_MANIFEST_SIZE:
        raise ValueError(f"manifest larger than {MAX_MANIFEST_SIZE} bytes")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_PATH,
            max_bin_len=32,
            max_array_len=MAX_MANIFEST_ENTRIES,
            max_map_len=16,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several kinds
        raise ValueError(f"manifest is not valid msgpack: {exc}") from None
    return Manifest.from_wire_untrusted(value)
