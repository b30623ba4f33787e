"""The suite can fail: deliberately broken variants of our server, each with
one bug, make the case that checks that rule report FAILED.  And it does not
fail what the spec allows: a variant that behaves unusually but correctly
passes.

Each variant is our server started in-process with one function replaced
(``monkeypatch``), then the cases of the rule it breaks run against it.  The
suite's client does not use the server's code, so a patch changes only the
server under test.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import struct
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from conformance.cli import main
from conformance.results import Outcome
from elink_protocol import CipherSuite, Config, Pong, ServerIdentity
from elink_protocol import frame as frame_module
from elink_protocol.app import AppErrorCode, SendMessage
from elink_protocol.connection import Connection
from elink_server import host
from elink_server.files import transfer
from elink_server.files.store import FileStore
from elink_server.peer import Peer
from elink_server.services.context import DeviceSession
from elink_server.services.messaging import MessagingService
from elink_server.settings import ServerSettings
from elink_server.storage import MessageFlags, SqliteStore, direct_conversation_id
from tests.conformance.conftest import PASSWORD, USERS, explain, outcomes, run, suite_server

VARIANT_DEADLINE = 60


async def _failed(tmp_path: Path, patterns: Iterable[str], expected: str, **server: Any) -> None:
    """Against the running variant, the case ``expected`` reports FAILED."""
    with trio.fail_after(VARIANT_DEADLINE):
        async with suite_server(tmp_path, **server) as srv:
            report = await run(srv, patterns)
    seen = outcomes(report)
    assert seen[expected] is Outcome.FAILED, explain(report.results)


async def test_a_server_that_acknowledges_before_storing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It answers MessageAccepted at once, with ids it made up, and stores
    the message half a second later (what a write-behind cache does)."""
    fake_ids = itertools.count(10**12)
    pending: dict[str, int] = {}

    async def answer_first(
        self: MessagingService, peer: Peer, session: DeviceSession, request: SendMessage
    ) -> None:
        conversation = request.conversation or direct_conversation_id(session.user, request.to)
        record = await self.ctx.store.get_conversation(conversation)
        pending[conversation] = pending.get(conversation, 0) + 1
        seq = (record.last_seq if record else 0) + pending[conversation]
        await peer.send(
            request.accepted(
                msg_id=next(fake_ids),
                conversation=conversation,
                seq=seq,
                created_at_ms=self.ctx.now_ms(),
            )
        )

        async def store_later() -> None:
            await trio.sleep(0.5)
            await self.ctx.store.append_message(
                conversation=conversation,
                sender=session.user,
                sender_device=session.device_id,
                client_msg_id=request.client_msg_id,
                kind=request.kind,
                content=request.content,
                now=self.ctx.now_ms() / 1000,
                flags=MessageFlags(request.flags),
            )
            pending[conversation] -= 1

        peer.start_soon(store_later, "store later")

    monkeypatch.setattr(MessagingService, "send_message", answer_first)
    await _failed(tmp_path, ["EL-11.4.7-1"], "EL-11.4.7-1")


async def test_a_server_that_accepts_a_stripped_cipher_offer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Configured without legacy suites, it still picks one when a man in
    the middle strips the modern suites from the ClientHello."""
    original = host.connection_config

    def lax(settings: ServerSettings, identity: ServerIdentity) -> Config:
        config = original(settings, identity)
        return attrs.evolve(config, suites=tuple(CipherSuite), allow_legacy_suites=True)

    monkeypatch.setattr(host, "connection_config", lax)
    await _failed(tmp_path, ["EL-7.6.1-1"], "EL-7.6.1-1")


async def test_a_server_that_ignores_the_recall_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = SqliteStore.recall

    async def forever(self: SqliteStore, msg_id: int, **kwargs: Any) -> Any:
        return await original(self, msg_id, **{**kwargs, "window_seconds": 10.0**9})

    monkeypatch.setattr(SqliteStore, "recall", forever)
    await _failed(tmp_path, ["EL-11.7.3-3"], "EL-11.7.3-3")


async def test_a_server_that_never_answers_ping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Connection._queue_control

    def no_pong(self: Connection, packet: Any) -> None:
        if not isinstance(packet, Pong):
            original(self, packet)

    monkeypatch.setattr(Connection, "_queue_control", no_pong)
    await _failed(tmp_path, ["EL-6.7.1-1"], "EL-6.7.1-1")


async def test_a_server_that_reuses_a_packet_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its third numbered packet of a connection takes the second one's PID."""
    original = Connection._send_numbered

    def reuse(self: Connection, item: Any) -> None:
        original(self, item)
        if self._next_pid == 3 and not getattr(self, "_reused", False):
            self._reused = True  # type: ignore[attr-defined]
            self._next_pid = 2

    monkeypatch.setattr(Connection, "_send_numbered", reuse)
    await _failed(tmp_path, ["EL-4.1-1"], "EL-4.1-1")


