"""The file service's tables, in the server's SQLite database.

Everything a transfer needs across connections lives here, so that any
server process can serve any transfer: the upload's *durable offset* and its
lease (which connection may append), the stored files and their expiry, the
content-addressed blobs with reference counts (identical content is stored
once), the entries of folder manifests, and the secret that signs admission
tokens.  The service's own connection (WAL mode, like the main store) runs
its statements in one worker thread at a time.

Blob lifecycle (so that deduplication and the janitor never lose content):
``refs >= 1`` pins a blob; the janitor first marks ``refs = 0`` blobs as
dying (``refs = -1``), deletes their objects, then their rows.  Completing an
upload adds a reference inside one transaction; a blob that is dying at that
moment is refused (TRANSFER_BUSY, retried by the client), so content being
deleted is never referenced again.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS file_secret (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    secret BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS file_uploads (
    id BLOB PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    media_type TEXT NOT NULL,
    durable INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    lease_holder BLOB,
    lease_until_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS file_uploads_owner ON file_uploads(owner);
CREATE TABLE IF NOT EXISTS file_blobs (
    sha256 BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    refs INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    id BLOB PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    media_type TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    expired INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS files_owner ON files(owner, expired);
CREATE INDEX IF NOT EXISTS files_expiry ON files(expired, expires_ms);
CREATE TABLE IF NOT EXISTS file_folder_entries (
    folder_id BLOB NOT NULL,
    file_id BLOB NOT NULL,
    PRIMARY KEY (folder_id, file_id)
);
"""


def blob_key(sha256: bytes) -> str:
    h = sha256.hex()
    return f"blobs/{h[:2]}/{h}"


def partial_key(upload_id: bytes) -> str:
    return f"partial/{upload_id.hex()}"


@attrs.frozen(kw_only=True)
class Upload:
    id: bytes
    owner: str
    name: str
    size: int
    sha256: bytes
    media_type: str
    durable: int
    created_ms: int


@attrs.frozen(kw_only=True)
class StoredFile:
    id: bytes
    owner: str
    name: str
    size: int
    sha256: bytes
    media_type: str
    created_ms: int
    expires_ms: int
    expired: bool


class BlobDying(Exception):
    """The blob with this content is being deleted right now; retry."""


