"""Login and the session rules (§11.1, §11.2, §11.3): the login gate, wrong
passwords, failed-login limits, the login queue, replaced sessions,
logout, and malformed application payloads."""

from __future__ import annotations

from typing import Any

import trio

from conformance.case import Context, case
from conformance.requirements import Level
from conformance.results import Fail, Informational, Skip, Unimplemented
from conformance.session import Client, failed
from elink_protocol import ErrorCode
from elink_protocol.app import (
    AppErrorCode,
    Delivered,
    DeviceKind,
    EventsAvailable,
    History,
    Login,
    LoginOk,
    Logout,
    MarkRead,
    Ok,
    Pull,
    PullResult,
    RequestFailed,
    SendMessage,
    SetPresence,
    text_content,
)

from ._util import expect_error, packed

MUST, SHOULD, MAY = Level.MUST, Level.SHOULD, Level.MAY

#: A name the failed-login limit case uses; it needs no account (a server
#: counts failures per account name, existing or not).
LOCKED_NAME = "conf-locked"
#: How many wrong passwords the limit case tries before it gives up.
MAX_ATTEMPTS = 20


@case(
    "EL-11.3.6-1",
    "Before LoginOk every other request is answered NOT_LOGGED_IN, and nothing is pushed",
    MUST,
    covers=["11.3.6-1", "11.3.6-2"],
)
async def not_logged_in(ctx: Context) -> None:
    """Right after the handshake: Pull, SendMessage, History, MarkRead,
    Delivered, SetPresence and Logout, each with its own request id.  Every
    one must be answered RequestFailed NOT_LOGGED_IN with its id, and no
    push may arrive meanwhile."""
    client, _ = await ctx.established()
    requests = [
        Pull(rid=client.rid(), after=0),
        SendMessage(
            rid=client.rid(),
            client_msg_id=ctx.unique("cm"),
            to="conf-b",
            kind="text",
            content=text_content("x"),
        ),
        History(rid=client.rid(), with_user="conf-b"),
        MarkRead(rid=client.rid(), conversation="d:conf-a:conf-b", up_to_seq=1),
        Delivered(rid=client.rid(), cursor=1),
        SetPresence(rid=client.rid(), status="busy"),  # type: ignore[arg-type]
        Logout(rid=client.rid()),
    ]
    for request in requests:
        await client.expect_failure(request, AppErrorCode.NOT_LOGGED_IN, ctx.wait)
    if client.pushes:
        raise Fail(f"pushes before login: {client.pushes}")


@case(
    "EL-11.3.6-2",
    "A wrong password and an unknown user get the same answer",
    MUST,
    covers=["11.3.6-3"],
)
async def wrong_password(ctx: Context) -> None:
    """Logs in as the fourth account (--user; it takes the failed logins)
    with a wrong password, then as a user that does not exist.  Both must be
    RequestFailed with the same code (AUTH_FAILED), the same reason text
    and the same retry delay.  SKIPPED if earlier runs got the account rate
    limited."""
    answers = []
    for user in (ctx.user(3), "conf-nobody-" + ctx.options.run_id):
        client, _ = await ctx.established(user)
        request = Login(
            rid=client.rid(),
            user=user,
            password="wrong " + ctx.options.run_id,
            device_id=ctx.unique("dev"),
            device_kind=DeviceKind.BOT,
        )
        answer = await client.request(request, ctx.wait)
        if isinstance(answer, RequestFailed) and answer.code == AppErrorCode.RATE_LIMITED:
            raise Skip(
                f"{user!r} is rate limited by earlier failed logins; "
                f"retry in {answer.retry_after_ms} ms"
            )
        if not isinstance(answer, RequestFailed):
            raise Fail(f"a wrong password for {user!r} was answered {failed(answer)}")
        answers.append(answer)
    known, unknown = answers
    if known.code != AppErrorCode.AUTH_FAILED:
        raise Fail(f"a wrong password was answered {failed(known)}, expected AUTH_FAILED")
    if (known.code, known.reason, known.retry_after_ms) != (
        unknown.code,
        unknown.reason,
        unknown.retry_after_ms,
    ):
        raise Fail(
            f"the answers tell a wrong password ({failed(known)}, {known.reason!r}) from an "
            f"unknown user ({failed(unknown)}, {unknown.reason!r})"
        )


