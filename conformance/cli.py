"""``elink-conformance``: check an e-Link server against docs/protocol.md.

::

    elink-conformance HOST:PORT --password PW [--user NAME ...] [--cases 4.2.*,11.7]
                      [--json FILE] [--junit FILE] [--provision --data-dir DIR]
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import sys
from collections.abc import Sequence

import trio

from .case import DEFAULT_USERS, Options, select
from .provision import ProvisionError, provision
from .report import detail_lines, line_for, render_text, summary_line, write_json, write_junit
from .results import CaseResult
from .runner import Unreachable, run_suite

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_PROVISION = 4

PASSWORD_VARIABLE = "ELINK_CONFORMANCE_PASSWORD"

EPILOG = f"""\
accounts:
  The suite logs in with four accounts, all with the password given by
  --password (or ${PASSWORD_VARIABLE}).  By default they are named
  conf-a, conf-b and conf-c (chat users) and conf-d (it takes the suite's
  wrong-password attempts and may end up rate limited for a while); --user
  given four times names them otherwise.  The suite also tries wrong
  passwords for the name "conf-locked", which needs no account.  Against our
  own server, --provision creates the accounts with "elink-server users add"
  (add --data-dir or --server-config to say which server).  Every run uses
  fresh device ids and message ids, so runs can repeat against one server.

deadlines:
  The server's handshake deadline, idle timeout and heartbeat interval are not
  sent on the wire: give them with the options above (the spec's defaults
  otherwise).  Cases that must wait longer than --max-wait are SKIPPED.

exit status:
  0 no case FAILED; 1 a case FAILED (a MUST is broken) or the suite hit an
  internal ERROR; 2 bad usage; 3 the server cannot be reached; 4 --provision
  failed.  NON-STRICT (a SHOULD not met), UNIMPLEMENTED, INFORMATIONAL and
  SKIPPED do not fail the run.
"""


def _target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _udp_port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port (1-65535), got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elink-conformance",
        description="Check an e-Link server against the protocol specification (docs/protocol.md).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", nargs="?", type=_target, metavar="HOST:PORT")
    who = parser.add_argument_group("accounts")
    who.add_argument("--user", action="append", metavar="NAME", help="an account (four, in order)")
    who.add_argument("--password", help=f"the accounts' password (or ${PASSWORD_VARIABLE})")
    who.add_argument(
        "--fingerprint",
        action="append",
        metavar="SHA256:HEX",
        help="pin the server key (default: trust the key the server shows)",
    )
    who.add_argument("--provision", action="store_true", help="create the accounts first")
    who.add_argument(
        "--server-command",
        default="elink-server",
        metavar="CMD",
        help="the admin command for --provision (default: elink-server)",
    )
    who.add_argument("--data-dir", metavar="DIR", help="--provision: the server's data directory")
    who.add_argument(
        "--server-config", metavar="FILE", help="--provision: the server's settings file"
    )
    what = parser.add_argument_group("cases")
    what.add_argument(
        "--cases",
        metavar="PATTERNS",
        help="comma-separated case ids, sections or globs (4.2, 4.2.*, EL-11.7.3-2)",
    )
    what.add_argument("--list", action="store_true", help="list the selected cases and exit")
    server = parser.add_argument_group("the server's deadlines and limits")
    server.add_argument("--handshake-timeout", type=_positive, default=10.0, metavar="S")
    server.add_argument("--idle-timeout", type=_positive, default=60.0, metavar="S")
    server.add_argument("--heartbeat-interval", type=_positive, default=20.0, metavar="S")
    server.add_argument("--offline-cap", type=int, default=1000, metavar="N")
    server.add_argument(
        "--udp-port",
        type=_udp_port,
        default=None,
        metavar="PORT",
        help="the server's UDP port (default: the TCP port, §6.9)",
    )
    server.add_argument(
        "--token-lifetime",
        type=_positive,
        default=10.0,
        metavar="S",
        help="how long the server's address-validation tokens live (§6.9.3)",
    )
    server.add_argument("--max-rto", type=_positive, default=10.0, metavar="S")
    server.add_argument("--max-retransmissions", type=int, default=8, metavar="N")
    server.add_argument(
        "--legacy-suites",
        action="store_true",
        help="the server is configured to accept the legacy suites",
    )
    server.add_argument(
        "--wait", type=_positive, default=5.0, metavar="S", help="how long to wait for an answer"
    )
    server.add_argument(
        "--max-wait",
        type=_positive,
        default=130.0,
        metavar="S",
        help="skip cases that would wait longer for a deadline (default 130)",
    )
    out = parser.add_argument_group("report")
    out.add_argument("--json", metavar="FILE", help="write the report as JSON")
    out.add_argument("--junit", metavar="FILE", help="write the report as JUnit XML")
    out.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    out.add_argument("-q", "--quiet", action="store_true", help="print the summary only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    patterns = args.cases.split(",") if args.cases else ["*"]
    selected = select(patterns)
    if args.list:
        for item in selected:
            print(f"{item.id:<14} {item.level.value:<6} {item.title}")
        return EXIT_PASSED
    if args.target is None:
        parser.print_usage(sys.stderr)
        print("elink-conformance: HOST:PORT is required", file=sys.stderr)
        return EXIT_USAGE
    if not selected:
        print(f"elink-conformance: no case matches {args.cases!r} (see --list)", file=sys.stderr)
        return EXIT_USAGE
    users = tuple(args.user) if args.user else DEFAULT_USERS
    password = args.password or os.environ.get(PASSWORD_VARIABLE)
    if args.provision:
        if password is None:
            print("elink-conformance: --provision needs --password", file=sys.stderr)
            return EXIT_USAGE
        try:
            for line in provision(
                users,
                password,
                server_command=shlex.split(args.server_command),
                data_dir=args.data_dir,
                config=args.server_config,
            ):
                print(f"provision: {line}")
        except ProvisionError as exc:
            print(f"elink-conformance: provisioning failed: {exc}", file=sys.stderr)
            return EXIT_PROVISION
    host, port = args.target
    options = Options(
        host=host,
        port=port,
        users=users,
        password=password,
        fingerprints=frozenset(args.fingerprint) if args.fingerprint else None,
        wait=args.wait,
        handshake_timeout=args.handshake_timeout,
        idle_timeout=args.idle_timeout,
        heartbeat_interval=args.heartbeat_interval,
        max_wait=args.max_wait,
        legacy_suites=args.legacy_suites,
        offline_cap=args.offline_cap,
        udp_port=args.udp_port,
        token_lifetime=args.token_lifetime,
        max_rto=args.max_rto,
        max_retransmissions=args.max_retransmissions,
    )
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())

    def progress(result: CaseResult) -> None:
        if not args.quiet:
            print(line_for(result, color=color))
            for line in detail_lines(result):
                print(line)
            sys.stdout.flush()

    try:
        report = trio.run(functools.partial(run_suite, options, selected, progress=progress))
    except Unreachable as exc:
        print(f"elink-conformance: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130
    if args.quiet:
        print(summary_line(report))
    else:
        print()
        print(render_text(report, color=color, verbose=False))
    if args.json:
        write_json(report, args.json)
    if args.junit:
        write_junit(report, args.junit)
    return EXIT_PASSED if report.passed else EXIT_FAILED
