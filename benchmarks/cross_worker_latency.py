"""How much a delivery from one worker to another costs over one that stays
on a worker.

    python -m benchmarks.cross_worker_latency [--users 40] [--seconds 20]
        [--interval 0.05]

Starts a node of two workers (``elink-server serve --workers 2``, loopback,
a fresh data directory), logs ``--users`` users in (the kernel spreads them
over the workers), asks the node where each landed (``status --locate``),
and pairs them: pairs on the same worker and pairs on different workers, as
many of each.  Every sender then sends one 1:1 text message every
``--interval`` seconds to its partner for ``--seconds`` seconds; the latency
of a message is from just before its SendMessage is written to when the
partner's EventPush for it arrives (both ends are in this process: one
clock).  It includes the durable commit (the push leaves after the fsync),
which dominates and varies a lot on a shared box.  So each message is timed
a second way: every message is also pushed to its sender's own device
(§11.5.1), always by the sender's worker, right after the same commit; the
receiver's push time minus the sender's own push time isolates the delivery
path: about zero when both are on one worker, the hop through the hub
otherwise.

Prints a Markdown table for docs/performance.md.  Bounded: loopback only,
the node is stopped at the end (or after a deadline).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from elink_protocol import NEED_DATA, Config, ConnectionClosed, Role
from elink_protocol.app import (
    DeviceKind,
    EventPush,
    Login,
    LoginOk,
    LoginQueued,
    MessageEvent,
    SendMessage,
    text_content,
)
from elink_protocol.connection import Connection

SCRYPT_N = 2**10
DEADLINE = 300.0


class Client:
    """One logged-in user; records when each message pushed to it arrived."""

    def __init__(self, user: str, stream: trio.SocketStream, connection: Connection) -> None:
        self.user = user
        self.stream = stream
        self.connection = connection
        self.arrived: dict[str, float] = {}
        """Messages of others pushed here: when."""
        self.own: dict[str, float] = {}
        """This user's own messages pushed here (its log has them too)."""
        self._lock = trio.StrictFIFOLock()

    async def flush(self) -> None:
        async with self._lock:
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

    async def read_forever(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                event = await self.next_event()
                if isinstance(event, ConnectionClosed):
                    return
                if isinstance(event, EventPush) and isinstance(event.event, MessageEvent):
                    message = event.event.message
                    mine = message.sender == self.user
                    (self.own if mine else self.arrived)[message.client_msg_id] = (
                        time.perf_counter()
                    )


async def connect(port: int, fingerprint: str, user: str) -> Client:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    config = Config(trusted_server_keys=frozenset({fingerprint}))
    client = Client(user, stream, Connection(role=Role.CLIENT, config=config))
    client.connection.initiate(now=trio.current_time())
    await client.next_event()  # HandshakeComplete
    client.connection.queue(
        Login(rid=1, user=user, password="secret", device_id="pc", device_kind=DeviceKind.PC)
    )
    while True:
        event = await client.next_event()
        if isinstance(event, LoginOk):
            return client
        if not isinstance(event, LoginQueued):
            raise RuntimeError(f"{user}: login failed: {event}")


async def _create_users(data_dir: Path, names: list[str]) -> None:
    from elink_server.accounts import hash_password
    from elink_server.storage import open_sqlite_store

    password_hash = hash_password("secret", n=SCRYPT_N)
    async with open_sqlite_store(data_dir / "elink.db") as store:
        for name in names:
            await store.create_user(name, password_hash=password_hash, now=0.0)


@contextlib.asynccontextmanager
async def node(data_dir: Path) -> AsyncIterator[tuple[int, str]]:
    process = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "elink_server", "serve", "--port", "0"),
            *("--workers", "2", "--data-dir", str(data_dir)),
        ],
        stdout=subprocess.PIPE,
        env=dict(os.environ, ELINK_LOG_LEVEL="WARNING"),
    )
    try:
        assert process.stdout is not None
        text = b""
        while text.count(b"\n") < 3:
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise RuntimeError(f"the node did not start: {text!r}")
            text += chunk
        lines = text.decode().splitlines()
        yield int(lines[0].rsplit(":", 1)[1]), lines[1].split(": ", 1)[1]
    finally:
        with trio.CancelScope(shield=True):
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def _percentiles(values: list[float]) -> tuple[float, float, float, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return at(0.5), at(0.9), at(0.99), statistics.fmean(ordered) * 1000


async def main(args: argparse.Namespace) -> None:
    from elink_server.node.control import call_control

    data_dir = Path(tempfile.mkdtemp(prefix="elink-latency-"))
    names = [f"u{i}" for i in range(args.users)]
    await _create_users(data_dir, names)
    with trio.fail_after(DEADLINE):
        async with node(data_dir) as (port, fingerprint), trio.open_nursery() as nursery:
            clients = [await connect(port, fingerprint, name) for name in names]
            for client in clients:
                nursery.start_soon(client.read_forever)
            where: dict[str, int] = {}
            for client in clients:
                (worker,) = (await call_control(data_dir, "locate", client.user)).values()
                where[client.user] = worker
            groups = [[c for c in clients if where[c.user] == w] for w in (0, 1)]
            # Disjoint pairs: a third of each worker's users for the pairs
            # across, the rest paired on their own worker.
            k = min(len(g) for g in groups) // 3
            cross = list(zip(groups[0][:k], groups[1][:k], strict=True))
            rest = [g[k:] for g in groups]
            same = [(g[i], g[i + 1]) for g in rest for i in range(0, len(g) - 1, 2)]
            n = min(len(same), len(cross))
            pairs = {"same worker": same[:n], "other worker": cross[:n]}
            print(
                f"{len(groups[0])} users on worker 0, {len(groups[1])} on worker 1;"
                f" {n} pairs of each kind",
                flush=True,
            )
            sent: dict[str, tuple[str, float]] = {}

            async def sender(kind: str, a: Client, b: Client) -> None:
                i = 0
                end = time.perf_counter() + args.seconds
                await trio.sleep(args.interval * (hash(a.user) % 100) / 100)  # spread
                while time.perf_counter() < end:
                    cm = f"{a.user}-{i}"
                    i += 1
                    a.connection.queue(
                        SendMessage(
                            rid=i % 2**31 + 2,
                            client_msg_id=cm,
                            to=b.user,
                            kind="text",
                            content=text_content("latency probe"),
                        )
                    )
                    sent[cm] = (kind, time.perf_counter())
                    await a.flush()
                    await trio.sleep(args.interval)

            async with trio.open_nursery() as senders:
                for kind, group in pairs.items():
                    for a, b in group:
                        senders.start_soon(sender, kind, a, b)
            await trio.sleep(2)  # the last ones arrive
            arrived = {cm: t for c in clients for cm, t in c.arrived.items()}
            own = {cm: t for c in clients for cm, t in c.own.items()}
            nursery.cancel_scope.cancel()
    latencies: dict[str, list[float]] = {kind: [] for kind in pairs}
    extra: dict[str, list[float]] = {kind: [] for kind in pairs}
    lost = 0
    for cm, (kind, at) in sent.items():
        if cm in arrived:
            latencies[kind].append(arrived[cm] - at)
            if cm in own:
                extra[kind].append(arrived[cm] - own[cm])
        else:
            lost += 1
    rate = len(sent) / args.seconds
    print()
    print(
        f"Two workers, {n} pairs of each kind, one message per pair every"
        f" {args.interval * 1000:.0f} ms ({rate:.0f} messages/s in all), {args.seconds:.0f} s:"
    )
    print()
    print("| Receiver | Messages | What | p50 | p90 | p99 | mean |")
    print("|---|---|---|---|---|---|---|")
    for kind, values in latencies.items():
        for what, series in (
            ("SendMessage written -> receiver's push", values),
            ("receiver's push - sender's own push", extra[kind]),
        ):
            p50, p90, p99, mean = _percentiles(series)
            print(
                f"| {kind} | {len(series):,} | {what} | {p50:.2f} ms | {p90:.2f} ms |"
                f" {p99:.2f} ms | {mean:.2f} ms |"
            )
    if lost:
        print(f"\n{lost} messages without a push before the end")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cross_worker_latency")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=0.05)
    trio.run(main, parser.parse_args())