@case(
    "EL-11.3.6-3",
    "Repeated failed logins are refused with RATE_LIMITED and a retry delay",
    MAY,
    covers=["11.3.6-3"],
)
async def failed_login_limit(ctx: Context) -> None:
    """Logs in as ``conf-locked`` (no such account is needed) with wrong
    passwords, up to 20 times on one connection, until the server answers
    RATE_LIMITED; that answer must carry ``ra`` > 0.  UNIMPLEMENTED if the
    server never limits.  (The name stays limited for the server's window;
    later runs get RATE_LIMITED at once, which passes too.)"""
    client, _ = await ctx.established()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        request = Login(
            rid=client.rid(),
            user=LOCKED_NAME,
            password=f"wrong {attempt}",
            device_id="d",
            device_kind=DeviceKind.BOT,
        )
        answer = await client.request(request, ctx.wait)
        if not isinstance(answer, RequestFailed):
            raise Fail(f"a wrong password was answered {failed(answer)}")
        if answer.code == AppErrorCode.RATE_LIMITED:
            if answer.retry_after_ms == 0:
                raise Fail("RATE_LIMITED without a retry delay (ra)")
            ctx.note(f"limited after {attempt} attempts; retry after {answer.retry_after_ms} ms")
            return
        if answer.code != AppErrorCode.AUTH_FAILED:
            raise Fail(f"a wrong password was answered {failed(answer)}")
    raise Unimplemented(f"no limit after {MAX_ATTEMPTS} failed logins of one name")


@case(
    "EL-11.3.6-4",
    "A second Login on a logged-in session is refused with ALREADY_LOGGED_IN",
    MUST,
    covers=["11.3.6-5"],
    users=1,
)
async def login_twice(ctx: Context) -> None:
    """Logs in, then sends the same Login again on the same connection."""
    client, _ = await ctx.logged_in(0)
    request = Login(
        rid=client.rid(),
        user=client.user,
        password=ctx.password,
        device_id=client.device,
        device_kind=DeviceKind.BOT,
    )
    await client.expect_failure(request, AppErrorCode.ALREADY_LOGGED_IN, ctx.wait)


@case(
    "EL-11.3.6-6",
    "A newer login of the same user and device ends the older session with SESSION_REPLACED",
    MUST,
    covers=["11.3.6-4"],
    users=1,
)
async def session_replaced(ctx: Context) -> None:
    """Logs in a device on connection 1, then the same user and device on
    connection 2.  Connection 1 must be closed with SESSION_REPLACED (the
    code that tells its client not to reconnect by itself); connection 2
    stays logged in."""
    device = ctx.unique("dev")
    first, _ = await ctx.logged_in(0, name="older", device=device)
    second, _ = await ctx.logged_in(0, name="newer", device=device)
    closed = await first.expect_close(ctx.wait)
    if closed.code != AppErrorCode.SESSION_REPLACED:
        raise Fail(f"the older session ended with {closed.describe()}, expected SESSION_REPLACED")
    await second.expect_answer(Pull(rid=second.rid(), after=0, limit=1), PullResult, ctx.wait)


@case(
    "EL-11.3.7-1",
    "Logins that wait in the admission queue are told so with LoginQueued",
    SHOULD,
    covers=["11.3.7-1"],
    users=1,
)
async def login_queue(ctx: Context) -> None:
    """Sixteen connections send a Login each in the same instant.  Logins
    that wait (the server verifies few passwords at once) SHOULD get
    LoginQueued with their request id before their final answer; every
    final answer must be LoginOk.  INFORMATIONAL when no login waited."""
    clients = [await ctx.established(f"q{i}") for i in range(16)]
    requests = []
    for i, (client, _) in enumerate(clients):
        request = Login(
            rid=client.rid(),
            user=ctx.user(0),
            password=ctx.password,
            device_id=ctx.unique(f"q{i}"),
            device_kind=DeviceKind.BOT,
        )
        requests.append((client, request))
    async with trio.open_nursery() as nursery:
        for client, request in requests:
            nursery.start_soon(client.send, request)
    finals: list[Any] = [None] * len(requests)

    async def wait(i: int, client: Client, request: Login) -> None:
        finals[i] = await client.answer(request, ctx.wait * 4)

    async with trio.open_nursery() as nursery:
        for i, (client, request) in enumerate(requests):
            nursery.start_soon(wait, i, client, request)
    bad = [failed(a) for a in finals if not isinstance(a, LoginOk)]
    if bad:
        raise Fail(f"concurrent logins were answered: {bad}")
    queued = [client for client, _ in requests if client.queued]
    if not queued:
        raise Informational("none of 16 concurrent logins had to wait: nothing to judge")
    for client in queued:
        positions = [q.position for q in client.queued]
        if positions != sorted(positions, reverse=True):
            raise Fail(f"LoginQueued positions do not decrease: {positions}")
    ctx.note(f"{len(queued)} of 16 logins were queued")


