"""Which server keys the client trusts: pinned fingerprints, or a
known-servers file filled on first use (TOFU) in which a changed key is a
loud, final error (elink_sdk/trust.py, docs/protocol.md §7.8)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import elink_sdk
from elink_sdk import ServerKeyMismatch, ServerTrust
from elink_server.host import Server
from tests.helpers.sdk import PIN, client_options, sdk_server

#: A well-formed fingerprint that is not the test server's.
OTHER_KEY = "SHA256:" + "ab" * 32


async def log_in(server: Server, **trust: object) -> elink_sdk.Client:
    """Log alice in with the given trust options, send one message, log out."""
    options = client_options(server.port, "alice", server_fingerprint=None)
    options.update(trust)
    async with elink_sdk.connect("127.0.0.1", server.port, **options) as alice:
        await alice.send_text("bob", "trusted")
    return alice


# ---------------------------------------------------------------- pinning


async def test_a_pinned_key_is_accepted(tmp_path: Path) -> None:
    async with sdk_server(tmp_path) as server:
        alice = await log_in(server, server_fingerprint=server.fingerprint)
        assert alice.server_fingerprint == server.fingerprint
        alice = await log_in(server, server_fingerprint=[OTHER_KEY, *PIN])  # one of several
        assert alice.server_fingerprint in PIN


async def test_a_key_that_is_not_pinned_is_refused_at_once(tmp_path: Path) -> None:
    async with sdk_server(tmp_path) as server:
        with pytest.raises(ServerKeyMismatch) as caught:
            await log_in(server, server_fingerprint=OTHER_KEY)
        error = caught.value
        assert error.presented in PIN and error.expected == frozenset({OTHER_KEY})
        assert error.server == f"127.0.0.1:{server.port}"
        assert error.presented in str(error) and OTHER_KEY in str(error)
        assert "pinned" in str(error)
        # Refused during the first handshake, never retried.
        assert server.statistics().accepted_total == 1
        assert server.statistics().handshakes_completed == 0


def test_pins_must_be_fingerprints() -> None:
    bad_pins: list[str | list[str]] = ["3a31d04e", "sha256:" + "ab" * 32, "SHA256:" + "AB" * 32, []]
    for bad in bad_pins:
        with pytest.raises(ValueError, match="SHA256"):
            ServerTrust.pin(bad)
    assert ServerTrust.pin(OTHER_KEY).pinned == frozenset({OTHER_KEY})
    with pytest.raises(ValueError, match="exactly one"):
        ServerTrust()


# ---------------------------------------------------------------- trust on first use


async def test_first_use_records_the_key_and_later_uses_accept_it(tmp_path: Path) -> None:
    known = tmp_path / "config" / "elink" / "known_servers"  # its folder does not exist yet
    async with sdk_server(tmp_path / "server") as server:
        alice = await log_in(server, known_servers=str(known))
        line = f"127.0.0.1:{server.port} {alice.server_fingerprint}\n"
        assert known.read_text() == line
        assert os.listdir(known.parent) == ["known_servers"]  # no temporary file left

        stamp = known.stat().st_mtime_ns
        await log_in(server, known_servers=str(known))
        assert known.read_text() == line and known.stat().st_mtime_ns == stamp


async def test_first_use_keeps_the_other_lines_of_the_file(tmp_path: Path) -> None:
    known = tmp_path / "known_servers"
    before = f"# ops: keys checked by phone\nim.example.com:7420 {OTHER_KEY}\n"
    known.write_text(before)
    async with sdk_server(tmp_path / "server") as server:
        alice = await log_in(server, known_servers=str(known))
        added = f"127.0.0.1:{server.port} {alice.server_fingerprint}\n"
    assert known.read_text() == before + added


async def test_a_changed_key_is_a_loud_error_and_the_file_is_untouched(tmp_path: Path) -> None:
    known = tmp_path / "known_servers"
    async with sdk_server(tmp_path / "server") as server:
        content = f"127.0.0.1:{server.port} {OTHER_KEY}\n"
        known.write_text(content)
        with pytest.raises(ServerKeyMismatch) as caught:
            await log_in(server, known_servers=str(known))
        message = str(caught.value)
        assert "SERVER KEY MISMATCH" in message
        assert caught.value.presented in PIN
        assert caught.value.presented in message and OTHER_KEY in message
        assert str(known) in message  # says which file to look at
        assert known.read_text() == content
        assert server.statistics().accepted_total == 1  # no retry


async def test_the_default_file_is_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit = tmp_path / "explicit"
    monkeypatch.setenv("ELINK_KNOWN_SERVERS", str(explicit))
    assert elink_sdk.default_known_servers_path() == explicit
    monkeypatch.delenv("ELINK_KNOWN_SERVERS")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert elink_sdk.default_known_servers_path() == tmp_path / "xdg" / "elink" / "known_servers"

    monkeypatch.setenv("ELINK_KNOWN_SERVERS", str(explicit))
    async with sdk_server(tmp_path / "server") as server:
        await log_in(server)  # neither a pin nor a file: the default file
        assert explicit.read_text().startswith(f"127.0.0.1:{server.port} SHA256:")


def test_a_failed_write_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = tmp_path / "known_servers"
    before = f"im.example.com:7420 {OTHER_KEY}\n"
    known.write_text(before)
    trust = ServerTrust.from_file(known)

    def no_rename(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(elink_sdk.ElinkError, match=r"cannot record .*No space left"):
        trust.accept("127.0.0.1", 7420, PIN[0])
    assert known.read_text() == before
    assert os.listdir(tmp_path) == ["known_servers"]


def test_a_key_changed_by_another_process_meanwhile_is_refused(tmp_path: Path) -> None:
    known = tmp_path / "known_servers"
    trust = ServerTrust.from_file(known)
    assert trust.keys_for("127.0.0.1", 7420) is None  # first use: the handshake asks no key
    known.write_text(f"127.0.0.1:7420 {OTHER_KEY}\n")  # another client recorded one
    with pytest.raises(ServerKeyMismatch):
        trust.accept("127.0.0.1", 7420, PIN[0])
    assert known.read_text() == f"127.0.0.1:7420 {OTHER_KEY}\n"
