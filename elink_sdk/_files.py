"""Files and folders on the heavy bus (docs/protocol.md §9): the transfer
logic behind :meth:`Client.send_file`, :meth:`Client.send_folder` and
:meth:`Client.download`.

Theory of operation
-------------------
**Uploads.**  A first pass streams the file through SHA-256 (OpenUpload
names the whole file's hash).  Then, in a loop bounded by the caller's
deadline: ask for a ticket (OpenUpload, with the upload id of the first
ticket once there is one), connect to the heavy bus, Admit, and send chunks
from the durable offset the server announces in Admitted, reading the file a
chunk at a time.  Up to :data:`UPLOAD_WINDOW` chunks are in flight before
their ChunkAck, so the network stays busy while the server makes a chunk
durable.  A cut connection, a rejected chunk, a busy upload or storage
(TRANSFER_BUSY, STORAGE_UNAVAILABLE) or an expired token only cost a new
ticket: the server's durable offset is the whole state of an upload.

**Downloads.**  Bytes go to ``<target>.part``; its size on disk is where a
download resumes (Admit ``o``), also across processes.  A chunk is written
only after its SHA-256 checked out (§9.6.6); the whole file's SHA-256 (the
bytes already in the ``.part`` file are hashed first) is compared with the
reference before the ``.part`` file is renamed onto the target, atomically.
A resumed ``.part`` file whose old bytes turn out wrong is started again
from zero, once.

**Folders.**  Every file is uploaded on its own, then a manifest (§9.9)
listing them with their relative paths; one ``folder`` message refers to
the manifest.  Downloading checks every path of the manifest before writing
anything (the server should have refused hostile paths, but the client does
not rely on it, §9.9.4) and never writes outside the destination folder,
also when a folder inside it is a symbolic link.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import math
import mimetypes
import os
import tempfile
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio
import attrs

from elink_protocol import ErrorCode, UntrustedServerKey, heavy_bus_config
from elink_protocol.app import (
    FOLDER_MEDIA_TYPE,
    MAX_DATA_BLOCK,
    Admit,
    Admitted,
    AppErrorCode,
    ChunkAck,
    ChunkEnd,
    Data,
    Done,
    DownloadTicket,
    Manifest,
    ManifestEntry,
    Message,
    OpenDownload,
    OpenUpload,
    TransferRef,
    UploadTicket,
    check_relative_path,
    decode_manifest_untrusted,
    file_name,
)
from elink_protocol.app.content import FILE_KINDS, MAX_TEXT, check_content
from elink_protocol.app.manifest import MAX_MANIFEST_ENTRIES, MAX_MANIFEST_SIZE

from ._heavy import HeavyCut, HeavyLink, HeavyRefused, open_heavy
from .errors import (
    ConnectionLost,
    DeadlineExceeded,
    ElinkError,
    NotFound,
    ProtocolError,
    RequestRejected,
    error_for_code,
)

if TYPE_CHECKING:
    from .client import Client

__all__ = ["ProgressCallback", "TransferProgress"]

#: Chunks sent ahead of their ChunkAck on an upload.
UPLOAD_WINDOW = 2
#: Bytes read at a time while hashing a file before its upload.
HASH_BLOCK = 1024 * 1024
#: Shortest interval between two progress calls (the first and last always come).
PROGRESS_INTERVAL = 0.2
#: Heavy-bus attempts in a row that move no byte before a transfer gives up
#: (when the caller gave no deadline).
MAX_FRUITLESS_ATTEMPTS = 6
#: Kinds :meth:`Client.send_file` sends.
SEND_FILE_KINDS = ("file", "image", "voice", "video")
#: Codes after which a transfer tries again (after ``ra``).
_RETRY_CODES = frozenset(
    {
        AppErrorCode.TRANSFER_BUSY,
        AppErrorCode.STORAGE_UNAVAILABLE,
        AppErrorCode.SERVER_BUSY,
        AppErrorCode.TOKEN_INVALID,  # expired while we were away: a new ticket
    }
)
#: Characters never put in a downloaded file's name (Windows' reserved ones too).
_UNSAFE_NAME_CHARS = set('<>:"/\\|?*\x00')


@attrs.frozen(kw_only=True)
class TransferProgress:
    """Where an upload or download stands: handed to a ``progress`` callback.

    For a folder, ``name`` is the file's path in the folder and ``index``
    (from 1) and ``count`` say which file of how many; the folder's own
    manifest is not counted."""

    name: str
    """The file's name (a relative path inside a folder)."""
    done: int
    """Bytes of this file transferred so far (acknowledged as durable, for
    an upload; verified and written, for a download)."""
    total: int
    """The file's size in bytes."""
    index: int = 1
    """Which file of the folder (1 for a single file)."""
    count: int = 1
    """How many files the folder transfer moves (1 for a single file)."""

    @property
    def fraction(self) -> float:
        """``done / total`` (1.0 for an empty file)."""
        return self.done / self.total if self.total else 1.0


