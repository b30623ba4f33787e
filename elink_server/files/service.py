"""The file service: light-bus tickets, the heavy-bus listener, the janitor
(docs/protocol.md §9, docs/files.md).

:func:`file_handlers` is the service factory the application loads (see
``SERVICE_MODULES`` in :mod:`elink_server.services.app`): it answers
OpenUpload and OpenDownload on the light bus, and registers
:meth:`FileService.run` as background work, which opens the file tables and
the storage backend, listens on ``files_port`` for heavy-bus connections and
runs the janitor.  No transfer state is kept in memory between connections:
the durable offset and the lease are in the database, the bytes in the
backend, and tokens are verified with a secret stored in the database, so
any server process can serve any transfer.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
import trio

from elink_protocol import Connection, Packet, Role, heavy_bus_config
from elink_protocol.app import (
    FILE_KINDS,
    FOLDER_MEDIA_TYPE,
    AppErrorCode,
    OpenDownload,
    OpenUpload,
    TransferRef,
)
from elink_protocol.app.manifest import MAX_MANIFEST_SIZE
from elink_server.peer import Handler, Peer
from elink_server.services.context import DeviceSession, ServiceContext
from elink_server.services.routing import Refused, route
from elink_server.storage import ConversationKind, parse_conversation_id

from .backends import BackendError, FileBackend, open_backend
from .link import HeavyLink, LinkClosed
from .store import FileStore, Upload, blob_key, partial_key
from .transfer import DOWNLOAD, UPLOAD, TransferContext, issue_token, serve_transfer

logger = structlog.get_logger("elink_server.files")

#: How long a handler waits for the heavy-bus listener at startup.
READY_TIMEOUT = 10.0
#: Uploads untouched for this long are abandoned: the janitor deletes them.
ABANDONED_UPLOAD_MS = 7 * 86400 * 1000


class FileService:
    """One per server process."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.store: FileStore | None = None
        self.backend: FileBackend | None = None
        self.port = 0
        """The heavy-bus port (known once listening)."""
        self._secret = b""
        self._ready = trio.Event()
        self._transfers = trio.CapacityLimiter(ctx.settings.files_max_transfers)

    # --- light bus ------------------------------------------------------------

    async def _wait_ready(self) -> FileStore:
        with trio.move_on_after(READY_TIMEOUT):
            await self._ready.wait()
        if self.store is None:
            raise Refused(AppErrorCode.SERVER_BUSY, "file service starting", retry_after_ms=1000)
        return self.store

    def _now_ms(self) -> int:
        return self.ctx.now_ms()  # looked up at each call: tests replace the clock

    def _expiry(self) -> int:
        return self.ctx.now_ms() + int(self.settings.files_ticket_lifetime * 1000)

    async def open_upload(self, peer: Peer, session: DeviceSession, request: OpenUpload) -> None:
        store, settings, user = await self._wait_ready(), self.settings, session.user
        if request.size > settings.files_max_size:
            raise Refused(
                AppErrorCode.FILE_TOO_LARGE, f"files are limited to {settings.files_max_size} bytes"
            )
        if request.media_type == FOLDER_MEDIA_TYPE and request.size > MAX_MANIFEST_SIZE:
            raise Refused(AppErrorCode.FILE_TOO_LARGE, "folder manifest too large")
        if request.upload_id:
            upload = await store.get_upload(request.upload_id)
            if upload is None:
                done = await store.get_file(request.upload_id)
                if done is None or done.owner != user:
                    raise Refused(AppErrorCode.NOT_FOUND, "no such upload")
                offset = done.size  # finished: the heavy bus will say Done
            elif (
                upload.owner != user
                or upload.sha256 != request.sha256
                or upload.size != request.size
            ):
                raise Refused(AppErrorCode.NOT_FOUND, "no such upload")
            else:
                offset = upload.durable
            upload_id = request.upload_id
        else:
            upload_id = os.urandom(16)
            upload = Upload(
                id=upload_id,
                owner=user,
                name=request.name,
                size=request.size,
                sha256=request.sha256,
                media_type=request.media_type,
                durable=0,
                created_ms=self.ctx.now_ms(),
            )
            if not await store.create_upload(upload, quota=settings.files_user_quota):
                raise Refused(AppErrorCode.QUOTA_EXCEEDED, "your file storage quota is used up")
            offset = 0
        expires = self._expiry()
        token = issue_token(
            self._secret, direction=UPLOAD, transfer_id=upload_id, user=user, expires_ms=expires
        )
        await peer.send(
            request.ticket(
                upload_id=upload_id,
                token=token,
                offset=offset,
                chunk_size=settings.files_chunk_size,
                expires_at_ms=expires,
                port=self.port,
            )
        )

    async def open_download(
        self, peer: Peer, session: DeviceSession, request: OpenDownload
    ) -> None:
        store, user = await self._wait_ready(), session.user
        stored = await store.get_file(request.file_id)
        if stored is None:
            raise Refused(AppErrorCode.NOT_FOUND, "no such file")
        if request.msg_id == 0:
            if stored.owner != user:
                raise Refused(AppErrorCode.NOT_FOUND, "no such file")
        else:
            await self._check_message_grants(user, request, stored.owner)
        if stored.expired:
            raise Refused(AppErrorCode.FILE_EXPIRED, "the file has expired")
        expires = self._expiry()
        token = issue_token(
            self._secret,
            direction=DOWNLOAD,
            transfer_id=stored.id,
            user=user,
            expires_ms=expires,
        )
        ref = TransferRef(
            id=stored.id,
            size=stored.size,
            sha256=stored.sha256,
            name=stored.name,
            media_type=stored.media_type[:127],
            token=token,
        )
        await peer.send(
            request.ticket(
                ref=ref,
                chunk_size=self.settings.files_chunk_size,
                expires_at_ms=expires,
                port=self.port,
            )
        )

    async def _check_message_grants(self, user: str, request: OpenDownload, owner: str) -> None:
        """The user may download a file through a message it can see, that is
        not recalled, that its owner sent, and whose ``ref`` is the file or
        a folder manifest listing it."""
        store = self.store
        assert store is not None
        message = await self.ctx.store.get_message(min(request.msg_id, 1 << 62))
        if message is None:
            raise Refused(AppErrorCode.NOT_FOUND, "no such message")
        kind, members = parse_conversation_id(message.conversation)
        if kind is not ConversationKind.DIRECT or user not in members:
            raise Refused(AppErrorCode.NOT_FOUND, "no such message")
        if message.recalled_at is not None or message.content is None:
            raise Refused(AppErrorCode.NOT_FOUND, "the message was recalled")
        ref = message.content.get("ref") if message.kind in FILE_KINDS else None
        ref_id = ref.get("id") if isinstance(ref, dict) else None
        if message.sender != owner or not isinstance(ref_id, bytes):
            raise Refused(AppErrorCode.NOT_FOUND, "the message does not carry this file")
        if ref_id != request.file_id and not await store.in_folder(ref_id, request.file_id):
            raise Refused(AppErrorCode.NOT_FOUND, "the message does not carry this file")

    def handlers(self) -> dict[type[Packet], Handler]:
        handlers: dict[type[Packet], Handler] = {}
        route(self.ctx, handlers, OpenUpload, self.open_upload)
        route(self.ctx, handlers, OpenDownload, self.open_download)
        return handlers

    # --- heavy bus ------------------------------------------------------------

    async def run(self) -> None:
        """Open the tables and the backend, listen, and run the janitor,
        until cancelled."""
        settings = self.settings
        identity = self.ctx.identity
        if identity is None:
            logger.warning("file service disabled: no server identity in the context")
            return
        # Imported here: the host imports the services, not the reverse.
        from elink_server.host import DATABASE_FILE_NAME, connection_config

        store = await FileStore.open(settings.data_dir / DATABASE_FILE_NAME)
        backend = open_backend(settings)
        # A worker of a node accepts on the socket the supervisor bound for
        # every worker (any of them can serve any transfer); otherwise bind.
        listeners = list(self.ctx.files_listeners) or await trio.open_tcp_listeners(
            settings.heavy_bus_port(), host=settings.host
        )
        try:
            self._secret = await store.secret()
            self.store, self.backend = store, backend
            self.port = int(listeners[0].socket.getsockname()[1])
            config = heavy_bus_config(connection_config(settings, identity))
            transfer_ctx = TransferContext(
                store=store,
                backend=backend,
                secret=self._secret,
                chunk_size=settings.files_chunk_size,
                retention_ms=int(settings.files_retention * 1000),
                now_ms=self._now_ms,
                admit_timeout=settings.handshake_timeout,
            )
            self._ready.set()
            logger.info("heavy bus listening", port=self.port, backend=backend.name)

            async def handle(stream: trio.SocketStream) -> None:
                await self._handle(stream, config, transfer_ctx)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._janitor)
                await trio.serve_listeners(handle, listeners, handler_nursery=nursery)
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()
                await backend.aclose()
                await store.aclose()

    async def _handle(
        self, stream: trio.SocketStream, config: Any, transfer_ctx: TransferContext
    ) -> None:
        async with stream:
            connection = Connection(role=Role.SERVER, config=config, now=trio.current_time())
            link = HeavyLink(stream, connection)
            try:
                self._transfers.acquire_nowait()
            except trio.WouldBlock:
                await link.close(0x000F, "too many transfers")
                return
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(link.run_reader)
                    await serve_transfer(link, transfer_ctx)
                    # Let the peer read the end, then stop reading.
                    with trio.move_on_after(2):
                        while link.connection.state.value != "CLOSED":
                            await trio.sleep(0.01)
                    nursery.cancel_scope.cancel()
            except* (trio.BrokenResourceError, trio.ClosedResourceError, LinkClosed):
                pass  # the peer went away: this transfer ends, nothing else
            except* Exception as failure:
                # A bug must end this connection only: the service keeps
                # serving every other transfer, and the log says what broke.
                logger.error(
                    "heavy-bus connection failed",
                    error=repr(failure.exceptions[0]),
                    exc_info=failure,
                )
            finally:
                self._transfers.release()

    # --- the janitor ------------------------------------------------------------

    async def _janitor(self) -> None:
        while True:
            await trio.sleep(self.settings.files_janitor_interval)
            try:
                await self.run_janitor_once()
            except BackendError as exc:
                logger.warning("janitor: storage unavailable", error=str(exc))

    async def run_janitor_once(self) -> dict[str, int]:
        """Expire files past their retention, delete content nobody refers
        to any more, and drop abandoned uploads.  Returns counts."""
        store, backend = self.store, self.backend
        assert store is not None and backend is not None
        now = self.ctx.now_ms()
        expired = await store.expire_files(now)
        deleted = 0
        for sha in await store.doom_unreferenced_blobs():
            await backend.delete(blob_key(sha))
            await store.forget_blob(sha)
            deleted += 1
        abandoned = await store.abandoned_uploads(now - ABANDONED_UPLOAD_MS)
        for upload_id in abandoned:
            await backend.delete(partial_key(upload_id))
        if expired or deleted or abandoned:
            logger.info("janitor", expired=expired, deleted=deleted, abandoned=len(abandoned))
        return {"expired": expired, "deleted": deleted, "abandoned": len(abandoned)}


def file_handlers(ctx: ServiceContext) -> dict[type[Packet], Handler]:
    """The light-bus handlers of the file service; its background work
    (listener, janitor) is registered on ``ctx``."""
    service = FileService(ctx)
    ctx.components["files"] = service
    ctx.background.append(service.run)
    return service.handlers()
