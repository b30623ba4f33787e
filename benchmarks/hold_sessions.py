"""Hold more logged-in sessions on one node than one process may have sockets.

    python -m benchmarks.hold_sessions [--sessions 30000] [--workers 2]
        [--clients 3] [--hold 30] [--deadline 900]

One process may hold at most ~19,990 sockets on the development machines
(20,000 file descriptors, a hard limit).  This script starts a node
(``elink-server serve --workers N`` on 127.0.0.1, a fresh data directory),
creates the accounts, and starts ``--clients`` client processes (each under
the same limit), client ``i`` binding its sockets to 127.0.0.(2+i) with
``IP_BIND_ADDRESS_NO_PORT`` so each has the ephemeral ports of its own
source address.  Every client connects its share of sessions -- handshake
(X25519 + AES-256-GCM) and Login, a few hundred at a time -- and then keeps
them alive (the connection answers the server's heartbeat pings, every
``--heartbeat`` seconds; the server's idle timeout is three times that).
Once all
are logged in it holds them ``--hold`` seconds, checking the node's status
(sessions per worker, memory) at the start and the end of the hold, then
stops everything.

Bounded: loopback only, every process is stopped at the end or after
``--deadline`` seconds, whatever happens.  The accounts' passwords are
hashed with scrypt ``--scrypt-n`` (default 2^4): this measures holding
sessions, not verifying passwords -- with the production n=2^14 (~50 ms of
CPU each) a 30,000-login storm is scrypt-bound for over ten minutes on two
cores, and the login queue keeps it orderly (docs/performance.md has login
rates).  The login path is otherwise the production one.  Wait until
``ss -tan state time-wait`` is (nearly) empty between runs.

Prints a Markdown summary for docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from elink_protocol import NEED_DATA, Config, ConnectionClosed, Role
from elink_protocol.app import DeviceKind, Login, LoginOk, LoginQueued, RequestFailed
from elink_protocol.connection import Connection

#: Linux's IP_BIND_ADDRESS_NO_PORT (not in the socket module of Python 3.11).
IP_BIND_ADDRESS_NO_PORT = 24
#: Sessions each client process opens at once.
IN_FLIGHT = 50


# ----------------------------------------------------------------- the client


class Held:
    """One logged-in session kept alive."""

    __slots__ = ("connection", "stream")

    def __init__(self, stream: trio.SocketStream, connection: Connection) -> None:
        self.stream = stream
        self.connection = connection

    async def flush(self) -> None:
        data = self.connection.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def next_event(self) -> Any:
        while True:
            event = self.connection.next_event()
            if event is not NEED_DATA:
                await self.flush()
                return event
            await self.flush()
            data = await self.stream.receive_some(65536)
            self.connection.receive_data(data, now=trio.current_time())

    async def keep_alive(self) -> None:
        """Answer pings (the connection queues the Pongs) until closed."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                event = await self.next_event()
                if isinstance(event, ConnectionClosed):
                    return


async def _open(source: str, port: int) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _session(
    source: str, port: int, config: Config, user: str, nursery: trio.Nursery
) -> Held | None:
    try:
        stream = await _open(source, port)
    except OSError:
        return None
    held = Held(stream, Connection(role=Role.CLIENT, config=config, now=trio.current_time()))
    try:
        held.connection.initiate(now=trio.current_time())
        event = await held.next_event()
        if isinstance(event, ConnectionClosed):
            await stream.aclose()
            return None
        held.connection.queue(
            Login(
                rid=1, user=user, password="secret", device_id="bench", device_kind=DeviceKind.BOT
            )
        )
        while True:
            event = await held.next_event()
            if isinstance(event, LoginQueued):
                continue
            if isinstance(event, LoginOk):
                break
            if isinstance(event, ConnectionClosed | RequestFailed):
                await stream.aclose()
                return None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await trio.aclose_forcefully(stream)
        return None
    nursery.start_soon(held.keep_alive)
    return held


