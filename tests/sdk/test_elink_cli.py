"""The ``elink`` command line against a real server on loopback: every
command, the exit codes scripts rely on, one-line errors, JSON lines from
``listen``, profiles and password sources; and the entry point run as a
real subprocess (``python -m elink_sdk.cli``), Ctrl-C included.

``main()`` blocks (it runs Trio itself), so the server runs in a
:class:`ServerThread`; configuration, known-servers file and home directory
are temporary for every test."""

from __future__ import annotations

import io
import json
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import elink_sdk
from elink_protocol.app import AppErrorCode, Message
from elink_sdk import (
    AuthenticationError,
    ConnectionLost,
    DeadlineExceeded,
    ElinkError,
    MessageRead,
    MessageReceived,
    NotFound,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    RequestRejected,
    ServerKeyMismatch,
    ServerUnavailable,
    SessionEnded,
    cli,
    profiles,
)
from elink_sdk.profiles import Profile, SetupError, format_profiles, load_profiles
from tests.helpers.sdk import PIN, USERS, ServerThread, client_options
from tests.helpers.server import WAIT

ROOT = Path(__file__).resolve().parents[2]
OTHER_KEY = "SHA256:" + "ab" * 32
#: Accounts on every test server; "secret" is every password.
CLI_USERS = (*USERS, "dave", "erin", "frank", "gina", "hank")


@attrs.frozen
class Result:
    """Exit code and output of one ``elink`` run."""

    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]


