"""What the SDK costs on top of the wire: latency and throughput of
``Client.send_text`` against a server in its own process, on loopback.

    python -m benchmarks.sdk_latency [--messages N] [--senders K]

Measures, with alice and bob logged in through :func:`elink_sdk.connect`:

* **round trip**: ``await send_text()`` one at a time; the time until the
  server's MessageAccepted (stored durably: fsync included), first while
  nobody reads bob's events, then while bob reads them (each read confirms
  delivery: one more durable write on the server per message);
* **delivery**: from the start of ``send_text`` until bob's ``events()``
  yields the message;
* **throughput**: K tasks of alice sending at once, messages per second
  until every one is accepted;
* **bare protocol round trip**: the first measure again with the protocol
  library alone (no SDK), as the baseline for the SDK's own cost;
* **chat during an upload** (``--upload-mb``): the round trip again while the
  same client uploads a file on the heavy bus (a separate connection, §9),
  to show that bulk data does not delay chat.

The server runs in a child process (its own core when there is one) with a
fresh data directory; the clients run in this process under Trio.  Numbers
are rough: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from multiprocessing.connection import Connection as Pipe
from pathlib import Path

import trio

import elink_sdk
from elink_protocol import ServerIdentity


def _serve(data_dir: str, identity_pem: bytes, pipe: Pipe) -> None:
    """Child process: a server on 127.0.0.1:0 with alice and bob."""
    from elink_server.accounts import hash_password
    from elink_server.cli import configure_logging
    from elink_server.host import open_server
    from elink_server.settings import ServerSettings

    identity = ServerIdentity.from_pem(identity_pem)
    configure_logging("WARNING")

    async def main() -> None:
        settings = ServerSettings(host="127.0.0.1", port=0, files_port=0, data_dir=Path(data_dir))
        async with open_server(settings, identity=identity) as server:
            for user in ("alice", "bob"):
                await server.store.create_user(
                    user, password_hash=hash_password("secret", n=2**10), now=time.time()
                )
            pipe.send(server.port)
            await trio.to_thread.run_sync(pipe.recv)  # any message: stop

    trio.run(main)


async def _raw_round_trips(port: int, pin: list[str], messages: int) -> list[float]:
    """The same sequential sends with the bare protocol library: the baseline
    that shows what the SDK's own layers cost."""
    from elink_protocol import NEED_DATA, Config, Connection, HandshakeComplete, Role
    from elink_protocol.app import DeviceKind, Login, LoginOk, MessageAccepted, SendMessage

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = Connection(role=Role.CLIENT, config=Config(trusted_server_keys=frozenset(pin)))

    async def until(kind: type) -> object:
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                await stream.send_all(conn.data_to_send())
                conn.receive_data(await stream.receive_some(65536), trio.current_time())
                continue
            if isinstance(event, kind):
                data = conn.data_to_send()
                if data:
                    await stream.send_all(data)
                return event

    conn.initiate(trio.current_time())
    await until(HandshakeComplete)
    conn.queue(
        Login(
            rid=1,
            user="alice",
            password="secret",
            device_id="bench-raw",
            device_kind=DeviceKind.BOT,
        )
    )
    await until(LoginOk)
    times = []
    for i in range(messages):
        t0 = time.perf_counter()
        conn.queue(
            SendMessage(
                rid=i + 2,
                client_msg_id=f"raw{i}",
                to="bob",
                kind="text",
                content={"text": f"raw {i} " + "x" * 240},
            )
        )
        await until(MessageAccepted)
        times.append(time.perf_counter() - t0)
    await stream.aclose()
    return times


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _chat_during_upload(
    port: int, pin: list[str], messages: int, upload_mb: int
) -> dict[str, float]:
    """Round trips of alice's texts while alice uploads ``upload_mb`` MB."""
    import os
    import tempfile as tmp

    options = {"password": "secret", "server_fingerprint": pin}
    results: dict[str, float] = {}
    with tmp.TemporaryDirectory() as folder:
        path = Path(folder) / "big.bin"
        with path.open("wb") as out:
            for _ in range(upload_mb):
                out.write(os.urandom(1024 * 1024))
        async with elink_sdk.connect(
            "127.0.0.1", port, user="alice", device_id="bench-up", **options
        ) as a:
            uploaded = trio.Event()
            upload_time: list[float] = []

            async def upload() -> None:
                t0 = time.perf_counter()
                await a.send_file("bob", path)
                upload_time.append(time.perf_counter() - t0)
                uploaded.set()

            during: list[float] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upload)
                await trio.sleep(0.2)  # the upload is under way
                for i in range(messages):
                    if uploaded.is_set():
                        break
                    t0 = time.perf_counter()
                    await a.send_text("bob", f"during {i}")
                    during.append(time.perf_counter() - t0)
        results["round trip during upload, p50 (ms)"] = statistics.median(during) * 1000
        results["round trip during upload, p99 (ms)"] = _percentile(during, 0.99) * 1000
        results["messages measured during upload"] = float(len(during))
        results[f"upload of {upload_mb} MB (MB/s)"] = upload_mb / upload_time[0]
    return results


