"""Several worker processes write one database (docs/storage.md, "Several
processes"): concurrent appends from three processes into one conversation
get unique, gap-free sequence numbers, and every member's event log stays
gap-free, with no message lost or stored twice."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import sys
from pathlib import Path

import trio

from elink_server.storage import DeviceKind, open_sqlite_store
from tests.helpers.processes import LineReader, child_env, reaped

HERE = Path(__file__).parent
WRITERS = (("alice", "pc"), ("bob", "pc"), ("alice", "phone"))
COUNT = 300
BURST = 30


async def test_concurrent_appends_from_several_processes_get_gap_free_seqs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "elink.db"
    async with open_sqlite_store(path) as store:
        for user in ("alice", "bob"):
            await store.create_user(user, password_hash="h", now=1.0)
        for user, device in WRITERS:
            await store.register_device(user, device, kind=DeviceKind.PC, now=1.0)

    async with reaped([]) as processes:
        with trio.fail_after(120):
            for user, device in WRITERS:
                processes.append(
                    await trio.lowlevel.open_process(
                        [
                            sys.executable,
                            str(HERE / "append_child.py"),
                            str(path),
                            user,
                            device,
                            str(COUNT),
                            str(BURST),
                        ],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        env=child_env(),
                    )
                )
            outputs = []
            for process in processes:
                assert process.stdout is not None
                outputs.append(LineReader(process.stdout))
            # All open, then all start at once.
            for output in outputs:
                assert await output.line() == b"ready"
            for process in processes:
                assert process.stdin is not None
                await process.stdin.send_all(b"go\n")
            for process, output in zip(processes, outputs, strict=True):
                assert await output.line() == b"done"
                assert await process.wait() == 0

    total = COUNT * len(WRITERS)
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT seq, msg_id, sender_device, client_msg_id FROM messages"
            " WHERE conversation = 'd:alice:bob' ORDER BY seq"
        ).fetchall()
        assert [seq for seq, *_ in rows] == list(range(1, total + 1))
        # The writers really ran at once: their messages interleave.
        runs = 1 + sum(a[2] != b[2] for a, b in itertools.pairwise(rows))
        assert runs > len(WRITERS)
        assert len({msg_id for _, msg_id, *_ in rows}) == total
        assert sorted((device, cm) for _, _, device, cm in rows) == sorted(
            (device, f"{device}-{i}") for _, device in WRITERS for i in range(COUNT)
        )
        for user in ("alice", "bob"):
            seqs = [
                row[0]
                for row in db.execute(
                    "SELECT user_seq FROM user_events WHERE user = ? ORDER BY user_seq", (user,)
                )
            ]
            assert seqs == list(range(1, total + 1)), user
            (head,) = db.execute("SELECT event_head FROM users WHERE name = ?", (user,)).fetchone()
            assert head == total
    finally:
        db.close()
