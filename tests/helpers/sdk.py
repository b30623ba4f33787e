"""SDK tests: a loopback server with accounts, SDK clients pinned to its key,
and the same server run in a background thread for asyncio and blocking
tests."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import trio

import elink_sdk
from elink_server.host import Server
from tests.helpers.pair import identity
from tests.helpers.server import WAIT, add_user, open_test_server

#: The test server's fingerprints: pin them (no known-servers file needed).
PIN = sorted(identity().fingerprints().values())

#: Reconnect quickly in tests (the default backoff starts at 0.1 s too, but
#: grows to 30 s).
FAST_RECONNECT = elink_sdk.ReconnectPolicy(initial_delay=0.05, max_delay=0.5)

#: Accounts every SDK test server has; the password is "secret".
USERS = ("alice", "bob", "carol")


@contextlib.asynccontextmanager
async def sdk_server(
    data_dir: Path, *, users: Iterable[str] = USERS, **overrides: Any
) -> AsyncIterator[Server]:
    """A test server on 127.0.0.1:0 with ``users`` created."""
    async with open_test_server(data_dir, **overrides) as server:
        for user in users:
            await add_user(server, user)
        yield server


def client_options(port: int, user: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for :func:`elink_sdk.connect` (pinned, fast reconnect)."""
    options: dict[str, Any] = {
        "user": user,
        "password": "secret",
        "device_id": f"{user}-dev",
        "server_fingerprint": PIN,
        "reconnect": FAST_RECONNECT,
        "connect_timeout": WAIT,
        "request_timeout": WAIT,
    }
    options.update(overrides)
    return options


@contextlib.asynccontextmanager
async def sdk_client(
    port: int, user: str, *, host: str = "127.0.0.1", **overrides: Any
) -> AsyncIterator[elink_sdk.Client]:
    """An SDK client logged in as ``user``; connecting and every request are
    bounded by :data:`WAIT` (``connect_timeout`` and ``request_timeout``)."""
    async with elink_sdk.connect(host, port, **client_options(port, user, **overrides)) as client:
        yield client


class ServerThread:
    """The test server running under Trio in a background thread, for tests
    whose own code runs under asyncio or blocks::

        with ServerThread(tmp_path) as server:
            asyncio.run(scenario(server.port))
    """

    def __init__(self, data_dir: Path, *, users: Iterable[str] = USERS, **overrides: Any):
        self._data_dir = data_dir
        self._users = tuple(users)
        self._overrides = overrides
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="elink-test-server", daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self.port = 0
        self.udp_port = 0

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with sdk_server(self._data_dir, users=self._users, **self._overrides) as server:
            self.port = server.port
            self.udp_port = server.udp.port if server.udp is not None else 0
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(WAIT) or self._error is not None:
            raise RuntimeError(f"test server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "test server thread did not stop"