async def _measure(
    port: int, pin: list[str], messages: int, senders: int, upload_mb: int
) -> dict[str, float]:
    options = {"password": "secret", "server_fingerprint": pin}
    results: dict[str, float] = {}
    async with (
        elink_sdk.connect("127.0.0.1", port, user="alice", device_id="bench-a", **options) as a,
        elink_sdk.connect("127.0.0.1", port, user="bob", device_id="bench-b", **options) as b,
    ):
        started: dict[str, float] = {}
        delivered: list[float] = []
        done = trio.Event()

        async def listen(expected: int) -> None:
            async for event in b.events():
                if isinstance(event, elink_sdk.MessageReceived) and event.text in started:
                    delivered.append(time.perf_counter() - started.pop(event.text))
                    if len(delivered) == expected:
                        done.set()
                        return

        quiet: list[float] = []
        for i in range(messages):
            t0 = time.perf_counter()
            await a.send_text("bob", f"quiet {i} " + "x" * 240)
            quiet.append(time.perf_counter() - t0)
        results["round trip, nobody reading, p50 (ms)"] = statistics.median(quiet) * 1000
        results["round trip, nobody reading, p99 (ms)"] = _percentile(quiet, 0.99) * 1000

        round_trips: list[float] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen, messages)
            for i in range(messages):
                text = f"rt {i} " + "x" * 240  # ~256-byte content
                started[text] = t0 = time.perf_counter()
                await a.send_text("bob", text)
                round_trips.append(time.perf_counter() - t0)
            with trio.fail_after(60):
                await done.wait()
        results["round trip p50 (ms)"] = statistics.median(round_trips) * 1000
        results["round trip p99 (ms)"] = _percentile(round_trips, 0.99) * 1000
        results["delivery p50 (ms)"] = statistics.median(delivered) * 1000
        results["delivery p99 (ms)"] = _percentile(delivered, 0.99) * 1000

        total = messages * 4
        t0 = time.perf_counter()

        async def sender(k: int) -> None:
            for i in range(k, total, senders):
                await a.send_text("bob", f"tp {i} " + "x" * 240)

        async with trio.open_nursery() as nursery:
            for k in range(senders):
                nursery.start_soon(sender, k)
        elapsed = time.perf_counter() - t0
        results[f"throughput, {senders} senders (msg/s)"] = total / elapsed
    if upload_mb:
        results.update(await _chat_during_upload(port, pin, messages, upload_mb))
    raw = await _raw_round_trips(port, pin, messages)
    results["bare protocol round trip p50 (ms)"] = statistics.median(raw) * 1000
    results["bare protocol round trip p99 (ms)"] = _percentile(raw, 0.99) * 1000
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--upload-mb", type=int, default=0, help="measure chat during an upload")
    args = parser.parse_args(argv)
    identity = ServerIdentity.generate()
    pin = sorted(identity.fingerprints().values())
    with tempfile.TemporaryDirectory() as data_dir:
        ours, theirs = multiprocessing.Pipe()
        child = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(data_dir, identity.to_pem(), theirs)
        )
        child.start()
        try:
            if not ours.poll(30):
                raise SystemExit("the server did not start")
            port = ours.recv()
            results = trio.run(_measure, port, pin, args.messages, args.senders, args.upload_mb)
        finally:
            ours.send("stop")
            child.join(30)
            if child.is_alive():
                child.kill()
    print("| Measure | Value |\n|---|---|")
    for name, value in results.items():
        print(f"| {name} | {value:,.2f} |")


if __name__ == "__main__":
    main()