#: The type of a ``progress`` argument.
ProgressCallback = Callable[[TransferProgress], None]


class _Reporter:
    """Calls ``progress`` at most every :data:`PROGRESS_INTERVAL` seconds,
    always for the first and the final state, with ``done`` never going
    backwards."""

    def __init__(
        self, progress: ProgressCallback | None, name: str, total: int, index: int, count: int
    ) -> None:
        self._progress = progress
        self._name = name
        self._total = total
        self._index = index
        self._count = count
        self._done = -1
        self._last = -math.inf

    def __call__(self, done: int) -> None:
        if self._progress is None or done <= self._done:
            return  # nothing new (also: the final state is reported once)
        now = anyio.current_time()
        final = done >= self._total
        if not (final or self._done < 0 or now - self._last >= PROGRESS_INTERVAL):
            return
        self._done, self._last = done, now
        self._progress(
            TransferProgress(
                name=self._name,
                done=done,
                total=self._total,
                index=self._index,
                count=self._count,
            )
        )


# ============================================================== helpers


def guess_media_type(path: Path) -> str:
    """The media type of ``path`` from its extension (``application/octet-stream``)."""
    guessed, _ = mimetypes.guess_type(path.name, strict=False)
    return guessed or "application/octet-stream"


def safe_file_name(name: str) -> str:
    """``name`` made safe to create in a folder on any system: no path
    separators, reserved or control characters, no leading dots (no hidden
    or special names), no trailing dots or spaces; ``download`` if nothing
    is left."""
    chars = [
        "_" if ch in _UNSAFE_NAME_CHARS or unicodedata.category(ch).startswith("C") else ch
        for ch in name
    ]
    cleaned = "".join(chars).strip().lstrip(".").rstrip(". ")
    return cleaned[:200] or "download"


def _sha256_of(path: Path) -> tuple[int, bytes]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return size, digest.digest()