class FakeStdin(io.StringIO):
    """Standard input that may claim to be a terminal."""

    def __init__(self, text: str = "", *, tty: bool = False) -> None:
        super().__init__(text)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def elink(*argv: str, stdin: str = "", tty: bool = False) -> Result:
    """Run ``elink argv`` in-process."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), stdin=FakeStdin(stdin, tty=tty), stdout=out, stderr=err)
    return Result(code, out.getvalue(), err.getvalue())


def one_error_line(result: Result) -> str:
    """The single ``elink: ...`` line a failure prints (and nothing else)."""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("elink: ") and "Traceback" not in result.err
    return lines[0]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(tmp_path / "server", users=CLI_USERS) as running:
        yield running


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing touches the real home directory or keyring."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("ELINK_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("ELINK_KNOWN_SERVERS", str(tmp_path / "known_servers"))
    # No keyring here (importing it fails) nor in subprocesses (its "fail" backend).
    monkeypatch.setitem(sys.modules, "keyring", None)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.delenv("ELINK_PASSWORD", raising=False)
    monkeypatch.delenv("ELINK_PROFILE", raising=False)
    return tmp_path


def account(server: ServerThread, user: str = "alice") -> list[str]:
    """Options naming ``user`` on the test server, its key pinned."""
    pins = [arg for key in PIN for arg in ("--fingerprint", key)]
    return ["--host", "127.0.0.1", "--port", str(server.port), "--user", user, *pins]


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELINK_PASSWORD", "secret")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ================================================================ help and usage


def test_help_documents_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert elink("--help").code == 0
    helped = capsys.readouterr().out  # argparse prints to sys.stdout
    assert len(set(cli.EXIT_CODES)) == 10
    for code, meaning in cli.EXIT_CODES.items():
        assert f"{code:<4} {meaning}" in helped
        assert re.search(rf"^{code} +\w", cli.__doc__ or "", re.MULTILINE), code
    for command in ("login", "logout", "profiles", "send", "listen", "history", "search"):
        assert command in helped
        assert elink(command, "--help").code == 0
    assert "--wait {delivered,read}" in capsys.readouterr().out


def test_the_listen_format_in_the_help_is_what_listen_prints() -> None:
    examples = re.findall(r"^  (\{.*?\})$", cli.LISTEN_FORMAT, re.MULTILINE | re.DOTALL)
    message, read = (json.loads(example) for example in examples)
    received = MessageReceived(
        message=Message(
            msg_id=message["msg_id"],
            conversation=message["conversation"],
            seq=message["seq"],
            sender=message["sender"],
            sender_device=message["sender_device"],
            client_msg_id="x",
            kind="text",
            content={"text": "hi"},
            created_at_ms=message["created_at_ms"],
        ),
        cursor=message["cursor"],
    )
    assert cli.event_json(received) == {**message, "client_msg_id": "x"}
    fields = {key: value for key, value in read.items() if key != "type"}
    assert cli.event_json(MessageRead(**fields)) == read


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["send", "bob"],
        ["send", "bob", "hi", "--port", "70000"],
        ["send", "bob", "hi", "--fingerprint", "SHA256:nothex"],
        ["send", "bob", "hi", "--client-msg-id", "not a key"],
        ["send", "bo b", "hi"],
        ["send", "d:bob", "hi"],
        ["history", "bob", "--limit", "501"],
        ["history", "bob", "--before", "0"],
        ["search", ""],
        ["status", "-1"],
        ["listen", "--type", "nonsense"],
        ["listen", "--count", "0"],
        ["--profile", "a.b", "profiles"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert elink(*argv).code == 2
    assert "usage: elink" in capsys.readouterr().err


def test_invalid_text_is_refused_before_connecting() -> None:
    line = one_error_line(result := elink("send", "bob", ""))
    assert result.code == 2 and "cannot send this text" in line
    line = one_error_line(result := elink("send", "bob", "x" * 3000))
    assert result.code == 2 and "exceeds" in line


def test_without_profile_or_password_the_error_says_what_to_do(server: ServerThread) -> None:
    line = one_error_line(result := elink("send", "bob", "hi"))
    assert result.code == 2 and "elink login" in line and "--host" in line
    line = one_error_line(result := elink("--profile", "work", "send", "bob", "hi"))
    assert result.code == 2 and "no profile 'work'" in line
    # Standard input is no terminal: no prompt, a clear error.
    line = one_error_line(result := elink("send", "bob", "hi", *account(server)))
    assert result.code == 2 and "--password-stdin" in line and "ELINK_PASSWORD" in line
    line = one_error_line(
        result := elink("send", "bob", "hi", *account(server), "--password-stdin")
    )
    assert result.code == 2 and "no password" in line


# ================================================================ login, profiles, logout


def test_login_pins_the_key_and_saves_a_private_profile(
    server: ServerThread, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = ["--host", "127.0.0.1", "--port", str(server.port), "--user", "alice"]
    result = elink("login", *options, "--device", "box", "--password-stdin", stdin="secret\n")
    assert result.code == 0, result.err
    assert f"alice@127.0.0.1:{server.port}" in result.out
    assert "First connection" in result.out  # trusted on first use...
    known = (isolated / "known_servers").read_text()
    fingerprint = next(key for key in PIN if key in known)  # ...and recorded

    profiles_file = isolated / "config" / "profiles.toml"
    assert stat.S_IMODE(profiles_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(profiles_file.parent.stat().st_mode) == 0o700
    assert "secret" not in profiles_file.read_text()
    assert load_profiles(profiles_file) == {
        "default": Profile(
            name="default",
            host="127.0.0.1",
            port=server.port,
            user="alice",
            device="box",
            fingerprint=fingerprint,
        )
    }
    # No keyring: the user is told how to give the password next time.
    assert "not stored" in result.out

    # The profile is used from now on (with the password from the environment).
    assert elink("send", "bob", "from the profile").code == 2  # no password source
    monkeypatch.setenv("ELINK_PASSWORD", "secret")
    sent = elink("send", "bob", "from the profile")
    assert sent.code == 0 and sent.out.strip().isdigit()

    listing = elink("profiles")
    assert listing.code == 0 and listing.out.startswith("* default")
    assert json.loads(elink("profiles", "--json").out)["default"]["device"] == "box"

    result = elink("logout")
    assert result.code == 0 and "Removed profile 'default'" in result.out
    assert load_profiles(profiles_file) == {}
    assert elink("logout").code == 2


def test_login_asks_at_a_terminal(
    server: ServerThread, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(profiles.getpass, "getpass", lambda prompt: "secret")
    answers = f"127.0.0.1\n{server.port}\nbob\n\n"  # Enter keeps the default device
    result = elink("--profile", "mine", "login", stdin=answers, tty=True)
    assert result.code == 0, result.err
    assert "Server host: " in result.err and "Device id [" in result.err
    profile = load_profiles(isolated / "config" / "profiles.toml")["mine"]
    assert (profile.user, profile.port) == ("bob", server.port)
    assert profile.device.endswith("-cli")


def test_login_with_a_wrong_password_saves_nothing(server: ServerThread, isolated: Path) -> None:
    result = elink("login", *account(server), "--password-stdin", stdin="wrong\n")
    line = one_error_line(result)
    assert result.code == cli.EXIT_AUTH == 3
    assert line == (
        f"elink: wrong user name or password for alice@127.0.0.1:{server.port} "
        "(the password came from standard input)"
    )
    assert not (isolated / "config" / "profiles.toml").exists()


class FakeKeyring:
    """A keyring backend that keeps passwords in memory."""

    def __init__(self) -> None:
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, user: str) -> str | None:
        return self.passwords.get((service, user))

    def set_password(self, service: str, user: str, password: str) -> None:
        self.passwords[service, user] = password

    def delete_password(self, service: str, user: str) -> None:
        del self.passwords[service, user]


def fake_keyring_module(backend: object) -> types.ModuleType:
    module = types.ModuleType("keyring")
    module.get_keyring = lambda: backend  # type: ignore[attr-defined]
    for name in ("get_password", "set_password", "delete_password"):
        setattr(module, name, getattr(backend, name))
    return module


def test_the_password_lives_in_the_keyring_when_there_is_one(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring = FakeKeyring()
    monkeypatch.setitem(sys.modules, "keyring", fake_keyring_module(keyring))
    result = elink("login", *account(server, "carol"), "--password-stdin", stdin="secret\n")
    assert result.code == 0 and "system keyring" in result.out
    key = ("elink", f"carol@127.0.0.1:{server.port}")
    assert keyring.passwords == {key: "secret"}

    sent = elink("send", "alice", "password from the keyring")  # no other source
    assert sent.code == 0, sent.err

    keyring.passwords[key] = "stale"
    line = one_error_line(result := elink("send", "alice", "x"))
    assert result.code == 3 and "keyring" in line and "elink login" in line

    assert elink("logout").code == 0
    assert keyring.passwords == {}


def test_a_fail_keyring_backend_counts_as_none(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = type("Keyring", (FakeKeyring,), {"__module__": "keyring.backends.fail"})()
    monkeypatch.setitem(sys.modules, "keyring", fake_keyring_module(backend))
    result = elink("login", *account(server), "--password-stdin", stdin="secret\n")
    assert result.code == 0 and "not stored" in result.out
    assert backend.passwords == {}


def test_a_broken_profiles_file_is_a_usage_error(isolated: Path) -> None:
    (isolated / "config").mkdir()
    (isolated / "config" / "profiles.toml").write_text("[profiles.default]\nhost = 7\n")
    line = one_error_line(result := elink("send", "bob", "hi"))
    assert result.code == 2 and "profiles.toml" in line and "host" in line


@pytest.mark.parametrize(
    "text", ["plain", 'quote " and \\ backslash', "tab\tnew\nline\x7f", "张伟", ""]
)
def test_profiles_survive_a_round_trip(tmp_path: Path, text: str) -> None:
    profile = Profile(
        name="p-1_x", host="example.com", port=1, user="u", device=text or "d", fingerprint=None
    )
    path = tmp_path / "profiles.toml"
    path.write_text(format_profiles({"p-1_x": profile}))
    assert load_profiles(path) == {"p-1_x": profile}
    path.write_text("[profiles.p]\nhost='h'\nport=1\nuser='u'\ndevice='d'\nfingerprint='x'\n")
    with pytest.raises(SetupError, match="fingerprint"):
        load_profiles(path)


# ================================================================ send, status, history, search


def test_send_history_search_and_status(server: ServerThread, password: None) -> None:
    sent = elink("send", "bob", "deploy finished: build 77", *account(server))
    assert sent.code == 0 and sent.err == ""
    msg_id = int(sent.out)

    status = elink("status", str(msg_id), *account(server))
    assert status.code == 0 and status.out.startswith(f"message {msg_id}: sent")
    report = json.loads(elink("status", str(msg_id), "--json", *account(server)).out)
    assert report["msg_id"] == msg_id and report["state"] == "sent"

    history = elink("history", "bob", "--limit", "5", *account(server))
    assert history.code == 0 and history.out.splitlines()[-1].endswith(
        "alice: deploy finished: build 77"
    )
    page = json.loads(elink("history", "alice", "--json", *account(server, "bob")).out)
    assert page["messages"][0]["msg_id"] == msg_id  # newest first
    assert page["messages"][0]["text"] == "deploy finished: build 77"
    # One-shot commands log in as <device>-cmd, never as the listening device.
    assert page["messages"][0]["sender_device"].endswith("-cli-cmd")

    found = elink("search", "BUILD 77", "--in", "bob", *account(server))
    assert found.code == 0 and "d:alice:bob" in found.out and "build 77" in found.out
    results = json.loads(elink("search", "build 77", "--json", *account(server, "bob")).out)
    assert [m["msg_id"] for m in results["messages"]] == [msg_id]
    assert elink("search", "no such words", *account(server)).err == "No messages found.\n"


def test_send_reads_standard_input_and_prints_json(server: ServerThread, password: None) -> None:
    result = elink(
        "send",
        "carol",
        "-",
        "--json",
        "--client-msg-id",
        "cron-1",
        *account(server),
        stdin="disk full on db-1\n",
    )
    first = json.loads(result.out)
    assert first["status"] == "sent" and not first["duplicate"]
    again = json.loads(
        elink(
            "send",
            "carol",
            "-",
            "--json",
            "--client-msg-id",
            "cron-1",
            *account(server),
            stdin="disk full on db-1\n",
        ).out
    )
    assert again["msg_id"] == first["msg_id"] and again["duplicate"]  # stored once
    line = one_error_line(
        result := elink(
            "send", "carol", "-", "--password-stdin", *account(server), stdin="secret\n"
        )
    )
    assert result.code == 2 and "standard input" in line


def test_send_wait_delivered(server: ServerThread, password: None) -> None:
    # dave listens in another thread; his device confirming the message is
    # what makes it "delivered".
    listened: list[Result] = []
    listener = threading.Thread(
        target=lambda: listened.append(
            elink("listen", "--count", "1", "--timeout", str(WAIT), *account(server, "dave"))
        )
    )
    listener.start()
    try:
        sent = elink(
            "send",
            "dave",
            "are you there?",
            "--wait",
            "delivered",
            "--timeout",
            str(WAIT),
            *account(server),
        )
    finally:
        listener.join(WAIT * 2)
    assert not listener.is_alive()
    assert sent.code == 0, sent.err
    assert listened[0].json_lines()[0]["text"] == "are you there?"
    status = elink("status", sent.out.strip(), "--json", *account(server))
    assert json.loads(status.out)["state"] == "delivered"
    assert json.loads(status.out)["deliveries"][0]["user"] == "dave"


def test_send_wait_timeout_exits_7_after_printing_the_id(
    server: ServerThread, password: None
) -> None:
    result = elink(
        "send", "hank", "nobody reads this", "--wait", "read", "--timeout", "0.2", *account(server)
    )
    line = one_error_line(result)
    assert result.code == cli.EXIT_TIMEOUT == 7
    assert f"message {int(result.out)} not read within 0.2 s" in line


def test_not_found_and_permission_denied_exit_6(server: ServerThread, password: None) -> None:
    line = one_error_line(result := elink("send", "nobody", "hi", *account(server)))
    assert result.code == 6 and line == "elink: cannot send to nobody: no user 'nobody' (NOT_FOUND)"
    assert elink("status", "999999", *account(server)).code == 6
    assert elink("history", "nobody", *account(server)).code == 6
    # Someone else's message.
    msg_id = elink("send", "alice", "bob's own", *account(server, "bob")).out.strip()
    assert elink("status", msg_id, *account(server, "carol")).code == 6


# ================================================================ connection failures


def test_server_down_exits_4(password: None) -> None:
    port = str(closed_port())
    result = elink("send", "bob", "hi", "--host", "127.0.0.1", "--port", port, "--user", "alice")
    line = one_error_line(result)
    assert result.code == cli.EXIT_UNREACHABLE == 4
    assert f"127.0.0.1:{port}" in line
    debug = elink(
        "send", "bob", "hi", "--host", "127.0.0.1", "--port", port, "--user", "a", "--debug"
    )
    assert debug.code == 4 and "Traceback" in debug.err


def test_a_wrong_pinned_key_exits_5(server: ServerThread, password: None) -> None:
    options = ["--host", "127.0.0.1", "--port", str(server.port), "--user", "alice"]
    line = one_error_line(
        result := elink("send", "bob", "hi", *options, "--fingerprint", OTHER_KEY)
    )
    assert result.code == cli.EXIT_KEY_MISMATCH == 5
    assert "SERVER KEY MISMATCH" in line and OTHER_KEY in line
    assert "elink login --fingerprint SHA256:" in line


def test_a_changed_key_in_the_known_servers_file_exits_5(
    server: ServerThread, password: None, isolated: Path
) -> None:
    (isolated / "known_servers").write_text(f"127.0.0.1:{server.port} {OTHER_KEY}\n")
    options = ["--host", "127.0.0.1", "--port", str(server.port), "--user", "alice"]
    line = one_error_line(result := elink("send", "bob", "hi", *options))  # nothing pinned
    assert result.code == 5
    assert f"remove the old line from {isolated / 'known_servers'}" in line


def test_a_profile_key_applies_to_its_own_server_only(
    server: ServerThread, password: None, isolated: Path
) -> None:
    profile = Profile(
        name="default",
        host="127.0.0.1",
        port=server.port,
        user="alice",
        device="d",
        fingerprint=OTHER_KEY,
    )
    (isolated / "config").mkdir()
    (isolated / "config" / "profiles.toml").write_text(format_profiles({"default": profile}))
    assert elink("send", "bob", "hi").code == 5  # the profile's (wrong) pin is used
    # Another host name for the same server: the profile's pin does not
    # apply, the known-servers file trusts it on first use.
    assert elink("send", "bob", "hi", "--host", "localhost").code == 0


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (AuthenticationError("no", code=AppErrorCode.AUTH_FAILED), 3),
        (AuthenticationError("no", code=AppErrorCode.ACCOUNT_DISABLED), 3),
        (ServerUnavailable("down"), 4),
        (ConnectionLost("gone"), 4),
        (ServerKeyMismatch("h:1", OTHER_KEY, frozenset(PIN), "the pinned fingerprint"), 5),
        (NotFound("no"), 6),
        (PermissionDenied("no"), 6),
        (DeadlineExceeded("late"), 7),
        (RateLimited("slow down", retry_after=2.5), 8),
        (SessionEnded("replaced"), 1),
        (RequestRejected("bad"), 1),
        (ProtocolError("broken"), 1),
    ],
)
def test_every_sdk_error_has_its_exit_code(error: ElinkError, code: int) -> None:
    run = cli._Run(
        args=cli.build_parser().parse_args(["status", "1"]),
        inp=FakeStdin(),
        out=io.StringIO(),
        err=io.StringIO(),
    )
    message, exit_code = cli._explain(error, run)
    assert exit_code == code and "\n" not in message


def test_rate_limited_exits_8(tmp_path: Path, password: None) -> None:
    with ServerThread(tmp_path / "data", max_requests_per_second=0.01, request_burst=1) as slow:
        result = elink("send", "bob", "hi", *account(slow))
    line = one_error_line(result)
    assert result.code == cli.EXIT_RATE_LIMITED == 8 and "try again" in line


# ================================================================ listen


def test_listen_prints_json_lines_and_never_repeats_them(
    server: ServerThread, password: None
) -> None:
    for text in ("first", "second", "third"):
        assert elink("send", "erin", text, *account(server)).code == 0
    erin = account(server, "erin")
    result = elink("listen", "--count", "2", *erin)
    assert result.code == 0, result.err
    events = result.json_lines()
    assert [(e["type"], e["sender"], e["text"]) for e in events] == [
        ("message", "alice", "first"),
        ("message", "alice", "second"),
    ]
    assert events[0]["conversation"] == "d:alice:erin" and events[1]["cursor"] > events[0]["cursor"]
    # What was printed was confirmed: the next listen starts after it.
    assert [e["text"] for e in elink("listen", "--count", "1", *erin).json_lines()] == ["third"]
    # Nothing left: --timeout alone ends quietly; with --count it is a timeout.
    assert elink("listen", "--timeout", "0.2", *erin) == Result(0, "", "")
    result = elink("listen", "--count", "1", "--timeout", "0.2", *erin)
    assert result.code == 7 and "only 0 of 1 events" in one_error_line(result)


def test_listen_filters_by_type(server: ServerThread, password: None) -> None:
    msg_id = int(elink("send", "frank", "read me", *account(server)).out)

    async def frank_reads_it() -> None:
        options = client_options(server.port, "frank")
        async with elink_sdk.connect("127.0.0.1", server.port, **options) as frank:
            await frank.mark_read("alice", (await frank.history("alice")).messages[0].seq)

    trio.run(frank_reads_it)
    # Alice's log also holds the messages she sent from her -cmd device:
    # skipped, only the receipt is printed.
    result = elink(
        "listen", "--type", "read", "--count", "1", "--timeout", str(WAIT), *account(server)
    )
    assert result.code == 0, result.err
    (event,) = result.json_lines()
    assert event["type"] == "read" and event["reader"] == "frank"
    assert event["msg_id"] == msg_id and event["conversation"] == "d:alice:frank"


# ================================================================ the real entry point


def run_module(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "elink_sdk.cli", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
        cwd=ROOT,
        env=os.environ.copy(),
        check=False,
    )


def test_the_module_runs_as_a_command(server: ServerThread) -> None:
    helped = run_module("--help")
    assert helped.returncode == 0 and "exit codes:" in helped.stdout
    sent = run_module(
        "send", "bob", "from a subprocess", *account(server), "--password-stdin", stdin="secret\n"
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip().isdigit() and sent.stderr == ""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and select() on pipes")
def test_ctrl_c_stops_listen_cleanly(server: ServerThread, password: None) -> None:
    assert elink("send", "gina", "before ctrl-c", *account(server)).code == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "elink_sdk.cli", "listen", *account(server, "gina")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=os.environ.copy(),
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], WAIT * 3)
        assert ready, "listen printed nothing"
        event = json.loads(process.stdout.readline())
        assert event["text"] == "before ctrl-c"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0 and out == "" and err == ""
    # The printed event was confirmed on the way out: not printed again.
    assert elink("listen", "--timeout", "0.2", *account(server, "gina")).out == ""