async def client_main(args: argparse.Namespace) -> None:
    config = Config(trusted_server_keys=frozenset({args.fingerprint}))
    users = [f"u{i}" for i in range(args.first, args.first + args.count)]
    held: list[Held] = []
    failed = 0
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        limit = trio.CapacityLimiter(IN_FLIGHT)
        done = trio.Event()
        left = len(users)

        async def one(user: str) -> None:
            nonlocal failed, left
            async with limit:
                session = await _session(args.source, args.port, config, user, nursery)
            if session is None:
                failed += 1
            else:
                held.append(session)
            left -= 1
            if not left:
                done.set()

        async def report() -> None:
            while True:
                print(json.dumps({"held": len(held), "failed": failed}), flush=True)
                await trio.sleep(1)

        nursery.start_soon(report)
        async with trio.open_nursery() as connecting:
            for user in users:
                connecting.start_soon(one, user)
        elapsed = time.monotonic() - started
        print(json.dumps({"held": len(held), "failed": failed, "done_s": elapsed}), flush=True)
        # Hold until told to stop (a line on stdin), answering pings.
        await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
    for session in held:
        await trio.aclose_forcefully(session.stream)


# ----------------------------------------------------------------- the parent


async def _create_users(data_dir: Path, count: int, scrypt_n: int) -> None:
    from elink_server.accounts import hash_password
    from elink_server.storage import open_sqlite_store

    password_hash = hash_password("secret", n=scrypt_n)
    async with open_sqlite_store(data_dir / "elink.db") as store:
        for start in range(0, count, 1000):
            async with trio.open_nursery() as nursery:
                for i in range(start, min(count, start + 1000)):
                    nursery.start_soon(
                        lambda name: store.create_user(name, password_hash=password_hash, now=0.0),
                        f"u{i}",
                    )


class Lines:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def line(self) -> str:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some()
            if not chunk:
                raise EOFError(self.buffer.decode(errors="replace"))
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


async def _status(data_dir: Path) -> dict[str, Any]:
    from elink_server.node.control import call_control

    status: dict[str, Any] = await call_control(data_dir, "status", False)
    return status


def _worker_summary(status: dict[str, Any]) -> str:
    return ", ".join(
        f"worker {w['index']}: {w.get('sessions', '?')} sessions,"
        f" {w.get('connections', '?')} connections, {w.get('rss_bytes', 0) / 1048576:.0f} MiB"
        for w in status["workers"]
    )


