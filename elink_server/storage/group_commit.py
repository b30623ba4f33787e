"""Group commit: many concurrent writers, one transaction, one fsync.

Theory of operation
-------------------

Every write the store performs is a *request*: a synchronous function that
changes the database through the writer connection and returns a value.
Callers put requests on a bounded Trio memory channel and wait on their own
:class:`trio.Event`.  A single writer task loops:

1. wait for the first request, then take whatever else is already queued, up
   to ``batch_limit`` -- no timer: while one batch is being written, the next
   one accumulates by itself, so a lone caller waits for exactly one commit
   and a crowd shares each commit;
2. in one worker thread (``trio.to_thread.run_sync`` behind a
   ``CapacityLimiter(1)``: SQLite and sqlite-utils are synchronous and the
   connection is not shared) run ``BEGIN IMMEDIATE``, then each request
   inside its own ``SAVEPOINT``, then ``COMMIT``;
3. only after ``COMMIT`` has returned -- with ``synchronous = FULL`` the WAL is
   on disk -- hand every caller its result and wake it.

A request that raises is rolled back to its savepoint and fails only its own
caller; the others in the batch still commit.  Some errors (I/O errors, a full
disk) make SQLite abandon the whole transaction: then the failing request gets
its error and the batch is run again from ``BEGIN`` without it -- the others
had not been released yet, and requests are pure functions of the database
state, so re-running them is safe.  Each round removes at least one request,
so this ends.  If ``COMMIT`` (or ``BEGIN``: another process may hold the
file) fails, nothing was written and every request still pending fails with
:class:`WriteFailed` (its cause: the SQLite error); the writer carries on with
the next batch.

The thread call is shielded from cancellation: once a batch starts it runs to
the end and its results are delivered, so a caller is never told "failed" about
a write that was committed.  When the store closes, requests already queued
are still written; callers arriving later get :class:`StoreClosed`.

**Several processes** (the workers of one node) each run their own group
commit on the same database file.  SQLite's write lock (``BEGIN
IMMEDIATE``) keeps them correct: every number a request allocates (message
``seq``, event-log ``user_seq``, ``msg_id``) is read and bumped inside the
transaction, so no two writers ever hand out the same one.  But a writer
that finds the lock taken waits in SQLite's busy handler, which *sleeps*
(1, 2, 5, 10... ms) and polls: measured with three processes, p99 commit
latency went from ~20 ms to 350-950 ms.  So each batch first takes an
exclusive ``flock`` on a lock file beside the database (``lock_fd``), which
the kernel hands to the next waiter the moment it is released (p99 ~40-60 ms,
same throughput).  The flock only orders the writers; correctness still
rests on SQLite's own lock, so a process that does not take it (an older
tool) is merely slower, never wrong.
"""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import attrs
import trio

from .base import StoreClosed, WriteFailed

T = TypeVar("T")

_SAVEPOINT = "elink_request"


@attrs.define(eq=False)
class _Request(Generic[T]):
    operation: Callable[[], T]
    done: trio.Event = attrs.Factory(trio.Event)
    value: T | None = None
    error: BaseException | None = None

    def finish(self, value: T | None, error: BaseException | None) -> None:
        self.value, self.error = value, error
        self.done.set()


@attrs.define
class _Outcome:
    value: object = None
    error: BaseException | None = None
    final: bool = False  # False: provisional, re-run if the transaction is lost


