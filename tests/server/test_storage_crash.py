"""Crash safety: SIGKILL a process in the middle of a burst of appends, reopen
the database, and check that every append whose await had returned is there,
exactly once, with gap-free seqs and event logs."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from elink_server.storage import open_sqlite_store

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
WANTED = 600  # acknowledged appends to see before the kill

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


async def _run_child_and_kill(path: Path) -> list[tuple[str, int]]:
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    process = await trio.lowlevel.open_process(
        [sys.executable, str(HERE / "crash_child.py"), str(path)],
        stdout=subprocess.PIPE,
        env=env,
    )
    acknowledged: list[tuple[str, int]] = []
    buffer = b""
    try:
        with trio.fail_after(60):
            assert process.stdout is not None
            while len(acknowledged) < WANTED:
                chunk = await process.stdout.receive_some()
                assert chunk, "child exited early"
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.startswith(b"ok "):
                        _, client_msg_id, msg_id = line.decode().split()
                        acknowledged.append((client_msg_id, int(msg_id)))
            # Kill it mid-burst: a batch is almost certainly being written.
            process.send_signal(signal.SIGKILL)
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    assert process.returncode == -signal.SIGKILL
    return acknowledged


async def test_acknowledged_appends_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    acknowledged = await _run_child_and_kill(path)

    with trio.fail_after(30):
        # Reopening recovers the WAL; then compare with what was acknowledged.
        async with open_sqlite_store(path) as store:
            for client_msg_id, msg_id in acknowledged:
                message = await store.audit_message(msg_id)
                assert message is not None, f"acknowledged message {msg_id} lost"
                assert message.client_msg_id == client_msg_id
            assert (await store.events_since("bob", 0)).head >= len(set(acknowledged))

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        duplicates = conn.execute(
            "SELECT sender, client_msg_id FROM messages"
            " GROUP BY sender, client_msg_id HAVING count(*) > 1"
        ).fetchall()
        assert duplicates == []
        seqs = [row[0] for row in conn.execute("SELECT seq FROM messages ORDER BY seq")]
        assert seqs == list(range(1, len(seqs) + 1))
        for user in ("alice", "bob"):
            user_seqs = [
                row[0]
                for row in conn.execute(
                    "SELECT user_seq FROM user_events WHERE user = ? ORDER BY user_seq", (user,)
                )
            ]
            assert user_seqs == list(range(1, len(seqs) + 1))
            head = conn.execute("SELECT event_head FROM users WHERE name = ?", (user,)).fetchone()
            assert head == (len(seqs),)
        # Both copies of a client id got the same msg_id back.
        by_client: dict[str, set[int]] = {}
        for client_msg_id, msg_id in acknowledged:
            by_client.setdefault(client_msg_id, set()).add(msg_id)
        assert all(len(ids) == 1 for ids in by_client.values())
    finally:
        conn.close()
