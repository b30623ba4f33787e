"""Login, logout, the login gate, failed-login limits and the login queue
(§11.3), end to end over loopback TCP."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from elink_protocol import ErrorCode
from elink_protocol.app import (
    AppErrorCode,
    DeviceKind,
    Login,
    LoginOk,
    LoginQueued,
    Logout,
    Ok,
    PresenceUpdate,
    RequestFailed,
    SetPresence,
)
from elink_protocol.app.presence import PresenceStatus
from elink_server.host import Server
from elink_server.services.app import Application
from elink_server.services.login import FailureLimiter, LoginQueue
from tests.helpers.server import (
    WAIT,
    add_user,
    connect_client,
    login,
    login_answer,
    open_test_server,
)


async def test_login_ok_carries_session_facts(tmp_path: Path) -> None:
    async with open_test_server(tmp_path, recall_window=90.0) as server:
        await add_user(server, "alice")
        async with connect_client(server) as client:
            ok = await login(client, "alice", device_id="alice-pc")
        assert (ok.user, ok.device_id, ok.pending, ok.cursor) == ("alice", "alice-pc", 0, 0)
        assert ok.recall_window_s == 90
        assert ok.server_time_ms > 1_600_000_000_000
        assert 0 < ok.heartbeat_s < server.settings.idle_timeout
        devices = await server.store.list_devices("alice")
        assert [(d.device_id, d.kind.value) for d in devices] == [("alice-pc", "pc")]


async def test_wrong_password_and_unknown_user_look_the_same(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        await add_user(server, "alice")
        async with connect_client(server) as client:
            wrong = await login_answer(client, "alice", "nope", rid=1)
            unknown = await login_answer(client, "mallory", "nope", rid=2)
            # The connection lives on: a good login still works.
            await login(client, "alice", rid=3)
        assert isinstance(wrong, RequestFailed) and isinstance(unknown, RequestFailed)
        assert wrong.code == unknown.code == AppErrorCode.AUTH_FAILED
        assert wrong.reason == unknown.reason


async def test_disabled_account_is_refused(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        await add_user(server, "alice")
        await server.store.set_user_disabled("alice", True)
        async with connect_client(server) as client:
            answer = await login_answer(client, "alice")
        assert isinstance(answer, RequestFailed)
        assert answer.code == AppErrorCode.ACCOUNT_DISABLED


async def test_requests_before_login_are_not_logged_in(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        await add_user(server, "alice")
        async with connect_client(server) as client:
            await client.send(SetPresence(rid=7, status=PresenceStatus.BUSY))
            answer = await client.next_event()
            assert isinstance(answer, RequestFailed) and answer.rid == 7
            assert answer.code == AppErrorCode.NOT_LOGGED_IN
            await login(client, "alice")
            await client.send(SetPresence(rid=8, status=PresenceStatus.BUSY))
            assert await client.next_event() == Ok(rid=8)


async def test_second_login_on_a_session_is_already_logged_in(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        await add_user(server, "alice")
        async with connect_client(server) as client:
            await login(client, "alice")
            again = await login_answer(client, "alice", rid=2)
        assert isinstance(again, RequestFailed)
        assert again.code == AppErrorCode.ALREADY_LOGGED_IN


async def test_a_server_packet_from_a_client_is_unexpected(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server, connect_client(server) as client:
        await client.send(Ok(rid=1))
        closed = await client.wait_closed()
        assert closed.by_peer and closed.code == ErrorCode.UNEXPECTED_PACKET


async def test_failed_logins_are_rate_limited_per_account(tmp_path: Path) -> None:
    async with open_test_server(tmp_path, max_failed_logins_per_account=3) as server:
        await add_user(server, "alice")
        await add_user(server, "bob")
        async with connect_client(server) as client:
            for rid in (1, 2, 3):
                failed = await login_answer(client, "alice", "wrong", rid=rid)
                assert isinstance(failed, RequestFailed)
                assert failed.code == AppErrorCode.AUTH_FAILED
            # Now even the right password is refused, with a retry delay.
            limited = await login_answer(client, "alice", rid=4)
            assert isinstance(limited, RequestFailed)
            assert limited.code == AppErrorCode.RATE_LIMITED
            assert 0 < limited.retry_after_ms <= server.settings.login_failure_window * 1000
            # Another account from the same address is not affected.
            await login(client, "bob", rid=5)


async def test_failed_logins_are_rate_limited_per_address(tmp_path: Path) -> None:
    async with open_test_server(tmp_path, max_failed_logins_per_address=2) as server:
        await add_user(server, "alice")
        async with connect_client(server) as client:
            for rid, user in ((1, "x1"), (2, "x2")):
                failed = await login_answer(client, user, "wrong", rid=rid)
                assert isinstance(failed, RequestFailed)
                assert failed.code == AppErrorCode.AUTH_FAILED
        async with connect_client(server) as client:
            limited = await login_answer(client, "alice", rid=1)
        assert isinstance(limited, RequestFailed)
        assert limited.code == AppErrorCode.RATE_LIMITED


async def test_same_device_logging_in_again_replaces_the_old_session(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        await add_user(server, "alice")
        async with connect_client(server) as first, connect_client(server) as second:
            await login(first, "alice", device_id="pc")
            await login(second, "alice", device_id="pc")
            closed = await first.wait_closed()
            assert closed.by_peer and closed.code == AppErrorCode.SESSION_REPLACED
            # The new session is the one bound: it is served.
            await second.send(SetPresence(rid=2, status=PresenceStatus.AWAY))
            assert await second.next_event() == Ok(rid=2)
        assert server.context is not None


async def test_logout_answers_ok_then_closes(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        await add_user(server, "alice")
        async with connect_client(server) as phone, connect_client(server) as pc:
            await login(phone, "alice", device_id="phone", kind=DeviceKind.MOBILE)
            await login(pc, "alice", device_id="pc")
            online = await phone.next_event()
            assert isinstance(online, PresenceUpdate) and online.device == "pc"
            await pc.send(Logout(rid=2))
            assert await pc.next_event() == Ok(rid=2)
            closed = await pc.wait_closed()
            assert closed.by_peer and closed.code == ErrorCode.NO_ERROR
            gone = await phone.next_event()
            assert isinstance(gone, PresenceUpdate)
            assert (gone.device, gone.status, gone.aggregated) == (
                "pc",
                PresenceStatus.OFFLINE,
                PresenceStatus.ONLINE,
            )
            context = server.context
            assert context is not None
            assert [d.device_id for d in context.registry.devices("alice")] == ["phone"]


async def test_login_burst_beyond_the_limit_is_queued_fifo(tmp_path: Path) -> None:
    n = 24
    async with open_test_server(
        tmp_path, max_logins=2, login_queue=n, login_queue_interval=0.0
    ) as server:
        for i in range(n):
            await add_user(server, f"user{i}")
        results: dict[int, LoginOk] = {}
        notices: dict[int, list[LoginQueued]] = {}

        async def one(i: int, ready: trio.Event, go: trio.Event) -> None:
            async with connect_client(server) as client:
                ready.set()
                with trio.fail_after(WAIT):
                    await go.wait()
                seen: list[LoginQueued] = []
                results[i] = await login(client, f"user{i}", device_id="d", queued=seen)
                notices[i] = seen

        go = trio.Event()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                ready = trio.Event()
                nursery.start_soon(one, i, ready, go)
                with trio.fail_after(WAIT):
                    await ready.wait()
            go.set()
        assert sorted(results) == list(range(n))
        assert all(ok.user == f"user{i}" for i, ok in results.items())
        queued = [seen for seen in notices.values() if seen]
        assert queued, "no login had to wait"
        for seen in queued:
            positions = [notice.position for notice in seen]
            # Told again when the position changes, and only ever forward.
            assert positions == sorted(set(positions), reverse=True)
        # With 2 slots and a burst of 24 some login saw its position move.
        assert any(len(seen) > 1 for seen in queued)
        context = server.context
        assert context is not None


def _application(server: Server) -> Application:
    assert isinstance(server.hooks, Application)
    return server.hooks


async def _no_notice(position: int, wait_ms: int) -> None:
    raise AssertionError("the slot was free")


async def test_login_queue_full_is_refused_with_retry_after(tmp_path: Path) -> None:
    async with open_test_server(tmp_path, max_logins=1, login_queue=0) as server:
        await add_user(server, "alice")
        queue = _application(server).login.queue
        async with connect_client(server) as client:
            # Hold the only slot, so the Login finds the queue full (size 0).
            async with queue.slot(_no_notice):
                answer = await login_answer(client, "alice")
            assert isinstance(answer, RequestFailed)
            assert answer.code == AppErrorCode.LOGIN_QUEUE_FULL
            assert answer.retry_after_ms >= 1000
            await login(client, "alice", rid=2)  # the slot is free again


async def test_a_queued_login_is_told_its_position(tmp_path: Path) -> None:
    async with open_test_server(tmp_path, max_logins=1, login_queue=5) as server:
        await add_user(server, "alice")
        queue = _application(server).login.queue
        async with connect_client(server) as client:
            async with queue.slot(_no_notice):
                await client.send(
                    Login(
                        rid=1,
                        user="alice",
                        password="secret",
                        device_id="pc",
                        device_kind=DeviceKind.PC,
                    )
                )
                notice = await client.next_event()
                assert isinstance(notice, LoginQueued)
                assert (notice.rid, notice.position) == (1, 0)
                assert notice.estimated_wait_ms > 0
                # Queued, the connection still answers (heartbeats, requests).
                await client.send(SetPresence(rid=2, status=PresenceStatus.BUSY))
                refused = await client.next_event()
                assert isinstance(refused, RequestFailed) and refused.rid == 2
                assert refused.code == AppErrorCode.NOT_LOGGED_IN
                again = await login_answer(client, "alice", rid=3)
                assert isinstance(again, RequestFailed)
                assert again.code == AppErrorCode.ALREADY_LOGGED_IN
            ok = await client.next_event()
            assert isinstance(ok, LoginOk) and ok.rid == 1


async def test_queue_positions_skip_logins_that_left() -> None:
    queue = LoginQueue(max_running=1, max_waiting=10, interval=0.0)
    seen: dict[str, list[int]] = {"b": [], "c": []}
    release = trio.Event()
    b_scope = trio.CancelScope()

    async def hold() -> None:
        async with queue.slot(_no_notice):
            await release.wait()

    async def wait(name: str, scope: trio.CancelScope, entered: trio.Event) -> None:
        async def notice(position: int, wait_ms: int) -> None:
            seen[name].append(position)
            entered.set()

        with scope:
            async with queue.slot(notice):
                pass

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold)
            await trio.testing.wait_all_tasks_blocked()
            b_in, c_in = trio.Event(), trio.Event()
            nursery.start_soon(wait, "b", b_scope, b_in)
            await b_in.wait()
            nursery.start_soon(wait, "c", trio.CancelScope(), c_in)
            await c_in.wait()
            assert queue.waiting == 2
            b_scope.cancel()  # b leaves: c moves up
            await trio.testing.wait_all_tasks_blocked()
            assert seen["c"] == [1, 0]
            release.set()
    assert seen["b"] == [0]
    assert queue.running == 0 and queue.waiting == 0


def test_failure_limiter_slides() -> None:
    limiter = FailureLimiter(limit=2, window=10.0)
    assert limiter.retry_after("k", 0.0) == 0.0
    limiter.fail("k", 1.0)
    limiter.fail("k", 4.0)
    assert limiter.retry_after("k", 5.0) == 6.0  # the failure at 1.0 leaves at 11.0
    assert limiter.retry_after("other", 5.0) == 0.0
    assert limiter.retry_after("k", 11.0) == 0.0
    limiter.fail("k", 12.0)
    assert limiter.retry_after("k", 12.0) == 2.0  # 4.0 leaves at 14.0
