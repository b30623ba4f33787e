"""The embedded store: SQLite (WAL) through sqlite-utils, behind a Trio API.

``async with open_sqlite_store(path) as store:`` opens (or creates) the
database and starts the writer task.  Writes go through group commit
(:mod:`.group_commit`): one writer thread, one transaction per batch, callers
released only after the commit is on disk.  Reads run on a small pool of
separate read-only connections, also in worker threads, so they proceed while
the writer commits (WAL allows that) and always see every write whose call has
returned.

The facade validates arguments before queueing, so malformed input fails
fast, in the caller's task, and never occupies the writer.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import trio
from sqlite_utils import Database

from . import schema
from . import sqlite_read as read
from .base import (
    MAX_CLIENT_MSG_ID_LENGTH,
    MIN_OFFLINE_CAP,
    AppendResult,
    ConversationRecord,
    DeviceKind,
    DeviceRecord,
    EventPage,
    InvalidArgument,
    MessageFlags,
    MessageRecord,
    MessageStatus,
    ReadFailed,
    RecallResult,
    ReceiptResult,
    Store,
    StoreClosed,
    StoreStatistics,
    UserRecord,
    check_message_kind,
    check_name,
    parse_conversation_id,
)
from .group_commit import GroupCommitter
from .sqlite_write import Writer

T = TypeVar("T")

MAX_HISTORY_PAGE = 500
MAX_SEARCH_RESULTS = 500
MAX_EVENT_PAGE = 1000
MAX_QUERY_LENGTH = 256
_KNOWN_FLAGS = functools.reduce(operator.or_, MessageFlags, MessageFlags.NONE)


def _check_int(value: object, what: str, *, low: int, high: int = 1 << 62) -> int:
    if type(value) is not int or not low <= value <= high:
        raise InvalidArgument(f"{what} must be an integer in {low}..{high}, got {value!r}")
    return value


def _check_time(value: object, what: str = "now") -> float:
    if type(value) not in (int, float) or not math.isfinite(value):  # type: ignore[arg-type]
        raise InvalidArgument(f"{what} must be a finite number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _pack_content(content: object, flags: MessageFlags) -> tuple[bytes, str | None]:
    """Serialize message content; return (msgpack bytes, searchable text)."""
    if not isinstance(content, Mapping) or not all(type(key) is str for key in content):
        raise InvalidArgument("content must be a mapping with str keys")
    try:
        packed = msgpack.packb(dict(content), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"content is not serializable: {exc}") from None
    text = content.get("text")
    # Secret messages leave no trace in the search index.
    if type(text) is not str or not text or flags & MessageFlags.SECRET:
        text = None
    return packed, text


class _ReaderPool:
    """Read-only connections, each used by one worker thread at a time."""

    def __init__(self, dbs: list[Database]) -> None:
        self._dbs = list(dbs)
        self._idle = list(dbs)
        self._limiter = trio.CapacityLimiter(len(dbs))
        self._closed = False

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        # The limiter admits at most len(dbs) threads, so one is always idle.
        # list.pop/append are atomic under the GIL.
        if self._closed:
            raise StoreClosed("the store is closed")
        db = self._idle.pop()
        try:
            return fn(db, *args)
        except sqlite3.Error as exc:
            # Callers see only StorageError (base.py): SQLite's own errors
            # are the store's business.
            raise ReadFailed(f"read failed: {exc}") from exc
        finally:
            self._idle.append(db)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(self._call, fn, args, limiter=self._limiter)

    async def close(self) -> None:
        """Wait for the reads in progress, then refuse new ones: a connection
        closed under a running read would crash the process."""
        tokens = [object() for _ in self._dbs]
        for token in tokens:
            await self._limiter.acquire_on_behalf_of(token)
        self._closed = True
        for token in tokens:
            self._limiter.release_on_behalf_of(token)


class SqliteStore(Store):
    """Implements :class:`~elink_server.storage.base.Store` (subclassed
    explicitly so mypy checks every signature against it).  Obtain one from
    :func:`open_sqlite_store`."""

    def __init__(
        self,
        *,
        writer: Database,
        readers: list[Database],
        offline_cap: int,
        batch_limit: int,
        max_queued: int,
        lock_fd: int | None = None,
    ) -> None:
        self.offline_cap = offline_cap
        self._writer = Writer(writer, offline_cap=offline_cap)
        self._committer = GroupCommitter(
            writer.conn, batch_limit=batch_limit, max_queued=max_queued, lock_fd=lock_fd
        )
        self._readers = _ReaderPool(readers)

    async def _write(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return await self._committer.submit(functools.partial(fn, *args, **kwargs))

    def statistics(self) -> StoreStatistics:
        counters = self._committer.counters
        return StoreStatistics(
            batches=counters.batches,
            requests=counters.requests,
            failed=counters.failed,
            largest_batch=counters.largest_batch,
            queued=self._committer.queued,
        )

    # --- users, devices, follows ---------------------------------------------

    async def create_user(self, name: str, *, password_hash: str, now: float) -> UserRecord:
        check_name(name)
        if type(password_hash) is not str or not password_hash:
            raise InvalidArgument("password_hash must be a non-empty str")
        return await self._write(self._writer.create_user, name, password_hash, _check_time(now))

    async def get_user(self, name: str) -> UserRecord | None:
        return await self._readers.run(read.get_user, check_name(name))

    async def set_user_disabled(self, name: str, disabled: bool) -> None:
        await self._write(self._writer.set_user_disabled, check_name(name), bool(disabled))

    async def set_password_hash(self, name: str, password_hash: str) -> None:
        if type(password_hash) is not str or not password_hash:
            raise InvalidArgument("password_hash must be a non-empty str")
        await self._write(self._writer.set_password_hash, check_name(name), password_hash)

    async def register_device(
        self, user: str, device_id: str, *, kind: DeviceKind, now: float
    ) -> DeviceRecord:
        check_name(user)
        check_name(device_id, "device id")
        return await self._write(
            self._writer.register_device, user, device_id, DeviceKind(kind), _check_time(now)
        )

    async def list_devices(self, user: str) -> tuple[DeviceRecord, ...]:
        return await self._readers.run(read.list_devices, check_name(user))

    async def set_device_cursor(self, user: str, device_id: str, cursor: int) -> int:
        check_name(user)
        check_name(device_id, "device id")
        return await self._write(
            self._writer.set_device_cursor, user, device_id, _check_int(cursor, "cursor", low=0)
        )

    async def follow(self, follower: str, followee: str, *, now: float) -> bool:
        if check_name(follower) == check_name(followee):
            raise InvalidArgument("a user cannot follow themself")
        return await self._write(self._writer.follow, follower, followee, _check_time(now))

    async def unfollow(self, follower: str, followee: str) -> bool:
        return await self._write(self._writer.unfollow, check_name(follower), check_name(followee))

    async def followers(self, user: str) -> tuple[str, ...]:
        return await self._readers.run(read.followers, check_name(user))

    async def following(self, user: str) -> tuple[str, ...]:
        return await self._readers.run(read.following, check_name(user))

    # --- conversations and messages --------------------------------------------

    async def get_conversation(self, conversation: str) -> ConversationRecord | None:
        parse_conversation_id(conversation)
        return await self._readers.run(read.get_conversation, conversation)

    async def list_conversations(self, user: str) -> tuple[ConversationRecord, ...]:
        return await self._readers.run(read.list_conversations, check_name(user))

    async def append_message(
        self,
        *,
        conversation: str,
        sender: str,
        sender_device: str,
        client_msg_id: str,
        kind: str,
        content: Mapping[str, Any],
        now: float,
        flags: MessageFlags = MessageFlags.NONE,
    ) -> AppendResult:
        parse_conversation_id(conversation)
        check_name(sender)
        check_name(sender_device, "device id")
        check_name(client_msg_id, "client message id", max_length=MAX_CLIENT_MSG_ID_LENGTH)
        # Any kind of valid syntax is stored: kinds this server does not know
        # are relayed unchanged (§11.4.1).
        kind = check_message_kind(kind)
        try:
            flags = MessageFlags(flags)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        # IntFlag keeps unknown bits; a reserved bit must not be stored by accident.
        if int(flags) & ~int(_KNOWN_FLAGS):
            raise InvalidArgument(f"unknown message flags {int(flags):#x}")
        packed, text = _pack_content(content, flags)
        return await self._write(
            self._writer.append_message,
            conversation=conversation,
            sender=sender,
            sender_device=sender_device,
            client_msg_id=client_msg_id,
            kind=kind,
            content=packed,
            text=text,
            now=_check_time(now),
            flags=flags,
        )

    async def recall(
        self, msg_id: int, *, by_user: str, now: float, window_seconds: float
    ) -> RecallResult:
        _check_int(msg_id, "msg_id", low=1)
        check_name(by_user)
        window = _check_time(window_seconds, "window_seconds")
        if window < 0:
            raise InvalidArgument("window_seconds must not be negative")
        return await self._write(self._writer.recall, msg_id, by_user, _check_time(now), window)

    async def get_message(self, msg_id: int) -> MessageRecord | None:
        return await self._readers.run(
            functools.partial(read.get_message, reveal=False), _check_int(msg_id, "msg_id", low=1)
        )

    async def audit_message(self, msg_id: int) -> MessageRecord | None:
        return await self._readers.run(
            functools.partial(read.get_message, reveal=True), _check_int(msg_id, "msg_id", low=1)
        )

    async def history(
        self, conversation: str, *, before_seq: int | None = None, limit: int = 50
    ) -> tuple[MessageRecord, ...]:
        parse_conversation_id(conversation)
        if before_seq is not None:
            _check_int(before_seq, "before_seq", low=1)
        _check_int(limit, "limit", low=1, high=MAX_HISTORY_PAGE)
        return await self._readers.run(read.history, conversation, before_seq, limit)

    async def search(
        self, user: str, query: str, *, limit: int = 50, conversation: str | None = None
    ) -> tuple[MessageRecord, ...]:
        check_name(user)
        if type(query) is not str or not 0 < len(query) <= MAX_QUERY_LENGTH:
            raise InvalidArgument(f"query must be 1..{MAX_QUERY_LENGTH} characters")
        _check_int(limit, "limit", low=1, high=MAX_SEARCH_RESULTS)
        if conversation is not None:
            parse_conversation_id(conversation)
        return await self._readers.run(read.search, user, query, limit, conversation)

    # --- receipts --------------------------------------------------------------

    async def mark_delivered(
        self, msg_id: int, *, user: str, device_id: str, now: float
    ) -> ReceiptResult:
        _check_int(msg_id, "msg_id", low=1)
        check_name(user)
        check_name(device_id, "device id")
        return await self._write(
            self._writer.mark_delivered, msg_id, user, device_id, _check_time(now)
        )

    async def mark_read(self, msg_id: int, *, user: str, now: float) -> ReceiptResult:
        _check_int(msg_id, "msg_id", low=1)
        return await self._write(self._writer.mark_read, msg_id, check_name(user), _check_time(now))

    async def message_status(self, msg_id: int) -> MessageStatus:
        return await self._readers.run(read.message_status, _check_int(msg_id, "msg_id", low=1))

    # --- multi-device sync ------------------------------------------------------

    async def events_since(self, user: str, cursor: int, *, limit: int = 100) -> EventPage:
        check_name(user)
        _check_int(cursor, "cursor", low=0)
        _check_int(limit, "limit", low=1, high=MAX_EVENT_PAGE)
        return await self._readers.run(read.events_since, user, cursor, limit)

    async def pending_count(self, user: str, cursor: int) -> int:
        check_name(user)
        return await self._readers.run(
            read.pending_count, user, _check_int(cursor, "cursor", low=0)
        )


def _close_all(dbs: list[Database], lock_fd: int | None) -> None:
    for db in dbs:
        db.close()
    if lock_fd is not None:
        os.close(lock_fd)


def writer_lock_path(path: Path) -> Path:
    """The lock file the writers of ``path`` take around each batch (group
    commit across processes, :mod:`.group_commit`)."""
    return path.with_name(path.name + "-writer.lock")


def _open_lock(path: Path) -> int:
    return os.open(writer_lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


@contextlib.asynccontextmanager
async def open_sqlite_store(
    path: Path | str,
    *,
    offline_cap: int = MIN_OFFLINE_CAP,
    batch_limit: int = 256,
    max_queued: int = 4096,
    read_connections: int = 2,
) -> AsyncIterator[SqliteStore]:
    """Open the SQLite store at ``path`` (created, with its schema, if absent).

    ``offline_cap``: per-user limit of log entries no device has pulled, past
    which appends report ``backlog_full`` (at least 1,000).  ``batch_limit``:
    most write requests per transaction.  ``max_queued``: write requests that
    may wait for the writer before callers block (backpressure).
    ``read_connections``: size of the read pool.

    On exit, queued writes are committed before the database is closed.
    """
    if type(offline_cap) is not int or offline_cap < MIN_OFFLINE_CAP:
        raise InvalidArgument(f"offline_cap must be an integer >= {MIN_OFFLINE_CAP}")
    for value, what in ((batch_limit, "batch_limit"), (max_queued, "max_queued")):
        _check_int(value, what, low=1)
    _check_int(read_connections, "read_connections", low=1, high=64)
    path = Path(path)
    opened: list[Database] = []
    lock_fd: int | None = None
    try:
        opened.append(await trio.to_thread.run_sync(schema.open_writer, path))
        lock_fd = await trio.to_thread.run_sync(_open_lock, path)
        for _ in range(read_connections):
            opened.append(await trio.to_thread.run_sync(schema.open_reader, path))
        store = SqliteStore(
            writer=opened[0],
            readers=opened[1:],
            offline_cap=offline_cap,
            batch_limit=batch_limit,
            max_queued=max_queued,
            lock_fd=lock_fd,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store._committer.run)
            try:
                yield store
            finally:
                store._committer.close()
                with trio.CancelScope(shield=True):
                    await store._readers.close()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_close_all, opened, lock_fd)
