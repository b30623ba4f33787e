"""A node of several workers in one test process: a real hub, real links
(Unix socketpairs), one full server per worker, each on its own loopback
port, so a test decides which worker each client reaches.

The workers share the hub and the database file as a node's worker
processes do; only the process boundary is missing (tests/node/ has the
tests that run real worker processes)."""

from __future__ import annotations

import contextlib
import socket as stdlib_socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from elink_server.host import DATABASE_FILE_NAME, Server, WorkerSpec, open_server
from elink_server.node.hub import Hub
from elink_server.storage import open_sqlite_store
from tests.helpers.pair import identity
from tests.helpers.server import WAIT, test_settings


class TestNode:
    """The hub and the workers' servers."""

    __test__ = False  # not a pytest test class

    def __init__(self, hub: Hub, workers: list[Server]) -> None:
        self.hub = hub
        self.workers = workers


@contextlib.asynccontextmanager
async def open_test_node(
    data_dir: Path, *, workers: int = 2, **overrides: Any
) -> AsyncIterator[TestNode]:
    """``workers`` servers on 127.0.0.1:0 sharing one hub and one database."""
    settings = test_settings(data_dir, workers=workers, **overrides)
    data_dir.mkdir(parents=True, exist_ok=True)
    async with open_sqlite_store(data_dir / DATABASE_FILE_NAME):
        pass  # the schema, once, as the supervisor does
    hub = Hub(settings)
    async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as stack:
        servers: list[Server] = []
        for index in range(workers):
            ours, theirs = stdlib_socket.socketpair(stdlib_socket.AF_UNIX)
            hub_end = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
            worker_end = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
            link = await nursery.start(hub.serve, index, hub_end)
            spec = WorkerSpec(index=index, count=workers, hub=worker_end)
            server = await stack.enter_async_context(
                open_server(settings, identity=identity(), worker=spec)
            )
            assert isinstance(server, Server)
            with trio.fail_after(WAIT):
                await link.ready.wait()
            servers.append(server)
        yield TestNode(hub, servers)
        await stack.aclose()
        nursery.cancel_scope.cancel()
