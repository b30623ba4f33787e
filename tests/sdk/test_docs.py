"""docs/sdk.md works as written.

Conventions of the guide, which this test relies on:

* Every ```python block is a complete program.  It runs (as ``__main__``,
  in a thread, with a deadline) against a fresh test server that has the
  guide's accounts: alice, bob and deploybot, whose passwords are
  ``<user>-secret``.  The examples read the server from ``ELINK_HOST``,
  ``ELINK_PORT`` and ``ELINK_FINGERPRINT``; ``ELINK_KNOWN_SERVERS`` points
  into the test's temporary directory.
* A block whose first line is ``# doc: fragment`` is only compiled.
* A block that calls ``bot.run(`` is a bot program: it runs in a thread, the
  test talks to it as alice, then stops it with ``bot.stop()``.
* A ```text block right after a python block shows its output: each line
  must match the program's output line, ``...`` standing for anything.
* In ```sh blocks, every ``elink`` and ``elink-server`` command must parse
  with the real argument parsers (subcommands, options, argument types).
  ``SHA256:3a31d04e...`` stands for a real fingerprint.
"""

from __future__ import annotations

import functools
import io
import re
import shlex
import shutil
import threading
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

import elink_sdk.cli
from elink_sdk import MessageReceived, blocking
from elink_server import cli as server_cli
from elink_server.identity_store import primary_fingerprint
from tests.helpers.pair import identity
from tests.helpers.sdk import ServerThread
from tests.helpers.server import WAIT

GUIDE_PATH = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"
GUIDE = GUIDE_PATH.read_text(encoding="utf-8")

#: The accounts the guide creates, with their passwords.
ACCOUNTS = {"alice": "alice-secret", "bob": "bob-secret", "deploybot": "deploybot-secret"}

#: What the guide writes where a fingerprint goes in shell examples.
FINGERPRINT_PLACEHOLDER = "SHA256:3a31d04e..."

#: Longest an example may run.
EXAMPLE_DEADLINE = 3 * WAIT

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
_HEADING = re.compile(r"^#+ (.*)$", re.M)


