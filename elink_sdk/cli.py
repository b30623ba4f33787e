"""The ``elink`` command: e-Link from a terminal, a shell script or a cron job.

::

    elink login                        ask for server, user and password; save a profile
    elink send USER TEXT               send a message; print its id
    elink listen                       print events as JSON lines until Ctrl-C
    elink history USER                 the latest messages with USER
    elink search TEXT                  messages containing TEXT
    elink status MSG_ID                delivery and read receipts of a sent message
    elink send-file USER PATH          send a file (or a whole folder); print its message id
    elink download MSG_ID [DEST] --in USER   download a message's file or folder
    elink profiles                     list the saved profiles
    elink logout                       forget a profile and its stored password

Every command takes ``--profile NAME`` (default ``$ELINK_PROFILE``, else
``default``), the overrides ``--host``, ``--port``, ``--user`` and
``--device``, ``--fingerprint`` to pin the server key, ``--password-stdin``,
``--connect-timeout`` and ``--debug``.  Profiles and passwords:
:mod:`elink_sdk.profiles`.

The password is never read from a file.  In order: the first line of
standard input (``--password-stdin``), ``$ELINK_PASSWORD``, the system
keyring (where ``elink login`` stores it when the ``keyring`` package is
installed), else a prompt when standard input is a terminal.

Exit codes (scripts may rely on them):

====  ==============================================================
code  meaning
====  ==============================================================
0     success
1     any other error
2     usage error: bad arguments, no profile, no password, bad profiles file
3     authentication failed: wrong user or password, account disabled
4     the server cannot be reached, or the connection was lost for good
5     server key mismatch: not the pinned or known key (possible attack)
6     not found or permission denied (no such user, not your message...),
      also a file that was recalled or passed the server's retention
7     timeout: the ``--wait`` or ``--timeout`` deadline passed, or no answer
8     rate limited or server busy: try again later
130   interrupted (Ctrl-C); ``elink listen`` stops cleanly and exits 0
====  ==============================================================

Every failure prints one line, ``elink: <what went wrong>``, on standard
error (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import signal
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio

from elink_protocol.app import AppErrorCode
from elink_protocol.app.content import check_content
from elink_protocol.app.fields import client_msg_id as check_client_msg_id
from elink_protocol.app.fields import conversation_id, nonempty_text
from elink_protocol.app.fields import name as check_name
from elink_protocol.app.query import MAX_PAGE, MAX_QUERY
from elink_protocol.crypto.trust import host_port, is_fingerprint

from ._files import SEND_FILE_KINDS, TransferProgress, safe_file_name
from .cli_output import (
    EVENT_TYPES,
    event_json,
    format_message,
    human_size,
    json_default,
    local_time,
    message_json,
    report_json,
    sent_json,
)
from .client import DEFAULT_PORT, Client, connect
from .errors import (
    AuthenticationError,
    ConnectionLost,
    DeadlineExceeded,
    ElinkError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerKeyMismatch,
    ServerUnavailable,
    SessionEnded,
)
from .profiles import (
    MAX_DEVICE,
    PasswordStore,
    Profile,
    SetupError,
    Target,
    check_profile_name,
    default_device,
    find_password,
    load_profiles,
    profiles_path,
    remove_profile,
    resolve_target,
    save_profile,
    selected_profile,
)
from .trust import ServerTrust

__all__ = [
    "EVENT_TYPES",
    "EXIT_CODES",
    "LISTEN_FORMAT",
    "build_parser",
    "event_json",
    "format_message",
    "main",
    "message_json",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4
EXIT_KEY_MISMATCH = 5
EXIT_NOT_FOUND = 6
EXIT_TIMEOUT = 7
EXIT_RATE_LIMITED = 8
EXIT_INTERRUPTED = 130

#: Exit code -> meaning, as printed by ``elink --help``.
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "any other error",
    EXIT_USAGE: "usage error: bad arguments, no profile, no password, bad profiles file",
    EXIT_AUTH: "authentication failed: wrong user or password, account disabled",
    EXIT_UNREACHABLE: "the server cannot be reached, or the connection was lost",
    EXIT_KEY_MISMATCH: "server key mismatch: not the pinned or known key",
    EXIT_NOT_FOUND: "not found or permission denied (also: a file recalled or expired)",
    EXIT_TIMEOUT: "timeout: the --wait or --timeout deadline passed, or no answer",
    EXIT_RATE_LIMITED: "rate limited or server busy: try again later",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); listen exits 0 instead",
}

#: Seconds each request may take (reconnecting included) before giving up.
REQUEST_TIMEOUT = 30.0
CLIENT_VERSION = "elink-cli"


class CliError(Exception):
    """A failure to report as one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