def _hash_prefix(path: Path, length: int) -> Any:
    digest = hashlib.sha256()
    left = length
    with path.open("rb") as f:
        while left > 0:
            block = f.read(min(HASH_BLOCK, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest


class _Deadline:
    """The caller's deadline for one whole operation (``None``: none)."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.at = math.inf if timeout is None else anyio.current_time() + timeout

    def remaining(self) -> float:
        return max(0.0, self.at - anyio.current_time())

    def request_timeout(self, client: Client) -> float | None:
        """A light-bus request's timeout within this deadline."""
        if self.at == math.inf:
            return None
        default = client._request_timeout
        remaining = self.remaining()
        return remaining if default is None else min(default, remaining)

    def expired(self, what: str) -> DeadlineExceeded:
        return DeadlineExceeded(f"{what} did not finish within {self.timeout} s")


def _stall_timeout(client: Client) -> float:
    """How long a heavy-bus connection may move nothing before it counts as cut."""
    return client._request_timeout or 60.0


def _heavy_config(client: Client) -> Any:
    """The light bus's configuration (same suites, same trusted keys) for
    the heavy bus.  The key must be one the light bus trusts, or the very
    key the light bus's handshake presented (on first use)."""
    config = client._config()
    keys = config.trusted_server_keys
    if keys is None and client.server_fingerprint:
        keys = frozenset({client.server_fingerprint})
    return heavy_bus_config(
        attrs.evolve(config, trusted_server_keys=keys, trust_on_first_use=keys is None)
    )


def _map_refusal(exc: HeavyRefused) -> ElinkError:
    return error_for_code(exc.code, exc.reason, retry_after_ms=int(exc.retry_after * 1000))


class _Attempts:
    """Retries of one transfer: backoff between attempts, the deadline, and
    a limit on attempts in a row that moved nothing."""

    def __init__(self, client: Client, deadline: _Deadline, what: str) -> None:
        self._client = client
        self._deadline = deadline
        self._what = what
        self._fruitless = 0
        self._last_position = -1

    async def failed(self, position: int, reason: str, delay: float = 0.0) -> None:
        """An attempt ended at ``position`` bytes; wait before the next one
        or raise when it is time to give up."""
        if position > self._last_position:
            self._last_position = position
            self._fruitless = 0
        else:
            self._fruitless += 1
        if self._deadline.at == math.inf and self._fruitless >= MAX_FRUITLESS_ATTEMPTS:
            raise ConnectionLost(f"{self._what} failed {self._fruitless} times in a row: {reason}")
        wait = max(delay, self._client._policy.delay(self._fruitless))
        if anyio.current_time() + wait >= self._deadline.at:
            raise self._deadline.expired(self._what)
        await anyio.sleep(wait)


async def _next(link: HeavyLink) -> Any:
    """The next packet (HeavyCut when the server says nothing for too long)."""
    return await link.receive()


@contextlib.asynccontextmanager
async def _heavy(client: Client, host: str, port: int) -> AsyncIterator[HeavyLink]:
    """A heavy-bus connection to a ticket's address (empty host: the light
    bus's host), trusted exactly as the light bus is."""
    try:
        async with open_heavy(
            host or client.host,
            port,
            _heavy_config(client),
            connect_timeout=client._connect_timeout,
            stall_timeout=_stall_timeout(client),
        ) as link:
            yield link
    except UntrustedServerKey as exc:
        raise client._trust.mismatch(client.host, client.port, exc.fingerprint) from None


def _unexpected(packet: object, where: str) -> ProtocolError:
    return ProtocolError(
        f"the server sent {type(packet).__name__} {where}", code=ErrorCode.UNEXPECTED_PACKET
    )


# ============================================================== uploads


class _Position:
    """How far a transfer got (kept across its attempts)."""

    def __init__(self, done: int = 0) -> None:
        self.done = done


async def upload_file(
    client: Client,
    path: Path,
    *,
    name: str,
    media_type: str,
    reporter: _Reporter,
    deadline: _Deadline,
) -> TransferRef:
    """Upload ``path`` (resuming after cuts) and return its reference."""
    size, sha256 = await anyio.to_thread.run_sync(_sha256_of, path)
    what = f"the upload of {name}"
    attempts = _Attempts(client, deadline, what)
    position = _Position()
    upload_id = b""
    reporter(0)
    while True:

        def make(rid: int, upload_id: bytes = upload_id) -> OpenUpload:
            return OpenUpload(
                rid=rid,
                name=name,
                size=size,
                sha256=sha256,
                media_type=media_type,
                upload_id=upload_id,
            )

        try:
            ticket = await client._call(make, UploadTicket, deadline.request_timeout(client))
        except NotFound:
            if not upload_id:
                raise
            upload_id = b""  # the upload was abandoned and deleted: start over
            continue
        upload_id = ticket.upload_id
        try:
            done = await _upload_once(
                client,
                ticket,
                path,
                size=size,
                sha256=sha256,
                reporter=reporter,
                position=position,
            )
        except HeavyCut as exc:
            await attempts.failed(position.done, str(exc))
            continue
        except HeavyRefused as exc:
            if exc.code not in _RETRY_CODES:
                raise _map_refusal(exc) from None
            await attempts.failed(position.done, str(exc), exc.retry_after)
            continue
        reporter(size)
        return TransferRef(
            id=done.file_id, size=done.size, sha256=done.sha256, name=name, media_type=media_type
        )


def _check_done(done: Done, size: int, sha256: bytes) -> Done:
    if done.size != size or done.sha256 != sha256:
        raise ProtocolError(
            "the server stored another file than the one uploaded",
            code=ErrorCode.UNEXPECTED_PACKET,
        )
    return done


async def _upload_once(
    client: Client,
    ticket: UploadTicket,
    path: Path,
    *,
    size: int,
    sha256: bytes,
    reporter: _Reporter,
    position: _Position,
) -> Done:
    async with _heavy(client, ticket.host, ticket.port) as link:
        await link.send(Admit(token=ticket.token, user=client.user))
        first = await _next(link)
        if isinstance(first, Done):  # completed before: the Done was lost
            return _check_done(first, size, sha256)
        if not isinstance(first, Admitted) or first.size != size or first.offset > size:
            raise _unexpected(first, "instead of Admitted for this upload")
        chunk_size, acked = first.chunk_size, first.offset
        position.done = max(position.done, acked)
        reporter(acked)
        with path.open("rb") as f:
            await anyio.to_thread.run_sync(f.seek, acked)
            sent, in_flight = acked, 0
            while acked < size:
                while sent < size and in_flight < UPLOAD_WINDOW:
                    n = min(chunk_size, size - sent)
                    chunk = await anyio.to_thread.run_sync(f.read, n)
                    if len(chunk) != n:
                        raise RequestRejected(
                            f"{path} changed while it was being sent",
                            code=AppErrorCode.HASH_MISMATCH,
                        )
                    view = memoryview(chunk)
                    for i in range(0, n, MAX_DATA_BLOCK):
                        block = bytes(view[i : i + MAX_DATA_BLOCK])
                        await link.send(Data(offset=sent + i, data=block))
                    digest = hashlib.sha256(chunk).digest()
                    await link.send(ChunkEnd(offset=sent, length=n, sha256=digest))
                    sent += n
                    in_flight += 1
                answer = await _next(link)
                if not isinstance(answer, ChunkAck):
                    raise _unexpected(answer, "instead of ChunkAck")
                if not answer.ok:
                    # Chunks sent after it are refused too: start again
                    # from the durable offset on a new connection.
                    raise HeavyCut("the server rejected a chunk")
                acked = answer.offset
                in_flight -= 1
                position.done = max(position.done, acked)
                reporter(acked)
        final = await _next(link)
        if not isinstance(final, Done):
            raise _unexpected(final, "instead of Done")
        return _check_done(final, size, sha256)


# ============================================================== downloads


class _Partial:
    """The ``.part`` file of a download and the running hash of its bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self.digest: Any = hashlib.sha256()
        self.started_from = 0

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self.size = 0
        self.digest = hashlib.sha256()

    def sync(self, limit: int) -> None:
        """Agree with the disk: what the ``.part`` file holds (at most
        ``limit`` bytes) is where the download continues."""
        try:
            on_disk = self.path.stat().st_size
        except FileNotFoundError:
            on_disk = 0
        if on_disk > limit:
            self.clear()
            on_disk = 0
        if on_disk != self.size:
            self.size = on_disk
            self.digest = _hash_prefix(self.path, on_disk) if on_disk else hashlib.sha256()


def _append(f: BinaryIO, data: bytes | bytearray) -> None:
    f.write(data)
    f.flush()


async def download_file(
    client: Client,
    file_id: bytes,
    msg_id: int,
    target: Path,
    *,
    expected: tuple[int, bytes] | None,
    reporter: _Reporter,
    resume: bool,
    deadline: _Deadline,
) -> Path:
    """Download one file to ``target`` through ``<target>.part``."""
    partial = _Partial(target.with_name(target.name + ".part"))
    if not resume:
        await anyio.to_thread.run_sync(partial.clear)
    attempts = _Attempts(client, deadline, f"the download of {target.name}")
    restarted = False
    first_attempt = True
    while True:

        def make(rid: int) -> OpenDownload:
            return OpenDownload(rid=rid, file_id=file_id, msg_id=msg_id)

        ticket = await client._call(make, DownloadTicket, deadline.request_timeout(client))
        ref = ticket.ref
        if ref.id != file_id or (expected is not None and expected != (ref.size, ref.sha256)):
            raise ProtocolError(
                "the server's download ticket names another file than the message",
                code=ErrorCode.UNEXPECTED_PACKET,
            )
        await anyio.to_thread.run_sync(partial.sync, ref.size)
        if first_attempt:
            partial.started_from = partial.size
            first_attempt = False
        reporter(partial.size)
        try:
            await _download_once(client, ticket, partial, reporter)
        except HeavyCut as exc:
            await attempts.failed(partial.size, str(exc))
            continue
        except HeavyRefused as exc:
            if exc.code not in _RETRY_CODES:
                raise _map_refusal(exc) from None
            await attempts.failed(partial.size, str(exc), exc.retry_after)
            continue
        if partial.digest.digest() != ref.sha256:
            await anyio.to_thread.run_sync(partial.clear)
            if partial.started_from and not restarted:
                restarted = True  # the old .part bytes were wrong: once from zero
                partial.started_from = 0
                continue
            raise ProtocolError(
                f"the SHA-256 of {target.name} does not match its reference",
                code=AppErrorCode.HASH_MISMATCH,
            )
        await anyio.to_thread.run_sync(os.replace, partial.path, target)
        reporter(ref.size)
        return target


async def _download_once(
    client: Client, ticket: DownloadTicket, partial: _Partial, reporter: _Reporter
) -> None:
    ref = ticket.ref
    async with _heavy(client, ticket.host, ticket.port) as link:
        await link.send(Admit(token=ref.token, user=client.user, offset=partial.size))
        first = await _next(link)
        if (
            not isinstance(first, Admitted)
            or first.offset != partial.size
            or first.size != ref.size
            or first.length != ref.size - partial.size
        ):
            raise _unexpected(first, "instead of Admitted for this download")
        limit = max(first.chunk_size, 1)
        with partial.path.open("ab") as f:
            chunk = bytearray()
            while True:
                packet = await _next(link)
                if isinstance(packet, Data):
                    if packet.offset != partial.size + len(chunk):
                        raise HeavyCut("the server skipped bytes")
                    chunk += packet.data
                    if len(chunk) > limit:
                        raise _unexpected(packet, "beyond the chunk size")
                elif isinstance(packet, ChunkEnd):
                    if (
                        packet.offset != partial.size
                        or packet.length != len(chunk)
                        or hashlib.sha256(chunk).digest() != packet.sha256
                    ):
                        # Never used (§9.6.6): ask again from the last good byte.
                        raise HeavyCut("a chunk failed its hash check")
                    await anyio.to_thread.run_sync(_append, f, chunk)
                    partial.digest.update(chunk)
                    partial.size += len(chunk)
                    chunk = bytearray()
                    reporter(partial.size)
                elif isinstance(packet, Done):
                    if partial.size != ref.size or chunk:
                        raise _unexpected(packet, "before the last byte")
                    return
                else:
                    raise _unexpected(packet, "during a download")


# ============================================================== messages


def file_ref(message: Any) -> tuple[TransferRef, int, str]:
    """``(ref, msg_id, kind)`` of a file-like message (a Message, or an
    event that carries one), or of a bare TransferRef (one's own file)."""
    if isinstance(message, TransferRef):
        kind = "folder" if message.media_type == FOLDER_MEDIA_TYPE else "file"
        return message, 0, kind
    inner = getattr(message, "message", message)
    if not isinstance(inner, Message):
        raise TypeError(f"expected a Message or a TransferRef, not {type(message).__name__}")
    if inner.kind not in FILE_KINDS:
        raise ValueError(f"message {inner.msg_id} is a {inner.kind!r} message, not a file")
    if inner.content is None:
        raise NotFound(
            f"message {inner.msg_id} was recalled: its file is gone",
            code=AppErrorCode.NOT_FOUND,
        )
    try:
        ref = TransferRef.from_wire_untrusted(inner.content.get("ref"))
    except ValueError as exc:
        raise ProtocolError(
            f"message {inner.msg_id} carries a malformed file reference: {exc}",
            code=ErrorCode.PAYLOAD_INVALID,
        ) from None
    return ref, inner.msg_id, inner.kind


def file_content(
    kind: str,
    ref: TransferRef,
    *,
    caption: str,
    width: int | None,
    height: int | None,
    duration_ms: int | None,
) -> dict[str, Any]:
    """The content of a file-like message (§11.4.2); raises ValueError."""
    if kind not in SEND_FILE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(SEND_FILE_KINDS)}, not {kind!r}")
    content: dict[str, Any] = {"ref": ref.to_wire()}
    if caption:
        content["text"] = caption
    if width is not None or height is not None:
        if kind != "image":
            raise ValueError("width and height are for images")
        if width is not None:
            content["w"] = width
        if height is not None:
            content["h"] = height
    if duration_ms is not None:
        if kind not in ("voice", "video"):
            raise ValueError("duration_ms is for voice and video")
        content["dur"] = duration_ms
    if len(caption.encode()) > MAX_TEXT:
        raise ValueError(f"the caption is longer than {MAX_TEXT} bytes")
    check_content(kind, content)
    return content


def placeholder_ref(name: str, media_type: str) -> TransferRef:
    """A reference of the right shape, to check a message before uploading."""
    return TransferRef(id=bytes(16), size=0, sha256=bytes(32), name=name, media_type=media_type)


def upload_name(path: Path, name: str | None) -> str:
    """The file name to announce (checked: §9.3)."""
    chosen = name if name is not None else path.name
    try:
        return str(file_name(chosen))
    except ValueError as exc:
        raise ValueError(f"invalid file name {chosen!r}: {exc}") from None


# ============================================================== folders


def folder_files(root: Path) -> list[tuple[str, Path]]:
    """Every file under ``root`` as ``(relative path, path)``, sorted.
    Raises ValueError for a symbolic link that leads out of the folder, a
    link to a folder, anything that is not a regular file, or a path the
    manifest cannot carry (§9.9.4)."""
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    real_root = root.resolve()
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames.sort()
        for name in dirnames:
            if (here / name).is_symlink():
                raise ValueError(
                    f"{here / name} is a symbolic link to a folder: not sent "
                    "(copy the folder in, or send it on its own)"
                )
        for name in sorted(filenames):
            path = here / name
            if path.is_symlink() and not path.resolve().is_relative_to(real_root):
                raise ValueError(f"{path} is a symbolic link that leads out of {root}")
            if not path.is_file():
                raise ValueError(f"{path} is not a regular file")
            relative = path.relative_to(root).as_posix()
            try:
                check_relative_path(relative)
            except ValueError as exc:
                raise ValueError(f"cannot send {path}: {exc}") from None
            found.append((relative, path))
    if len(found) > MAX_MANIFEST_ENTRIES:
        raise ValueError(f"{root} holds more than {MAX_MANIFEST_ENTRIES} files")
    return found


async def upload_folder(
    client: Client,
    root: Path,
    *,
    name: str,
    progress: ProgressCallback | None,
    deadline: _Deadline,
) -> TransferRef:
    """Upload every file of ``root`` and its manifest; the manifest's reference."""
    files = await anyio.to_thread.run_sync(folder_files, root)
    entries: list[ManifestEntry] = []
    for index, (relative, path) in enumerate(files, 1):
        media_type = guess_media_type(path)
        size = path.stat().st_size
        reporter = _Reporter(progress, relative, size, index, len(files))
        ref = await upload_file(
            client,
            path,
            name=upload_name(path, None),
            media_type=media_type,
            reporter=reporter,
            deadline=deadline,
        )
        entries.append(
            ManifestEntry(
                path=relative,
                file_id=ref.id,
                size=ref.size,
                sha256=ref.sha256,
                media_type=media_type,
            )
        )
    data = Manifest(entries=tuple(entries)).encode()
    with tempfile.TemporaryDirectory(prefix="elink-manifest-") as tmp:
        manifest = Path(tmp) / "manifest"
        manifest.write_bytes(data)
        return await upload_file(
            client,
            manifest,
            name=name,
            media_type=FOLDER_MEDIA_TYPE,
            reporter=_Reporter(None, name, len(data), 0, 0),
            deadline=deadline,
        )


def folder_name(root: Path) -> str:
    """The name of a folder's manifest: the folder's own name, if legal."""
    try:
        return str(file_name(root.resolve().name))
    except ValueError:
        return "folder"


def _matches(path: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        stripped = pattern.strip("/")
        if path == stripped or path.startswith(stripped + "/"):
            return True
        if fnmatch.fnmatchcase(path, pattern):
            return True
    return False


def _inside(root: Path, relative: str) -> Path:
    """Where ``relative`` (a checked manifest path) goes under ``root``;
    refuses to go through a symbolic link or to leave ``root``."""
    parts = relative.split("/")
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise ValueError(f"{current} is a symbolic link: not writing through it")
    real_parent = os.path.realpath(current.parent)
    if os.path.commonpath([real_parent, str(root)]) != str(root):
        raise ValueError(f"{relative!r} would be written outside {root}")
    return current


def _make_parents(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)


async def download_folder(
    client: Client,
    ref: TransferRef,
    msg_id: int,
    dest: Path,
    *,
    only: Iterable[str] | None,
    progress: ProgressCallback | None,
    resume: bool,
    deadline: _Deadline,
) -> Path:
    """Download a folder's manifest, then all (or ``only`` some) of its files
    into ``dest``."""
    if ref.size > MAX_MANIFEST_SIZE:
        raise ProtocolError("the folder's manifest is too large", code=AppErrorCode.PATH_INVALID)
    with tempfile.TemporaryDirectory(prefix="elink-manifest-") as tmp:
        path = await download_file(
            client,
            ref.id,
            msg_id,
            Path(tmp) / "manifest",
            expected=(ref.size, ref.sha256),
            reporter=_Reporter(None, ref.name, ref.size, 0, 0),
            resume=False,
            deadline=deadline,
        )
        data = await anyio.to_thread.run_sync(path.read_bytes)
    try:
        manifest = decode_manifest_untrusted(data)
    except ValueError as exc:
        # The server should have refused it (§9.9.4); nothing is written.
        raise ProtocolError(
            f"refusing the folder's manifest: {exc}", code=AppErrorCode.PATH_INVALID
        ) from None
    entries = list(manifest.entries)
    if only is not None:
        patterns = list(only)
        entries = [entry for entry in entries if _matches(entry.path, patterns)]
        if not entries:
            raise NotFound(
                f"no file of the folder matches {', '.join(patterns)}",
                code=AppErrorCode.NOT_FOUND,
            )
    await anyio.to_thread.run_sync(lambda: dest.mkdir(parents=True, exist_ok=True))
    root = Path(os.path.realpath(dest))
    planned = [(entry, _inside(root, entry.path)) for entry in entries]
    for index, (entry, planned_target) in enumerate(planned, 1):
        await anyio.to_thread.run_sync(_make_parents, planned_target)
        await download_file(
            client,
            entry.file_id,
            msg_id,
            _inside(root, entry.path),  # again, now that the folders exist
            expected=(entry.size, entry.sha256),
            reporter=_Reporter(progress, entry.path, entry.size, index, len(planned)),
            resume=resume,
            deadline=deadline,
        )
    return dest


def download_target(dest: Path, ref: TransferRef) -> Path:
    """``dest`` itself, or the (sanitized) file name inside it when it is a folder."""
    if dest.is_dir():
        return dest / safe_file_name(ref.name)
    return dest
