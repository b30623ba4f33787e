"""A store error during Login is answered SERVER_BUSY with a retry time and
keeps the connection (§11.10), end to end over loopback TCP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from elink_protocol.app import AppErrorCode, RequestFailed
from elink_server.storage import StoreClosed, WriteFailed
from tests.helpers.server import add_user, connect_client, login, login_answer, open_test_server


@pytest.mark.parametrize(
    ("method", "error"),
    [
        ("get_user", StoreClosed("store closed")),
        ("register_device", WriteFailed("disk full")),
        ("pending_count", StoreClosed("store closed")),
    ],
)
async def test_store_error_during_login_is_server_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, error: Exception
) -> None:
    async with open_test_server(tmp_path) as server:
        await add_user(server, "alice")
        calls = []

        async def failing(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            raise error

        monkeypatch.setattr(server.store, method, failing)
        async with connect_client(server) as client:
            answer = await login_answer(client, "alice", device_id="alice-pc", rid=1)
            assert isinstance(answer, RequestFailed), answer
            assert answer.code == AppErrorCode.SERVER_BUSY
            assert answer.retry_after_ms > 0
            assert len(calls) == 1
            # The connection stays, and nothing was bound or left pending:
            # it may log in again (not ALREADY_LOGGED_IN).
            monkeypatch.undo()
            ok = await login(client, "alice", device_id="alice-pc", rid=2)
            assert ok.rid == 2
