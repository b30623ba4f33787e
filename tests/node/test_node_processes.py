"""A node of real worker processes (``elink-server serve --workers N``):
users on different workers exchange messages; several worker processes
write one conversation at once; a worker killed with SIGKILL in the middle
of traffic is restarted and nothing acknowledged is lost or stored twice;
SIGTERM stops the whole node cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import trio

import elink_sdk
from elink_protocol import ConnectionClosed, ErrorCode, Packet, Role
from elink_protocol.app import (
    Delivered,
    EventPush,
    MessageAccepted,
    MessageEvent,
    Ok,
    Pull,
    PullResult,
    ReceiptKind,
    SendMessage,
    StatusUpdate,
    text_content,
)
from elink_protocol.connection import Connection
from elink_server.host import open_server
from elink_server.node.supervisor import Node
from tests.helpers.node_process import WAIT, NodeProcess, add_users, run_node
from tests.helpers.pair import identity
from tests.helpers.processes import child_env
from tests.helpers.sdk import client_options
from tests.helpers.server import LoopbackClient, client_config, login, test_settings

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


def say(rid: int, cm: str, to: str) -> SendMessage:
    return SendMessage(rid=rid, client_msg_id=cm, to=to, kind="text", content=text_content(cm))


async def pull_all(client: LoopbackClient, rid: int) -> list[MessageEvent]:
    """Every message entry of the client's log."""
    out: list[MessageEvent] = []
    cursor = 0
    while True:
        rid += 1
        await client.send(Pull(rid=rid, after=cursor, limit=1000))
        while True:
            event = await client.next_event()
            assert not isinstance(event, ConnectionClosed), event
            if isinstance(event, PullResult) and event.rid == rid:
                break
        out += [e for e in event.events if isinstance(e, MessageEvent)]
        cursor = event.next_cursor
        if not event.more:
            return out


async def test_two_workers_users_on_each_and_a_clean_stop(tmp_path: Path) -> None:
    await add_users(tmp_path, "alice", "bob")
    burst = 30
    async with run_node(tmp_path, workers=2) as node:
        async with node.connect(0) as alice, node.connect(1) as bob:
            with trio.fail_after(WAIT):
                await login(alice, "alice")
                await login(bob, "bob")
                assert await node.locate("alice") == {"pc": 0}
                assert await node.locate("bob") == {"pc": 1}
                # Both pipeline into their conversation at once, from two
                # worker processes.
                for i in range(burst):
                    alice.connection.queue(say(100 + i, f"a{i}", "bob"))
                    bob.connection.queue(say(100 + i, f"b{i}", "alice"))
                seqs: list[int] = []
                pushed: dict[str, list[int]] = {"alice": [], "bob": []}
                statuses: list[StatusUpdate] = []

                async def read(name: str, client: LoopbackClient) -> None:
                    await client.flush()
                    accepted = 0
                    while accepted < burst or len(pushed[name]) < 2 * burst:
                        event = await client.next_event()
                        assert isinstance(event, Packet), f"{name}: {event}"
                        if isinstance(event, MessageAccepted):
                            seqs.append(event.seq)
                            accepted += 1
                        elif isinstance(event, EventPush):
                            pushed[name].append(event.event.cursor)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read, "alice", alice)
                    nursery.start_soon(read, "bob", bob)
                assert sorted(seqs) == list(range(1, 2 * burst + 1))
                for name in ("alice", "bob"):
                    assert pushed[name] == list(range(1, 2 * burst + 1)), name

                # bob's receipts reach alice on the other process.
                await bob.send(Delivered(rid=1, cursor=2 * burst))
                while len(statuses) < burst:
                    event = await alice.next_event()
                    if isinstance(event, StatusUpdate):
                        statuses.append(event)
                assert {(s.status, s.user) for s in statuses} == {(ReceiptKind.DELIVERED, "bob")}

                status = await node.status()
                assert [w["sessions"] for w in status["workers"]] == [1, 1]
                assert status["totals"]["messages_stored"] == 2 * burst
                assert status["hub"]["sessions"] == 2

                pids = set(await node.pids())
                node.process.send_signal(signal.SIGTERM)
                for client in (alice, bob):
                    closed = await client.wait_closed()
                    assert closed.by_peer and closed.code == ErrorCode.GOING_AWAY
                assert await node.process.wait() == 0
                assert (await node.output.line()) == b"stopped"
        for pid in pids:  # the supervisor reaped every worker
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


