"""Shared fixtures for the server tests: a fresh SQLite store per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from elink_server.storage import (
    AppendResult,
    DeviceKind,
    MessageKind,
    SqliteStore,
    direct_conversation_id,
    open_sqlite_store,
)

USERS = ("alice", "bob", "carol")
T0 = 1_700_000_000.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A store with users alice, bob, carol, each with one PC device "pc"."""
    with trio.fail_after(30):
        async with open_sqlite_store(tmp_path / "elink.db") as opened:
            for name in USERS:
                await opened.create_user(name, password_hash="scrypt$test", now=T0)
                await opened.register_device(name, "pc", kind=DeviceKind.PC, now=T0)
            yield opened


class Sender:
    """Appends 1:1 text messages with fresh client message ids."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.count = 0

    async def __call__(
        self,
        sender: str,
        recipient: str,
        text: str = "hi",
        *,
        client_msg_id: str | None = None,
        now: float = T0,
        kind: str = MessageKind.TEXT,
        content: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> AppendResult:
        if client_msg_id is None:
            self.count += 1
            client_msg_id = f"auto-{self.count}"
        with trio.fail_after(30):
            return await self.store.append_message(
                conversation=direct_conversation_id(sender, recipient),
                sender=sender,
                sender_device="pc",
                client_msg_id=client_msg_id,
                kind=kind,
                content={"text": text} if content is None else content,
                now=now,
                **kwargs,
            )


@pytest.fixture
def send(store: SqliteStore) -> Sender:
    """``await send("alice", "bob", "text")`` appends a 1:1 message."""
    return Sender(store)
