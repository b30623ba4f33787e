"""The file service end to end: tickets on the light bus, transfers on the
heavy bus, on the local backend and through the WebHDFS test server."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from elink_protocol.app import (
    FOLDER_MEDIA_TYPE,
    AppErrorCode,
    Done,
    DownloadTicket,
    Manifest,
    ManifestEntry,
    MessageAccepted,
    RecallOk,
    RequestFailed,
    SendMessage,
    TransferFailed,
    TransferRef,
    UploadTicket,
)
from elink_protocol.app.messaging import Recall
from elink_server.host import Server
from tests.helpers.files import (
    connect_heavy,
    download_bytes,
    open_download,
    open_upload,
    request,
    upload_bytes,
)
from tests.helpers.server import WAIT, add_user, connect_client, login, open_test_server
from tests.helpers.webhdfs import WebHdfsServer

CHUNK = 64 * 1024


@pytest.fixture(params=["local", "hdfs"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def file_server(tmp_path: Path, backend: str, **overrides: Any) -> AsyncIterator[Server]:
    settings: dict[str, Any] = {"files_port": 0, "files_chunk_size": CHUNK}
    with contextlib.ExitStack() as stack:
        if backend == "hdfs":
            hdfs = stack.enter_context(WebHdfsServer())
            settings.update(
                files_backend="hdfs",
                hdfs_namenodes=hdfs.namenode_address,
                hdfs_timeout=2.0,
            )
        settings.update(overrides)
        async with open_test_server(tmp_path, **settings) as server:
            await add_user(server, "alice")
            await add_user(server, "bob")
            yield server


def files_of(server: Server) -> Any:
    assert server.context is not None
    return server.context.components["files"]


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * CHUNK + 17])
async def test_round_trip(tmp_path: Path, backend: str, size: int) -> None:
    data = os.urandom(size)
    async with file_server(tmp_path, backend) as server, connect_client(server) as alice:
        await login(alice, "alice")
        done = await upload_bytes(alice, "alice", data)
        assert isinstance(done, Done), done
        assert done.sha256 == hashlib.sha256(data).digest() and done.size == size
        ticket = await open_download(alice, done.file_id)
        assert isinstance(ticket, DownloadTicket), ticket
        got = await download_bytes(ticket.port, ticket.ref.token, "alice")
        assert got == data
        if size > 10:
            part = await download_bytes(
                ticket.port, ticket.ref.token, "alice", offset=5, length=size - 10
            )
            assert part == data[5:-5]


async def test_large_file_streams_with_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    size = 24 * 1024 * 1024
    data = os.urandom(size)
    async with (
        file_server(tmp_path, "local", files_chunk_size=1024 * 1024) as server,
        connect_client(server) as alice,
    ):
        await login(alice, "alice")
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            done = await upload_bytes(alice, "alice", data)
            assert isinstance(done, Done)
            ticket = await open_download(alice, done.file_id)
            assert isinstance(ticket, DownloadTicket)
            progress: list[int] = []
            # Download without keeping the data: the client only hashes it.
            got = await download_bytes(
                ticket.port, ticket.ref.token, "alice", keep=False, on_chunk=progress.append
            )
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        assert got == done.sha256 and progress[-1] == size
        # Server and client hold a chunk or two at a time, never the file.
        assert peak < size // 2, peak


async def test_resume_after_cut_at_random_point(tmp_path: Path, backend: str) -> None:
    data = os.urandom(5 * CHUNK + 1234)
    rng = random.Random(7)
    async with file_server(tmp_path, backend) as server, connect_client(server) as alice:
        await login(alice, "alice")
        first = await open_upload(alice, data)
        assert isinstance(first, UploadTicket)
        acked = await upload_bytes(
            alice, "alice", data, cut_after=rng.randrange(CHUNK, 4 * CHUNK), ticket=first
        )
        assert isinstance(acked, int)
        again = None
        with trio.fail_after(WAIT):
            while True:  # the server may still hold the old connection's lease
                again = await open_upload(alice, data, upload_id=first.upload_id)
                assert isinstance(again, UploadTicket), again
                done = await upload_bytes(alice, "alice", data, ticket=again)
                if isinstance(done, TransferFailed) and done.code == AppErrorCode.TRANSFER_BUSY:
                    await trio.sleep(0.05)
                    continue
                break
        assert again.offset >= acked and again.offset % CHUNK == 0 and again.offset > 0
        assert isinstance(done, Done), done
        ticket = await open_download(alice, done.file_id)
        assert isinstance(ticket, DownloadTicket)
        assert await download_bytes(ticket.port, ticket.ref.token, "alice") == data


async def test_corrupted_chunk_is_rejected_and_resent(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK)
    async with file_server(tmp_path, "local") as server, connect_client(server) as alice:
        await login(alice, "alice")
        done = await upload_bytes(alice, "alice", data, corrupt_chunk=1)
        assert isinstance(done, Done), done
        ticket = await open_download(alice, done.file_id)
        assert isinstance(ticket, DownloadTicket)
        assert await download_bytes(ticket.port, ticket.ref.token, "alice") == data


async def test_wrong_whole_file_hash_is_refused(tmp_path: Path) -> None:
    data = os.urandom(CHUNK + 5)
    async with file_server(tmp_path, "local") as server, connect_client(server) as alice:
        await login(alice, "alice")
        ticket = await open_upload(alice, data, sha256=bytes(32))
        assert isinstance(ticket, UploadTicket)
        failed = await upload_bytes(alice, "alice", data, ticket=ticket)
        assert isinstance(failed, TransferFailed) and failed.code == AppErrorCode.HASH_MISMATCH


async def test_identical_content_is_stored_once(tmp_path: Path, backend: str) -> None:
    data = os.urandom(2 * CHUNK)
    async with file_server(tmp_path, backend) as server, connect_client(server) as alice:
        await login(alice, "alice")
        one = await upload_bytes(alice, "alice", data, name="a.bin")
        two = await upload_bytes(alice, "alice", data, name="b.bin")
        assert isinstance(one, Done) and isinstance(two, Done) and one.file_id != two.file_id
        assert await files_of(server).store.blob_count() == 1


async def test_size_limit_and_quota(tmp_path: Path) -> None:
    async with (
        file_server(tmp_path, "local", files_max_size=1000, files_user_quota=1500) as server,
        connect_client(server) as alice,
    ):
        await login(alice, "alice")
        too_big = await open_upload(alice, os.urandom(1001))
        assert isinstance(too_big, RequestFailed) and too_big.code == AppErrorCode.FILE_TOO_LARGE
        assert isinstance(await upload_bytes(alice, "alice", os.urandom(900)), Done)
        over = await open_upload(alice, os.urandom(700))
        assert isinstance(over, RequestFailed) and over.code == AppErrorCode.QUOTA_EXCEEDED


async def test_tokens_are_bound_to_the_user(tmp_path: Path) -> None:
    data = os.urandom(100)
    async with file_server(tmp_path, "local") as server, connect_client(server) as alice:
        await login(alice, "alice")
        done = await upload_bytes(alice, "alice", data)
        assert isinstance(done, Done)
        ticket = await open_download(alice, done.file_id)
        assert isinstance(ticket, DownloadTicket)
        stolen = await download_bytes(ticket.port, ticket.ref.token, "bob")
        assert isinstance(stolen, TransferFailed) and stolen.code == AppErrorCode.TOKEN_INVALID


async def _send_file_message(client: Any, to: str, done: Done, kind: str = "file") -> int:
    ref = TransferRef(
        id=done.file_id, size=done.size, sha256=done.sha256, name="x.bin", media_type="x/y"
    )
    answer = await request(
        client,
        SendMessage(
            rid=random.randrange(1 << 20),
            client_msg_id=os.urandom(8).hex(),
            to=to,
            kind=kind,
            content={"ref": ref.to_wire()},
        ),
    )
    assert isinstance(answer, MessageAccepted), answer
    return answer.msg_id


async def test_recipient_downloads_through_the_message_until_recalled(tmp_path: Path) -> None:
    data = os.urandom(3000)
    async with (
        file_server(tmp_path, "local") as server,
        connect_client(server) as alice,
        connect_client(server) as bob,
    ):
        await login(alice, "alice")
        await login(bob, "bob")
        done = await upload_bytes(alice, "alice", data)
        assert isinstance(done, Done)
        # Without the message, bob cannot see alice's file.
        denied = await open_download(bob, done.file_id)
        assert isinstance(denied, RequestFailed) and denied.code == AppErrorCode.NOT_FOUND
        msg_id = await _send_file_message(alice, "bob", done)
        ticket = await open_download(bob, done.file_id, msg_id)
        assert isinstance(ticket, DownloadTicket), ticket
        assert await download_bytes(ticket.port, ticket.ref.token, "bob") == data
        recalled = await request(alice, Recall(rid=77, msg_id=msg_id))
        assert isinstance(recalled, RecallOk)
        gone = await open_download(bob, done.file_id, msg_id)
        assert isinstance(gone, RequestFailed) and gone.code == AppErrorCode.NOT_FOUND


async def test_expiry_after_retention_with_a_mock_clock(tmp_path: Path, backend: str) -> None:
    data = os.urandom(1000)
    async with file_server(tmp_path, backend) as server, connect_client(server) as alice:
        assert server.context is not None
        now = [1_800_000_000_000]
        server.context.now_ms = lambda: now[0]
        await login(alice, "alice")
        done = await upload_bytes(alice, "alice", data)
        assert isinstance(done, Done)
        service = files_of(server)
        now[0] += 30 * 86400 * 1000 - 1
        assert (await service.run_janitor_once())["expired"] == 0
        ticket = await open_download(alice, done.file_id)
        assert isinstance(ticket, DownloadTicket)
        now[0] += 2
        counts = await service.run_janitor_once()
        assert counts["expired"] == 1 and counts["deleted"] == 1
        assert await service.store.blob_count() == 0
        expired = await open_download(alice, done.file_id)
        assert isinstance(expired, RequestFailed) and expired.code == AppErrorCode.FILE_EXPIRED
        late = await download_bytes(ticket.port, ticket.ref.token, "alice")
        assert isinstance(late, TransferFailed) and late.code == AppErrorCode.FILE_EXPIRED


async def test_shared_content_survives_one_copy_expiring(tmp_path: Path) -> None:
    data = os.urandom(500)
    async with file_server(tmp_path, "local") as server, connect_client(server) as alice:
        assert server.context is not None
        now = [1_800_000_000_000]
        server.context.now_ms = lambda: now[0]
        await login(alice, "alice")
        first = await upload_bytes(alice, "alice", data)
        now[0] += 10 * 86400 * 1000
        second = await upload_bytes(alice, "alice", data)
        assert isinstance(first, Done) and isinstance(second, Done)
        now[0] += 25 * 86400 * 1000
        counts = await files_of(server).run_janitor_once()
        assert counts == {"expired": 1, "deleted": 0, "abandoned": 0}
        ticket = await open_download(alice, second.file_id)
        assert isinstance(ticket, DownloadTicket)
        assert await download_bytes(ticket.port, ticket.ref.token, "alice") == data


async def test_folder_with_nested_paths(tmp_path: Path, backend: str) -> None:
    files = {"a.txt": b"alpha", "sub/b.txt": os.urandom(5000), "sub/deeper/c.bin": b""}
    async with (
        file_server(tmp_path, backend) as server,
        connect_client(server) as alice,
        connect_client(server) as bob,
    ):
        await login(alice, "alice")
        await login(bob, "bob")
        entries = []
        for path, content in files.items():
            done = await upload_bytes(alice, "alice", content, name=path.rsplit("/", 1)[-1])
            assert isinstance(done, Done)
            entries.append(
                ManifestEntry(path=path, file_id=done.file_id, size=done.size, sha256=done.sha256)
            )
        manifest = Manifest(entries=tuple(entries)).encode()
        folder = await upload_bytes(
            alice, "alice", manifest, name="folder", media_type=FOLDER_MEDIA_TYPE
        )
        assert isinstance(folder, Done), folder
        msg_id = await _send_file_message(alice, "bob", folder, kind="folder")
        # bob fetches just one file of the folder, through the folder message
        wanted = entries[1]
        ticket = await open_download(bob, wanted.file_id, msg_id)
        assert isinstance(ticket, DownloadTicket), ticket
        got = await download_bytes(ticket.port, ticket.ref.token, "bob")
        assert got == files["sub/b.txt"]


async def test_manifest_naming_another_users_file_is_refused(tmp_path: Path) -> None:
    async with (
        file_server(tmp_path, "local") as server,
        connect_client(server) as alice,
        connect_client(server) as bob,
    ):
        await login(alice, "alice")
        await login(bob, "bob")
        theirs = await upload_bytes(bob, "bob", b"bob's secret")
        assert isinstance(theirs, Done)
        entry = ManifestEntry(
            path="x", file_id=theirs.file_id, size=theirs.size, sha256=theirs.sha256
        )
        manifest = Manifest(entries=(entry,)).encode()
        failed = await upload_bytes(alice, "alice", manifest, media_type=FOLDER_MEDIA_TYPE)
        assert isinstance(failed, TransferFailed) and failed.code == AppErrorCode.NOT_FOUND


async def test_hostile_manifest_paths_are_refused(tmp_path: Path) -> None:
    import msgpack

    async with file_server(tmp_path, "local") as server, connect_client(server) as alice:
        await login(alice, "alice")
        done = await upload_bytes(alice, "alice", b"x")
        assert isinstance(done, Done)
        raw = {"v": 1, "e": [{"p": "../x", "id": done.file_id, "sz": 1, "h": done.sha256}]}
        failed = await upload_bytes(
            alice, "alice", msgpack.packb(raw), media_type=FOLDER_MEDIA_TYPE
        )
        assert isinstance(failed, TransferFailed) and failed.code == AppErrorCode.PATH_INVALID


async def test_chat_keeps_flowing_during_a_large_upload(tmp_path: Path) -> None:
    data = os.urandom(16 * 1024 * 1024)
    async with (
        file_server(tmp_path, "local", files_chunk_size=1024 * 1024) as server,
        connect_client(server) as uploader,
        connect_client(server) as alice,
        connect_client(server) as bob,
    ):
        await login(uploader, "alice", device_id="laptop")
        await login(alice, "alice")
        await login(bob, "bob")
        upload_done = trio.Event()
        delivered_during = 0

        async def upload() -> None:
            done = await upload_bytes(uploader, "alice", data)
            assert isinstance(done, Done)
            upload_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            for i in range(20):
                answer = await request(
                    alice,
                    SendMessage(
                        rid=5000 + i,
                        client_msg_id=f"m{i}",
                        to="bob",
                        kind="text",
                        content={"text": f"hello {i}"},
                    ),
                )
                assert isinstance(answer, MessageAccepted)
                if not upload_done.is_set():
                    delivered_during += 1
        assert upload_done.is_set()
        assert delivered_during > 0


async def test_stalled_datanode_fails_the_upload_clearly(tmp_path: Path) -> None:
    with WebHdfsServer() as hdfs:
        async with (
            open_test_server(
                tmp_path,
                files_port=0,
                files_chunk_size=CHUNK,
                files_backend="hdfs",
                hdfs_namenodes=hdfs.namenode_address,
                hdfs_timeout=0.5,
            ) as server,
            connect_client(server) as alice,
        ):
            await add_user(server, "alice")
            await login(alice, "alice")
            data = os.urandom(CHUNK)
            ticket = await open_upload(alice, data)
            assert isinstance(ticket, UploadTicket)
            hdfs.stall_datanode = True
            failed = await upload_bytes(alice, "alice", data, ticket=ticket)
            assert isinstance(failed, TransferFailed), failed
            assert failed.code == AppErrorCode.STORAGE_UNAVAILABLE


async def test_a_client_gone_mid_download_ends_only_its_transfer(tmp_path: Path) -> None:
    """The peer vanishes while the server is sending chunks: that transfer
    ends, the file service and the server keep serving everyone else."""
    data = os.urandom(8 * CHUNK)
    async with file_server(tmp_path, "local") as server, connect_client(server) as alice:
        await login(alice, "alice")
        done = await upload_bytes(alice, "alice", data)
        assert isinstance(done, Done)
        for _ in range(3):
            ticket = await open_download(alice, done.file_id)
            assert isinstance(ticket, DownloadTicket)
            heavy = await connect_heavy(ticket.port, ticket.ref.token, "alice")
            await heavy.next_packet()  # Admitted: the server is about to stream
            await heavy.stream.aclose()  # gone without a word
        # Everyone else is still served, on both buses.
        ticket = await open_download(alice, done.file_id)
        assert isinstance(ticket, DownloadTicket)
        assert await download_bytes(ticket.port, ticket.ref.token, "alice") == data
        async with connect_client(server) as bob:
            await login(bob, "bob")
