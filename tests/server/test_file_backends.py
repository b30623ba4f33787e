"""One backend contract, run against the local disk backend and the HDFS
backend (pyhdfs against the WebHDFS test server); HDFS faults surface as
BackendError within the configured timeout and never hang a worker."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from elink_server.files.backends import BackendError, FileBackend, HdfsBackend, LocalBackend
from tests.helpers.webhdfs import WebHdfsServer

WAIT = 10.0


@contextlib.contextmanager
def hdfs_server() -> Iterator[WebHdfsServer]:
    with WebHdfsServer() as server:
        yield server


def hdfs_backend(
    server: WebHdfsServer, *, namenodes: str = "", timeout: float = 2.0
) -> HdfsBackend:
    return HdfsBackend(
        namenodes=namenodes or server.namenode_address,
        user="elink",
        root="/elink",
        timeout=timeout,
        retry_delay=0.01,
    )


@contextlib.asynccontextmanager
async def open_backend(kind: str, tmp_path: Path) -> AsyncIterator[FileBackend]:
    if kind == "local":
        backend: FileBackend = LocalBackend(tmp_path / "files")
        yield backend
        return
    with hdfs_server() as server:
        backend = hdfs_backend(server)
        try:
            yield backend
        finally:
            await backend.aclose()


@pytest.mark.parametrize("kind", ["local", "hdfs"])
async def test_backend_contract(kind: str, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    with trio.fail_after(WAIT):
        async with open_backend(kind, tmp_path) as backend:
            assert await backend.size("partial/x") is None
            await backend.create("partial/x")
            assert await backend.size("partial/x") == 0
            await backend.append("partial/x", data[:100_000])
            await backend.append("partial/x", data[100_000:])
            assert await backend.size("partial/x") == len(data)
            assert await backend.read("partial/x", 0, len(data)) == data
            assert await backend.read("partial/x", 4095, 2) == data[4095:4097]
            assert await backend.read("partial/x", len(data) - 3, 10) == data[-3:]
            await backend.truncate("partial/x", 4096)
            assert await backend.size("partial/x") == 4096
            await backend.rename("partial/x", "blobs/ab/abc")
            assert await backend.size("partial/x") is None
            assert await backend.read("blobs/ab/abc", 0, 4096) == data[:4096]
            assert await backend.list("blobs/ab") == ["blobs/ab/abc"]
            assert await backend.list("nothing") == []
            await backend.delete("blobs/ab/abc")
            await backend.delete("blobs/ab/abc")  # deleting twice is fine
            assert await backend.size("blobs/ab/abc") is None


async def test_hdfs_uses_the_redirect_and_finds_the_active_namenode() -> None:
    with hdfs_server() as server:
        # HA: the standby NameNode is listed first; the client moves on.
        backend = hdfs_backend(
            server, namenodes=f"{server.standby_address},{server.namenode_address}"
        )
        with trio.fail_after(WAIT):
            await backend.create("a")
            await backend.append("a", b"hello")
            assert await backend.read("a", 1, 3) == b"ell"
        await backend.aclose()
        ops = {(node, op) for node, _method, op in server.requests}
        assert ("namenode", "APPEND") in ops and ("datanode", "APPEND") in ops
        assert ("datanode", "OPEN") in ops


@pytest.mark.parametrize("fault", ["standby", "stall_datanode", "redirect_to_closed_port"])
async def test_hdfs_faults_are_clear_errors(fault: str) -> None:
    with hdfs_server() as server:
        backend = hdfs_backend(server, timeout=0.5)
        with trio.fail_after(WAIT):
            await backend.create("f")
        setattr(server, fault, True)
        with trio.fail_after(WAIT), pytest.raises(BackendError) as info:
            await backend.append("f", b"data")
        assert "append to f" in str(info.value)
        await backend.aclose()
