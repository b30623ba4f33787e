"""Files on the heavy bus (docs/protocol.md §9).

Two groups of packets share the type range ``0x0400-0x04FF``:

* **Coordination on the light bus** (``0x0400-0x043F``): a logged-in client
  asks to upload (:class:`OpenUpload`) or download (:class:`OpenDownload`) a
  file; the server answers with a ticket that carries a short-lived admission
  token and the address of the heavy-bus listener.
* **Transfer on the heavy bus** (``0x0440-0x04FF``): on a separate
  connection, after the same handshake as the light bus, the client presents
  its token (:class:`Admit`); the server answers :class:`Admitted` with the
  offset to continue from.  Bytes flow as :class:`Data` packets grouped into
  chunks, each closed by a :class:`ChunkEnd` carrying the chunk's SHA-256.
  On an upload the server answers every chunk with :class:`ChunkAck` once the
  chunk is durable (or rejected); on a download the client checks each chunk
  itself.  :class:`Done` ends a transfer, :class:`TransferFailed` aborts one.

Theory of operation of a resumable upload: the server's only memory of an
upload is its *durable offset*, stored with the upload; a new connection
(after a cut, on any server process) is told that offset in Admitted and
continues there.  Nothing else about a transfer lives in a connection.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

from elink_protocol.config import MAX_HEAVY_PAYLOAD
from elink_protocol.frame import Priority
from elink_protocol.packets import Bus, blob, boolean, register, text, uint, wire
from elink_protocol.state import Role

from .base import AppPacket, Request, Response, record
from .content import TransferRef
from .fields import MAX_REASON, name, nonempty_text

#: Largest ``d`` of one Data packet (§9.6): what fits in a heavy-bus payload
#: (:data:`~elink_protocol.config.MAX_HEAVY_PAYLOAD`) with the packet's keys.
MAX_DATA_BLOCK = 65_280
#: Largest chunk a server may ask for (§9.6), and the smallest.
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MIN_CHUNK_SIZE = 64 * 1024
#: Largest admission token (§9.3 ``tok``).
MAX_TOKEN = 64
#: Longest file name (§9.3 ``n``).
MAX_FILE_NAME = 255

FILE_ID = blob(16, 16)
SHA256 = blob(32, 32)

assert MAX_DATA_BLOCK + 64 <= MAX_HEAVY_PAYLOAD


def file_name(v: object) -> str:
    """A file name: 1 to 255 UTF-8 bytes, no ``/``, ``\\`` or NUL (§9.3)."""
    value: str = nonempty_text(MAX_FILE_NAME)(v)
    if "/" in value or "\\" in value or "\x00" in value:
        raise ValueError("a file name must not contain path separators or NUL")
    return value


# --- coordination on the light bus (§9.2) ------------------------------------


@register
@attrs.frozen(kw_only=True)
class OpenUpload(Request):
    """Ask to upload a file, or to resume an upload (§9.2.1)."""

    TYPE: ClassVar[int] = 0x0400

    name: str = wire("n", file_name)
    """The file's name."""
    size: int = wire("sz", uint(64))
    """Its size in bytes."""
    sha256: bytes = wire("h", SHA256)
    """The SHA-256 of its whole content; the server verifies it at the end."""
    media_type: str = wire("mt", text(127))
    """Its media type, e.g. ``image/png``."""
    upload_id: bytes = wire("id", blob(0, 16, sizes=(0, 16)), default=b"")
    """To resume: the id of an earlier ticket for the same file."""

    def ticket(
        self,
        *,
        upload_id: bytes,
        token: bytes,
        offset: int,
        chunk_size: int,
        expires_at_ms: int,
        port: int,
        host: str = "",
    ) -> UploadTicket:
        """The success answer."""
        return UploadTicket(
            rid=self.rid,
            upload_id=upload_id,
            token=token,
            offset=offset,
            chunk_size=chunk_size,
            expires_at_ms=expires_at_ms,
            port=port,
            host=host,
        )


@register
@attrs.frozen(kw_only=True)
class UploadTicket(Response):
    """The answer to OpenUpload: where and how to upload (§9.2.2)."""

    TYPE: ClassVar[int] = 0x0401

    upload_id: bytes = wire("id", FILE_ID)
    """The upload's id; it becomes the file's id once the upload completes."""
    token: bytes = wire("tok", blob(1, MAX_TOKEN))
    """The admission token to present on the heavy bus."""
    offset: int = wire("o", uint(64))
    """Bytes already durable: the upload continues here."""
    chunk_size: int = wire("cs", uint(32))
    """Bytes per chunk (the last chunk may be shorter)."""
    expires_at_ms: int = wire("ex", uint(64))
    """When the token stops admitting connections (server clock)."""
    port: int = wire("hp", uint(16))
    """TCP port of the heavy-bus listener."""
    host: str = wire("hh", text(255), default="")
    """Host of the heavy-bus listener; empty: the light bus's host."""


@register
@attrs.frozen(kw_only=True)
class OpenDownload(Request):
    """Ask to download a stored file (§9.2.3)."""

    TYPE: ClassVar[int] = 0x0402

    file_id: bytes = wire("id", FILE_ID)
    """The file (``ref.id`` of a file message, or an entry of a folder manifest)."""
    msg_id: int = wire("m", uint(64), default=0)
    """The message that refers to it; 0 for one of the user's own files."""

    def ticket(
        self,
        *,
        ref: TransferRef,
        chunk_size: int,
        expires_at_ms: int,
        port: int,
        host: str = "",
    ) -> DownloadTicket:
        """The success answer."""
        return DownloadTicket(
            rid=self.rid,
            ref=ref,
            chunk_size=chunk_size,
            expires_at_ms=expires_at_ms,
            port=port,
            host=host,
        )


