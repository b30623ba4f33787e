"""Users, devices, follows, and the store's life cycle (reopen, schema, close)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

import elink_server.storage
from elink_server.storage import (
    DeviceKind,
    InvalidArgument,
    MessageKind,
    SchemaError,
    SqliteStore,
    StoreClosed,
    UnknownUser,
    UserExists,
    UserRecord,
    open_sqlite_store,
    schema,
)

T0 = 1_700_000_000.0


async def test_users(store: SqliteStore) -> None:
    created = await store.create_user("张伟", password_hash="h1", now=T0 + 1)
    assert created == UserRecord(name="张伟", password_hash="h1", disabled=False, created_at=T0 + 1)
    assert await store.get_user("张伟") == created
    assert await store.get_user("nobody") is None
    with pytest.raises(UserExists):
        await store.create_user("alice", password_hash="h", now=T0)
    await store.set_user_disabled("张伟", True)
    await store.set_password_hash("张伟", "h2")
    user = await store.get_user("张伟")
    assert user is not None and user.disabled and user.password_hash == "h2"
    with pytest.raises(UnknownUser):
        await store.set_user_disabled("nobody", True)
    with pytest.raises(UnknownUser):
        await store.set_password_hash("nobody", "h")
    for bad in ("", "a b", "a:b", "x" * 65, "tab\there", "\x00"):
        with pytest.raises(InvalidArgument):
            await store.create_user(bad, password_hash="h", now=T0)
    with pytest.raises(InvalidArgument):
        await store.create_user("dave", password_hash="", now=T0)


async def test_devices(store: SqliteStore) -> None:
    device = await store.register_device("alice", "phone-1", kind=DeviceKind.MOBILE, now=T0 + 5)
    assert (device.kind, device.cursor, device.last_seen) == (DeviceKind.MOBILE, 0, T0 + 5)
    assert [d.device_id for d in await store.list_devices("alice")] == ["pc", "phone-1"]
    with pytest.raises(UnknownUser):
        await store.register_device("nobody", "pc", kind=DeviceKind.PC, now=T0)
    with pytest.raises(UnknownUser):
        await store.list_devices("nobody")
    with pytest.raises(ValueError):
        await store.register_device("alice", "x", kind="toaster", now=T0)  # type: ignore[arg-type]


async def test_follows(store: SqliteStore) -> None:
    assert await store.follow("alice", "bob", now=T0)
    assert not await store.follow("alice", "bob", now=T0)
    assert await store.follow("carol", "bob", now=T0)
    assert await store.followers("bob") == ("alice", "carol")
    assert await store.following("alice") == ("bob",)
    assert await store.unfollow("alice", "bob")
    assert not await store.unfollow("alice", "bob")
    assert await store.followers("bob") == ("carol",)
    with pytest.raises(UnknownUser):
        await store.follow("alice", "nobody", now=T0)
    with pytest.raises(InvalidArgument):
        await store.follow("alice", "alice", now=T0)


async def test_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with trio.fail_after(30):
        for round_ in range(2):
            async with open_sqlite_store(path) as store:
                if round_ == 0:
                    await store.create_user("alice", password_hash="h", now=T0)
                    await store.register_device("alice", "pc", kind=DeviceKind.PC, now=T0)
                result = await store.append_message(
                    conversation="d:alice:alice",
                    sender="alice",
                    sender_device="pc",
                    client_msg_id=f"r{round_}",
                    kind=MessageKind.TEXT,
                    content={"text": "note"},
                    now=T0,
                )
                # seq and user_seq continue where the last run stopped
                assert result.message.seq == round_ + 1
                assert result.events[0].user_seq == round_ + 1


async def test_queued_writes_finish_when_the_store_closes(tmp_path: Path) -> None:
    results = []
    with trio.fail_after(30):
        async with open_sqlite_store(tmp_path / "db") as store:

            async def create(i: int) -> None:
                results.append(await store.create_user(f"u{i}", password_hash="h", now=T0))

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(create, i)
        assert len(results) == 50
        with pytest.raises(StoreClosed):
            await store.create_user("late", password_hash="h", now=T0)
        async with open_sqlite_store(tmp_path / "db") as store:
            assert await store.get_user("u49") is not None


async def test_foreign_and_newer_databases_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE something (x)")
    conn.close()
    with pytest.raises(SchemaError):
        async with open_sqlite_store(foreign):
            pass  # pragma: no cover

    newer = tmp_path / "newer.db"
    async with open_sqlite_store(newer):
        pass
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SchemaError, match="99"):
        async with open_sqlite_store(newer):
            pass  # pragma: no cover


async def test_database_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "db"):
        conn = sqlite3.connect(tmp_path / "db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
    # synchronous is per connection: check the writer's, as the store sets it.
    db = schema.open_writer(tmp_path / "db")
    try:
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        db.close()


def test_exports() -> None:
    exported = set(elink_server.storage.__all__)
    public = {name for name in vars(elink_server.storage) if not name.startswith("_")}
    modules = {"base", "schema", "sqlite", "sqlite_read", "sqlite_write", "group_commit"}
    assert exported == public - modules - {"annotations"}
    for name in exported:
        assert getattr(elink_server.storage, name) is not None


async def test_a_failing_read_is_a_storage_error(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Callers only ever see StorageError: SQLite's errors are wrapped."""

    def broken(db: object, name: str) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(elink_server.storage.sqlite.read, "get_user", broken)
    with trio.fail_after(10), pytest.raises(elink_server.storage.ReadFailed) as info:
        await store.get_user("alice")
    assert isinstance(info.value, elink_server.storage.StorageError)
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    monkeypatch.undo()
    with trio.fail_after(10):
        assert await store.get_user("nobody") is None  # the reader is still usable
