"""``elink send-file`` and ``elink download`` against a real server on
loopback: files and folders, ``--only``, the progress bar on a terminal and
its absence elsewhere, JSON output, and the exit codes scripts rely on."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from elink_protocol.app import AppErrorCode
from elink_sdk import FileExpired, cli
from tests.helpers.sdk import PIN, ServerThread

CHUNK = 64 * 1024


class Terminal(io.StringIO):
    """An output stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"Result({self.code}, out={self.out!r}, err={self.err!r})"


def elink(*argv: str, tty: bool = False) -> Result:
    """Run ``elink argv`` in-process (standard error a terminal if ``tty``)."""
    out = io.StringIO()
    err = Terminal() if tty else io.StringIO()
    code = cli.main(list(argv), stdin=io.StringIO(), stdout=out, stderr=err)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    data = tmp_path_factory.mktemp("server")
    with ServerThread(data, files_port=0, files_chunk_size=CHUNK) as running:
        yield running


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing touches the real home directory or keyring; the password
    comes from the environment."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("ELINK_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("ELINK_KNOWN_SERVERS", str(tmp_path / "known_servers"))
    monkeypatch.setitem(sys.modules, "keyring", None)
    monkeypatch.delenv("ELINK_PROFILE", raising=False)
    monkeypatch.setenv("ELINK_PASSWORD", "secret")
    monkeypatch.chdir(tmp_path)


def account(server: ServerThread, user: str) -> list[str]:
    pins = [arg for key in PIN for arg in ("--fingerprint", key)]
    return ["--host", "127.0.0.1", "--port", str(server.port), "--user", user, *pins]


def one_error_line(result: Result) -> str:
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("elink: "), result
    return lines[0]


def test_send_file_and_download_it(server: ServerThread, tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 11)
    (tmp_path / "build.log").write_bytes(data)
    sent = elink(*account(server, "alice"), "send-file", "bob", "build.log", "--caption", "log")
    assert sent.code == 0 and sent.err == "", sent
    msg_id = sent.out.strip()
    assert msg_id.isdigit()

    # The history shows what `download` needs: the message id.
    history = elink(*account(server, "bob"), "history", "alice")
    assert f"[file build.log, 196.6 KB; id {msg_id}] log" in history.out, history

    got = elink(*account(server, "bob"), "download", msg_id, "--in", "alice")
    assert got.code == 0 and got.err == "", got
    assert got.out.strip() == "build.log"  # into the current folder, by its name
    assert (tmp_path / "build.log").read_bytes() == data

    (tmp_path / "inbox").mkdir()
    as_json = elink(*account(server, "bob"), "download", msg_id, "inbox", "--in", "alice", "--json")
    assert as_json.code == 0, as_json
    assert json.loads(as_json.out) == {
        "msg_id": int(msg_id),
        "kind": "file",
        "path": str(Path("inbox") / "build.log"),
    }
    to_path = elink(*account(server, "bob"), "download", msg_id, "copy.log", "--in", "alice")
    assert to_path.code == 0 and (tmp_path / "copy.log").read_bytes() == data


def test_image_metadata_and_json(server: ServerThread, tmp_path: Path) -> None:
    (tmp_path / "shot.png").write_bytes(b"\x89PNG" + bytes(100))
    sent = elink(
        *account(server, "alice"),
        "send-file",
        "bob",
        "shot.png",
        "--kind",
        "image",
        "--width",
        "800",
        "--height",
        "600",
        "--json",
    )
    assert sent.code == 0, sent
    body = json.loads(sent.out)
    assert body["duplicate"] is False and body["conversation"] == "d:alice:bob"
    history = elink(*account(server, "bob"), "history", "alice", "--json", "--limit", "1")
    content = json.loads(history.out)["messages"][0]["content"]
    assert (content["w"], content["h"], content["ref"]["mt"]) == (800, 600, "image/png")


