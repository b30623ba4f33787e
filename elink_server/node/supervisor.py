"""The supervisor of a node: one process that owns the listening sockets, the
hub and the control socket, and runs ``settings.workers`` worker processes.

Theory of operation
-------------------
:func:`open_node` (what :func:`~elink_server.host.open_server` runs when
``settings.workers`` is above one):

1. loads (or creates) the server key and creates the database schema, so the
   workers never race to do either;
2. binds the listening sockets (so port 0 works and the node can report its
   port) and the control socket (``control.sock``, :mod:`.control`);
3. starts every worker: ``python -m elink_server.node.worker`` with the
   listening sockets and one end of a fresh Unix socketpair inherited
   (``pass_fds``); the other end is the worker's link to the :class:`~.hub.
   Hub`.  The first message on it is the worker's configuration (its index,
   the settings, the key).  A worker is started once it says ``ready``
   (it is listening); if a worker cannot start the first time, the node
   fails to start;
4. yields a :class:`Node`.

All workers accept on the same sockets: the kernel hands each new
connection to one of them (a busy worker accepts less, a full one not at all).

**A worker that dies** (a crash, SIGKILL, the OOM killer) is started again
after a pause (0.5 s, doubling up to 10 s while it keeps dying within a
minute).  Its clients' connections broke with it; they reconnect (to any
worker), cannot resume (the sessions died with the process), log in again
and pull what they missed: every acknowledged message is in the database.

**Shutdown** (leaving the block; the CLI does it on SIGTERM or SIGINT): no
more restarts; every worker gets SIGTERM and shuts down as a single server
does (GoingAway to its clients, queued writes committed); after
``shutdown_grace`` plus a margin the stragglers are killed; then the hub,
the control socket and the listening sockets close.  Workers run in their
own session, so a terminal's Ctrl-C reaches the supervisor only, which
forwards it; a worker whose supervisor is gone sees its hub link end and
shuts down by itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket as stdlib_socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
import structlog
import trio

from elink_protocol import ServerIdentity
from elink_server.identity_store import load_or_create_identity, primary_fingerprint
from elink_server.settings import ServerSettings
from elink_server.storage import open_sqlite_store

from .control import Rates, control_socket, totals
from .hub import Hub, HubStatistics, WorkerLink

logger = structlog.get_logger("elink_server")

DATABASE_FILE_NAME = "elink.db"
#: Longest a worker may take to start (open the store, listen).
STARTUP_TIMEOUT = 60.0
#: First pause before restarting a dead worker, and the longest.
RESTART_PAUSE = 0.5
MAX_RESTART_PAUSE = 10.0
#: A worker that ran this long before dying is restarted after the first pause.
STABLE_AFTER = 60.0
#: Beyond ``shutdown_grace``, how long workers may take to exit at shutdown
#: (measured: a worker with 15,000 sessions needed ~15 s on a loaded box).
EXIT_MARGIN = 30.0


class NodeError(Exception):
    """The node could not start (the message says why)."""


@attrs.define(eq=False)
class WorkerProcess:
    """One worker as the supervisor sees it."""

    index: int
    state: str = "starting"
    """starting, running, restarting or stopped."""
    process: trio.Process | None = None
    link: WorkerLink | None = None
    started_at: float = 0.0
    restarts: int = 0
    """How many times it was started again after dying."""
    last_exit: int | None = None
    """The exit status of its last process (negative: killed by that signal)."""


class _Started:
    """How the first start of the workers went."""

    def __init__(self, count: int) -> None:
        self._left = count
        self.errors: list[str] = []
        self.done = trio.Event()

    def ready(self) -> None:
        self._left -= 1
        if not self._left:
            self.done.set()

    def failed(self, reason: str) -> None:
        self.errors.append(reason)
        self.done.set()


class Node:
    """A running node.  Obtain one from :func:`open_node` (or
    :func:`~elink_server.host.open_server` with ``workers`` above one)."""

    def __init__(
        self,
        *,
        settings: ServerSettings,
        identity: ServerIdentity,
        hub: Hub,
        listeners: list[trio.SocketListener],
        files_listeners: list[trio.SocketListener] | None = None,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.fingerprint = primary_fingerprint(identity)
        """``SHA256:<hex>`` of the server's Ed25519 key, for clients to pin."""
        self.hub = hub
        self.listeners = listeners
        self.files_listeners = files_listeners or []
        """The heavy bus's listening sockets, handed to every worker too."""
        self.workers = [WorkerProcess(index=i) for i in range(settings.worker_count())]
        self.started_at = time.monotonic()
        self._stopping = False
        self._shutdown_requested = trio.Event()
        self._rates = Rates()

    @property
    def port(self) -> int:
        """The TCP port of the first listener (the real one when 0 was asked)."""
        return int(self.listeners[0].socket.getsockname()[1])

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every listener."""
        return [(str(s[0]), int(s[1])) for s in (x.socket.getsockname() for x in self.listeners)]

    def statistics(self) -> HubStatistics:
        """The hub's snapshot (see :meth:`status` for the workers')."""
        return self.hub.statistics()

    def shutdown(self) -> None:
        """Ask the node to shut down (what SIGTERM does in ``serve``)."""
        self._shutdown_requested.set()

    async def wait_shutdown_requested(self) -> None:
        await self._shutdown_requested.wait()

    def locate(self, user: str) -> dict[str, int]:
        """``user``'s logged-in devices and the worker holding each."""
        return self.hub.locate(user)

    async def status(self, rates: bool = True) -> dict[str, Any]:
        """Everything ``elink-server status`` prints (docs/operators.md)."""
        stats = await self._rates.collect(self.hub.worker_statistics, rates=rates)
        now = time.monotonic()
        workers = []
        for worker in self.workers:
            entry: dict[str, Any] = {
                "index": worker.index,
                "state": worker.state,
                "restarts": worker.restarts,
                "last_exit": worker.last_exit,
                "uptime_s": now - worker.started_at if worker.state == "running" else None,
            }
            entry.update(stats.get(worker.index, {}))
            workers.append(entry)
        return {
            "node": {
                "pid": os.getpid(),
                "uptime_s": now - self.started_at,
                "workers": len(self.workers),
                "addresses": [_address(h, p) for h, p in self.addresses],
                "fingerprint": self.fingerprint,
                "data_dir": str(self.settings.data_dir),
            },
            "hub": attrs.asdict(self.hub.statistics()),
            "workers": workers,
            "totals": totals(workers),
        }

    # --------------------------------------------------------------- workers

    async def _supervise(
        self, worker: WorkerProcess, nursery: trio.Nursery, started: _Started
    ) -> None:
        """Run worker ``worker`` until the node stops, restarting it when it
        dies.  ``started`` learns whether its first process became ready."""
        pause = RESTART_PAUSE
        first = True
        while True:
            try:
                process = await self._spawn(worker, nursery)
            except OSError as exc:  # fork failed, out of file descriptors...
                if first:
                    started.failed(f"worker {worker.index} could not be started: {exc}")
                    worker.state = "stopped"
                    return
                logger.error("worker could not be started", worker=worker.index, error=str(exc))
                worker.state = "restarting"
                pause = min(pause * 2, MAX_RESTART_PAUSE)
                await trio.sleep(pause)
                if self._stopping:
                    worker.state = "stopped"
                    return
                continue
            ready = await _ready_or_exit(worker, process)
            if first:
                first = False
                if not ready:
                    started.failed(
                        f"worker {worker.index} did not start (exit status {process.returncode})"
                    )
                    worker.state = "stopped"
                    return
                started.ready()
            if ready:
                worker.state = "running"
                logger.info("worker started", worker=worker.index, pid=process.pid)
            code = await process.wait()
            worker.last_exit = code
            ran = time.monotonic() - worker.started_at
            if self._stopping:
                worker.state = "stopped"
                return
            worker.state = "restarting"
            worker.restarts += 1
            pause = RESTART_PAUSE if ran > STABLE_AFTER else min(pause * 2, MAX_RESTART_PAUSE)
            logger.error(
                "worker died; restarting",
                worker=worker.index,
                pid=process.pid,
                status=code,
                ran_s=round(ran, 1),
                pause_s=pause,
            )
            await trio.sleep(pause)
            if self._stopping:
                worker.state = "stopped"
                return

    async def _spawn(self, worker: WorkerProcess, nursery: trio.Nursery) -> trio.Process:
        ours, theirs = stdlib_socket.socketpair(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        listen_fds = [listener.socket.fileno() for listener in self.listeners]
        files_fds = [listener.socket.fileno() for listener in self.files_listeners]
        command = [
            sys.executable,
            "-m",
            "elink_server.node.worker",
            "--hub-fd",
            str(theirs.fileno()),
            *(f"--listen-fd={fd}" for fd in listen_fds),
            *(f"--files-fd={fd}" for fd in files_fds),
        ]
        try:
            process = await trio.lowlevel.open_process(
                command,
                pass_fds=(theirs.fileno(), *listen_fds, *files_fds),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker.process = process
        worker.started_at = time.monotonic()
        worker.state = "starting"
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        link: WorkerLink = await nursery.start(self.hub.serve, worker.index, stream)
        worker.link = link
        link.link.send(
            "config",
            worker.index,
            len(self.workers),
            _settings_values(self.settings),
            self.identity.to_pem(),
        )
        return process

    async def _stop(self) -> None:
        """Stop every worker (see "Shutdown" in the module docstring)."""
        self._stopping = True
        running = [w.process for w in self.workers if w.process and w.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.settings.shutdown_grace + EXIT_MARGIN):
            for process in running:
                await process.wait()
        for process in running:
            if process.returncode is None:
                logger.error("worker did not stop in time; killing it", pid=process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


async def _ready_or_exit(worker: WorkerProcess, process: trio.Process) -> bool:
    """Wait until the worker says ready (True), exits or takes too long."""
    assert worker.link is not None
    link = worker.link
    ready = False
    async with trio.open_nursery() as nursery:

        async def wait_ready() -> None:
            nonlocal ready
            await link.ready.wait()
            ready = True
            nursery.cancel_scope.cancel()

        async def wait_exit() -> None:
            await process.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait_ready)
        nursery.start_soon(wait_exit)
        await trio.sleep(STARTUP_TIMEOUT)
        nursery.cancel_scope.cancel()
    if not ready and process.returncode is None:
        logger.error("worker did not start in time; killing it", worker=worker.index)
        process.kill()
    return ready


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _settings_values(settings: ServerSettings) -> dict[str, Any]:
    values = attrs.asdict(settings)
    values["data_dir"] = str(settings.data_dir)
    return values


@contextlib.asynccontextmanager
async def open_node(
    settings: ServerSettings, *, identity: ServerIdentity | None = None
) -> AsyncIterator[Node]:
    """Run a node of ``settings.workers`` worker processes under this process
    (see the module docstring).  ``identity`` overrides the stored key."""
    if identity is None:
        stored, created = await trio.to_thread.run_sync(load_or_create_identity, settings.data_dir)
        if created:
            logger.info("server key generated", path=str(settings.data_dir))
        identity = stored
    else:
        await trio.to_thread.run_sync(
            lambda: settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        )
    # The schema, once, before any worker opens the database.
    async with open_sqlite_store(
        settings.data_dir / DATABASE_FILE_NAME, offline_cap=settings.offline_cap
    ):
        pass
    listeners = await trio.open_tcp_listeners(settings.port, host=settings.host)
    # The heavy bus too: every worker accepts transfers on one shared socket
    # (any worker can serve any transfer: its state is in the database).
    try:
        files_listeners = await trio.open_tcp_listeners(
            settings.heavy_bus_port(), host=settings.host
        )
    except BaseException:
        for listener in listeners:
            await listener.aclose()
        raise
    try:
        hub = Hub(settings)
        node = Node(
            settings=settings,
            identity=identity,
            hub=hub,
            listeners=listeners,
            files_listeners=files_listeners,
        )
        started = _Started(len(node.workers))
        async with (
            control_socket(settings.data_dir, status=node.status, locate=node.locate),
            trio.open_nursery() as nursery,
        ):
            for worker in node.workers:
                nursery.start_soon(node._supervise, worker, nursery, started)
            try:
                await started.done.wait()
            finally:
                if started.errors or not started.done.is_set():
                    with trio.CancelScope(shield=True):
                        await node._stop()
                    nursery.cancel_scope.cancel()
            if not started.errors:
                logger.info(
                    "node started",
                    workers=len(node.workers),
                    addresses=[_address(h, p) for h, p in node.addresses],
                    fingerprint=node.fingerprint,
                )
                try:
                    yield node
                finally:
                    with trio.CancelScope(shield=True):
                        await node._stop()
                    nursery.cancel_scope.cancel()
        if started.errors:
            raise NodeError("; ".join(started.errors))
        logger.info("node stopped")
    finally:
        with trio.CancelScope(shield=True):
            for listener in [*listeners, *files_listeners]:
                await listener.aclose()