class FileStore:
    """The file tables; every method runs in the store's worker thread."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path) -> FileStore:
        def connect() -> sqlite3.Connection:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            db.execute(
                "INSERT OR IGNORE INTO file_secret (id, secret) VALUES (1, ?)", (os.urandom(32),)
            )
            return db

        return cls(await trio.to_thread.run_sync(connect))

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._db.close, limiter=self._limiter)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    # --- the token secret -----------------------------------------------------

    async def secret(self) -> bytes:
        def get() -> bytes:
            row = self._db.execute("SELECT secret FROM file_secret WHERE id = 1").fetchone()
            return bytes(row[0])

        return await self._run(get)

    # --- uploads --------------------------------------------------------------

    async def used_bytes(self, owner: str) -> int:
        """Bytes charged to ``owner``: live files plus uploads in progress."""

        def get() -> int:
            (files,) = self._db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM files WHERE owner = ? AND expired = 0",
                (owner,),
            ).fetchone()
            (uploads,) = self._db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM file_uploads WHERE owner = ?", (owner,)
            ).fetchone()
            return int(files) + int(uploads)

        return await self._run(get)

    async def create_upload(self, upload: Upload, *, quota: int) -> bool:
        """Record a new upload if it fits ``owner``'s quota (checked inside
        the same transaction, so concurrent uploads cannot overshoot it)."""

        def create(db: sqlite3.Connection) -> bool:
            (files,) = db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM files WHERE owner = ? AND expired = 0",
                (upload.owner,),
            ).fetchone()
            (uploads,) = db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM file_uploads WHERE owner = ?",
                (upload.owner,),
            ).fetchone()
            if files + uploads + upload.size > quota:
                return False
            db.execute(
                "INSERT INTO file_uploads (id, owner, name, size, sha256, media_type, durable,"
                " created_ms) VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                (
                    upload.id,
                    upload.owner,
                    upload.name,
                    upload.size,
                    upload.sha256,
                    upload.media_type,
                    upload.created_ms,
                ),
            )
            return True

        return await self._run(self._tx, create)

    async def get_upload(self, upload_id: bytes) -> Upload | None:
        def get() -> Upload | None:
            row = self._db.execute(
                "SELECT id, owner, name, size, sha256, media_type, durable, created_ms"
                " FROM file_uploads WHERE id = ?",
                (upload_id,),
            ).fetchone()
            if row is None:
                return None
            return Upload(
                id=bytes(row[0]),
                owner=row[1],
                name=row[2],
                size=row[3],
                sha256=bytes(row[4]),
                media_type=row[5],
                durable=row[6],
                created_ms=row[7],
            )

        return await self._run(get)

    async def take_lease(
        self, upload_id: bytes, holder: bytes, *, now_ms: int, ttl_ms: int
    ) -> bool:
        """Make ``holder`` the only connection that may append to the upload,
        unless another holder's lease is still running."""

        def take() -> bool:
            cursor = self._db.execute(
                "UPDATE file_uploads SET lease_holder = ?, lease_until_ms = ?"
                " WHERE id = ? AND (lease_holder IS NULL OR lease_holder = ?"
                " OR lease_until_ms < ?)",
                (holder, now_ms + ttl_ms, upload_id, holder, now_ms),
            )
            return cursor.rowcount == 1

        return await self._run(take)

    async def release_lease(self, upload_id: bytes, holder: bytes) -> None:
        def release() -> None:
            self._db.execute(
                "UPDATE file_uploads SET lease_holder = NULL, lease_until_ms = 0"
                " WHERE id = ? AND lease_holder = ?",
                (upload_id, holder),
            )

        await self._run(release)

    async def set_durable(
        self, upload_id: bytes, holder: bytes, offset: int, *, now_ms: int, ttl_ms: int
    ) -> bool:
        """Record the new durable offset and renew the lease; False if the
        lease was lost (another connection took the upload over)."""

        def update() -> bool:
            cursor = self._db.execute(
                "UPDATE file_uploads SET durable = ?, lease_until_ms = ?"
                " WHERE id = ? AND lease_holder = ?",
                (offset, now_ms + ttl_ms, upload_id, holder),
            )
            return cursor.rowcount == 1

        return await self._run(update)

    async def complete_upload(
        self,
        upload: Upload,
        *,
        now_ms: int,
        expires_ms: int,
        folder_entries: tuple[bytes, ...] = (),
    ) -> StoredFile:
        """Turn the upload into a stored file and take a reference to its
        blob, in one transaction.  Raises :class:`BlobDying`."""

        def complete(db: sqlite3.Connection) -> StoredFile:
            row = db.execute(
                "SELECT refs FROM file_blobs WHERE sha256 = ?", (upload.sha256,)
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO file_blobs (sha256, size, refs) VALUES (?, ?, 1)",
                    (upload.sha256, upload.size),
                )
            elif row[0] < 0:
                raise BlobDying()
            else:
                db.execute(
                    "UPDATE file_blobs SET refs = refs + 1 WHERE sha256 = ?", (upload.sha256,)
                )
            db.execute("DELETE FROM file_uploads WHERE id = ?", (upload.id,))
            db.execute(
                "INSERT INTO files (id, owner, name, size, sha256, media_type, created_ms,"
                " expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    upload.id,
                    upload.owner,
                    upload.name,
                    upload.size,
                    upload.sha256,
                    upload.media_type,
                    now_ms,
                    expires_ms,
                ),
            )
            db.executemany(
                "INSERT OR IGNORE INTO file_folder_entries (folder_id, file_id) VALUES (?, ?)",
                [(upload.id, entry) for entry in folder_entries],
            )
            return StoredFile(
                id=upload.id,
                owner=upload.owner,
                name=upload.name,
                size=upload.size,
                sha256=upload.sha256,
                media_type=upload.media_type,
                created_ms=now_ms,
                expires_ms=expires_ms,
                expired=False,
            )

        return await self._run(self._tx, complete)

    async def reset_upload(self, upload_id: bytes) -> None:
        """The finished content did not match its hash: start over."""

        def reset() -> None:
            self._db.execute("UPDATE file_uploads SET durable = 0 WHERE id = ?", (upload_id,))

        await self._run(reset)

    # --- files ----------------------------------------------------------------

    async def get_file(self, file_id: bytes) -> StoredFile | None:
        def get() -> StoredFile | None:
            row = self._db.execute(
                "SELECT id, owner, name, size, sha256, media_type, created_ms, expires_ms,"
                " expired FROM files WHERE id = ?",
                (file_id,),
            ).fetchone()
            if row is None:
                return None
            return StoredFile(
                id=bytes(row[0]),
                owner=row[1],
                name=row[2],
                size=row[3],
                sha256=bytes(row[4]),
                media_type=row[5],
                created_ms=row[6],
                expires_ms=row[7],
                expired=bool(row[8]),
            )

        return await self._run(get)

    async def in_folder(self, folder_id: bytes, file_id: bytes) -> bool:
        def get() -> bool:
            row = self._db.execute(
                "SELECT 1 FROM file_folder_entries WHERE folder_id = ? AND file_id = ?",
                (folder_id, file_id),
            ).fetchone()
            return row is not None

        return await self._run(get)

    # --- the janitor ----------------------------------------------------------

    async def expire_files(self, now_ms: int) -> int:
        """Mark files past their expiry as expired and drop their blob
        references; returns how many expired."""

        def expire(db: sqlite3.Connection) -> int:
            rows = db.execute(
                "SELECT id, sha256 FROM files WHERE expired = 0 AND expires_ms <= ?", (now_ms,)
            ).fetchall()
            for file_id, sha in rows:
                db.execute("UPDATE files SET expired = 1 WHERE id = ?", (file_id,))
                db.execute("UPDATE file_blobs SET refs = refs - 1 WHERE sha256 = ?", (sha,))
            return len(rows)

        return await self._run(self._tx, expire)

    async def doom_unreferenced_blobs(self) -> list[bytes]:
        """Mark blobs nobody refers to as dying; returns every dying blob."""

        def doom(db: sqlite3.Connection) -> list[bytes]:
            db.execute("UPDATE file_blobs SET refs = -1 WHERE refs = 0")
            return [bytes(r[0]) for r in db.execute("SELECT sha256 FROM file_blobs WHERE refs < 0")]

        return await self._run(self._tx, doom)

    async def forget_blob(self, sha256: bytes) -> None:
        def forget() -> None:
            self._db.execute("DELETE FROM file_blobs WHERE sha256 = ? AND refs < 0", (sha256,))

        await self._run(forget)

    async def abandoned_uploads(self, before_ms: int) -> list[bytes]:
        """Uploads started before ``before_ms`` and not leased now; their
        rows are deleted (the caller deletes their partial content)."""

        def take(db: sqlite3.Connection) -> list[bytes]:
            rows = [
                bytes(r[0])
                for r in db.execute(
                    "SELECT id FROM file_uploads WHERE created_ms < ? AND lease_until_ms < ?",
                    (before_ms, before_ms),
                )
            ]
            db.executemany("DELETE FROM file_uploads WHERE id = ?", [(r,) for r in rows])
            return rows

        return await self._run(self._tx, take)

    async def blob_count(self) -> int:
        def get() -> int:
            (n,) = self._db.execute("SELECT COUNT(*) FROM file_blobs").fetchone()
            return int(n)

        return await self._run(get)