def run_batch(
    conn: sqlite3.Connection, operations: Sequence[Callable[[], object]]
) -> list[_Outcome]:
    """Run ``operations`` in one transaction, each in its own savepoint.

    Synchronous; called in the writer thread.  ``conn`` must be in autocommit
    mode (``isolation_level=None``) with no transaction open.  Returns one
    outcome per operation, in order.
    """
    outcomes = [_Outcome() for _ in operations]
    pending = list(range(len(operations)))
    try:
        while pending:
            conn.execute("BEGIN IMMEDIATE")
            lost = False
            for index in pending:
                conn.execute(f"SAVEPOINT {_SAVEPOINT}")
                try:
                    outcomes[index].value = operations[index]()
                except Exception as exc:
                    outcomes[index] = _Outcome(error=exc, final=True)
                    if not conn.in_transaction:
                        lost = True
                        break
                    conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
                    conn.execute(f"RELEASE {_SAVEPOINT}")
                else:
                    conn.execute(f"RELEASE {_SAVEPOINT}")
            if lost:
                # SQLite already rolled everything back: drop the culprit and
                # any request that failed on its own, re-run the rest.
                pending = [i for i in pending if not outcomes[i].final]
                continue
            conn.execute("COMMIT")
            break
    except Exception as exc:
        # BEGIN, SAVEPOINT, RELEASE or COMMIT itself failed (disk full, the
        # file locked by another process past busy_timeout...): nothing of
        # this batch is committed.  Fail what is pending; the writer goes on.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        for index in pending:
            if not outcomes[index].final:
                # One exception object per caller: each re-raises its own.
                failed = WriteFailed(f"transaction failed, nothing written: {exc}")
                failed.__cause__ = exc
                outcomes[index] = _Outcome(error=failed, final=True)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def run_batch_locked(
    lock_fd: int | None, conn: sqlite3.Connection, operations: Sequence[Callable[[], object]]
) -> list[_Outcome]:
    """:func:`run_batch` holding the writers' ``flock`` (see the module
    docstring); ``lock_fd=None`` runs it without."""
    if lock_fd is None:
        return run_batch(conn, operations)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        return run_batch(conn, operations)
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)


@attrs.define
class _Counters:
    batches: int = 0
    requests: int = 0
    failed: int = 0
    largest_batch: int = 0


class GroupCommitter:
    """Owns the writer connection and the writer task.

    Create it, start :meth:`run` in a nursery, submit requests with
    :meth:`submit`, and call :meth:`close` to finish: queued requests are
    written, then :meth:`run` returns.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        batch_limit: int = 256,
        max_queued: int = 4096,
        lock_fd: int | None = None,
    ) -> None:
        if batch_limit < 1 or max_queued < 1:
            raise ValueError("batch_limit and max_queued must be positive")
        self._conn = conn
        self._lock_fd = lock_fd
        self._batch_limit = batch_limit
        self._send, self._receive = trio.open_memory_channel[_Request[object]](max_queued)
        # One thread at a time may touch the writer connection.
        self._limiter = trio.CapacityLimiter(1)
        self.counters = _Counters()

    @property
    def queued(self) -> int:
        return self._receive.statistics().current_buffer_used

    async def submit(self, operation: Callable[[], T]) -> T:
        """Queue ``operation``, wait until its batch is committed, and return
        its value or raise its exception.  Raises :class:`StoreClosed` if the
        writer is gone."""
        request: _Request[T] = _Request(operation)
        try:
            await self._send.send(request)  # type: ignore[arg-type]
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise StoreClosed("the store is closed") from None
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.value  # type: ignore[return-value]

    def close(self) -> None:
        """Stop accepting requests; :meth:`run` returns once the queue is
        written."""
        self._send.close()

    async def run(self) -> None:
        """The writer task."""
        batch: list[_Request[object]] = []
        try:
            while True:
                try:
                    batch = [await self._receive.receive()]
                except trio.EndOfChannel:
                    return
                while len(batch) < self._batch_limit:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                operations = [request.operation for request in batch]
                with trio.CancelScope(shield=True):
                    outcomes = await trio.to_thread.run_sync(
                        run_batch_locked,
                        self._lock_fd,
                        self._conn,
                        operations,
                        limiter=self._limiter,
                    )
                self._record(batch, outcomes)
                batch = []
        finally:
            # Cancelled or crashed: nobody may wait forever.
            closed = StoreClosed("the store's writer stopped")
            for request in batch:
                if not request.done.is_set():
                    request.finish(None, closed)
            # Drain before closing (no checkpoint in between, so nothing new can
            # arrive); senders blocked on a full queue then get
            # BrokenResourceError, which submit() turns into StoreClosed.
            while True:
                try:
                    self._receive.receive_nowait().finish(None, closed)
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            self._receive.close()

    def _record(self, batch: list[_Request[object]], outcomes: list[_Outcome]) -> None:
        counters = self.counters
        counters.batches += 1
        counters.requests += len(batch)
        counters.largest_batch = max(counters.largest_batch, len(batch))
        for request, outcome in zip(batch, outcomes, strict=True):
            if outcome.error is not None:
                counters.failed += 1
            request.finish(outcome.value, outcome.error)