def test_folder_with_only_and_a_progress_bar(server: ServerThread, tmp_path: Path) -> None:
    tree = {"notes.txt": b"notes", "src/main.py": b"print(1)\n", "src/data.bin": os.urandom(5000)}
    for path, data in tree.items():
        (tmp_path / "outbox" / "proj" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "outbox" / "proj" / path).write_bytes(data)
    sent = elink(*account(server, "alice"), "send-file", "bob", "outbox/proj", tty=True)
    assert sent.code == 0, sent
    # One finished bar per file, on the terminal only.
    finished = [line for line in sent.err.split("\n") if "100.0%" in line]
    assert len(finished) == 3 and all("(" in line and "/3)" in line for line in finished)
    msg_id = sent.out.strip()

    whole = elink(*account(server, "bob"), "download", msg_id, "--in", "alice")
    assert whole.code == 0 and whole.err == "", whole
    root = Path(whole.out.strip())
    assert root == Path("proj")  # a new folder named after the folder
    for path, data in tree.items():
        assert (root / path).read_bytes() == data

    some = elink(
        *account(server, "bob"),
        "download",
        msg_id,
        str(tmp_path / "some"),
        "--in",
        "alice",
        "--only",
        "*.py",
        "--only",
        "notes.txt",
    )
    assert some.code == 0, some
    files = {p.relative_to(tmp_path / "some").as_posix() for p in (tmp_path / "some").rglob("*")}
    assert files == {"notes.txt", "src", "src/main.py"}


def test_exit_codes(server: ServerThread, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"a")
    missing = elink(*account(server, "alice"), "send-file", "bob", "nothing.txt")
    assert missing.code == cli.EXIT_USAGE and "not a file or a folder" in one_error_line(missing)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").write_bytes(b"x")
    folder_kind = elink(*account(server, "alice"), "send-file", "bob", "dir", "--kind", "image")
    assert folder_kind.code == cli.EXIT_USAGE, folder_kind
    no_in = elink(*account(server, "bob"), "download", "1")
    assert no_in.code == cli.EXIT_USAGE
    nobody = elink(*account(server, "alice"), "send-file", "nobody", "a.txt")
    assert nobody.code == cli.EXIT_NOT_FOUND, nobody

    sent = elink(*account(server, "alice"), "send-file", "bob", "a.txt")
    msg_id = sent.out.strip()
    unknown = elink(*account(server, "bob"), "download", str(int(msg_id) + 999), "--in", "alice")
    assert unknown.code == cli.EXIT_NOT_FOUND, unknown
    only_file = elink(*account(server, "bob"), "download", msg_id, "--in", "alice", "--only", "x")
    assert only_file.code == cli.EXIT_ERROR and "not a folder" in one_error_line(only_file)

    recall = elink(*account(server, "alice"), "send", "bob", "x")  # a text is not a file
    text_id = recall.out.strip()
    not_file = elink(*account(server, "bob"), "download", text_id, "--in", "alice")
    assert not_file.code == cli.EXIT_USAGE and "not a file" in one_error_line(not_file)


def test_recalled_and_expired_files_exit_6(server: ServerThread, tmp_path: Path) -> None:
    from elink_sdk import blocking
    from tests.helpers.sdk import client_options

    (tmp_path / "oops.txt").write_bytes(b"oops")
    sent = elink(*account(server, "alice"), "send-file", "bob", "oops.txt")
    msg_id = int(sent.out)
    with blocking.connect("127.0.0.1", server.port, **client_options(server.port, "alice")) as a:
        a.recall(msg_id)
    gone = elink(*account(server, "bob"), "download", str(msg_id), "--in", "alice")
    assert gone.code == cli.EXIT_NOT_FOUND and "recalled" in one_error_line(gone)
    # An expired file is a NotFound too: scripts see exit code 6.
    run = cli._Run(
        args=cli.build_parser().parse_args(["status", "1"]),
        inp=io.StringIO(),
        out=io.StringIO(),
        err=io.StringIO(),
        doing="download message 1",
    )
    message, code = cli._explain(
        FileExpired("the file has expired", code=AppErrorCode.FILE_EXPIRED), run
    )
    assert code == cli.EXIT_NOT_FOUND and "FILE_EXPIRED" in message