async def test_a_server_that_does_not_check_checksums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = frame_module._build_untrusted

    def unchecked(fields: tuple[int, ...], header: bytes, payload: bytes) -> Any:
        version, flags, type_, pid, ack, _, priority, phase, _ = fields
        unverified = frame_module.Frame(
            type=type_,
            pid=pid,
            ack=ack,
            flags=flags,
            priority=priority,
            key_phase=phase,
            payload=payload,
            version=version,
        )
        return original(fields, header, payload) if flags & 1 else unverified

    monkeypatch.setattr(frame_module, "_build_untrusted", unchecked)
    await _failed(tmp_path, ["EL-4.3-1"], "EL-4.3-1")


async def test_a_server_that_acknowledges_chunks_before_recording_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its upload keeps the durable offset in memory and answers ChunkAck at
    once; the offset reaches the database only when the upload completes (a
    write-behind shortcut).  A cut after an ack loses acknowledged bytes."""

    async def in_memory(self: FileStore, upload_id: bytes, holder: bytes, durable: int,
                        **kwargs: Any) -> bool:  # fmt: skip
        return True

    monkeypatch.setattr(FileStore, "set_durable", in_memory)
    await _failed(tmp_path, ["EL-9.6.4-1"], "EL-9.6.4-1")


class _MatchesAnything(bytes):
    """A digest that equals every other: the check it takes part in passes."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = bytes.__hash__


class _NoChunkCheck:
    """``hashlib`` for the transfer module, whose per-chunk digests match
    anything; the running whole-file hash (``sha256()``) stays real."""

    @staticmethod
    def sha256(data: bytes | bytearray | None = None) -> Any:
        if data is None:
            return hashlib.sha256()
        digest = hashlib.sha256(data).digest()
        return types.SimpleNamespace(digest=lambda: _MatchesAnything(digest))


async def test_a_server_that_skips_the_chunk_hash_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It stores and acknowledges every chunk of the right length, whatever
    its SHA-256 (it still checks the whole file at the end)."""
    monkeypatch.setattr(transfer, "hashlib", _NoChunkCheck())
    await _failed(tmp_path, ["EL-9.6.4-2"], "EL-9.6.4-2")


async def test_a_server_that_accepts_a_forged_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It reads the direction, id and expiry from an admission token and
    never checks the MAC, so anyone may upload or download as anyone."""

    def unverified(secret: bytes, token: bytes, *, user: str, now_ms: int) -> tuple[int, bytes]:
        version, direction, transfer_id, expires_ms = struct.unpack("!BB16sQ", token[:26])
        if version != transfer.TOKEN_VERSION or now_ms > expires_ms:
            raise transfer.TransferError(AppErrorCode.TOKEN_INVALID, "bad token")
        return direction, transfer_id

    monkeypatch.setattr(transfer, "verify_token", unverified)
    await _failed(tmp_path, ["EL-9.3-1"], "EL-9.3-1")


async def test_the_command_line_exits_1_when_a_case_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path an implementer uses: ``elink-conformance`` (here called
    in a worker thread, against the recall-window variant) exits 1 and its
    JSON report names the failed case."""
    original = SqliteStore.recall

    async def forever(self: SqliteStore, msg_id: int, **kwargs: Any) -> Any:
        return await original(self, msg_id, **{**kwargs, "window_seconds": 10.0**9})

    monkeypatch.setattr(SqliteStore, "recall", forever)
    report = tmp_path / "report.json"
    with trio.fail_after(VARIANT_DEADLINE):
        async with suite_server(tmp_path / "data") as srv:
            argv = [
                f"127.0.0.1:{srv.port}",
                "--password",
                PASSWORD,
                *itertools.chain.from_iterable(("--user", u) for u in USERS),
                "--cases",
                "11.7",
                "--handshake-timeout",
                "1",
                "--idle-timeout",
                "2",
                "--heartbeat-interval",
                "0.5",
                "--json",
                str(report),
                "--quiet",
            ]
            code = await trio.to_thread.run_sync(functools.partial(main, argv))
    assert code == 1
    data = json.loads(report.read_text())
    failed = [c["id"] for c in data["cases"] if c["outcome"] == "FAILED"]
    assert failed == ["EL-11.7.3-3"]
    assert data["passed"] is False


async def test_a_server_that_rekeys_every_few_packets_still_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a bug: a server may start key updates whenever it likes (§7.7).
    The suite's client must follow them, so cases that exchange many packets
    still pass -- and the client's side of a server-initiated update runs."""
    original = host.connection_config

    def eager(settings: ServerSettings, identity: ServerIdentity) -> Config:
        return attrs.evolve(
            original(settings, identity), rekey_after_packets=3, rekey_after_seconds=0.05
        )

    completed = []
    on_rekey_ack = Connection._on_rekey_ack

    def count(self: Connection, packet: Any, payload: bytes) -> None:
        on_rekey_ack(self, packet, payload)
        completed.append(packet.epoch)

    monkeypatch.setattr(host, "connection_config", eager)
    monkeypatch.setattr(Connection, "_on_rekey_ack", count)
    with trio.fail_after(VARIANT_DEADLINE):
        async with suite_server(tmp_path) as srv:
            report = await run(srv, ["EL-4.1-1", "EL-6.5.3-1", "EL-11.6.2-1", "EL-11.7.3-3"])
    assert {r.outcome for r in report.results} == {Outcome.OK}, explain(report.results)
    assert completed, "no server-initiated key update was answered"