class Block:
    """One fenced block of the guide."""

    def __init__(self, language: str, code: str, line: int, section: str) -> None:
        self.language = language
        self.code = code
        self.line = line
        self.section = section
        self.output: str | None = None
        """The ```text block right after it, if any."""

    @property
    def name(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")
        return f"{slug}-line{self.line}"


def guide_blocks() -> list[Block]:
    blocks: list[Block] = []
    previous_end = 0
    section = ""
    for match in _FENCE.finditer(GUIDE):
        line = GUIDE.count("\n", 0, match.start()) + 1
        headings = _HEADING.findall(GUIDE, previous_end, match.start())  # outside blocks
        section = headings[-1] if headings else section
        block = Block(match.group(1), match.group(2), line, section)
        if (
            block.language == "text"
            and blocks
            and blocks[-1].language == "python"
            and not GUIDE[previous_end : match.start()].strip()
        ):
            blocks[-1].output = block.code
        blocks.append(block)
        previous_end = match.end()
    return blocks


BLOCKS = guide_blocks()
PYTHON = [b for b in BLOCKS if b.language == "python"]
SHELL = [b for b in BLOCKS if b.language == "sh"]


def test_the_guide_has_examples() -> None:
    assert len(PYTHON) >= 10 and len(SHELL) >= 4
    assert all(b.language in {"python", "sh", "text"} for b in BLOCKS), [
        b.name for b in BLOCKS if b.language not in {"python", "sh", "text"}
    ]


# ---------------------------------------------------------------- python examples


@pytest.fixture(scope="module")
def accounts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with the guide's accounts, made as the guide says
    (``elink-server users add``); each example gets a copy."""
    data = tmp_path_factory.mktemp("accounts")
    for user, password in ACCOUNTS.items():
        with redirect_stdout(io.StringIO()):
            code = server_cli.main(
                ["users", "add", user, "--password", password, "--data-dir", str(data)],
                environ={},
            )
        assert code == 0
    return data


@pytest.fixture
def guide_server(
    accounts_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServerThread]:
    data = tmp_path / "server"
    shutil.copytree(accounts_dir, data)
    # files_port=0: the file service (section 14) listens on a free port.
    with ServerThread(data, users=(), files_port=0) as server:
        monkeypatch.setenv("ELINK_HOST", "127.0.0.1")
        monkeypatch.setenv("ELINK_PORT", str(server.port))
        monkeypatch.setenv("ELINK_FINGERPRINT", primary_fingerprint(identity()))
        monkeypatch.setenv("ELINK_KNOWN_SERVERS", str(tmp_path / "known_servers"))
        monkeypatch.setenv("ELINK_CONFIG_DIR", str(tmp_path / "config"))
        yield server


class Program:
    """A guide example running in a thread, its output captured."""

    def __init__(self, block: Block) -> None:
        self.code = compile(block.code, f"{GUIDE_PATH.name}:{block.line}", "exec")
        self.output = io.StringIO()
        # Its own print: the server's logs share the process's stdout.
        self.namespace: dict[str, Any] = {
            "__name__": "__main__",
            "print": functools.partial(print, file=self.output),
        }
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"guide-{block.name}", daemon=True)

    def _run(self) -> None:
        try:
            exec(self.code, self.namespace)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                self.error = exc
        except BaseException as exc:
            self.error = exc

    def start(self) -> Program:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join(EXAMPLE_DEADLINE)
        assert not self._thread.is_alive(), f"still running after {EXAMPLE_DEADLINE} s"
        if self.error is not None:
            raise self.error


def check_output(expected: str, actual: str) -> None:
    wanted = expected.splitlines()
    got = actual.splitlines()
    assert len(got) == len(wanted), f"output:\n{actual}"
    for pattern, line in zip(wanted, got, strict=True):
        regex = ".*".join(re.escape(part) for part in pattern.split("..."))
        assert re.fullmatch(regex, line), f"{line!r} does not match {pattern!r}"


def talk_to_bot(server: ServerThread, program: Program) -> None:
    """Ask the running bot for help and a deploy as alice; then stop it."""
    with blocking.connect(
        "127.0.0.1",
        server.port,
        user="alice",
        password=ACCOUNTS["alice"],
        server_fingerprint=primary_fingerprint(identity()),
        connect_timeout=WAIT,
        request_timeout=WAIT,
    ) as alice:

        def ask(text: str) -> str:
            alice.send_text("deploybot", text)
            while True:
                event = alice.next_event(timeout=WAIT)
                if isinstance(event, MessageReceived):
                    assert event.text is not None
                    return event.text

        try:
            bot = program.namespace["bot"]
            listing = ask("/help")
            for command in bot.commands:
                assert f"/{command}" in listing
            if "deploy" in bot.commands:  # the guide says what this answers
                assert ask("/deploy prod 1234") == "Deploying build 1234 to prod for alice..."
                assert ask("hello") == "You said: hello"
        finally:
            program.namespace["bot"].stop()


@pytest.mark.parametrize("block", PYTHON, ids=[b.name for b in PYTHON])
def test_python_example(block: Block, request: pytest.FixtureRequest) -> None:
    first_line = block.code.splitlines()[0].strip()
    if first_line == "# doc: fragment":
        compile(block.code, f"{GUIDE_PATH.name}:{block.line}", "exec")
        return
    server: ServerThread = request.getfixturevalue("guide_server")
    program = Program(block).start()
    if "bot.run(" in block.code:
        talk_to_bot(server, program)
    program.join()
    if block.output is not None:
        check_output(block.output, program.output.getvalue())


def test_the_first_program_shows_its_real_output() -> None:
    assert PYTHON[0].output is not None and "Hello, Bob!" in PYTHON[0].output


# ---------------------------------------------------------------- shell examples


def commands(block: Block) -> Iterator[list[str]]:
    """Each simple command of the block's lines, as words (pipes split,
    redirections and leading VAR=value assignments dropped)."""
    for raw in block.code.replace(FINGERPRINT_PLACEHOLDER, "SHA256:" + "3a" * 32).splitlines():
        lexer = shlex.shlex(raw, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        tokens = iter(lexer)
        for token in tokens:
            if token in ("|", "&&", ";"):
                if words:
                    yield words
                words = []
            elif token in ("<", ">", ">>"):
                next(tokens, None)
            elif not words and re.fullmatch(r"[A-Z_]+=.*", token):
                continue
            else:
                words.append(token)
        if words:
            yield words


def parse(parser_name: str, argv: list[str]) -> None:
    parser = elink_sdk.cli.build_parser() if parser_name == "elink" else server_cli._parser()
    errors = io.StringIO()
    try:
        with redirect_stderr(errors):
            parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"`{parser_name} {shlex.join(argv)}` does not parse: {errors.getvalue()}")


@pytest.mark.parametrize("block", SHELL, ids=[b.name for b in SHELL])
def test_shell_example_commands_exist(block: Block) -> None:
    for words in commands(block):
        program = Path(words[0]).name
        if program in ("elink", "elink-server"):
            parse(program, words[1:])
        elif words[:2] == ["python3", "run.py"]:
            assert words[2] in ("server", "tests")


def test_every_cli_exit_code_is_in_the_guide() -> None:
    table = dict(re.findall(r"^\| (\d+) \| (.*) \|$", GUIDE, re.M))
    assert {int(code) for code in table} == set(elink_sdk.cli.EXIT_CODES)


def test_the_listen_event_types_are_the_guides() -> None:
    section = GUIDE.split("`elink listen` prints", 1)[1].split("```", 1)[0]
    named = set(re.findall(r"`([a-z]+)`", section))
    assert set(elink_sdk.cli.EVENT_TYPES.values()) <= named
