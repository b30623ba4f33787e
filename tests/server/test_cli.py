"""The ``elink-server`` command line: users, config, serve (as a process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import trio

from elink_protocol import ConnectionClosed, ErrorCode, Role
from elink_protocol.connection import Connection
from elink_server.accounts import verify_password
from elink_server.cli import main
from elink_server.host import DATABASE_FILE_NAME
from elink_server.identity_store import KEY_FILE_NAME
from elink_server.storage import open_sqlite_store
from tests.helpers.server import WAIT, LoopbackClient, client_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``serve`` configures structlog for the process; undo it so later tests
    do not log into a captured (closed) stream."""
    yield
    structlog.reset_defaults()


def run(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> int:
    environ = {"HOME": str(tmp_path / "home")} | (env or {})
    return main(["--data-dir", str(tmp_path / "data"), *argv], environ)


def _user(tmp_path: Path, name: str) -> tuple[str, bool] | None:
    """Read an account back through the storage layer."""

    async def read() -> tuple[str, bool] | None:
        async with open_sqlite_store(tmp_path / "data" / DATABASE_FILE_NAME) as store:
            record = await store.get_user(name)
        return None if record is None else (record.password_hash, record.disabled)

    return trio.run(read)


def test_users_add_list_passwd_disable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "users", "add", "alice", "--password", "s3cret") == 0
    assert run(tmp_path, "users", "add", "bob", "--password", "pw") == 0
    stored = _user(tmp_path, "alice")
    assert stored is not None
    password_hash, disabled = stored
    assert "s3cret" not in password_hash and password_hash.startswith("scrypt$")
    assert verify_password("s3cret", password_hash) and not disabled

    capsys.readouterr()
    assert run(tmp_path, "users", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["alice", "active"], ["bob", "active"]]

    assert run(tmp_path, "users", "passwd", "alice", "--password", "new") == 0
    stored = _user(tmp_path, "alice")
    assert stored is not None and verify_password("new", stored[0])

    assert run(tmp_path, "users", "disable", "bob") == 0
    bob = _user(tmp_path, "bob")
    assert bob is not None and bob[1] is True


def test_users_errors_have_messages_and_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, "users", "add", "alice", "--password", "x") == 0
    capsys.readouterr()
    assert run(tmp_path, "users", "add", "alice", "--password", "x") == 1
    assert "already exists" in capsys.readouterr().err
    assert run(tmp_path, "users", "passwd", "nobody", "--password", "x") == 1
    assert "no user 'nobody'" in capsys.readouterr().err
    assert run(tmp_path, "users", "disable", "nobody") == 1
    assert run(tmp_path, "users", "add", "bad name!", "--password", "x") == 2
    assert "invalid user name" in capsys.readouterr().err
    assert run(tmp_path, "users", "add", "carol", "--password", "") == 2
    assert run(tmp_path, "users", "add", "carol") == 2  # --password is required
    assert "--password" in capsys.readouterr().err
    assert run(tmp_path, "frobnicate") == 2


def test_help_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        [],
        ["--help"],
        ["serve", "--help"],
        ["config", "show", "--help"],
        ["users", "--help"],
        ["users", "add", "--help"],
        ["users", "list", "--help"],
        ["users", "passwd", "--help"],
        ["users", "disable", "--help"],
    ):
        code = main(argv, {})
        out = capsys.readouterr()
        if argv:
            assert code == 0, argv
            assert "usage: elink-server" in out.out
        else:
            assert code == 2 and "usage: elink-server" in out.err


def test_config_show_applies_precedence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "server.toml"
    config.write_text('port = 7000\nhost = "0.0.0.0"\nmax_handshakes = 3\n')
    env = {"ELINK_PORT": "7001", "ELINK_MAX_HANDSHAKES": "4"}
    assert run(tmp_path, "config", "show", "--config", str(config), env=env) == 0
    shown = dict(
        line.split(" = ", 1) for line in capsys.readouterr().out.splitlines() if " = " in line
    )
    assert shown["host"] == '"0.0.0.0"'  # file
    assert shown["port"] == "7001"  # environment beats file
    assert shown["max_handshakes"] == "4"
    assert shown["data_dir"] == f'"{tmp_path / "data"}"'  # flag beats everything
    assert run(tmp_path, "config", "show", "--config", str(tmp_path / "missing.toml")) == 2
    assert "cannot read" in capsys.readouterr().err


def test_bad_settings_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "serve", "--port", "seventy") == 2
    assert "port" in capsys.readouterr().err
    assert run(tmp_path, "config", "show", env={"ELINK_IDLE_TIMEOUT": "soon"}) == 2
    assert "ELINK_IDLE_TIMEOUT" in capsys.readouterr().err


async def test_serve_process_handshakes_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELINK_")}
    env["HOME"] = str(tmp_path / "home")
    data = tmp_path / "data"
    argv = [sys.executable, "-m", "elink_server", "serve", "--port", "0", "--data-dir", str(data)]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            lambda task_status: trio.run_process(
                argv,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                check=False,
                task_status=task_status,
            )
        )
        assert process.stdout is not None
        lines: list[str] = []
        buffer = b""
        with trio.fail_after(WAIT * 3):
            while len(lines) < 2:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, f"server exited early: {lines}"
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                lines += [line.decode() for line in complete]
        assert lines[0].startswith("listening on 127.0.0.1:")
        port = int(lines[0].rsplit(":", 1)[1])
        fingerprint = lines[1].removeprefix("server key fingerprint: ")
        assert (data / KEY_FILE_NAME).stat().st_mode & 0o777 == 0o600

        with trio.fail_after(WAIT):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            config = client_config(trusted_server_keys=None, trust_on_first_use=True)
            client = LoopbackClient(stream, Connection(role=Role.CLIENT, config=config))
            done = await client.do_handshake()
            assert done.server_fingerprint == fingerprint
            process.send_signal(signal.SIGTERM)
            closed = await client.wait_closed()
            assert isinstance(closed, ConnectionClosed)
            assert closed.code == ErrorCode.GOING_AWAY
        with trio.fail_after(WAIT):
            assert await process.wait() == 0


def test_serve_on_a_busy_port_fails_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert run(tmp_path, "serve", "--port", str(port)) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
