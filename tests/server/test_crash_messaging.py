"""The crash test of issue 3: a server process (``python -m elink_server
serve``) is killed with SIGKILL in the middle of a burst of sends, then
restarted on the same data directory.  Every message whose MessageAccepted
reached the client is there, and no message is there twice, also after the
client re-sends what it had no answer for (same client message ids)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from elink_protocol import Config, ConnectionClosed, Role
from elink_protocol.app import (
    MessageAccepted,
    MessageEvent,
    Pull,
    PullResult,
    SendMessage,
    text_content,
)
from elink_protocol.connection import Connection
from elink_server.accounts import hash_password
from elink_server.host import DATABASE_FILE_NAME
from elink_server.storage import open_sqlite_store
from tests.helpers.server import TEST_SCRYPT_N, LoopbackClient, login

#: Messages the client pipelines; the server is killed well before the end.
BURST = 2000
#: Acknowledgements to see before the kill.
KILL_AFTER = 40
#: Bound on every wait (seconds): a server process starts in about one.
WAIT = 30.0


@contextlib.asynccontextmanager
async def serve(data_dir: Path) -> AsyncIterator[tuple[trio.Process, int, str]]:
    """A server process on 127.0.0.1:0; yields it, its port and key."""
    env = dict(os.environ, ELINK_LOG_LEVEL="WARNING")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "elink_server", "serve", "--data-dir", str(data_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert process.stdout is not None
        text = b""
        with trio.fail_after(WAIT):
            while b"fingerprint: " not in text or not text.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                assert chunk, f"server exited: {text!r}"
                text += chunk
        lines = text.decode().splitlines()
        port = int(next(x for x in lines if x.startswith("listening on")).rsplit(":", 1)[1])
        fingerprint = next(x for x in lines if "fingerprint: " in x).split(": ", 1)[1]
        yield process, port, fingerprint
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with trio.fail_after(WAIT):
            await process.wait()


@contextlib.asynccontextmanager
async def connect(port: int, fingerprint: str) -> AsyncIterator[LoopbackClient]:
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        config = Config(trusted_server_keys=frozenset({fingerprint}))
        client = LoopbackClient(
            stream, Connection(role=Role.CLIENT, config=config, now=trio.current_time())
        )
        await client.do_handshake()
        yield client


def message(i: int) -> SendMessage:
    return SendMessage(
        rid=100 + i,
        client_msg_id=f"burst-{i}",
        to="bob",
        kind="text",
        content=text_content(f"m{i}"),
    )


async def test_sigkill_mid_burst_loses_no_acknowledged_message(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / DATABASE_FILE_NAME) as store:
        for name in ("alice", "bob"):
            password_hash = hash_password("secret", n=TEST_SCRYPT_N)
            await store.create_user(name, password_hash=password_hash, now=time.time())

    acked: dict[str, int] = {}
    async with (
        serve(tmp_path) as (process, port, fingerprint),
        connect(port, fingerprint) as alice,
    ):
        await login(alice, "alice", device_id="alice-pc")
        for i in range(BURST):
            alice.connection.queue(message(i))
        await alice.flush()
        killed = False
        while True:
            try:
                event = await alice.next_event(timeout=WAIT)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            if isinstance(event, ConnectionClosed):
                break
            if isinstance(event, MessageAccepted):
                assert not event.duplicate
                acked[event.client_msg_id] = event.msg_id
                if len(acked) >= KILL_AFTER and not killed:
                    process.send_signal(signal.SIGKILL)
                    killed = True
        assert killed
    assert KILL_AFTER <= len(acked) < BURST

    async with serve(tmp_path) as (process, port, fingerprint):
        # What reached the client is there, once, with the same id.
        async with connect(port, fingerprint) as bob:
            await login(bob, "bob", device_id="bob-pc")
            stored = await pull_all(bob)
        ids = [cm for cm, _ in stored]
        assert len(ids) == len(set(ids))
        for cm, msg_id in acked.items():
            assert (cm, msg_id) in stored
        # The client re-sends everything it had no answer for: what the
        # server had stored is answered as a duplicate, the rest stored once.
        async with connect(port, fingerprint) as alice:
            await login(alice, "alice", device_id="alice-pc")
            missing = [i for i in range(BURST) if f"burst-{i}" not in acked]
            stored_cms = set(ids)
            for i in missing:
                alice.connection.queue(message(i))
            await alice.flush()
            answers = 0
            while answers < len(missing):
                event = await alice.next_event(timeout=WAIT)
                if isinstance(event, MessageAccepted):
                    answers += 1
                    assert event.duplicate == (event.client_msg_id in stored_cms)
        async with connect(port, fingerprint) as bob:
            await login(bob, "bob", device_id="bob-pc")
            final = await pull_all(bob)
        assert sorted(cm for cm, _ in final) == sorted(f"burst-{i}" for i in range(BURST))
        seqs = [msg_id for _, msg_id in final]
        assert len(seqs) == len(set(seqs))


async def pull_all(client: LoopbackClient) -> list[tuple[str, int]]:
    """Every message in the client's log, as (client message id, message id)."""
    out: list[tuple[str, int]] = []
    cursor, rid = 0, 10_000
    while True:
        rid += 1
        await client.send(Pull(rid=rid, after=cursor, limit=1000))
        while True:
            event = await client.next_event(timeout=WAIT)
            if isinstance(event, PullResult) and event.rid == rid:
                break
            assert not isinstance(event, ConnectionClosed), event
        out += [
            (e.message.client_msg_id, e.message.msg_id)
            for e in event.events
            if isinstance(e, MessageEvent)
        ]
        cursor = event.next_cursor
        if not event.more:
            return out
