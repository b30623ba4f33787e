"""Files and folders through the SDK (docs/sdk.md "Files and folders"):
round trips, metadata, folders with ``only``, hostile manifests, resume of
uploads and downloads after a cut, progress, recall, expiry, the blocking
facade.  A loopback server with a 64 KiB chunk size keeps files small."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

import elink_sdk
from elink_protocol.app import FOLDER_MEDIA_TYPE, AppErrorCode, Message, TransferRef
from elink_sdk import (
    FileExpired,
    FileTooLarge,
    MessageReceived,
    NotFound,
    ProtocolError,
    QuotaExceeded,
    TransferProgress,
    blocking,
)
from elink_server.host import Server, open_server
from tests.helpers.pair import identity
from tests.helpers.proxy import CuttingProxy, cutting_proxy
from tests.helpers.sdk import ServerThread, client_options, sdk_client, sdk_server
from tests.helpers.server import WAIT, test_settings

CHUNK = 64 * 1024


@contextlib.asynccontextmanager
async def file_server(tmp_path: Path, **overrides: Any) -> AsyncIterator[Server]:
    settings: dict[str, Any] = {"files_port": 0, "files_chunk_size": CHUNK}
    settings.update(overrides)
    async with sdk_server(tmp_path / "server", **settings) as server:
        yield server


def files_service(server: Server) -> Any:
    assert server.context is not None
    return server.context.components["files"]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def received_message(client: elink_sdk.Client) -> Message:
    with trio.fail_after(WAIT):
        async for event in client.events():
            if isinstance(event, MessageReceived):
                return event.message
    raise AssertionError("no message")


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * CHUNK + 17])
async def test_round_trip(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    source = write(tmp_path / "out" / "report.bin", data)
    async with (
        file_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        sent = await alice.send_file("bob", source, caption="the report")
        message = await received_message(bob)
        assert message.msg_id == sent.msg_id and message.kind == "file"
        assert message.text == "the report"
        ref = TransferRef.from_wire_untrusted(message.content["ref"])  # type: ignore[index]
        assert ref.size == size and ref.sha256 == hashlib.sha256(data).digest()
        assert ref.name == "report.bin" and ref.media_type == "application/octet-stream"
        inbox = tmp_path / "in"
        inbox.mkdir()
        path = await bob.download(message, inbox)
        assert path == inbox / "report.bin" and path.read_bytes() == data
        assert not list(inbox.glob("*.part"))
        # Again, to an explicit path, and by the sender through the same message.
        again = await alice.download(message, tmp_path / "copy.bin")
        assert again.read_bytes() == data


async def test_image_with_metadata_and_own_file_by_reference(tmp_path: Path) -> None:
    png = write(tmp_path / "shot.png", b"\x89PNG\r\n\x1a\n" + os.urandom(3000))
    async with (
        file_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        await alice.send_file("bob", png, kind="image", width=640, height=480)
        await alice.send_file(
            "bob", png, kind="voice", duration_ms=1500, name="memo.ogg", media_type="audio/ogg"
        )
        image = await received_message(bob)
        voice = await received_message(bob)
        assert image.kind == "image" and image.content is not None
        assert (image.content["w"], image.content["h"]) == (640, 480)
        assert image.content["ref"]["mt"] == "image/png"
        assert voice.kind == "voice" and voice.content is not None
        assert voice.content["dur"] == 1500 and voice.content["ref"]["n"] == "memo.ogg"
        # alice downloads her own file by its reference (no message needed).
        ref = TransferRef.from_wire_untrusted(image.content["ref"])
        got = await alice.download(ref, tmp_path / "mine.png")
        assert got.read_bytes() == png.read_bytes()
        with pytest.raises(ValueError, match="width and height are for images"):
            await alice.send_file("bob", png, kind="file", width=3)
        with pytest.raises(ValueError, match="kind must be one of"):
            await alice.send_file("bob", png, kind="folder")


def make_folder(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha",
        "sub/b.txt": os.urandom(5000),
        "sub/deeper/c.bin": b"",
        "sub/deeper/d.txt": os.urandom(CHUNK + 1),
    }
    for path, data in files.items():
        write(root / path, data)
    return files


async def test_folder_all_and_only_some(tmp_path: Path) -> None:
    files = make_folder(tmp_path / "project")
    async with (
        file_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        seen: list[TransferProgress] = []
        await alice.send_folder(
            "bob", tmp_path / "project", caption="all of it", progress=seen.append
        )
        assert {(p.index, p.count) for p in seen if p.done == p.total} == {
            (i, 4) for i in range(1, 5)
        }
        message = await received_message(bob)
        assert message.kind == "folder" and message.text == "all of it"
        assert message.content is not None
        assert message.content["ref"]["mt"] == FOLDER_MEDIA_TYPE
        assert message.content["ref"]["n"] == "project"
        everything = await bob.download(message, tmp_path / "all")
        for path, data in files.items():
            assert (everything / path).read_bytes() == data
        some = tmp_path / "some"
        await bob.download(message, some, only=["*.txt"])
        got = {p.relative_to(some).as_posix() for p in some.rglob("*") if p.is_file()}
        assert got == {"a.txt", "sub/b.txt", "sub/deeper/d.txt"}
        deeper = tmp_path / "deeper"
        await bob.download(message, deeper, only=["sub/deeper"])
        got = {p.relative_to(deeper).as_posix() for p in deeper.rglob("*") if p.is_file()}
        assert got == {"sub/deeper/c.bin", "sub/deeper/d.txt"}
        with pytest.raises(NotFound, match="no file of the folder matches"):
            await bob.download(message, tmp_path / "none", only=["*.pdf"])


async def test_folder_refuses_symlinks_that_leave_it(tmp_path: Path) -> None:
    root = tmp_path / "project"
    write(root / "ok.txt", b"ok")
    write(tmp_path / "secret.txt", b"secret")
    (root / "inside.txt").symlink_to(root / "ok.txt")
    async with file_server(tmp_path) as server, sdk_client(server.port, "alice") as alice:
        (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
        with pytest.raises(ValueError, match="leads out of"):
            await alice.send_folder("bob", root)
        (root / "escape.txt").unlink()
        await alice.send_folder("bob", root)  # a link inside the folder is a file


async def test_hostile_manifest_from_the_server_is_refused(tmp_path: Path) -> None:
    """A server that let a hostile manifest through (here: one stored as a
    plain file, so the server never parsed it) does not make the client
    write outside its folder."""
    async with (
        file_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        victim = write(tmp_path / "x.txt", b"x")
        await alice.send_file("bob", victim)
        first = await received_message(bob)
        assert first.content is not None
        entry_ref = first.content["ref"]
        raw = {
            "v": 1,
            "e": [{"p": "../escaped.txt", "id": entry_ref["id"], "sz": 1, "h": entry_ref["h"]}],
        }
        manifest = write(tmp_path / "manifest", msgpack.packb(raw))
        # Uploaded as an ordinary file, sent as a folder message.
        await alice.send_file("bob", manifest, media_type="application/octet-stream")
        carrier = await received_message(bob)
        assert carrier.content is not None
        hostile = attrs_evolve_kind(carrier, "folder")
        dest = tmp_path / "dest" / "inner"
        with pytest.raises(ProtocolError, match="refusing the folder's manifest") as caught:
            await bob.download(hostile, dest)
        assert caught.value.code == AppErrorCode.PATH_INVALID
        assert not (tmp_path / "dest" / "escaped.txt").exists()
        assert not dest.exists()


def attrs_evolve_kind(message: Message, kind: str) -> Message:
    import attrs

    return attrs.evolve(message, kind=kind)


async def cut_when(proxy: CuttingProxy, *, up: int = 0, down: int = 0) -> None:
    """Once a connection moved ``up`` bytes to the server (or ``down`` bytes
    to the client), lose that direction's traffic for a moment, then cut
    every connection.

    The pause lets the server finish what it can and wait: for an upload,
    for more bytes; for a small download, for the end of a connection to
    which it sent everything.  The reference server's heavy-bus link raises
    LocalProtocolError (which ends the whole server) when a connection
    closes while a transfer sends or is about to send, so a cut at a random
    instant would test that server bug rather than the client's resume."""
    with trio.fail_after(WAIT):
        while not any(
            (up and pair.up_bytes >= up) or (down and pair.down_bytes >= down)
            for pair in list(proxy._pairs)
        ):
            await trio.sleep(0.0005)
    proxy.drop_up, proxy.drop_down = bool(up), bool(down)
    await trio.sleep(0.2)
    proxy.cut()
    proxy.drop_up = proxy.drop_down = False