@attrs.define
class _Run:
    """One invocation: its arguments, streams, and what it was doing (for
    the error line)."""

    args: argparse.Namespace
    inp: TextIO
    out: TextIO
    err: TextIO
    doing: str = "log in"
    target: Target | None = None
    password_source: str = ""

    @property
    def interactive(self) -> bool:
        """Standard input is a terminal: there is someone to ask."""
        return self.inp.isatty()

    def option(self, name: str, default: Any = None) -> Any:
        return getattr(self.args, name, default)

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """A message for the person at the terminal (standard error)."""
        self.err.write(text + "\n")
        self.err.flush()


# ================================================================ entry point


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run ``elink`` with ``argv`` (default ``sys.argv[1:]``) and return the
    exit code.  The streams default to the ``sys`` ones (argparse's own
    messages, for ``--help`` and usage errors, always use those)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    run = _Run(
        args=args,
        inp=stdin or sys.stdin or io.StringIO(),  # sys.stdin is None under pythonw
        out=stdout or sys.stdout,
        err=stderr or sys.stderr,
    )
    try:
        code: int = args.handler(run)
        return code
    except KeyboardInterrupt:
        run.note("elink: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``elink listen | head -1``): not an error.
        _silence_stdout()
        return EXIT_OK
    except Exception as exc:
        message, code = _explain(exc, run)
        if run.option("debug"):
            traceback.print_exc(file=run.err)
        run.note(f"elink: {message}")
        return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does
    not complain about the closed pipe again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _explain(exc: Exception, run: _Run) -> tuple[str, int]:
    """The error line and exit code for ``exc``."""
    if isinstance(exc, CliError):
        return str(exc), exc.code
    if isinstance(exc, SetupError):
        return str(exc), EXIT_USAGE
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        inner = exc.exceptions[0]
        if isinstance(inner, Exception):
            return _explain(inner, run)
    if not isinstance(exc, ElinkError):
        return f"internal error: {exc!r} (run with --debug for details)", EXIT_ERROR
    target = run.target
    server = target.server if target else "the server"
    account = target.account if target else "the account"
    if isinstance(exc, ServerKeyMismatch):
        trusted = ", ".join(sorted(exc.expected)) or "no key"
        fix = (
            f"run `elink login --fingerprint {exc.presented}`"
            if target and target.fingerprints
            else f"remove the old line from {exc.source}"
        )
        return (
            f"SERVER KEY MISMATCH: {exc.server} presented {exc.presented}, but "
            f"{exc.source} trusts only {trusted}; the connection was refused. Someone may "
            "be intercepting it, or the server's key changed: if the server's operator "
            f"confirms the new key, {fix}",
            EXIT_KEY_MISMATCH,
        )
    if isinstance(exc, AuthenticationError):
        if exc.code == AppErrorCode.AUTH_FAILED:
            source = run.password_source
            hint = f" (the password came from {source})" if source else ""
            return f"wrong user name or password for {account}{hint}", EXIT_AUTH
        if exc.code == AppErrorCode.ACCOUNT_DISABLED:
            return f"the account {account} is disabled", EXIT_AUTH
        return f"{server} refused the login of {account}: {exc}", EXIT_AUTH
    if isinstance(exc, ServerUnavailable):
        return f"{exc} (is the e-Link server running there?)", EXIT_UNREACHABLE
    if isinstance(exc, SessionEnded):
        return f"the server ended the session of {account}: {exc}", EXIT_ERROR
    if isinstance(exc, ConnectionLost):
        return f"lost the connection to {server}: {exc}", EXIT_UNREACHABLE
    if isinstance(exc, DeadlineExceeded):
        return (f"cannot {run.doing}: {exc}" if run.doing else str(exc)), EXIT_TIMEOUT
    if isinstance(exc, RateLimited):
        later = f"in {math.ceil(exc.retry_after)} s" if exc.retry_after else "later"
        return f"cannot {run.doing}: {exc}; try again {later}", EXIT_RATE_LIMITED
    if isinstance(exc, NotFound | PermissionDenied):
        return f"cannot {run.doing}: {exc}", EXIT_NOT_FOUND
    return f"cannot {run.doing}: {exc}", EXIT_ERROR


# ================================================================ arguments


def _arg(check: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """An argparse type from a checker that raises ValueError."""

    def convert(text: str) -> Any:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: {exc}") from None

    convert.__name__ = what  # argparse names the type in some messages
    return convert


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def check(text: str) -> int | float:
        value = kind(text)
        if not 0 < value < math.inf:
            raise ValueError("must be positive")
        return value

    return check


def _at_most(high: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        value = int(text)
        if not 0 < value <= high:
            raise ValueError(f"must be 1-{high}")
        return value

    return check


def _peer(text: str) -> str:
    """A user name or a conversation id (``d:a:b``, ``g:group``)."""
    return conversation_id(text) if ":" in text else check_name(text)


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port <= 0xFFFF:
        raise ValueError("must be 1-65535")
    return port


def _host(text: str) -> str:
    host_port(text, 1)
    return text


def _device(text: str) -> str:
    check_name(text)
    if len(text) > MAX_DEVICE:
        raise ValueError(f"at most {MAX_DEVICE} characters")
    return text


def _fingerprint(text: str) -> str:
    if not is_fingerprint(text):
        raise ValueError("expected SHA256: and 64 lowercase hex digits")
    return text


def _epilog() -> str:
    codes = "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())
    return (
        "exit codes:\n"
        f"{codes}\n\n"
        "environment:\n"
        "  ELINK_PROFILE        profile to use when --profile is not given\n"
        "  ELINK_PASSWORD       the password (else --password-stdin, the keyring, a prompt)\n"
        "  ELINK_CONFIG_DIR     where profiles.toml lives (default ~/.config/elink)\n"
        "  ELINK_KNOWN_SERVERS  the known-servers file (default ~/.config/elink/known_servers)\n\n"
        "examples:\n"
        "  elink login --host chat.example.com --user alice\n"
        '  elink send bob "build 1234 passed" --wait delivered --timeout 30\n'
        "  elink listen --type message | jq -r .text\n"
        "  elink send-file bob report.pdf --caption 'the Q3 report'\n"
        "  elink download 42 ~/Downloads --in bob\n"
        '  echo "$PW" | elink --password-stdin history bob --limit 5'
    )


#: The output format, in ``elink listen --help``.
LISTEN_FORMAT = """\
output: one JSON object per line, with "type" first, for example
  {"type": "message", "cursor": 7, "msg_id": 42, "conversation": "d:alice:bob",
   "seq": 3, "sender": "bob", "sender_device": "laptop", "client_msg_id": "...",
   "kind": "text", "text": "hi", "content": {"text": "hi"},
   "created_at_ms": 1700000000000, "recalled_at_ms": null, "flags": 0}
  {"type": "read", "conversation": "d:alice:bob", "msg_id": 41, "reader": "bob",
   "at_ms": 1700000000000, "cursor": 8}
Bytes in a message's content appear as hex strings.  When listen ends
(--count, --timeout, Ctrl-C, SIGTERM) the server is told which events were
printed: the next listen continues after them."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``elink``."""
    common = argparse.ArgumentParser(add_help=False)
    options = common.add_argument_group("connection options (any command)")
    # SUPPRESS: a subcommand's parser must not reset an option given before
    # the subcommand name.
    add = options.add_argument
    add(
        "--profile",
        metavar="NAME",
        type=_arg(check_profile_name, "profile name"),
        default=argparse.SUPPRESS,
        help="the saved profile to use (default: $ELINK_PROFILE, else 'default')",
    )
    add("--host", type=_arg(_host, "host"), default=argparse.SUPPRESS, help="server host")
    add("--port", type=_arg(_port, "port"), default=argparse.SUPPRESS, help="server TCP port")
    add("--user", type=_arg(check_name, "user name"), default=argparse.SUPPRESS, help="user name")
    add(
        "--device",
        metavar="ID",
        type=_arg(_device, "device id"),
        default=argparse.SUPPRESS,
        help="device id: listen logs in as ID, the other commands as ID-cmd "
        "(give concurrent scripts their own)",
    )
    add(
        "--fingerprint",
        metavar="SHA256:HEX",
        action="append",
        type=_arg(_fingerprint, "fingerprint"),
        default=argparse.SUPPRESS,
        help="trust only this server key (repeatable); default: the key pinned "
        "by `elink login`, else the known-servers file",
    )
    add(
        "--password-stdin",
        action="store_true",
        default=argparse.SUPPRESS,
        help="read the password from the first line of standard input",
    )
    add(
        "--connect-timeout",
        metavar="S",
        type=_arg(_positive(float), "timeout"),
        default=argparse.SUPPRESS,
        help="give up connecting after S seconds (default 10)",
    )
    add(
        "--udp",
        action="store_true",
        default=argparse.SUPPRESS,
        help="talk to the server over UDP (same port number) instead of TCP",
    )
    add("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    parser = argparse.ArgumentParser(
        prog="elink",
        description="Send and receive e-Link messages from a terminal or a script.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[_Run], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    command(
        "login",
        _sync(_cmd_login),
        "log in once to check the account, pin the server key, save a profile "
        "and keep the password in the system keyring",
    )
    command("logout", _cmd_logout, "forget the profile and its password in the keyring")
    profiles = command("profiles", _cmd_profiles, "list the saved profiles")
    profiles.add_argument("--json", action="store_true", help="one JSON object")

    send = command("send", _sync(_cmd_send), "send a text message; print its message id")
    send.add_argument(
        "to", metavar="USER", type=_arg(_peer, "recipient"), help="a user, or a conversation id"
    )
    send.add_argument("text", metavar="TEXT", help="the text ('-' reads standard input)")
    send.add_argument(
        "--wait",
        choices=("delivered", "read"),
        help="then wait until a device of the recipient has it, or it was read",
    )
    send.add_argument(
        "--timeout",
        metavar="S",
        type=_arg(_positive(float), "timeout"),
        default=60.0,
        help="how long --wait waits (default 60); exit code 7 when it passes",
    )
    send.add_argument(
        "--client-msg-id",
        metavar="KEY",
        type=_arg(check_client_msg_id, "key"),
        help="idempotency key: sending again with the same KEY never stores the message twice",
    )
    send.add_argument("--json", action="store_true", help="print a JSON object instead of the id")

    listen = command(
        "listen",
        _sync(_cmd_listen),
        "print events as JSON lines (one object per line, flushed) until "
        "Ctrl-C; events that arrived while nobody listened come first",
    )
    listen.add_argument(
        "--count", metavar="N", type=_arg(_positive(int), "count"), help="stop after N events"
    )
    listen.add_argument(
        "--timeout",
        metavar="S",
        type=_arg(_positive(float), "timeout"),
        help="stop after listening S seconds (exit code 7 if --count was not reached)",
    )
    listen.add_argument(
        "--type",
        dest="types",
        metavar="TYPE",
        action="append",
        choices=sorted(EVENT_TYPES.values()),
        help="print only events of this type (repeatable): "
        f"{', '.join(sorted(EVENT_TYPES.values()))}; the others are skipped",
    )
    listen.description = (
        "Print events as JSON lines until Ctrl-C.\n"
        "Events that arrived while nobody listened come first."
    )
    listen.epilog = LISTEN_FORMAT
    listen.formatter_class = argparse.RawDescriptionHelpFormatter

    history = command("history", _sync(_cmd_history), "the latest messages, oldest first")
    history.add_argument(
        "peer", metavar="USER", type=_arg(_peer, "user"), help="a user, or a conversation id"
    )
    history.add_argument(
        "--limit",
        metavar="N",
        type=_arg(_at_most(MAX_PAGE), "limit"),
        default=20,
        help=f"at most N messages (1-{MAX_PAGE}, default 20)",
    )
    history.add_argument(
        "--before",
        metavar="SEQ",
        type=_arg(_at_most(2**64 - 1), "sequence number"),
        help="only messages before this sequence number (for older pages)",
    )
    history.add_argument(
        "--json", action="store_true", help="one JSON object (messages newest first)"
    )

    search = command("search", _sync(_cmd_search), "messages containing TEXT, oldest first")
    search.add_argument("query", metavar="TEXT", type=_arg(nonempty_text(MAX_QUERY), "text"))
    search.add_argument(
        "--in",
        dest="within",
        metavar="USER",
        type=_arg(_peer, "user"),
        help="only the conversation with USER (or a conversation id)",
    )
    search.add_argument(
        "--limit",
        metavar="N",
        type=_arg(_at_most(MAX_PAGE), "limit"),
        default=20,
        help=f"at most N messages (1-{MAX_PAGE}, default 20)",
    )
    search.add_argument(
        "--json", action="store_true", help="one JSON object (messages newest first)"
    )

    send_file = command(
        "send-file",
        _sync(_cmd_send_file),
        "send a file, or a whole folder, as one message; print its message id "
        "(a progress bar on standard error when it is a terminal)",
    )
    send_file.add_argument(
        "to", metavar="USER", type=_arg(_peer, "recipient"), help="a user, or a conversation id"
    )
    send_file.add_argument("path", metavar="PATH", help="the file, or a folder to send whole")
    send_file.add_argument(
        "--caption", metavar="TEXT", default="", help="text shown with the file (searchable)"
    )
    send_file.add_argument(
        "--kind",
        choices=SEND_FILE_KINDS,
        default="file",
        help="how the recipient shows it (default: file)",
    )
    send_file.add_argument(
        "--width", metavar="PX", type=_arg(_at_most(2**32 - 1), "width"), help="images: width"
    )
    send_file.add_argument(
        "--height", metavar="PX", type=_arg(_at_most(2**32 - 1), "height"), help="images: height"
    )
    send_file.add_argument(
        "--duration-ms",
        metavar="MS",
        type=_arg(_at_most(2**32 - 1), "duration"),
        help="voice and video: the duration in milliseconds",
    )
    send_file.add_argument(
        "--name", metavar="NAME", help="the file name the recipient sees (default: PATH's)"
    )
    send_file.add_argument(
        "--media-type", metavar="TYPE", help="e.g. image/png (default: from the extension)"
    )
    send_file.add_argument(
        "--timeout",
        metavar="S",
        type=_arg(_positive(float), "timeout"),
        help="give up after S seconds (exit code 7); default: only when no byte moves",
    )
    send_file.add_argument(
        "--client-msg-id",
        metavar="KEY",
        type=_arg(check_client_msg_id, "key"),
        help="idempotency key: sending again with the same KEY never stores the message twice",
    )
    send_file.add_argument(
        "--json", action="store_true", help="print a JSON object instead of the id"
    )

    download = command(
        "download",
        _sync(_cmd_download),
        "download the file or folder of message MSG_ID of the conversation with USER; "
        "print the path written (a progress bar on standard error when it is a terminal)",
    )
    download.add_argument("msg_id", metavar="MSG_ID", type=_arg(_at_most(2**64 - 1), "message id"))
    download.add_argument(
        "dest",
        metavar="DEST",
        nargs="?",
        help="a folder to download into, or a file path (default: the current folder "
        "for a file, a new folder named after the folder for a folder)",
    )
    download.add_argument(
        "--in",
        dest="within",
        metavar="USER",
        required=True,
        type=_arg(_peer, "user"),
        help="the conversation the message is in: a user, or a conversation id",
    )
    download.add_argument(
        "--only",
        metavar="PATTERN",
        action="append",
        help="folders: only files at this relative path, under it, or matching "
        "this glob pattern (repeatable)",
    )
    download.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start again even if DEST.part holds an interrupted download",
    )
    download.add_argument(
        "--timeout",
        metavar="S",
        type=_arg(_positive(float), "timeout"),
        help="give up after S seconds (exit code 7); default: only when no byte moves",
    )
    download.add_argument("--json", action="store_true", help="print a JSON object")

    status = command("status", _sync(_cmd_status), "receipts of one of your messages")
    status.add_argument("msg_id", metavar="MSG_ID", type=_arg(_at_most(2**64 - 1), "message id"))
    status.add_argument("--json", action="store_true", help="one JSON object")
    return parser


# ================================================================ login settings


def _ask(run: _Run, label: str, flag: str, default: str | None) -> str:
    """Ask for a login setting at the terminal (``default`` on Enter)."""
    if not run.interactive or run.option("password_stdin"):
        if default is not None:
            return default
        raise CliError(f"give {flag} (there is no terminal to ask on)", EXIT_USAGE)
    shown = f" [{default}]" if default is not None else ""
    while True:
        run.note(f"{label}{shown}: ")
        answer = run.inp.readline()
        if not answer:
            raise CliError(f"no {label.lower()} given", EXIT_USAGE)
        answer = answer.strip() or (default or "")
        if answer:
            return answer


def _login_target(run: _Run, existing: Profile | None) -> Target:
    """Settings for ``elink login``: options, else asked, else the profile's."""

    def setting(key: str, label: str, check: Callable[[str], Any], default: Any) -> Any:
        given = run.option(key)
        if given is not None:
            return given
        while True:
            answer = _ask(run, label, f"--{key}", None if default is None else str(default))
            try:
                return check(answer)
            except ValueError as exc:
                if not run.interactive:
                    raise CliError(
                        f"invalid {label.lower()} {answer!r}: {exc}", EXIT_USAGE
                    ) from None
                run.note(f"invalid {label.lower()}: {exc}")

    host = setting("host", "Server host", _host, existing.host if existing else None)
    port = setting("port", "Port", _port, existing.port if existing else DEFAULT_PORT)
    user = setting("user", "User", check_name, existing.user if existing else None)
    device = setting(
        "device", "Device id", _device, existing.device if existing else default_device()
    )
    target = Target(
        host=host,
        port=port,
        user=user,
        device=device,
        fingerprints=tuple(run.option("fingerprint") or ()),
    )
    run.target = target
    return target


# ================================================================ connecting


def _sync(command: Callable[[_Run], Awaitable[int]]) -> Callable[[_Run], int]:
    """Run an async command under Trio."""

    def run_command(run: _Run) -> int:
        return trio.run(command, run)

    return run_command


@contextlib.asynccontextmanager
async def _session(
    run: _Run, target: Target, password: str, *, device: str, event_buffer: int = 1
) -> AsyncIterator[Client]:
    """A logged-in client.  One-shot commands buffer a single event: they
    do not read events, and what they do not read stays on the server."""
    run.doing = f"log in as {target.account}"
    failure: ElinkError | CliError | None = None
    async with connect(
        target.host,
        target.port,
        user=target.user,
        password=password,
        device_id=device,
        server_fingerprint=target.fingerprints or None,
        connect_timeout=run.option("connect_timeout", 10.0),
        request_timeout=REQUEST_TIMEOUT,
        event_buffer=event_buffer,
        client_version=CLIENT_VERSION,
        transport="udp" if run.option("udp", False) else "tcp",
    ) as client:
        try:
            yield client
        except (ElinkError, CliError) as exc:
            # A refused request is an answer, not a broken client: leave the
            # block normally so that the client logs out (and confirms the
            # events it handed over), then report the error.
            failure = exc
        except ValueError as exc:  # the SDK refused to send a malformed request
            failure = CliError(f"cannot {run.doing}: {exc}", EXIT_USAGE)
    if failure is not None:
        raise failure


def _target(run: _Run) -> Target:
    """The target from the profile and the overriding options."""
    run.target = resolve_target(
        run.option("profile"),
        host=run.option("host"),
        port=run.option("port"),
        user=run.option("user"),
        device=run.option("device"),
        fingerprints=run.option("fingerprint"),
    )
    return run.target


def _password(run: _Run, account: str, *, use_keyring: bool = True) -> str:
    password, run.password_source = find_password(
        account,
        stdin=run.inp,
        from_stdin=bool(run.option("password_stdin")),
        use_keyring=use_keyring,
    )
    return password


def _command_session(run: _Run) -> contextlib.AbstractAsyncContextManager[Client]:
    target = _target(run)
    password = _password(run, target.account)
    return _session(run, target, password, device=target.command_device)


# ================================================================ commands


async def _cmd_login(run: _Run) -> int:
    name, _ = selected_profile(run.option("profile"))
    existing = load_profiles().get(name)
    target = _login_target(run, existing)
    password = _password(run, target.account, use_keyring=False)
    first_use = False
    if not target.fingerprints:
        first_use = ServerTrust.from_file().keys_for(target.host, target.port) is None
    async with _session(run, target, password, device=target.command_device) as client:
        fingerprint = client.server_fingerprint
    profile = Profile(
        name=name,
        host=target.host,
        port=target.port,
        user=target.user,
        device=target.device,
        fingerprint=fingerprint,
    )
    save_profile(profile)
    run.print(f"Logged in as {target.account}.")
    if first_use:
        run.print(
            f"First connection to {target.server}: trusting its key {fingerprint}.\n"
            "Check it against the fingerprint `elink-server serve` printed."
        )
    run.print(f"Saved profile {name!r} in {profiles_path()}; it pins the server key.")
    store = PasswordStore.open()
    if store is None:
        run.print(
            "The password was not stored (no system keyring: install the `keyring` "
            "package); give it with ELINK_PASSWORD or --password-stdin."
        )
        return EXIT_OK
    try:
        store.set(target.account, password)
    except SetupError as exc:
        run.note(f"elink: warning: {exc}; give the password with ELINK_PASSWORD instead")
    else:
        run.print(f"The password is in the system keyring ({store.backend}).")
    return EXIT_OK


def _cmd_logout(run: _Run) -> int:
    name, _ = selected_profile(run.option("profile"))
    removed = remove_profile(name)
    if removed is None:
        raise CliError(f"no profile {name!r} (see `elink profiles`)", EXIT_USAGE)
    store = PasswordStore.open()
    forgot = store is not None and store.delete(removed.account)
    run.print(
        f"Removed profile {name!r} ({removed.account})"
        + ("; its password is gone from the system keyring." if forgot else ".")
    )
    return EXIT_OK


def _cmd_profiles(run: _Run) -> int:
    profiles = load_profiles()
    current, _ = selected_profile(run.option("profile"))
    if run.option("json"):
        run.print(
            json.dumps({name: attrs.asdict(profile) for name, profile in sorted(profiles.items())})
        )
        return EXIT_OK
    if not profiles:
        run.note("No profiles yet: run `elink login`.")
    for name, profile in sorted(profiles.items()):
        mark = "*" if name == current else " "
        key = profile.fingerprint[:19] + "..." if profile.fingerprint else "no pinned key"
        run.print(f"{mark} {name:<12} {profile.account:<30} device {profile.device:<16} {key}")
    return EXIT_OK


async def _cmd_send(run: _Run) -> int:
    text: str = run.args.text
    if text == "-":
        if run.option("password_stdin"):
            raise CliError("TEXT '-' and --password-stdin both want standard input", EXIT_USAGE)
        text = run.inp.read().rstrip("\n")
    try:
        # Checked before connecting, so that bad input is a usage error (exit 2).
        check_content("text", {"text": text})
    except ValueError as exc:
        raise CliError(f"cannot send this text: {exc}", EXIT_USAGE) from None
    async with _command_session(run) as client:
        run.doing = f"send to {run.args.to}"
        sent = await client.send_text(run.args.to, text, client_msg_id=run.args.client_msg_id)
        if not run.args.json:
            run.print(str(sent.msg_id))
        timed_out: DeadlineExceeded | None = None
        if run.args.wait:
            run.doing = ""  # the deadline's message says it all
            waiter = sent.wait_read if run.args.wait == "read" else sent.wait_delivered
            try:
                await waiter(timeout=run.args.timeout)
            except DeadlineExceeded as exc:
                timed_out = exc
        if run.args.json:
            run.print(json.dumps(sent_json(sent)))
        if timed_out is not None:
            raise timed_out
    return EXIT_OK


async def _cmd_history(run: _Run) -> int:
    peer: str = run.args.peer
    async with _command_session(run) as client:
        run.doing = f"read the history with {peer}"
        page = await client.history(peer, before=run.args.before, limit=run.args.limit)
    if run.args.json:
        messages = [message_json(message) for message in page.messages]
        body = {"messages": messages, "has_more": page.has_more, "next_before": page.next_before}
        run.print(json.dumps(body))
        return EXIT_OK
    if page.next_before is not None:
        run.print(f"(older messages: elink history {peer} --before {page.next_before})")
    for message in reversed(page.messages):
        run.print(format_message(message))
    return EXIT_OK


async def _cmd_search(run: _Run) -> int:
    async with _command_session(run) as client:
        run.doing = f"search for {run.args.query!r}"
        found = await client.search(
            run.args.query, conversation=run.args.within, limit=run.args.limit
        )
    if run.args.json:
        messages = [message_json(message) for message in found.messages]
        run.print(json.dumps({"messages": messages, "has_more": found.has_more}))
        return EXIT_OK
    for message in reversed(found.messages):
        run.print(format_message(message, conversation=True))
    if found.has_more:
        run.print(f"(more matches: raise --limit above {run.args.limit}, or refine the text)")
    elif not found.messages:
        run.note("No messages found.")
    return EXIT_OK


async def _cmd_status(run: _Run) -> int:
    async with _command_session(run) as client:
        run.doing = f"get the status of message {run.args.msg_id}"
        report = await client.message_status(run.args.msg_id)
    if run.args.json:
        run.print(json.dumps(report_json(report)))
        return EXIT_OK
    run.print(f"message {report.msg_id}: {report.state.value}")
    run.print(f"  sent       {local_time(report.sent_at_ms)}")
    for delivery in report.deliveries:
        run.print(f"  delivered  {local_time(delivery.at_ms)}  {delivery.user} ({delivery.device})")
    if report.delivered_count > len(report.deliveries):
        run.print(f"  ... delivered to {report.delivered_count} devices in all")
    for read in report.reads:
        run.print(f"  read       {local_time(read.at_ms)}  {read.user}")
    if report.read_count > len(report.reads):
        run.print(f"  ... read by {report.read_count} users in all")
    return EXIT_OK


# ---------------------------------------------------------------- files


class _ProgressBar:
    """A self-drawn progress bar on a terminal: one line per file, redrawn
    in place, ended with a newline when the file is complete."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._shown = 0

    def __call__(self, progress: TransferProgress) -> None:
        filled = int(self.WIDTH * progress.fraction)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        which = f" ({progress.index}/{progress.count})" if progress.count > 1 else ""
        line = (
            f"[{bar}] {100 * progress.fraction:5.1f}% "
            f"{human_size(progress.done)}/{human_size(progress.total)}  {progress.name}{which}"
        )
        self._stream.write("\r" + line.ljust(self._shown))
        self._shown = len(line)
        if progress.done >= progress.total:
            self._stream.write("\n")
            self._shown = 0
        self._stream.flush()


def _progress_bar(run: _Run) -> Callable[[TransferProgress], None] | None:
    """A progress bar on standard error when it is a terminal."""
    isatty = getattr(run.err, "isatty", None)
    return _ProgressBar(run.err) if isatty is not None and isatty() else None


async def _cmd_send_file(run: _Run) -> int:
    args = run.args
    path = Path(args.path)
    folder = path.is_dir()
    if not folder and not path.is_file():
        raise CliError(f"{path} is not a file or a folder", EXIT_USAGE)
    extras = (args.width, args.height, args.duration_ms, args.name, args.media_type)
    if folder and (args.kind != "file" or any(extra is not None for extra in extras)):
        raise CliError(
            "a folder is sent as it is: --kind, --width, --height, --duration-ms, "
            "--name and --media-type are for single files",
            EXIT_USAGE,
        )
    async with _command_session(run) as client:
        run.doing = f"send {path} to {args.to}"
        try:
            if folder:
                sent = await client.send_folder(
                    args.to,
                    path,
                    caption=args.caption,
                    progress=_progress_bar(run),
                    client_msg_id=args.client_msg_id,
                    timeout=args.timeout,
                )
            else:
                sent = await client.send_file(
                    args.to,
                    path,
                    name=args.name,
                    media_type=args.media_type,
                    caption=args.caption,
                    kind=args.kind,
                    width=args.width,
                    height=args.height,
                    duration_ms=args.duration_ms,
                    progress=_progress_bar(run),
                    client_msg_id=args.client_msg_id,
                    timeout=args.timeout,
                )
        except OSError as exc:
            raise CliError(f"cannot {run.doing}: {exc}") from None
        run.print(json.dumps(sent_json(sent)) if args.json else str(sent.msg_id))
    return EXIT_OK


async def _cmd_download(run: _Run) -> int:
    args = run.args
    async with _command_session(run) as client:
        run.doing = f"find message {args.msg_id} with {args.within}"
        message = await client.get_message(args.within, args.msg_id)
        run.doing = f"download message {args.msg_id}"
        if message.kind != "folder" and args.only:
            raise CliError(f"message {args.msg_id} is not a folder: --only is for folders")
        dest = args.dest
        if dest is None:
            dest = "."
            if message.kind == "folder" and message.content is not None:
                dest = safe_file_name(str(message.content.get("ref", {}).get("n", "folder")))
        try:
            path = await client.download(
                message,
                dest,
                only=args.only,
                progress=_progress_bar(run),
                resume=args.resume,
                timeout=args.timeout,
            )
        except OSError as exc:
            raise CliError(f"cannot {run.doing}: {exc}") from None
    if args.json:
        run.print(json.dumps({"msg_id": message.msg_id, "kind": message.kind, "path": str(path)}))
    else:
        run.print(str(path))
    return EXIT_OK


# ---------------------------------------------------------------- listen


class _Stopper:
    """Ctrl-C and SIGTERM end ``listen`` cleanly: while connecting they
    abort, while listening they end the loop, so that the client still
    logs out and tells the server which events were printed."""

    def __init__(self) -> None:
        self.connecting = trio.CancelScope()
        self.listening = trio.CancelScope()
        self.listening_started = False

    def stop(self) -> None:
        self.listening.cancel()
        if not self.listening_started:
            self.connecting.cancel()

    async def watch_signals(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for _ in signals:
                self.stop()


async def _cmd_listen(run: _Run) -> int:
    target = _target(run)
    password = _password(run, target.account)
    stopper = _Stopper()
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        if threading.current_thread() is threading.main_thread():
            await nursery.start(stopper.watch_signals)
        # Carried out of the nursery by hand, so that the error arrives as
        # itself rather than inside an ExceptionGroup.
        try:
            with stopper.connecting:
                async with _session(
                    run, target, password, device=target.device, event_buffer=1000
                ) as client:
                    with stopper.listening:
                        stopper.listening_started = True
                        await _print_events(run, client)
        except Exception as exc:
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return EXIT_OK


async def _print_events(run: _Run, client: Client) -> None:
    """Print events as JSON lines until ``--count`` or ``--timeout``."""
    count: int | None = run.args.count
    wanted = set(run.args.types or EVENT_TYPES.values())
    printed = 0
    run.doing = "listen"
    with trio.move_on_after(run.args.timeout or math.inf) as deadline:
        async for event in client.events():
            data = event_json(event)
            if data["type"] not in wanted:
                continue
            run.print(json.dumps(data, default=json_default))
            printed += 1
            if count is not None and printed >= count:
                return
    if deadline.cancelled_caught and count is not None:
        raise CliError(
            f"only {printed} of {count} events within {run.args.timeout:g} s", EXIT_TIMEOUT
        )


if __name__ == "__main__":
    sys.exit(main())