@register
@attrs.frozen(kw_only=True)
class DownloadTicket(Response):
    """The answer to OpenDownload (§9.2.4)."""

    TYPE: ClassVar[int] = 0x0403

    ref: TransferRef = wire("ref", record(TransferRef))
    """The file, with ``tok`` set to the admission token."""
    chunk_size: int = wire("cs", uint(32))
    """Bytes per chunk the server will send."""
    expires_at_ms: int = wire("ex", uint(64))
    """When the token stops admitting connections."""
    port: int = wire("hp", uint(16))
    """TCP port of the heavy-bus listener."""
    host: str = wire("hh", text(255), default="")
    """Host of the heavy-bus listener; empty: the light bus's host."""

    def _check_untrusted(self) -> None:
        if not self.ref.token:
            raise ValueError("a download ticket carries a token")


# --- the heavy bus (§9.5-§9.8) ------------------------------------------------


@attrs.frozen(kw_only=True)
class HeavyPacket(AppPacket):
    """Base of the packets legal only on heavy-bus connections."""

    BUS: ClassVar[Bus] = Bus.HEAVY


@register
@attrs.frozen(kw_only=True)
class Admit(HeavyPacket):
    """The client's first packet on a heavy-bus connection (§9.5)."""

    TYPE: ClassVar[int] = 0x0440
    SENDER: ClassVar[Role | None] = Role.CLIENT

    token: bytes = wire("tok", blob(1, MAX_TOKEN))
    """The ticket's admission token."""
    user: str = wire("u", name)
    """The user the token was issued to."""
    offset: int = wire("o", uint(64), default=0)
    """Downloads: the first byte wanted (resume point or range start)."""
    length: int = wire("n", uint(64), default=0)
    """Downloads: bytes wanted from ``offset``; 0 means to the end."""


@register
@attrs.frozen(kw_only=True)
class Admitted(HeavyPacket):
    """The server accepted the token (§9.5)."""

    TYPE: ClassVar[int] = 0x0441
    SENDER: ClassVar[Role | None] = Role.SERVER

    file_id: bytes = wire("id", FILE_ID)
    """The upload or file id."""
    offset: int = wire("o", uint(64))
    """Uploads: the durable offset to continue from.  Downloads: the first byte sent."""
    length: int = wire("n", uint(64))
    """Bytes that will flow on this connection."""
    size: int = wire("sz", uint(64))
    """The whole file's size."""
    chunk_size: int = wire("cs", uint(32))
    """Bytes per chunk."""


@register
@attrs.frozen(kw_only=True)
class Data(HeavyPacket):
    """Bytes of the file at ``offset`` (§9.6).  Sent by the client on an
    upload and by the server on a download."""

    TYPE: ClassVar[int] = 0x0442
    PRIORITY: ClassVar[Priority] = Priority.BULK
    SENDER: ClassVar[Role | None] = None

    offset: int = wire("o", uint(64))
    """Offset of the first byte in the file."""
    data: bytes = wire("d", blob(1, MAX_DATA_BLOCK))
    """1 to 65,280 bytes."""


@register
@attrs.frozen(kw_only=True)
class ChunkEnd(HeavyPacket):
    """Closes a chunk: the Data since the previous chunk's end (§9.6)."""

    TYPE: ClassVar[int] = 0x0443
    PRIORITY: ClassVar[Priority] = Priority.BULK
    SENDER: ClassVar[Role | None] = None

    offset: int = wire("o", uint(64))
    """Offset of the chunk's first byte."""
    length: int = wire("n", uint(32))
    """Bytes in the chunk."""
    sha256: bytes = wire("h", SHA256)
    """SHA-256 of the chunk's bytes."""


@register
@attrs.frozen(kw_only=True)
class ChunkAck(HeavyPacket):
    """Upload: the server's verdict on a chunk (§9.6)."""

    TYPE: ClassVar[int] = 0x0444
    SENDER: ClassVar[Role | None] = Role.SERVER

    offset: int = wire("o", uint(64))
    """The durable offset: every byte below it is stored durably."""
    ok: bool = wire("ok", boolean, default=True)
    """False: the chunk was rejected (hash or length mismatch) and is
    discarded; the client re-sends from ``offset``."""


@register
@attrs.frozen(kw_only=True)
class Done(HeavyPacket):
    """The transfer is complete (§9.7): after an upload, the file is stored
    and its hash verified; after a download, every byte was sent."""

    TYPE: ClassVar[int] = 0x0445
    PRIORITY: ClassVar[Priority] = Priority.BULK
    SENDER: ClassVar[Role | None] = Role.SERVER

    file_id: bytes = wire("id", FILE_ID)
    """The file's id."""
    size: int = wire("sz", uint(64))
    """The file's size."""
    sha256: bytes = wire("h", SHA256)
    """The file's verified SHA-256."""


@register
@attrs.frozen(kw_only=True)
class TransferFailed(HeavyPacket):
    """The transfer cannot go on (§9.8); the server closes the connection."""

    TYPE: ClassVar[int] = 0x0446
    SENDER: ClassVar[Role | None] = Role.SERVER

    code: int = wire("c", uint(16))
    """An :class:`~elink_protocol.app.errors.AppErrorCode` (§11.10)."""
    reason: str = wire("m", text(MAX_REASON), default="")
    """Human-readable, for logs."""
    retry_after_ms: int = wire("ra", uint(32), default=0)
    """When non-zero, do not retry before this many milliseconds."""
