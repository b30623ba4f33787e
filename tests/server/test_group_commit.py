"""The group-commit writer on its own, with a toy table: batching, failure
isolation, transaction loss, commit failure, shutdown."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from elink_server.storage import StoreClosed, WriteFailed
from elink_server.storage.group_commit import GroupCommitter


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        tmp_path / "t.db", check_same_thread=False, isolation_level=None, timeout=0.05
    )
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE t (x INTEGER UNIQUE,"
        " parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    # Inserting -1 aborts the whole transaction, not just the statement, as
    # an I/O error or a full disk would.
    conn.execute(
        "CREATE TRIGGER abort_all BEFORE INSERT ON t WHEN new.x = -1"
        " BEGIN SELECT RAISE(ROLLBACK, 'transaction lost'); END"
    )
    yield conn
    conn.close()


@pytest.fixture
async def committer(conn: sqlite3.Connection) -> AsyncIterator[GroupCommitter]:
    committer = GroupCommitter(conn, batch_limit=64)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run)
        yield committer
        committer.close()


def insert(
    conn: sqlite3.Connection, x: int, *, fail_after_insert: bool = False
) -> Callable[[], int]:
    def operation() -> int:
        conn.execute("INSERT INTO t (x) VALUES (?)", (x,))
        if fail_after_insert:
            raise ValueError(f"refused {x}")
        return x

    return operation


def rows(tmp_path: Path) -> list[int]:
    # A separate connection sees only what was committed.
    with sqlite3.connect(tmp_path / "t.db") as reader:
        result = [row[0] for row in reader.execute("SELECT x FROM t ORDER BY x")]
    reader.close()
    return result


async def run_all(committer: GroupCommitter, operations) -> list[object]:
    """Submit all operations concurrently; return each value or exception."""
    outcomes: list[object] = [None] * len(operations)

    async def one(i: int) -> None:
        try:
            outcomes[i] = await committer.submit(operations[i])
        except Exception as exc:
            outcomes[i] = exc

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(len(operations)):
                nursery.start_soon(one, i)
    return outcomes


async def run_as_one_batch(committer: GroupCommitter, operations) -> list[object]:
    """Hold the writer busy, queue ``operations`` in this order, then let it
    go: they run as one batch, in order.  Returns each value or exception."""
    release = threading.Event()
    outcomes: list[object] = [None] * len(operations)
    finished = trio.Event()
    remaining = len(operations)

    async def one(i: int) -> None:
        nonlocal remaining
        try:
            outcomes[i] = await committer.submit(operations[i])
        except Exception as exc:
            outcomes[i] = exc
        remaining -= 1
        if remaining == 0:
            finished.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(committer.submit, lambda: release.wait(10))
            await trio.testing.wait_all_tasks_blocked()
            for i in range(len(operations)):
                nursery.start_soon(one, i)
                await trio.testing.wait_all_tasks_blocked()
            release.set()
            await finished.wait()
    return outcomes


async def test_concurrent_requests_share_transactions(conn, committer, tmp_path) -> None:
    outcomes = await run_all(committer, [insert(conn, i) for i in range(200)])
    assert outcomes == list(range(200))
    assert rows(tmp_path) == list(range(200))
    counters = committer.counters
    assert counters.requests == 200 and counters.failed == 0
    assert 1 < counters.largest_batch <= 64
    assert counters.batches < 200


async def test_a_failing_request_fails_only_its_caller(conn, committer, tmp_path) -> None:
    conn.execute("INSERT INTO t (x) VALUES (1000)")
    operations = [insert(conn, i, fail_after_insert=i % 3 == 0) for i in range(30)]
    operations.append(insert(conn, 1000))  # UNIQUE violation: a statement error
    outcomes = await run_all(committer, operations)
    for i in range(30):
        if i % 3 == 0:
            assert isinstance(outcomes[i], ValueError)
        else:
            assert outcomes[i] == i
    assert isinstance(outcomes[30], sqlite3.IntegrityError)
    # The failed requests' own inserts were rolled back to their savepoints.
    assert rows(tmp_path) == [i for i in range(30) if i % 3] + [1000]
    assert committer.counters.failed == 11


async def test_lost_transaction_reruns_the_others(conn, committer, tmp_path) -> None:
    calls: dict[int, int] = {}

    def counted(x: int) -> Callable[[], int]:
        inner = insert(conn, x)

        def operation() -> int:
            calls[x] = calls.get(x, 0) + 1
            return inner()

        return operation

    batches = committer.counters.batches
    outcomes = await run_as_one_batch(committer, [counted(x) for x in (1, 2, -1, 3, 4)])
    assert committer.counters.batches == batches + 2  # the blocker's, then ours
    assert outcomes[:2] == [1, 2] and outcomes[3:] == [3, 4]
    assert isinstance(outcomes[2], sqlite3.IntegrityError)
    assert rows(tmp_path) == [1, 2, 3, 4]
    # 1 and 2 ran, were rolled back with the lost transaction, and ran again;
    # the culprit ran once.
    assert calls == {1: 2, 2: 2, -1: 1, 3: 1, 4: 1}


async def test_commit_failure_fails_the_whole_batch(conn, committer, tmp_path) -> None:
    def orphan() -> None:  # violates a deferred foreign key: COMMIT fails
        conn.execute("INSERT INTO t (x, parent) VALUES (100, 42)")

    outcomes = await run_as_one_batch(committer, [insert(conn, 7), orphan])
    for outcome in outcomes:
        assert isinstance(outcome, WriteFailed)
        assert isinstance(outcome.__cause__, sqlite3.IntegrityError)
    assert outcomes[0] is not outcomes[1]
    assert rows(tmp_path) == []
    assert not conn.in_transaction
    # The writer carries on.
    assert await committer.submit(insert(conn, 8)) == 8
    assert rows(tmp_path) == [8]


async def test_begin_failure_fails_the_batch_and_the_writer_goes_on(
    conn, committer, tmp_path
) -> None:
    other = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(WriteFailed, match="locked"):
            await committer.submit(insert(conn, 1))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await committer.submit(insert(conn, 2)) == 2
    assert rows(tmp_path) == [2]


async def test_cancelled_writer_delivers_running_batch_and_fails_the_rest(conn, tmp_path) -> None:
    committer = GroupCommitter(conn)
    release = threading.Event()
    results: dict[str, object] = {}

    def slow() -> str:
        release.wait(10)
        conn.execute("INSERT INTO t (x) VALUES (1)")
        return "committed"

    async def submit(name: str, operation) -> None:
        try:
            results[name] = await committer.submit(operation)
        except StoreClosed as exc:
            results[name] = exc

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            writer_scope = trio.CancelScope()

            async def writer() -> None:
                with writer_scope:
                    await committer.run()

            nursery.start_soon(writer)
            nursery.start_soon(submit, "slow", slow)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(submit, "queued", insert(conn, 2))
            await trio.testing.wait_all_tasks_blocked()
            writer_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    # The batch that was running when the cancel came is committed and its
    # caller told so; the queued request never ran.
    assert results["slow"] == "committed"
    assert isinstance(results["queued"], StoreClosed)
    assert rows(tmp_path) == [1]
    with pytest.raises(StoreClosed):
        await committer.submit(insert(conn, 3))


async def test_submit_after_close(conn) -> None:
    committer = GroupCommitter(conn)
    committer.close()
    with pytest.raises(StoreClosed):
        await committer.submit(insert(conn, 1))


def test_limits_are_validated(conn) -> None:
    with pytest.raises(ValueError):
        GroupCommitter(conn, batch_limit=0)