async def parent_main(args: argparse.Namespace) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="elink-hold-"))
    print(f"data dir {data_dir}; creating {args.sessions} accounts", flush=True)
    await _create_users(data_dir, args.sessions, args.scrypt_n)
    env = dict(
        os.environ,
        ELINK_LOG_LEVEL="WARNING",
        ELINK_LOGIN_QUEUE=str(args.sessions),
        ELINK_HANDSHAKE_QUEUE=str(args.sessions),
        ELINK_RESUME_SESSIONS=str(args.sessions),
        ELINK_HEARTBEAT_INTERVAL=str(args.heartbeat),
        ELINK_IDLE_TIMEOUT=str(args.heartbeat * 3),
    )
    processes: list[trio.Process] = []
    node = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "elink_server", "serve", "--port", "0"),
            *("--workers", str(args.workers), "--data-dir", str(data_dir)),
        ],
        stdout=subprocess.PIPE,
        env=env,
    )
    processes.append(node)
    results: dict[str, Any] = {}
    try:
        with trio.fail_after(args.deadline):
            assert node.stdout is not None
            out = Lines(node.stdout)
            port = int((await out.line()).rsplit(":", 1)[1])
            fingerprint = (await out.line()).split(": ", 1)[1]
            await out.line()  # workers: N
            base = await _status(data_dir)
            print(f"node up on port {port}: {_worker_summary(base)}", flush=True)
            per_client = -(-args.sessions // args.clients)
            clients = []
            started = time.monotonic()
            for i in range(args.clients):
                first = i * per_client
                count = min(per_client, args.sessions - first)
                client = await trio.lowlevel.open_process(
                    [
                        *(sys.executable, "-m", "benchmarks.hold_sessions", "--client"),
                        *("--port", str(port), "--fingerprint", fingerprint),
                        *("--source", f"127.0.0.{2 + i}", "--first", str(first)),
                        *("--count", str(count)),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                processes.append(client)
                assert client.stdout is not None
                clients.append((client, Lines(client.stdout)))
            progress = [dict(held=0, failed=0) for _ in clients]

            async def follow(i: int, lines: Lines, finished: trio.Event) -> None:
                while True:
                    progress[i] = json.loads(await lines.line())
                    if "done_s" in progress[i]:
                        finished.set()
                        return

            events = [trio.Event() for _ in clients]
            async with trio.open_nursery() as nursery:
                for i, (_, lines) in enumerate(clients):
                    nursery.start_soon(follow, i, lines, events[i])
                last = 0.0
                while not all(e.is_set() for e in events):
                    await trio.sleep(1)
                    held = sum(p["held"] for p in progress)
                    if time.monotonic() - last >= 10:
                        last = time.monotonic()
                        print(
                            f"{time.monotonic() - started:5.0f} s: {held} sessions held,"
                            f" {sum(p['failed'] for p in progress)} failed",
                            flush=True,
                        )
            ramp = time.monotonic() - started
            held = sum(p["held"] for p in progress)
            failed = sum(p["failed"] for p in progress)
            at_start = await _status(data_dir)
            print(f"all logged in after {ramp:.0f} s: {_worker_summary(at_start)}", flush=True)
            await trio.sleep(args.hold)
            at_end = await _status(data_dir)
            print(f"after holding {args.hold} s: {_worker_summary(at_end)}", flush=True)
            results = {
                "sessions_wanted": args.sessions,
                "sessions_held": held,
                "failed": failed,
                "ramp_s": ramp,
                "logins_per_s": held / ramp if ramp else 0.0,
                "start": at_start,
                "end": at_end,
            }
            for client, _ in clients:
                assert client.stdin is not None
                await client.stdin.send_all(b"stop\n")
    finally:
        with trio.CancelScope(shield=True):
            stopping = time.monotonic()
            node.send_signal(signal.SIGTERM)
            with trio.move_on_after(60):
                await node.wait()
            results["stop_s"] = time.monotonic() - stopping
            results["stop_status"] = node.returncode
            for process in processes:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    if "end" in results:
        _print_results(args, results)
    print(f"node stopped {results['stop_s']:.1f} s after SIGTERM, status {results['stop_status']}")
    return 0 if results.get("sessions_held") == args.sessions else 1


def _print_results(args: argparse.Namespace, results: dict[str, Any]) -> None:
    start, end = results["start"], results["end"]
    print()
    print(f"heartbeat_interval {args.heartbeat:g} s, scrypt n={args.scrypt_n}")
    print(
        f"| Workers | Client processes | Sessions wanted | Held after {args.hold} s |"
        " Failed | Login ramp | Sessions per worker | RSS per worker | RSS per session |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    sessions = [w.get("sessions", 0) for w in end["workers"]]
    rss = [w.get("rss_bytes", 0) for w in end["workers"]]
    base_rss = 50 * 1048576  # an idle worker, measured: ~50 MiB
    per_session = (sum(rss) - base_rss * len(rss)) / max(1, sum(sessions))
    print(
        f"| {args.workers} | {args.clients} | {args.sessions:,} |"
        f" {end['totals']['sessions']:,} | {results['failed']} |"
        f" {results['ramp_s']:.0f} s ({results['logins_per_s']:.0f}/s) |"
        f" {' / '.join(f'{s:,}' for s in sessions)} |"
        f" {' / '.join(f'{r / 1048576:.0f} MiB' for r in rss)} |"
        f" {per_session / 1024:.0f} KiB |"
    )
    print(f"\nsessions at the start of the hold: {start['totals']['sessions']:,}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hold_sessions")
    parser.add_argument("--sessions", type=int, default=30_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--deadline", type=float, default=900.0)
    parser.add_argument("--scrypt-n", type=int, default=2**4)
    parser.add_argument(
        "--heartbeat", type=float, default=20.0, help="the node's heartbeat_interval (idle: 3x)"
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--fingerprint", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        trio.run(client_main, args)
        return 0
    return trio.run(parent_main, args)


if __name__ == "__main__":
    sys.exit(main())
