"""The control socket: how ``elink-server status`` reaches a running server.

A Unix socket ``control.sock`` in the data directory (mode 0600 inside the
0700 directory: only the server's own user connects).  It speaks the node's
link protocol (:mod:`.link`); calls:

* ``status [rates]`` -> the server's statistics as a map (:func:`status_text`
  prints them, docs/operators.md says what each number is); ``rates``
  (default true) adds messages per second, measured over at least a second;
* ``locate [user]`` -> ``{device: worker}`` for the user's logged-in devices.

Socket paths are limited to 107 bytes; a longer one is reached through the
directory's ``/proc/self/fd`` entry (Linux).  At start a stale socket file (no
server answers) is replaced; one that answers means another server runs on
this data directory, and starting fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket as stdlib_socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
import trio

from .link import Link, LinkClosed

logger = structlog.get_logger("elink_server")

CONTROL_FILE_NAME = "control.sock"
#: Longest socket path bound or connected directly.
MAX_SOCKET_PATH = 100
#: Longest a control call may take (a status waits a second for rates).
CALL_TIMEOUT = 30.0

StatusFunction = Callable[[bool], Awaitable[dict[str, Any]]]
"""``status(rates)``: the statistics; with ``rates``, messages per second too
(which takes a second when no recent sample exists)."""
LocateFunction = Callable[[str], dict[str, int]]


class ControlError(Exception):
    """The control socket cannot be used (the message says why)."""


def control_path(data_dir: Path) -> Path:
    return Path(data_dir) / CONTROL_FILE_NAME


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """``path``, or an equivalent short enough for a Unix socket."""
    text = str(path)
    if len(text.encode()) <= MAX_SOCKET_PATH:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


async def _connect(path: Path) -> trio.SocketStream:
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        with _short_path(path) as where:
            await sock.connect(where)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def open_control_listener(data_dir: Path) -> trio.SocketListener:
    """Listen on the data directory's control socket.  Raises
    :class:`ControlError` if another server answers there."""
    path = control_path(data_dir)
    if path.exists():
        try:
            stream = await _connect(path)
        except OSError:
            path.unlink(missing_ok=True)  # left by a server that died
        else:
            await stream.aclose()
            raise ControlError(f"{data_dir}: another server is running on this data directory")
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        with _short_path(path) as where:
            await sock.bind(where)
        os.chmod(path, 0o600)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise ControlError(f"{path}: cannot listen: {exc.strerror or exc}") from None
    return trio.SocketListener(sock)


async def serve_control(
    listener: trio.SocketListener,
    *,
    status: StatusFunction,
    locate: LocateFunction,
    data_dir: Path,
) -> None:
    """Answer control calls until cancelled; removes the socket file then."""

    async def handle(stream: trio.SocketStream) -> None:
        link = Link(stream, name="control client")
        async with trio.open_nursery() as nursery:

            async def answer_status(call_id: int, rates: bool) -> None:
                try:
                    link.reply(call_id, await status(rates))
                except Exception:
                    logger.exception("status failed")
                    link.fail(call_id, "internal error")

            def on_call(call_id: int, op: str, args: list[Any]) -> None:
                if op == "status":
                    nursery.start_soon(answer_status, call_id, bool(args[0]) if args else True)
                elif op == "locate":
                    link.reply(call_id, locate(str(args[0])))
                else:
                    link.fail(call_id, f"unknown call {op!r}")

            def on_message(op: str, args: list[Any]) -> None:
                pass

            with trio.move_on_after(CALL_TIMEOUT):
                await link.run(on_message, on_call)
            nursery.cancel_scope.cancel()
        await trio.aclose_forcefully(stream)

    try:
        await trio.serve_listeners(handle, [listener])
    finally:
        with contextlib.suppress(OSError):
            os.unlink(control_path(data_dir))


async def call_control(data_dir: Path, op: str, *args: Any) -> Any:
    """Make one control call to the server running on ``data_dir``."""
    path = control_path(data_dir)
    try:
        stream = await _connect(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise ControlError(f"no server is running on {data_dir}") from None
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    link = Link(stream, name="control")
    result: Any = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run, _ignore, _refuse)
        try:
            result = await link.call(op, *args, timeout=CALL_TIMEOUT)
        except LinkClosed:
            raise ControlError("the server closed the control connection") from None
        except trio.TooSlowError:
            raise ControlError("the server did not answer in time") from None
        finally:
            nursery.cancel_scope.cancel()
    await trio.aclose_forcefully(stream)
    return result


def _ignore(op: str, args: list[Any]) -> None:
    pass


def _refuse(call_id: int, op: str, args: list[Any]) -> None:
    pass


# ------------------------------------------------------------------ status

#: A status computes rates over at least this long (it samples twice when the
#: previous sample is older than :data:`RATE_MAX_AGE`).
RATE_MIN_INTERVAL = 1.0
RATE_MAX_AGE = 10.0

#: Counters summed into the status's totals.
TOTALS = (
    "connections",
    "sessions",
    "detached",
    "handshakes_waiting",
    "handshakes_in_progress",
    "logins_pending",
    "messages_stored",
    "store_queue",
    "outboxes",
    "rss_bytes",
)


class Rates:
    """Adds ``messages_per_s`` to workers' counters, from two samples at
    least :data:`RATE_MIN_INTERVAL` apart (a worker's counters restart with
    its process, so samples are matched by pid)."""

    def __init__(self) -> None:
        self._previous: tuple[float, dict[tuple[int, int], int]] | None = None

    async def collect(
        self, fetch: Callable[[], Awaitable[dict[int, dict[str, Any]]]], *, rates: bool = True
    ) -> dict[int, dict[str, Any]]:
        if not rates:
            return await fetch()
        previous = self._previous
        if previous is None or trio.current_time() - previous[0] > RATE_MAX_AGE:
            first = await fetch()
            previous = (trio.current_time(), _messages(first))
        wait = previous[0] + RATE_MIN_INTERVAL - trio.current_time()
        if wait > 0:
            await trio.sleep(wait)
        stats = await fetch()
        now = trio.current_time()
        self._previous = (now, _messages(stats))
        elapsed = max(now - previous[0], 1e-9)
        for index, values in stats.items():
            before = previous[1].get((index, values["pid"]))
            if before is not None:
                values["messages_per_s"] = (values["messages_stored"] - before) / elapsed
        return stats


def _messages(stats: dict[int, dict[str, Any]]) -> dict[tuple[int, int], int]:
    return {(i, s["pid"]): int(s["messages_stored"]) for i, s in stats.items()}


def totals(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """The sums of :data:`TOTALS` and of the rates over ``workers``."""
    sums: dict[str, Any] = {name: sum(int(w.get(name, 0)) for w in workers) for name in TOTALS}
    sums["messages_per_s"] = sum(float(w.get("messages_per_s", 0.0)) for w in workers)
    return sums


# ------------------------------------------------------------------ printing


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _mib(value: int) -> str:
    return f"{value / 1048576:.0f}"


WORKER_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("worker", lambda w: str(w["index"])),
    ("pid", lambda w: str(w.get("pid") or "-")),
    ("state", lambda w: str(w["state"])),
    ("up", lambda w: _duration(w["uptime_s"]) if w.get("uptime_s") is not None else "-"),
    ("restarts", lambda w: str(w["restarts"])),
    ("conns", lambda w: str(w.get("connections", "-"))),
    ("sessions", lambda w: str(w.get("sessions", "-"))),
    ("resumable", lambda w: str(w.get("detached", "-"))),
    ("hs wait", lambda w: str(w.get("handshakes_waiting", "-"))),
    ("hs run", lambda w: str(w.get("handshakes_in_progress", "-"))),
    ("logins", lambda w: str(w.get("logins_pending", "-"))),
    ("msg/s", lambda w: f"{w['messages_per_s']:.0f}" if "messages_per_s" in w else "-"),
    ("store q", lambda w: str(w.get("store_queue", "-"))),
    ("outboxes", lambda w: str(w.get("outboxes", "-"))),
    ("rss MiB", lambda w: _mib(w["rss_bytes"]) if "rss_bytes" in w else "-"),
)


def status_text(status: dict[str, Any]) -> str:
    """The status map as the operator reads it."""
    node = status["node"]
    lines = [
        f"node pid {node['pid']}, up {_duration(node['uptime_s'])}, {node['workers']} worker(s),"
        f" listening on {', '.join(node['addresses'])}",
    ]
    rows = [[title for title, _ in WORKER_COLUMNS]]
    rows += [[cell(w) for _, cell in WORKER_COLUMNS] for w in status["workers"]]
    totals = status["totals"]
    rows.append(
        [
            "total",
            "",
            "",
            "",
            "",
            str(totals["connections"]),
            str(totals["sessions"]),
            str(totals["detached"]),
            str(totals["handshakes_waiting"]),
            str(totals["handshakes_in_progress"]),
            str(totals["logins_pending"]),
            f"{totals['messages_per_s']:.0f}",
            str(totals["store_queue"]),
            str(totals["outboxes"]),
            _mib(totals["rss_bytes"]),
        ]
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    hub = status.get("hub")
    if hub is not None:
        lines.append(
            f"login queue (node): {hub['logins_running']} verifying, {hub['logins_waiting']}"
            f" waiting ({hub['logins_queued_total']} waited since start);"
            f" users online: {hub['online_users']}"
        )
        lines.append(
            f"between workers: {hub['forwarded_total']} messages forwarded,"
            f" {hub['dropped_total']} pushes dropped, {hub['handovers_total']} sessions"
            f" handed over ({hub['handovers_pending']} now)"
        )
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def control_socket(
    data_dir: Path, *, status: StatusFunction, locate: LocateFunction
) -> AsyncIterator[None]:
    """Serve the control socket of ``data_dir`` for the block."""
    listener = await open_control_listener(data_dir)

    async def serve() -> None:
        await serve_control(listener, status=status, locate=locate, data_dir=data_dir)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()
