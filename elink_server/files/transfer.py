"""Serving one heavy-bus connection: admission, then an upload or a download
(docs/protocol.md §9.5-§9.8).

An upload holds at most one chunk in memory: Data packets are gathered until
the ChunkEnd, the chunk's SHA-256 and length are checked, and only a good
chunk is appended to the backend (durably) and recorded as the new durable
offset, after which ChunkAck says so.  A bad chunk is dropped and the client
told to re-send from the durable offset.  The whole file's SHA-256 is checked
once every byte is durable: from a running hash when this connection saw the
whole file, else by reading the stored bytes back (after a resume).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import attrs
import trio

from elink_protocol import HandshakeComplete, Packet
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
    TransferFailed,
    decode_manifest_untrusted,
)
from elink_protocol.app.manifest import MAX_MANIFEST_SIZE

from .backends import BackendError, FileBackend
from .link import HeavyLink, LinkClosed
from .store import BlobDying, FileStore, StoredFile, Upload, blob_key, partial_key

UPLOAD = 1
DOWNLOAD = 2
_TOKEN = struct.Struct("!BB16sQ")  # version, direction, id, expiry ms
TOKEN_VERSION = 1
TOKEN_SIZE = _TOKEN.size + 32  # 58 bytes: within §9.3's 64
#: How long an upload's lease lasts without a new durable chunk.
LEASE_MS = 30_000


class TransferError(Exception):
    """Ends a transfer with TransferFailed ``code``."""

    def __init__(self, code: AppErrorCode, reason: str, *, retry_after_ms: int = 0) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.retry_after_ms = retry_after_ms


def issue_token(
    secret: bytes, *, direction: int, transfer_id: bytes, user: str, expires_ms: int
) -> bytes:
    """An admission token (§9.3): bound to the direction, the upload or file
    id, the expiry and the user, signed with the server's secret so that any
    server process verifies it without a lookup."""
    body = _TOKEN.pack(TOKEN_VERSION, direction, transfer_id, expires_ms)
    return body + hmac.digest(secret, body + user.encode(), "sha256")


def verify_token(secret: bytes, token: bytes, *, user: str, now_ms: int) -> tuple[int, bytes]:
    """``(direction, id)`` of a valid token; raises :class:`TransferError`."""
    if len(token) != TOKEN_SIZE:
        raise TransferError(AppErrorCode.TOKEN_INVALID, "malformed token")
    body, mac = token[: _TOKEN.size], token[_TOKEN.size :]
    if not hmac.compare_digest(mac, hmac.digest(secret, body + user.encode(), "sha256")):
        raise TransferError(AppErrorCode.TOKEN_INVALID, "token not valid for this user")
    version, direction, transfer_id, expires_ms = _TOKEN.unpack(body)
    if version != TOKEN_VERSION or direction not in (UPLOAD, DOWNLOAD):
        raise TransferError(AppErrorCode.TOKEN_INVALID, "unknown token version")
    if now_ms > expires_ms:
        raise TransferError(AppErrorCode.TOKEN_INVALID, "token expired; ask for a new ticket")
    return direction, transfer_id


@attrs.define(kw_only=True)
class TransferContext:
    """What every transfer needs."""

    store: FileStore
    backend: FileBackend
    secret: bytes
    chunk_size: int
    retention_ms: int
    now_ms: object  # Callable[[], int]; kept loose for attrs + mypy simplicity
    admit_timeout: float

    def clock(self) -> int:
        return int(self.now_ms())  # type: ignore[operator]


async def serve_transfer(link: HeavyLink, ctx: TransferContext) -> None:
    """Run one heavy-bus connection from the handshake to the end."""
    try:
        try:
            with trio.fail_after(ctx.admit_timeout):
                admit = await _admission(link)
            direction, transfer_id = verify_token(
                ctx.secret, admit.token, user=admit.user, now_ms=ctx.clock()
            )
            if direction == UPLOAD:
                await _upload(link, ctx, admit.user, transfer_id)
            else:
                await _download(link, ctx, admit, transfer_id)
        except TransferError as exc:
            await link.send(
                TransferFailed(
                    code=exc.code, reason=exc.reason[:200], retry_after_ms=exc.retry_after_ms
                )
            )
        except BackendError as exc:
            await link.send(
                TransferFailed(
                    code=AppErrorCode.STORAGE_UNAVAILABLE,
                    reason=str(exc)[:200],
                    retry_after_ms=1000,
                )
            )
        except trio.TooSlowError:
            await link.close(0x000E, "no admission in time")
            return
        await link.close()
    except LinkClosed:
        return


async def _admission(link: HeavyLink) -> Admit:
    while True:
        event = await link.receive()
        if isinstance(event, HandshakeComplete):
            continue
        if isinstance(event, Admit):
            return event
        raise TransferError(AppErrorCode.INVALID_REQUEST, "the first packet must be Admit")


async def _next_packet(link: HeavyLink) -> Packet:
    event = await link.receive()
    if not isinstance(event, Packet):
        raise TransferError(AppErrorCode.INVALID_REQUEST, f"unexpected {type(event).__name__}")
    return event


# --- uploads ----------------------------------------------------------------------


async def _upload(link: HeavyLink, ctx: TransferContext, user: str, upload_id: bytes) -> None:
    store = ctx.store
    upload = await store.get_upload(upload_id)
    if upload is None:
        done = await store.get_file(upload_id)
        if done is not None and done.owner == user and not done.expired:
            # Finished before (the client lost the Done): say it again.
            await link.send(Done(file_id=done.id, size=done.size, sha256=done.sha256))
            return
        raise TransferError(AppErrorCode.NOT_FOUND, "no such upload")
    if upload.owner != user:
        raise TransferError(AppErrorCode.TOKEN_INVALID, "not your upload")
    holder = os.urandom(16)
    if not await store.take_lease(upload_id, holder, now_ms=ctx.clock(), ttl_ms=LEASE_MS):
        raise TransferError(
            AppErrorCode.TRANSFER_BUSY, "another connection is uploading", retry_after_ms=1000
        )
    try:
        await _receive_chunks(link, ctx, upload, holder)
    finally:
        with trio.CancelScope(shield=True):
            await store.release_lease(upload_id, holder)


async def _reconcile(ctx: TransferContext, upload: Upload) -> int:
    """The durable offset, with the stored partial content cut to match it
    (a crash between an append and its record leaves extra bytes)."""
    key = partial_key(upload.id)
    size = await ctx.backend.size(key)
    durable = upload.durable
    if size is None:
        await ctx.backend.create(key)
        return 0
    if size < durable:  # content lost under us: start again
        durable = 0
    if size != durable:
        await ctx.backend.truncate(key, durable)
    return durable


async def _receive_chunks(
    link: HeavyLink, ctx: TransferContext, upload: Upload, holder: bytes
) -> None:
    store, backend = ctx.store, ctx.backend
    key = partial_key(upload.id)
    durable = await _reconcile(ctx, upload)
    chunk_size = ctx.chunk_size
    await link.send(
        Admitted(
            file_id=upload.id,
            offset=durable,
            length=upload.size - durable,
            size=upload.size,
            chunk_size=chunk_size,
        )
    )
    whole = hashlib.sha256() if durable == 0 else None
    buffer = bytearray()
    while durable < upload.size:
        packet = await _next_packet(link)
        if isinstance(packet, Data):
            expected = durable + len(buffer)
            if packet.offset != expected or len(buffer) + len(packet.data) > chunk_size:
                raise TransferError(
                    AppErrorCode.RANGE_INVALID,
                    f"data at {packet.offset}, expected {expected} within one chunk",
                )
            buffer += packet.data
            continue
        if not isinstance(packet, ChunkEnd):
            raise TransferError(AppErrorCode.INVALID_REQUEST, f"unexpected {type(packet).__name__}")
        want = min(chunk_size, upload.size - durable)
        good = (
            packet.offset == durable
            and packet.length == len(buffer) == want
            and hashlib.sha256(buffer).digest() == packet.sha256
        )
        if not good:
            buffer.clear()
            await link.send(ChunkAck(offset=durable, ok=False))
            continue
        await backend.append(key, bytes(buffer))
        if whole is not None:
            whole.update(buffer)
        durable += len(buffer)
        buffer.clear()
        if not await store.set_durable(
            upload.id, holder, durable, now_ms=ctx.clock(), ttl_ms=LEASE_MS
        ):
            raise TransferError(AppErrorCode.TRANSFER_BUSY, "the upload was taken over")
        await link.send(ChunkAck(offset=durable))
    stored = await _finish(ctx, upload, whole)
    await link.send(Done(file_id=stored.id, size=stored.size, sha256=stored.sha256))


async def _stored_hash(backend: FileBackend, key: str, size: int, step: int) -> bytes:
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        data = await backend.read(key, offset, min(step, size - offset))
        if not data:
            break
        digest.update(data)
        offset += len(data)
    return digest.digest()


async def _finish(ctx: TransferContext, upload: Upload, whole: hashlib._Hash | None) -> StoredFile:
    store, backend = ctx.store, ctx.backend
    key = partial_key(upload.id)
    if whole is not None:
        digest = whole.digest()
    else:
        digest = await _stored_hash(backend, key, upload.size, ctx.chunk_size)
    if digest != upload.sha256:
        await backend.truncate(key, 0)
        await store.reset_upload(upload.id)
        raise TransferError(AppErrorCode.HASH_MISMATCH, "the file's SHA-256 does not match")
    entries: tuple[bytes, ...] = ()
    if upload.media_type == FOLDER_MEDIA_TYPE:
        entries = await _check_manifest(ctx, upload)
    now = ctx.clock()
    try:
        stored = await store.complete_upload(
            upload, now_ms=now, expires_ms=now + ctx.retention_ms, folder_entries=entries
        )
    except BlobDying:
        raise TransferError(
            AppErrorCode.TRANSFER_BUSY, "identical content is being deleted", retry_after_ms=1000
        ) from None
    # The blob is referenced now, so the janitor leaves it alone: put the
    # content in place unless an identical copy is there already.
    target = blob_key(upload.sha256)
    if await backend.size(target) == upload.size:
        await backend.delete(key)
    else:
        await backend.rename(key, target)
    return stored


async def _check_manifest(ctx: TransferContext, upload: Upload) -> tuple[bytes, ...]:
    if upload.size > MAX_MANIFEST_SIZE:
        raise TransferError(AppErrorCode.FILE_TOO_LARGE, "manifest too large")
    data = await ctx.backend.read(partial_key(upload.id), 0, upload.size)
    try:
        manifest = decode_manifest_untrusted(data)
    except ValueError as exc:
        await ctx.store.reset_upload(upload.id)
        raise TransferError(AppErrorCode.PATH_INVALID, f"bad manifest: {exc}") from None
    for entry in manifest.entries:
        stored = await ctx.store.get_file(entry.file_id)
        if (
            stored is None
            or stored.owner != upload.owner
            or stored.expired
            or stored.sha256 != entry.sha256
            or stored.size != entry.size
        ):
            await ctx.store.reset_upload(upload.id)
            raise TransferError(
                AppErrorCode.NOT_FOUND, f"manifest entry {entry.path!r:.80} is not your file"
            )
    return tuple(e.file_id for e in manifest.entries)


# --- downloads --------------------------------------------------------------------


async def _download(link: HeavyLink, ctx: TransferContext, admit: Admit, file_id: bytes) -> None:
    stored = await ctx.store.get_file(file_id)
    if stored is None:
        raise TransferError(AppErrorCode.NOT_FOUND, "no such file")
    if stored.expired:
        raise TransferError(AppErrorCode.FILE_EXPIRED, "the file has expired")
    start = admit.offset
    if start > stored.size:
        raise TransferError(AppErrorCode.RANGE_INVALID, "offset beyond the end")
    length = admit.length or stored.size - start
    if start + length > stored.size:
        raise TransferError(AppErrorCode.RANGE_INVALID, "range beyond the end")
    chunk_size = ctx.chunk_size
    await link.send(
        Admitted(
            file_id=stored.id, offset=start, length=length, size=stored.size, chunk_size=chunk_size
        )
    )
    key = blob_key(stored.sha256)
    offset, end = start, start + length
    while offset < end:
        n = min(chunk_size, end - offset)
        chunk = await ctx.backend.read(key, offset, n)
        if len(chunk) != n:
            raise BackendError(f"stored content of {file_id.hex()} is short")
        view = memoryview(chunk)
        for i in range(0, n, MAX_DATA_BLOCK):
            await link.send(Data(offset=offset + i, data=bytes(view[i : i + MAX_DATA_BLOCK])))
        await link.send(ChunkEnd(offset=offset, length=n, sha256=hashlib.sha256(chunk).digest()))
        offset += n
    await link.send(Done(file_id=stored.id, size=stored.size, sha256=stored.sha256))
