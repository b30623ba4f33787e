"""``elink-conformance`` as another implementer runs it: against a server
process, provisioning its accounts through ``elink-server users add``, with
JSON and JUnit reports and the documented exit statuses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import trio

from conformance.cli import EXIT_PASSED, EXIT_UNREACHABLE, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0


def test_help_names_the_accounts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("conf-a", "conf-b", "conf-c", "conf-d", "conf-locked", "--provision"):
        assert name in out


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE
    assert main(["no-port-here"]) == EXIT_USAGE
    assert main(["127.0.0.1:7420", "--cases", "99.9"]) == EXIT_USAGE
    assert main(["127.0.0.1:7420", "--handshake-timeout", "0"]) == EXIT_USAGE
    assert "no case matches" in capsys.readouterr().err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list", "--cases", "4.2.*,EL-7.6.1-1"]) == EXIT_PASSED
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["EL-4.2-1", "EL-4.2-2", "EL-7.6.1-1"]


def test_an_unreachable_server_has_its_own_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # a port nobody listens on while we hold it
        port = sock.getsockname()[1]
        assert main([f"127.0.0.1:{port}", "--password", "x", "--wait", "2"]) == EXIT_UNREACHABLE
    assert "cannot connect" in capsys.readouterr().err


async def _read_lines(process: trio.Process, count: int) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    buffer = b""
    with trio.fail_after(WAIT):
        while len(lines) < count:
            chunk = await process.stdout.receive_some(4096)
            assert chunk, f"the server exited early: {lines}"
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines += [line.decode() for line in complete]
    return lines


async def test_a_run_against_a_server_process(tmp_path: Path) -> None:
    """Starts ``elink-server serve`` on port 0 with short deadlines, runs the
    suite's command line with --provision against it (a selection of cases
    from every part of the spec) and reads the reports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELINK_")}
    env.update(
        HOME=str(tmp_path / "home"),
        ELINK_HANDSHAKE_TIMEOUT="1",
        ELINK_IDLE_TIMEOUT="2",
        ELINK_HEARTBEAT_INTERVAL="0.5",
        ELINK_RECALL_WINDOW="1",
        ELINK_FILES_PORT="0",
        ELINK_FILES_CHUNK_SIZE="65536",
        ELINK_LOG_LEVEL="WARNING",
    )
    data = tmp_path / "data"
    serve = [sys.executable, "-m", "elink_server", "serve", "--port", "0", "--data-dir", str(data)]
    json_report, junit_report = tmp_path / "report.json", tmp_path / "report.xml"
    async with trio.open_nursery() as nursery:
        server: trio.Process = await nursery.start(
            lambda task_status: trio.run_process(
                serve,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                check=False,
                task_status=task_status,
            )
        )
        listening, key = await _read_lines(server, 2)
        port = int(listening.rsplit(":", 1)[1])
        fingerprint = key.removeprefix("server key fingerprint: ")
        suite = [
            sys.executable, "-m", "conformance", f"127.0.0.1:{port}",
            "--password", "provisioned pw",
            "--provision", "--data-dir", str(data),
            "--server-command", f"{sys.executable} -m elink_server",
            "--fingerprint", fingerprint,
            "--cases", "4.*,5.3,6.5.3,7.3.8,7.6,9.1,9.6.4,11.3.6,11.4.7,11.7.3",
            "--handshake-timeout", "1", "--idle-timeout", "2", "--heartbeat-interval", "0.5",
            "--json", str(json_report), "--junit", str(junit_report),
        ]  # fmt: skip
        with trio.fail_after(WAIT * 4):
            result = await trio.run_process(
                suite, cwd=ROOT, env=env, capture_stdout=True, capture_stderr=True, check=False
            )
        server.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT):
            await server.wait()
    out = result.stdout.decode()
    assert result.returncode == EXIT_PASSED, out + result.stderr.decode()
    assert "provision: created conf-a" in out and "provision: created conf-d" in out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("e-Link conformance: ") and " 0 FAILED" in summary
    report = json.loads(json_report.read_text())
    assert report["passed"] is True and report["summary_line"] in summary
    assert {c["outcome"] for c in report["cases"]} == {"OK"}
    assert len(report["cases"]) == report["summary"]["cases"] > 30
    assert report["not_observable"] and report["sections"]["11.7"]["cases"] == 3
    suites = ET.parse(junit_report).getroot()
    assert suites.get("failures") == "0" and suites.get("tests") == str(len(report["cases"]))