async def _send_until_killed(
    node: NodeProcess, alice: LoopbackClient, worker_pid: int, burst: int, kill_after: int
) -> dict[str, int]:
    """alice pipelines ``burst`` messages; once ``kill_after`` are accepted
    her worker is SIGKILLed.  Returns what was accepted."""
    for i in range(burst):
        alice.connection.queue(say(100 + i, f"m{i}", "bob"))
    await alice.flush()
    acked: dict[str, int] = {}
    killed = False
    while True:
        try:
            event = await alice.next_event()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            break
        if isinstance(event, ConnectionClosed):
            break
        if isinstance(event, MessageAccepted):
            assert not event.duplicate
            acked[event.client_msg_id] = event.msg_id
            if len(acked) >= kill_after and not killed:
                os.kill(worker_pid, signal.SIGKILL)
                killed = True
    assert killed
    return acked


async def test_a_killed_worker_is_restarted_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    await add_users(tmp_path, "alice", "bob")
    burst, kill_after = 400, 40
    async with run_node(tmp_path, workers=3) as node:
        pids = await node.pids()
        async with node.connect(1) as bob:
            with trio.fail_after(WAIT * 2):
                await login(bob, "bob")
                async with node.connect(0) as alice:
                    await login(alice, "alice")
                    acked = await _send_until_killed(node, alice, pids[0], burst, kill_after)
                assert kill_after <= len(acked) < burst

                # The supervisor starts worker 0 again; bob, on worker 1,
                # was not disturbed and keeps his session.
                restarted = await node.pids()
                assert restarted[0] != pids[0] and restarted[1:] == pids[1:]
                status = await node.status()
                assert [w["restarts"] for w in status["workers"]] == [1, 0, 0]
                assert status["workers"][0]["last_exit"] == -signal.SIGKILL
                assert await node.locate("bob") == {"pc": 1}
                assert await node.locate("alice") == {}  # her session died with its worker

                # What reached alice as accepted is stored, once, same id.
                before = {e.message.client_msg_id: e.message.msg_id for e in await pull_all(bob, 1)}
                for cm, msg_id in acked.items():
                    assert before[cm] == msg_id
                # alice comes back (on the restarted worker), logs in and
                # re-sends everything she had no answer for: what was stored
                # is answered as a duplicate, the rest is stored once.
                async with node.connect(0) as alice:
                    await login(alice, "alice")
                    missing = [i for i in range(burst) if f"m{i}" not in acked]
                    for i in missing:
                        alice.connection.queue(say(5000 + i, f"m{i}", "bob"))
                    await alice.flush()
                    answers: dict[str, MessageAccepted] = {}
                    while len(answers) < len(missing):
                        event = await alice.next_event()
                        if isinstance(event, MessageAccepted):
                            answers[event.client_msg_id] = event
                for cm, answer in answers.items():
                    assert answer.duplicate == (cm in before), cm
                log = await pull_all(bob, 10_000)
                assert sorted(e.message.client_msg_id for e in log) == sorted(
                    f"m{i}" for i in range(burst)
                )
                assert [e.message.seq for e in log] == list(range(1, burst + 1))
                await bob.send(Delivered(rid=1, cursor=burst))
                while True:
                    event = await bob.next_event()
                    if event == Ok(rid=1):
                        break


async def _cli(data_dir: Path, *args: str) -> str:
    """``elink-server ARGS --data-dir DATA_DIR``'s standard output."""
    result = await trio.run_process(
        [sys.executable, "-m", "elink_server", *args, "--data-dir", str(data_dir)],
        capture_stdout=True,
        env=child_env(),
    )
    return result.stdout.decode()


