"""A node run as ``python -m elink_server serve --workers N``, for tests
that need real worker processes, and clients that reach a chosen worker.

All workers accept on one listening socket, so the kernel decides which
worker gets a connection.  :meth:`NodeProcess.connect` decides instead: it
stops every other worker (SIGSTOP) until the handshake is done, so only the
chosen one can accept, and lets them go on (SIGCONT) right after.  Every
process is killed when the test ends, stopped ones included."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from elink_protocol import Config, Role
from elink_protocol.connection import Connection
from elink_server.accounts import hash_password
from elink_server.host import DATABASE_FILE_NAME
from elink_server.node.control import call_control
from elink_server.storage import open_sqlite_store
from tests.helpers.processes import LineReader, child_env
from tests.helpers.server import TEST_SCRYPT_N, LoopbackClient

#: Bound on every wait (seconds): a node of three workers starts in ~2.
WAIT = 30.0


async def add_users(data_dir: Path, *names: str) -> None:
    """Create accounts (password "secret") before the node starts."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    password_hash = hash_password("secret", n=TEST_SCRYPT_N)
    async with open_sqlite_store(data_dir / DATABASE_FILE_NAME) as store:
        for name in names:
            await store.create_user(name, password_hash=password_hash, now=time.time())


class NodeProcess:
    """A running ``serve --workers N`` process (see the module docstring)."""

    def __init__(self, process: trio.Process, data_dir: Path, output: LineReader) -> None:
        self.process = process
        self.data_dir = data_dir
        self.output = output
        self.port = 0
        self.fingerprint = ""
        self.worker_pids: set[int] = set()
        """Every worker pid seen, for the cleanup."""

    async def status(self, *, rates: bool = False) -> dict[str, Any]:
        with trio.fail_after(WAIT):
            status: dict[str, Any] = await call_control(self.data_dir, "status", rates)
        for worker in status["workers"]:
            if worker.get("pid"):
                self.worker_pids.add(int(worker["pid"]))
        return status

    async def pids(self) -> list[int]:
        """The workers' pids, by index (waits until all are running)."""
        with trio.fail_after(WAIT):
            while True:
                workers = (await self.status())["workers"]
                if all(w["state"] == "running" and w.get("pid") for w in workers):
                    return [int(w["pid"]) for w in workers]
                await trio.sleep(0.1)

    async def locate(self, user: str) -> dict[str, int]:
        with trio.fail_after(WAIT):
            found: dict[str, int] = await call_control(self.data_dir, "locate", user)
        return found

    @contextlib.asynccontextmanager
    async def connect(self, worker: int | None = None) -> AsyncIterator[LoopbackClient]:
        """A handshaken client on worker ``worker`` (any when None)."""
        others = []
        if worker is not None:
            others = [p for i, p in enumerate(await self.pids()) if i != worker]
        with trio.fail_after(WAIT):
            stream = await self._connect(others)
        async with stream:
            config = Config(trusted_server_keys=frozenset({self.fingerprint}))
            client = LoopbackClient(
                stream, Connection(role=Role.CLIENT, config=config, now=trio.current_time())
            )
            try:
                await client.do_handshake()
            finally:
                _signal_all(others, signal.SIGCONT)
            yield client

    async def _connect(self, others: list[int]) -> trio.SocketStream:
        _signal_all(others, signal.SIGSTOP)
        try:
            return await trio.open_tcp_stream("127.0.0.1", self.port)
        except BaseException:
            _signal_all(others, signal.SIGCONT)
            raise

    async def stop(self) -> None:
        """Stop the node: SIGTERM (a clean stop), then SIGKILL for what is
        left of it after :data:`WAIT` seconds."""
        process = self.process
        if process.returncode is None:
            _signal_all(sorted(self.worker_pids), signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with trio.move_on_after(WAIT):
                await process.wait()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            # Orphaned workers leave once their hub link ends; those that do
            # not (still ours: same command) are killed.
            with trio.move_on_after(WAIT):
                while any(_is_worker(p) for p in self.worker_pids):
                    await trio.sleep(0.1)
            _signal_all([p for p in self.worker_pids if _is_worker(p)], signal.SIGKILL)


def _is_worker(pid: int) -> bool:
    """Whether ``pid`` is (still) a worker process of this project."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return b"elink_server.node.worker" in file.read()
    except OSError:
        return False


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


@contextlib.asynccontextmanager
async def run_node(data_dir: Path, *, workers: int, **settings: str) -> AsyncIterator[NodeProcess]:
    """``serve --workers N --port 0`` on ``data_dir``; yields once it listens.
    ``settings`` become ``ELINK_<NAME>`` variables."""
    env = child_env(ELINK_LOG_LEVEL="WARNING")
    env.update({f"ELINK_{k.upper()}": v for k, v in settings.items()})
    argv = [sys.executable, "-m", "elink_server", "serve", "--port", "0"]
    argv += ["--workers", str(workers), "--data-dir", str(data_dir)]
    process = await trio.lowlevel.open_process(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    assert process.stdout is not None
    node = NodeProcess(process, data_dir, LineReader(process.stdout))
    try:
        with trio.fail_after(WAIT):
            listening = (await node.output.line()).decode()
            fingerprint = (await node.output.line()).decode()
            assert (await node.output.line()).decode() == f"workers: {workers}"
        node.port = int(listening.rsplit(":", 1)[1])
        node.fingerprint = fingerprint.split(": ", 1)[1]
        await node.pids()
        yield node
    finally:
        with trio.CancelScope(shield=True):
            await node.stop()
