"""The scripts in examples/ run against a test server, so they cannot rot:
each as a real process once, the failure paths through their ``main``."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio

import elink_sdk
from tests.helpers.sdk import PIN, USERS, sdk_client, sdk_server
from tests.helpers.server import WAIT

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

#: A fresh interpreter importing trio and cryptography can be slow on a busy
#: machine: the deadline for a script's whole run.
SCRIPT_DEADLINE = 4 * WAIT


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def script_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment a user sets: password and pinned key (also set in this
    process, for the tests that call ``main``)."""
    env = {
        "ELINK_PASSWORD": "secret",
        "ELINK_SERVER_FINGERPRINT": ",".join(PIN),
        # Never touch the real ~/.config/elink.
        "ELINK_KNOWN_SERVERS": str(tmp_path / "known_servers"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **env, "PYTHONPATH": str(ROOT)}


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_echo_bot_answers_then_stops_gracefully_on_sigterm(
    tmp_path: Path, script_env: dict[str, str]
) -> None:
    async with (
        sdk_server(tmp_path, users=(*USERS, "echobot")) as server,
        sdk_client(server.port, "bob") as bob,
    ):
        # Sent before the bot starts: it is waiting on the server for it.
        await bob.send_text("echobot", "hello, bot")
        await bob.send_text("echobot", "/upper quiet please")
        command = [sys.executable, str(EXAMPLES / "echo_bot.py")]
        command += ["--host", "127.0.0.1", "--port", str(server.port), "--user", "echobot"]
        with (tmp_path / "bot.log").open("wb") as log:
            process = await trio.lowlevel.open_process(
                command, env=script_env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            answers = []
            with trio.fail_after(SCRIPT_DEADLINE):
                async for event in bob.events():
                    if isinstance(event, elink_sdk.MessageReceived):
                        answers.append(event.text)
                        if len(answers) == 2:
                            break
            assert answers == ["hello, bot", "QUIET PLEASE"]
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(WAIT):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        log_text = (tmp_path / "bot.log").read_text()
        assert "SIGTERM: stopping" in log_text
        assert "Traceback" not in log_text


async def test_notify_from_cron_sends_one_message_and_exits_zero(
    tmp_path: Path, script_env: dict[str, str]
) -> None:
    async with (
        sdk_server(tmp_path) as server,
        sdk_client(server.port, "bob") as bob,
        trio.open_nursery() as nursery,
    ):
        received: list[str | None] = []

        async def read() -> None:
            # Asking for the next event confirms the last: the delivery receipt.
            async for event in bob.events():
                if isinstance(event, elink_sdk.MessageReceived):
                    received.append(event.text)

        nursery.start_soon(read)
        command = [sys.executable, str(EXAMPLES / "notify_from_cron.py"), "--port"]
        command += [str(server.port), "--user", "alice", "--to", "bob", "--wait-delivered"]
        command += ["--deadline", str(SCRIPT_DEADLINE), "backup", "done"]
        with trio.fail_after(SCRIPT_DEADLINE):
            result = await trio.run_process(
                command, env=script_env, capture_stdout=True, capture_stderr=True, check=False
            )
        assert (result.returncode, result.stdout, result.stderr) == (0, b"notify: delivered\n", b"")
        assert received == ["backup done"]
        nursery.cancel_scope.cancel()


async def test_notify_from_cron_failures_exit_non_zero_with_a_clear_message(
    tmp_path: Path,
    script_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notify = example("notify_from_cron")
    async with sdk_server(tmp_path) as server:

        async def run(*args: str) -> int:
            argv = ["--port", str(server.port), "--deadline", str(WAIT), *args]
            with trio.fail_after(2 * WAIT):
                code: int = await trio.to_thread.run_sync(notify.main, argv)
            return code

        assert await run("--user", "alice", "--to", "nobody", "hi") == 1
        assert "not sent" in capsys.readouterr().err

        monkeypatch.setenv("ELINK_PASSWORD", "wrong")
        assert await run("--user", "alice", "--to", "bob", "hi") == 1
        assert "login refused" in capsys.readouterr().err

        monkeypatch.setenv("ELINK_PASSWORD", "secret")
        wrong_key = "SHA256:" + "0" * 64
        assert (
            await run("--user", "alice", "--to", "bob", "--server-fingerprint", wrong_key, "hi")
            == 1
        )
        assert "SERVER KEY MISMATCH" in capsys.readouterr().err

        # The same key twice stores the message once (a retry after a failure).
        assert await run("--user", "alice", "--to", "bob", "--id", "job-1", "once") == 0
        assert await run("--user", "alice", "--to", "bob", "--id", "job-1", "once") == 0
        async with sdk_client(server.port, "bob") as bob:
            page = await bob.history("alice")
        assert [m.text for m in page.messages] == ["once"]

    down = ["--port", str(free_port()), "--user", "alice", "--to", "bob", "hi"]
    with trio.fail_after(2 * WAIT):
        assert await trio.to_thread.run_sync(notify.main, down) == notify.EX_TEMPFAIL
    assert "try again later" in capsys.readouterr().err

    monkeypatch.delenv("ELINK_PASSWORD")
    assert notify.main(["--user", "alice", "--to", "bob", "hi"]) == 2
    assert "ELINK_PASSWORD" in capsys.readouterr().err