@pytest.mark.parametrize("workers", [1, 2])
async def test_status_reports_each_worker(tmp_path: Path, workers: int) -> None:
    await add_users(tmp_path, "alice", "bob")
    async with run_node(tmp_path, workers=workers) as node, node.connect(0) as alice:
        with trio.fail_after(WAIT):
            await login(alice, "alice")
            await alice.send(say(2, "m0", "bob"))
            while not isinstance(await alice.next_event(), MessageAccepted):
                pass
            text = await _cli(tmp_path, "status")
            lines = text.splitlines()
            assert lines[0].startswith(f"node pid {node.process.pid}, up ")
            assert f"{workers} worker(s), listening on 127.0.0.1:{node.port}" in lines[0]
            header = lines[1].split()
            assert header[:3] == ["worker", "pid", "state"]
            rows = [line.split() for line in lines[2 : 2 + workers]]
            assert [row[0] for row in rows] == [str(i) for i in range(workers)]
            assert rows[0][header.index("sessions")] == "1"
            total = lines[2 + workers].split()
            assert total[0] == "total"
            assert (
                json.loads(await _cli(tmp_path, "status", "--json"))["totals"]["messages_stored"]
                == 1
            )
            assert await _cli(tmp_path, "status", "--locate", "alice") == "pc\tworker 0\n"
            assert await _cli(tmp_path, "status", "--locate", "bob") == (
                "bob has no device logged in\n"
            )


async def test_open_server_with_workers_runs_a_node_in_the_caller(tmp_path: Path) -> None:
    await add_users(tmp_path, "alice")
    settings = test_settings(tmp_path, workers=2, log_level="WARNING")
    with trio.fail_after(WAIT):
        async with open_server(settings, identity=identity()) as node:
            assert isinstance(node, Node)
            stream = await trio.open_tcp_stream("127.0.0.1", node.port)
            async with stream:
                # The workers use the identity the caller gave.
                client = LoopbackClient(
                    stream, Connection(role=Role.CLIENT, config=client_config())
                )
                await client.do_handshake()
                await login(client, "alice")
                status = await node.status(rates=False)
                assert sum(w["sessions"] for w in status["workers"]) == 1
                assert node.locate("alice") in ({"pc": 0}, {"pc": 1})
                pids = [w["pid"] for w in status["workers"]]
        # Leaving the block stopped the workers.
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


async def test_files_flow_through_a_node_of_two_workers(tmp_path: Path) -> None:
    """The supervisor binds the heavy bus once and hands it to every worker:
    tickets issued by one worker are served by whichever worker accepts."""
    await add_users(tmp_path, "alice", "bob")
    # A fixed heavy-bus port, as in production: two workers binding it each
    # would collide; the supervisor binds it once and hands it over.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    files_port = probe.getsockname()[1]
    probe.close()
    settings = test_settings(tmp_path, workers=2, log_level="WARNING", files_port=files_port)
    payloads = [os.urandom(300_000), os.urandom(5)]
    with trio.fail_after(4 * WAIT):
        async with open_server(settings, identity=identity()) as node:
            assert isinstance(node, Node)
            options = {k: v for k, v in client_options(node.port, "x").items() if k != "user"}
            async with (
                elink_sdk.connect("127.0.0.1", node.port, user="alice", **options) as alice,
                elink_sdk.connect("127.0.0.1", node.port, user="bob", **options) as bob,
            ):
                for index, payload in enumerate(payloads):
                    source = tmp_path / f"in{index}.bin"
                    source.write_bytes(payload)
                    await alice.send_file("bob", source)
                    event = await bob.next_event(timeout=WAIT)
                    assert isinstance(event, elink_sdk.MessageReceived)
                    got = await bob.download(event, tmp_path / f"out{index}.bin")
                    assert got.read_bytes() == payload