@case(
    "EL-8.3-1",
    "Logout: Ok, then Close NO_ERROR, then nothing",
    MUST,
    covers=["8.3-1"],
    users=1,
)
async def logout(ctx: Context) -> None:
    """Logs in and sends Logout.  The server answers Ok and closes with
    NO_ERROR; nothing may follow its Close (the stream ends)."""
    client, _ = await ctx.logged_in(0)
    await client.expect_answer(Logout(rid=client.rid()), Ok, ctx.wait)
    closed = await client.expect_close(ctx.wait)
    if closed.code != ErrorCode.NO_ERROR:
        raise Fail(f"after Logout: {closed.describe()}, expected NO_ERROR")


@case(
    "EL-11.1.3-1",
    "A server's packet sent by the client is refused with UNEXPECTED_PACKET",
    MUST,
    covers=["11.1.3-1"],
)
async def client_sends_server_packets(ctx: Context) -> None:
    """After the handshake, three connections send one server packet each:
    LoginOk, Ok and an EventPush (all well-formed)."""
    probes = [
        LoginOk(
            rid=1,
            user="conf-a",
            device_id="d",
            pending=0,
            cursor=0,
            recall_window_s=120,
            server_time_ms=1,
        ),
        Ok(rid=1),
        EventsAvailable(latest=1),
    ]
    for packet in probes:
        client, _ = await ctx.established()
        await client.send(packet)
        await expect_error(ctx, client, ErrorCode.UNEXPECTED_PACKET, what=type(packet).__name__)


@case(
    "EL-11.1.5-1",
    "An application payload that breaks its table is refused with PAYLOAD_INVALID",
    MUST,
    covers=["11.1.5-1"],
)
async def bad_application_payloads(ctx: Context) -> None:
    """Each on its own connection after the handshake: a Login without
    ``pw``; a Pull with ``n`` = 0 (range 1..1000); a Pull whose ``af`` is a
    string."""
    probes: list[tuple[int, dict[str, Any], str]] = [
        (Login.TYPE, {"r": 1, "u": "conf-a", "d": "dev", "dk": "bot"}, "a Login without pw"),
        (Pull.TYPE, {"r": 1, "af": 0, "n": 0}, "a Pull with n = 0"),
        (Pull.TYPE, {"r": 1, "af": "zero"}, "a Pull with af as a string"),
    ]
    for type_, fields, what in probes:
        client, _ = await ctx.established()
        await client.send_payload(type_, packed(fields), note=what)
        await expect_error(ctx, client, ErrorCode.PAYLOAD_INVALID, what=what)


@case(
    "EL-11.2.1-1",
    "Invalid names, conversation ids, message ids and device kinds are PAYLOAD_INVALID",
    MUST,
    covers=["11.2.1-1"],
)
async def bad_values(ctx: Context) -> None:
    """Each on its own connection: Logins whose user name contains a space,
    a colon, or 65 characters; a Login with device kind ``toaster``; a
    SendMessage to the conversation ``d:conf-z:conf-a`` (names out of
    order); a SendMessage whose client message id contains a space."""
    base = {"r": 1, "u": "conf-a", "pw": "x", "d": "dev", "dk": "bot"}
    send = {"r": 1, "cm": "ok-id", "k": "text", "c": {"text": "x"}}
    probes = [
        (Login.TYPE, {**base, "u": "conf a"}, "a name with a space"),
        (Login.TYPE, {**base, "u": "conf:a"}, "a name with a colon"),
        (Login.TYPE, {**base, "u": "a" * 65}, "a 65-character name"),
        (Login.TYPE, {**base, "dk": "toaster"}, "device kind 'toaster'"),
        (SendMessage.TYPE, {**send, "cv": "d:conf-z:conf-a"}, "a direct conversation out of order"),
        (
            SendMessage.TYPE,
            {**send, "to": "conf-a", "cm": "not ok"},
            "a client message id with a space",
        ),
    ]
    for type_, fields, what in probes:
        client, _ = await ctx.established()
        await client.send_payload(type_, packed(fields), note=what)
        await expect_error(ctx, client, ErrorCode.PAYLOAD_INVALID, what=what)