async def test_upload_resumes_after_a_cut(tmp_path: Path) -> None:
    data = os.urandom(32 * CHUNK + 5)
    source = write(tmp_path / "big.bin", data)
    async with (
        file_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        service = files_service(server)
        async with cutting_proxy(service.port) as proxy, trio.open_nursery() as nursery:
            service.port = proxy.port  # tickets now send clients through the proxy
            nursery.start_soon(functools.partial(cut_when, proxy, up=4 * CHUNK))
            seen: list[TransferProgress] = []
            sent = await alice.send_file("bob", source, progress=seen.append, timeout=WAIT)
            assert proxy.connections >= 2
            service.port = proxy.target
        done = [p.done for p in seen]
        assert done == sorted(done) and done[0] == 0 and done[-1] == len(data)
        assert all(p.total == len(data) and p.name == "big.bin" for p in seen)
        message = await received_message(bob)
        assert message.msg_id == sent.msg_id
        path = await bob.download(message, tmp_path / "got.bin")
        assert path.read_bytes() == data


async def test_download_resumes_after_a_cut_and_from_a_part_file(tmp_path: Path) -> None:
    # Small enough that the server has sent everything (its send window is
    # 32 packets) and waits for the end when the cut comes: see cut_when.
    data = os.urandom(12 * CHUNK + 99)
    source = write(tmp_path / "big.bin", data)
    async with (
        file_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        await alice.send_file("bob", source)
        message = await received_message(bob)
        service = files_service(server)
        target = tmp_path / "got.bin"
        async with cutting_proxy(service.port) as proxy, trio.open_nursery() as nursery:
            service.port = proxy.port
            nursery.start_soon(functools.partial(cut_when, proxy, down=3 * CHUNK))
            seen: list[TransferProgress] = []
            await bob.download(message, target, progress=seen.append, timeout=WAIT)
            assert proxy.connections >= 2
            service.port = proxy.target
        assert target.read_bytes() == data
        done = [p.done for p in seen]
        assert done == sorted(done) and done[-1] == len(data)
        # A .part file from an earlier run is continued, not started over...
        part = tmp_path / "again.bin.part"
        part.write_bytes(data[: 3 * CHUNK + 7])
        seen.clear()
        again = await bob.download(message, tmp_path / "again.bin", progress=seen.append)
        assert again.read_bytes() == data and not part.exists()
        assert seen[0].done == 3 * CHUNK + 7
        # ... and a wrong one is started over once, after the hash check.
        part = tmp_path / "bad.bin.part"
        part.write_bytes(b"\x00" * (2 * CHUNK))
        assert (await bob.download(message, tmp_path / "bad.bin")).read_bytes() == data
        # resume=False ignores what is there.
        part.write_bytes(data[:100])
        assert (
            await bob.download(message, tmp_path / "bad.bin", resume=False)
        ).read_bytes() == data


async def test_recall_then_download_fails_cleanly(tmp_path: Path) -> None:
    source = write(tmp_path / "oops.txt", b"do not share")
    async with (
        file_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        sent = await alice.send_file("bob", source)
        message = await received_message(bob)
        await alice.recall(sent)
        with pytest.raises(NotFound):
            await bob.download(message, tmp_path / "x.txt")  # the old copy of the message
        recalled = await bob.get_message("alice", sent.msg_id)
        with pytest.raises(NotFound, match="recalled"):
            await bob.download(recalled, tmp_path / "x.txt")
        assert not (tmp_path / "x.txt").exists()


async def test_expired_file(tmp_path: Path) -> None:
    source = write(tmp_path / "old.txt", b"old news")
    async with (
        file_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        assert server.context is not None
        now = [server.context.now_ms()]
        server.context.now_ms = lambda: now[0]
        await alice.send_file("bob", source)
        message = await received_message(bob)
        now[0] += 31 * 86400 * 1000
        await files_service(server).run_janitor_once()
        with pytest.raises(FileExpired) as caught:
            await bob.download(message, tmp_path / "old-copy.txt")
        assert caught.value.code == AppErrorCode.FILE_EXPIRED
        assert isinstance(caught.value, NotFound)


async def test_size_limit_and_quota(tmp_path: Path) -> None:
    async with (
        file_server(tmp_path, files_max_size=1000, files_user_quota=1500) as server,
        sdk_client(server.port, "alice") as alice,
    ):
        with pytest.raises(FileTooLarge):
            await alice.send_file("bob", write(tmp_path / "big", os.urandom(1001)))
        await alice.send_file("bob", write(tmp_path / "ok", os.urandom(900)))
        with pytest.raises(QuotaExceeded):
            await alice.send_file("bob", write(tmp_path / "over", os.urandom(700)))


async def test_get_message_finds_a_message_by_id(tmp_path: Path) -> None:
    async with file_server(tmp_path) as server, sdk_client(server.port, "alice") as alice:
        first = await alice.send_text("bob", "one")
        await alice.send_text("bob", "two")
        assert (await alice.get_message("bob", first.msg_id)).text == "one"
        with pytest.raises(NotFound):
            await alice.get_message("bob", first.msg_id + 1000)


def test_blocking_facade(tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK + 3)
    source = write(tmp_path / "b.bin", data)
    make_folder(tmp_path / "tree")
    with ServerThread(tmp_path / "server", files_port=0, files_chunk_size=CHUNK) as server:
        options = client_options(server.port, "alice")
        with blocking.connect("127.0.0.1", server.port, **options) as alice:
            seen: list[TransferProgress] = []
            sent = alice.send_file("alice", source, progress=seen.append)
            assert seen[-1].done == len(data)
            message = alice.get_message("alice", sent.msg_id)
            assert alice.download(message, tmp_path / "copy.bin").read_bytes() == data
            folder = alice.send_folder("alice", tmp_path / "tree")
            got = alice.download(
                alice.get_message("alice", folder.msg_id), tmp_path / "t2", only=["a.txt"]
            )
            assert (got / "a.txt").read_bytes() == b"alpha"


async def test_deadline_while_the_heavy_bus_is_silent(tmp_path: Path) -> None:
    source = write(tmp_path / "f.bin", os.urandom(4 * CHUNK))
    async with (
        file_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
    ):
        service = files_service(server)
        async with cutting_proxy(service.port) as proxy:
            service.port = proxy.port
            proxy.drop_up = True  # nothing the client sends arrives
            with pytest.raises(elink_sdk.DeadlineExceeded):
                await alice.send_file("bob", source, timeout=0.5)
            service.port = proxy.target
        # The client is fine, and the upload works once the network is.
        await alice.send_file("bob", source, timeout=WAIT)


async def test_download_never_writes_through_a_symlink_in_dest(tmp_path: Path) -> None:
    make_folder(tmp_path / "project")
    outside = tmp_path / "outside"
    outside.mkdir()
    async with (
        file_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        await alice.send_folder("bob", tmp_path / "project")
        message = await received_message(bob)
        dest = tmp_path / "dest"
        dest.mkdir()
        (dest / "sub").symlink_to(outside, target_is_directory=True)
        with pytest.raises(ValueError, match="symbolic link"):
            await bob.download(message, dest)
        assert list(outside.iterdir()) == []
        assert not (dest / "a.txt").exists()  # checked before anything is written


def test_under_asyncio(tmp_path: Path) -> None:
    import asyncio

    data = os.urandom(CHUNK + 1)
    source = write(tmp_path / "a.bin", data)

    async def scenario(port: int) -> None:
        options = client_options(port, "alice")
        async with elink_sdk.connect("127.0.0.1", port, **options) as alice:
            sent = await alice.send_file("alice", source)
            message = await alice.get_message("alice", sent.msg_id)
            got = await alice.download(message, tmp_path / "b.bin")
            assert got.read_bytes() == data

    with ServerThread(tmp_path / "server", files_port=0, files_chunk_size=CHUNK) as server:
        asyncio.run(asyncio.wait_for(scenario(server.port), WAIT))


async def test_a_transfer_that_moves_nothing_gives_up(tmp_path: Path) -> None:
    source = write(tmp_path / "f.bin", os.urandom(8 * CHUNK))
    async with (
        file_server(tmp_path) as server,
        sdk_client(server.port, "alice", request_timeout=0.3, connect_timeout=0.3) as alice,
    ):
        service = files_service(server)
        async with cutting_proxy(service.port) as proxy, trio.open_nursery() as nursery:
            service.port = proxy.port

            async def go_deaf() -> None:  # once the upload runs, the client hears nothing
                with trio.fail_after(WAIT):
                    while not any(pair.up_bytes > CHUNK for pair in list(proxy._pairs)):
                        await trio.sleep(0.0005)
                proxy.drop_down = True

            nursery.start_soon(go_deaf)
            with pytest.raises(elink_sdk.ConnectionLost, match="times in a row"):
                await alice.send_file("bob", source)  # no deadline: gives up on its own
            service.port = proxy.target


async def test_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    async with (
        file_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        await alice.send_folder("bob", tmp_path / "empty")
        message = await received_message(bob)
        got = await bob.download(message, tmp_path / "got")
        assert got.is_dir() and list(got.iterdir()) == []


async def test_the_heavy_bus_must_present_a_trusted_key(tmp_path: Path) -> None:
    """A ticket pointing at a listener with another key (a man in the
    middle, say) fails like the light bus would: ServerKeyMismatch."""
    source = write(tmp_path / "f.bin", b"secret plans")
    async with (
        file_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        open_server(
            test_settings(tmp_path / "impostor", files_port=0), identity=identity(rsa=False)
        ) as impostor,
    ):
        with trio.fail_after(WAIT):
            while not files_service(impostor).port:
                await trio.sleep(0.01)
        files_service(server).port = files_service(impostor).port
        with pytest.raises(elink_sdk.ServerKeyMismatch):
            await alice.send_file("bob", source)


async def test_files_stream_with_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    size = 8 * 1024 * 1024
    source = tmp_path / "big.bin"
    with source.open("wb") as f:
        for _ in range(size // (1024 * 1024)):
            f.write(os.urandom(1024 * 1024))
    async with (
        file_server(tmp_path, files_chunk_size=256 * 1024) as server,
        sdk_client(server.port, "alice") as alice,
    ):
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            sent = await alice.send_file("alice", source)
            message = await alice.get_message("alice", sent.msg_id)
            got = await alice.download(message, tmp_path / "copy.bin")
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        assert got.stat().st_size == size
        # Client and server (same process) hold a few chunks, never the file.
        assert peak < size // 2, peak
