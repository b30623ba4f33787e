"""Heavy-bus throughput on loopback: upload and download MB/s through the file
service (local backend and the WebHDFS test server), next to a plain Trio
socket copy measured in the same run.

Run: ``.venv/bin/python -m benchmarks.files_throughput [--mb 64]``.
Uses the test helpers (in-process server, test identity, test client).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from elink_protocol.app import Done, DownloadTicket
from tests.helpers.files import download_bytes, open_download, upload_bytes
from tests.helpers.server import add_user, connect_client, login, open_test_server
from tests.helpers.webhdfs import WebHdfsServer


async def plain_copy(size: int) -> float:
    """MB/s of a bare Trio TCP copy of ``size`` bytes (64 KiB writes)."""
    block = os.urandom(65536)
    done = trio.Event()

    async def sink(stream: trio.SocketStream) -> None:
        got = 0
        while got < size:
            data = await stream.receive_some(262144)
            if not data:
                break
            got += len(data)
        done.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, sink, 0)
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = time.perf_counter()
        sent = 0
        while sent < size:
            await stream.send_all(block)
            sent += len(block)
        await done.wait()
        elapsed = time.perf_counter() - start
        await stream.aclose()
        nursery.cancel_scope.cancel()
    return size / elapsed / 1e6


async def through_service(size: int, backend: str, **settings: Any) -> tuple[float, float]:
    data = os.urandom(size)
    with tempfile.TemporaryDirectory() as tmp:
        async with open_test_server(Path(tmp), files_port=0, **settings) as server:
            await add_user(server, "alice")
            async with connect_client(server) as alice:
                await login(alice, "alice")
                start = time.perf_counter()
                done = await upload_bytes(alice, "alice", data)
                up = size / (time.perf_counter() - start) / 1e6
                assert isinstance(done, Done), done
                ticket = await open_download(alice, done.file_id)
                assert isinstance(ticket, DownloadTicket)
                start = time.perf_counter()
                digest = await download_bytes(ticket.port, ticket.ref.token, "alice", keep=False)
                down = size / (time.perf_counter() - start) / 1e6
                assert digest == done.sha256
    return up, down


async def main(mb: int) -> None:
    size = mb * 1024 * 1024
    print(f"payload: {mb} MiB, loopback, one transfer at a time")
    print(f"plain Trio socket copy:   {await plain_copy(size):8.1f} MB/s")
    up, down = await through_service(size, "local", files_chunk_size=1 << 20)
    print(f"local backend   upload:   {up:8.1f} MB/s   download: {down:8.1f} MB/s")
    with WebHdfsServer() as hdfs, contextlib.suppress(KeyboardInterrupt):
        up, down = await through_service(
            size,
            "hdfs",
            files_chunk_size=1 << 20,
            files_backend="hdfs",
            hdfs_namenodes=hdfs.namenode_address,
        )
    print(f"WebHDFS test    upload:   {up:8.1f} MB/s   download: {down:8.1f} MB/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=64)
    trio.run(main, parser.parse_args().mb)
