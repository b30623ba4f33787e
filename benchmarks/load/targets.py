"""What the generators load: the e-Link server or the plain relay, each in
its own child process, or an external server given by address.

The server is started through its real command line (``python -m
elink_server serve``) with a fresh data directory, so what is measured is
what operators run.  Before it starts, the bench accounts are written
through the server's own store API (``create_user``, many at once so the
group commit batches them) with one precomputed scrypt hash shared by every
account: creating 30,000 distinct hashes would take minutes and measure
nothing.  Verification at login still runs the full scrypt with the cost
parameters the hash carries (``--scrypt-n``), so login cost is not
distorted; only the salt is shared, which matters to an attacker holding
the database, not to a load test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import attrs
import trio

from elink_protocol import ServerIdentity

from . import procstat

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CREATE_BATCH = 512


@attrs.frozen
class Target:
    """A running thing to load."""

    kind: str
    """``elink`` or ``plain``."""
    host: str
    port: int
    pin: tuple[str, ...] = ()
    """Server key fingerprints the generators trust (e-Link only)."""
    pid: int | None = None
    """The child process (its descendants are measured too); None when external."""
    command: tuple[str, ...] = ()

    def usage(self) -> procstat.Usage | None:
        if self.pid is None:
            return None
        return procstat.usage(procstat.children(self.pid))

    def processes(self) -> int:
        return len(procstat.children(self.pid)) if self.pid is not None else 0


def user_name(index: int) -> str:
    return f"bench{index:06d}"


def create_accounts(data_dir: Path, count: int, password: str, scrypt_n: int) -> float:
    """Write ``count`` accounts into the store of ``data_dir``; returns the
    seconds it took."""
    from elink_server.accounts import hash_password
    from elink_server.host import DATABASE_FILE_NAME
    from elink_server.storage import open_sqlite_store

    password_hash = hash_password(password, n=scrypt_n)
    started = time.perf_counter()

    async def main() -> None:
        async with open_sqlite_store(data_dir / DATABASE_FILE_NAME) as store:
            now = time.time()

            async def create(first: int, last: int) -> None:
                for i in range(first, last):
                    await store.create_user(user_name(i), password_hash=password_hash, now=now)

            # CREATE_BATCH writers at a time: each commit carries many rows.
            per_task = max(1, -(-count // CREATE_BATCH))
            async with trio.open_nursery() as nursery:
                for first in range(0, count, per_task):
                    nursery.start_soon(create, first, min(count, first + per_task))

    trio.run(main)
    return time.perf_counter() - started


@contextmanager
def elink_server(
    *,
    accounts: int,
    password: str,
    scrypt_n: int,
    workers: int | None,
    settings: Mapping[str, str],
    log: Path,
) -> Iterator[Target]:
    """A fresh e-Link server with ``accounts`` bench users, stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="elink-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir(mode=0o700)
        identity = ServerIdentity.generate()
        key = data_dir / "server_key.pem"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(identity.to_pem())
        create_accounts(data_dir, accounts, password, scrypt_n)
        command = [sys.executable, "-m", "elink_server", "serve", "--host", "127.0.0.1"]
        command += ["--port", "0", "--data-dir", str(data_dir)]
        if workers is not None:
            command += ["--workers", str(workers)]
        env = {**os.environ, "ELINK_LOG_LEVEL": "WARNING"}
        env.update({f"ELINK_{name.upper()}": value for name, value in settings.items()})
        pin = tuple(sorted(identity.fingerprints().values()))
        with _child(command, env, log) as (pid, port):
            yield Target("elink", "127.0.0.1", port, pin, pid, tuple(command))


@contextmanager
def plain_relay(*, log: Path) -> Iterator[Target]:
    """The baseline relay in a child process, stopped on exit."""
    command = [sys.executable, "-m", "benchmarks.load.relay", "--port", "0"]
    with _child(command, dict(os.environ), log) as (pid, port):
        yield Target("plain", "127.0.0.1", port, (), pid, tuple(command))


@contextmanager
def _child(command: list[str], env: dict[str, str], log: Path) -> Iterator[tuple[int, int]]:
    with open(log, "ab") as errors:
        child = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
    try:
        port = _wait_listening(child)
        yield child.pid, port
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        assert child.stdout is not None
        child.stdout.close()


def _wait_listening(child: subprocess.Popen[bytes]) -> int:
    assert child.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = child.stdout.readline().decode(errors="replace").strip()
        if line.startswith("listening on "):
            return int(line.rsplit(":", 1)[1])
        if not line and child.poll() is not None:
            raise RuntimeError(f"the server exited with {child.returncode} before listening")
    raise RuntimeError("the server did not start listening in time")
