"""The ``elink-server`` command line.

::

    elink-server serve [--host H] [--port P] [--workers N|auto] [--data-dir DIR] [--config FILE]
    elink-server status [--json] [--locate USER]
    elink-server config show [--config FILE] [...]
    elink-server users add NAME --password PW
    elink-server users list
    elink-server users passwd NAME --password PW
    elink-server users disable NAME

Settings come from the TOML file (``--config``), ``ELINK_*`` environment
variables and flags, in that order of precedence (``settings.py``).  Every
subcommand takes ``--config`` and ``--data-dir``.

Exit codes: 0 success; 1 the operation failed (unknown or existing user,
unusable key file, address in use, no server running for ``status``); 2 bad
usage or settings.  Messages go to standard error; ``serve`` prints
``listening on HOST:PORT``, the key fingerprint and ``workers: N`` on
standard output, and structured logs (JSON lines) on standard error.
``status`` asks the server running on the data directory (through its
control socket) and prints its statistics (docs/operators.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from . import accounts
from .host import DATABASE_FILE_NAME, Server, open_server
from .identity_store import IdentityError
from .node.control import ControlError, call_control, control_socket, status_text
from .node.supervisor import NodeError
from .settings import ServerSettings, SettingsError, load_settings, settings_as_toml
from .storage import InvalidArgument, StorageError, UnknownUser, open_sqlite_store
from .storage import schema as storage_schema

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """An operation failed in a way the operator must hear about."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ parser


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's parser must not reset an option given before
    # the subcommand name to None.
    common.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="TOML settings file (see config show)",
    )
    common.add_argument(
        "--data-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="where the database and server key live",
    )

    parser = argparse.ArgumentParser(
        prog="elink-server",
        description="The e-Link instant-messaging server.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve", parents=[common], help="run the server until SIGINT or SIGTERM"
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", help="TCP port (default 7420; 0 picks a free port)")
    serve.add_argument(
        "--workers", help="worker processes sharing the port (default 1; auto: one per core)"
    )
    serve.set_defaults(run=_cmd_serve)

    status = commands.add_parser(
        "status", parents=[common], help="print the running server's statistics"
    )
    status.add_argument("--json", action="store_true", help="print them as one JSON object")
    status.add_argument(
        "--locate", metavar="USER", help="print which worker holds each device of USER"
    )
    status.set_defaults(run=_cmd_status)

    config = commands.add_parser("config", parents=[common], help="inspect the settings")
    config_commands = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = config_commands.add_parser(
        "show", parents=[common], help="print the effective settings as TOML"
    )
    show.set_defaults(run=_cmd_config_show)

    users = commands.add_parser("users", parents=[common], help="manage accounts")
    user_commands = users.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = user_commands.add_parser("add", parents=[common], help="create an account")
    add.add_argument("name")
    add.add_argument("--password", required=True, help="the new account's password")
    add.set_defaults(run=_cmd_users_add)
    listing = user_commands.add_parser("list", parents=[common], help="list the accounts")
    listing.set_defaults(run=_cmd_users_list)
    passwd = user_commands.add_parser("passwd", parents=[common], help="set a new password")
    passwd.add_argument("name")
    passwd.add_argument("--password", required=True, help="the new password")
    passwd.set_defaults(run=_cmd_users_passwd)
    disable = user_commands.add_parser(
        "disable", parents=[common], help="forbid an account to log in (its data is kept)"
    )
    disable.add_argument("name")
    disable.set_defaults(run=_cmd_users_disable)
    return parser


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> ServerSettings:
    flags = {name: getattr(args, name, None) for name in ("data_dir", "host", "port", "workers")}
    return load_settings(getattr(args, "config", None), environ, flags)


# ----------------------------------------------------------------- commands


def _cmd_config_show(settings: ServerSettings, args: argparse.Namespace) -> int:
    sys.stdout.write(settings_as_toml(settings))
    return EXIT_OK


def configure_logging(level: str, *, worker: int | None = None) -> None:
    """Structured logs: one JSON object per line on standard error.  A
    worker of a node adds ``worker`` (its index) to every line."""

    def add_worker(
        logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event.setdefault("worker", worker)
        return event

    structlog.configure(
        processors=[
            *([add_worker] if worker is not None else []),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def _cmd_serve(settings: ServerSettings, args: argparse.Namespace) -> int:
    configure_logging(settings.log_level)
    try:
        trio.run(_serve, settings)
    except IdentityError as exc:
        raise CommandError(str(exc)) from None
    except (ControlError, NodeError) as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None
    return EXIT_OK


async def _serve(settings: ServerSettings) -> None:
    # Receive the signals before announcing the address, so that a SIGTERM
    # sent right after "listening on" is never missed.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_server(settings) as server:
            if isinstance(server, Server):
                # A node serves its control socket itself.
                control: Any = control_socket(
                    settings.data_dir, status=server.status, locate=server.locate
                )
            else:
                control = contextlib.nullcontext()
            async with control:
                for host, port in server.addresses:
                    shown = f"[{host}]" if ":" in host else host
                    print(f"listening on {shown}:{port}", flush=True)
                print(f"server key fingerprint: {server.fingerprint}", flush=True)
                print(f"workers: {settings.worker_count()}", flush=True)
                async with trio.open_nursery() as nursery:

                    async def on_signal() -> None:
                        async for signum in signals:
                            structlog.get_logger("elink_server").info(
                                "shutting down", signal=signal.Signals(signum).name
                            )
                            break
                        nursery.cancel_scope.cancel()

                    async def on_request() -> None:
                        await server.wait_shutdown_requested()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(on_signal)
                    nursery.start_soon(on_request)
    print("stopped", flush=True)


def _cmd_status(settings: ServerSettings, args: argparse.Namespace) -> int:
    try:
        if args.locate is not None:
            found = trio.run(call_control, settings.data_dir, "locate", args.locate)
        else:
            found = trio.run(call_control, settings.data_dir, "status")
    except ControlError as exc:
        raise CommandError(f"error: {exc}") from None
    if args.json:
        print(json.dumps(found, sort_keys=True))
    elif args.locate is not None:
        if not found:
            print(f"{args.locate} has no device logged in")
        for device, worker in sorted(found.items()):
            print(f"{device}\tworker {worker}")
    else:
        sys.stdout.write(status_text(found))
    return EXIT_OK


def _run_store(settings: ServerSettings, work: Callable[[Any], Any]) -> Any:
    async def main() -> Any:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        async with open_sqlite_store(
            settings.data_dir / DATABASE_FILE_NAME, offline_cap=settings.offline_cap
        ) as store:
            # Caught here, inside the store's nursery's body, so the error
            # arrives as itself rather than wrapped in an ExceptionGroup.
            try:
                return await work(store)
            except StorageError as exc:
                return exc

    try:
        result = trio.run(main)
    except OSError as exc:
        raise CommandError(f"error: {settings.data_dir}: {exc.strerror or exc}") from None
    if isinstance(result, InvalidArgument):
        raise CommandError(f"error: {result}", EXIT_USAGE)
    if isinstance(result, StorageError):
        raise CommandError(f"error: {result}")
    return result


def _check_password(password: str) -> None:
    if not password:
        raise CommandError("error: the password must not be empty", EXIT_USAGE)
    if len(password.encode()) > accounts.MAX_PASSWORD_BYTES:
        raise CommandError(
            f"error: the password is longer than {accounts.MAX_PASSWORD_BYTES} bytes", EXIT_USAGE
        )


def _cmd_users_add(settings: ServerSettings, args: argparse.Namespace) -> int:
    _check_password(args.password)

    async def work(store: Any) -> None:
        hashed = await accounts.hash_password_async(args.password)
        await store.create_user(args.name, password_hash=hashed, now=time.time())

    _run_store(settings, work)
    print(f"user {args.name!r} added")
    return EXIT_OK


def _cmd_users_passwd(settings: ServerSettings, args: argparse.Namespace) -> int:
    _check_password(args.password)

    async def work(store: Any) -> None:
        if await store.get_user(args.name) is None:
            raise UnknownUser(f"no user {args.name!r}")
        hashed = await accounts.hash_password_async(args.password)
        await store.set_password_hash(args.name, hashed)

    _run_store(settings, work)
    print(f"password of {args.name!r} changed")
    return EXIT_OK


def _cmd_users_disable(settings: ServerSettings, args: argparse.Namespace) -> int:
    async def work(store: Any) -> None:
        await store.set_user_disabled(args.name, True)

    _run_store(settings, work)
    print(f"user {args.name!r} disabled")
    return EXIT_OK


def _list_users(path: Path) -> list[tuple[str, int, float]]:
    # The Store protocol has no listing (services never need one); the CLI
    # reads the users table through a read-only connection of the schema.
    db = storage_schema.open_reader(path)
    try:
        rows = db.execute("SELECT name, disabled, created_at FROM users ORDER BY name").fetchall()
        return [(str(name), int(disabled), float(created)) for name, disabled, created in rows]
    finally:
        db.close()


def _cmd_users_list(settings: ServerSettings, args: argparse.Namespace) -> int:
    async def work(store: Any) -> list[tuple[str, int, float]]:
        # Opening the store first creates the schema on a fresh data dir.
        return await trio.to_thread.run_sync(_list_users, settings.data_dir / DATABASE_FILE_NAME)

    rows: list[tuple[str, int, float]] = _run_store(settings, work)
    for name, disabled, created in rows:
        when = datetime.datetime.fromtimestamp(created, datetime.UTC).strftime("%Y-%m-%d %H:%M")
        print(f"{name}\t{'disabled' if disabled else 'active'}\tcreated {when} UTC")
    return EXIT_OK


# --------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        settings = _settings(args, os.environ if environ is None else environ)
    except SettingsError as exc:
        print(f"elink-server: settings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.run(settings, args)
    except CommandError as exc:
        print(f"elink-server: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code
