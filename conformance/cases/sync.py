"""Sync, offline messages and receipts (§11.5, §11.6)."""

from __future__ import annotations

import time

from conformance.case import Context, case
from conformance.cases._app import (
    BATCH,
    log_head,
    message_map,
    pull_log,
    send_text,
)
from conformance.requirements import Level
from conformance.results import Fail, Skip
from conformance.session import failed
from elink_protocol.app import (
    AppErrorCode,
    Delivered,
    Logout,
    MarkRead,
    MessageAccepted,
    MessageStatus,
    Ok,
    Pull,
    PullResult,
    QueryStatus,
    SendMessage,
    StatusEvent,
    StatusUpdate,
    text_content,
)

MUST, SHOULD = Level.MUST, Level.SHOULD


# --- sync (§11.5) ---------------------------------------------------------------------


@case(
    "EL-11.5.5-1",
    "Pull pages are in ascending order without gaps; nc and mo follow the rules",
    MUST,
    covers=["11.5.5-1"],
    users=2,
)
async def pull_pages(ctx: Context) -> None:
    """A sends B five texts; B pulls from its head before them with
    ``n`` = 2.  Each page must hold at most 2 entries, numbered strictly
    ascending and without gaps from the cursor, ``nc`` equal to the last
    entry's number, ``mo`` set exactly while ``nc`` is below ``hd``; the
    pages together must hold the five messages."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    sent = {(await send_text(a, ctx, b.user, f"page {i}")).msg_id for i in range(5)}
    cursor = log_head(b)
    seen: set[int] = set()
    for _ in range(100):
        result = await b.expect_answer(
            Pull(rid=b.rid(), after=cursor, limit=2), PullResult, ctx.wait
        )
        assert isinstance(result, PullResult)
        numbers = [e.cursor for e in result.events]
        if len(numbers) > 2 or numbers != list(range(cursor + 1, cursor + 1 + len(numbers))):
            raise Fail(f"a page after {cursor} holds entries {numbers}")
        expected_next = numbers[-1] if numbers else cursor
        if result.next_cursor != expected_next:
            raise Fail(f"nc = {result.next_cursor}, expected {expected_next}")
        if result.more != (result.next_cursor < result.head):
            raise Fail(f"mo = {result.more} with nc {result.next_cursor} and hd {result.head}")
        seen |= set(message_map(list(result.events)))
        cursor = result.next_cursor
        if not result.more:
            break
    if not sent <= seen:
        raise Fail(f"the pages lack messages {sorted(sent - seen)}")


@case(
    "EL-11.5.5-2",
    "A cursor beyond the log is refused with CURSOR_INVALID",
    MUST,
    covers=["11.5.5-2"],
    users=1,
)
async def cursor_beyond_head(ctx: Context) -> None:
    """A Pull and a Delivered whose cursor is 10^12 above the log's head."""
    client, _ = await ctx.logged_in(0)
    far = log_head(client) + 10**12
    await client.expect_failure(
        Pull(rid=client.rid(), after=far), AppErrorCode.CURSOR_INVALID, ctx.wait
    )
    await client.expect_failure(
        Delivered(rid=client.rid(), cursor=far), AppErrorCode.CURSOR_INVALID, ctx.wait
    )


@case(
    "EL-11.5.7-1",
    "Messages sent while a user is offline wait in its log and are pulled at login",
    MUST,
    covers=["11.5.7-1"],
    users=2,
)
async def offline_messages(ctx: Context) -> None:
    """B logs in to learn its log's head and logs out.  A sends B three
    texts.  B logs in on another device: LoginOk ``pe`` must count at least
    the three, and a Pull from the old head must return them."""
    b, _ = await ctx.logged_in(1, name="B1")
    head = log_head(b)
    await b.expect_answer(Logout(rid=b.rid()), Ok, ctx.wait)
    await b.expect_close(ctx.wait)
    a, _ = await ctx.logged_in(0, name="A")
    sent = {(await send_text(a, ctx, ctx.user(1), f"offline {i}")).msg_id for i in range(3)}
    again, ok = await ctx.logged_in(1, name="B2")
    if ok.cursor + ok.pending < head + 3:
        raise Fail(f"LoginOk c={ok.cursor} pe={ok.pending}: fewer entries than the three sent")
    events, _ = await pull_log(again, ctx, head)
    missing = sent - set(message_map(events))
    if missing:
        raise Fail(f"messages {sorted(missing)} sent while B was offline are not in its log")


@case(
    "EL-11.5.7-2",
    "When a recipient's backlog passes the offline cap, MessageAccepted says so (bf)",
    MUST,
    covers=["11.5.7-2", "11.5.7-1"],
    users=3,
)
async def offline_cap(ctx: Context) -> None:
    """The third account (C) confirms its whole log, so its backlog is 0, and
    goes offline.  B then sends C as many messages as the offline cap
    (--offline-cap, 1000 by default): none may carry ``bf`` while C's
    backlog is at most 1000 (the least cap the spec allows); the next one
    must.  C then logs in again: every message is still there.  Finally C
    confirms everything, so that later runs start from an empty backlog."""
    cap = ctx.options.offline_cap
    if cap > 5000:
        raise Skip(f"--offline-cap {cap}: too many messages for a conformance run")
    c, _ = await ctx.logged_in(2, name="C")
    _, head = await pull_log(c, ctx, log_head(c), page=1000)
    await c.expect_answer(Delivered(rid=c.rid(), cursor=head), Ok, ctx.wait)
    await c.expect_answer(Logout(rid=c.rid()), Ok, ctx.wait)
    await c.expect_close(ctx.wait)
    b, _ = await ctx.logged_in(1, name="B")
    total = cap + 1
    first_full = None
    started = time.monotonic()
    for batch in range(0, total, BATCH):
        requests = [
            SendMessage(
                rid=b.rid(),
                client_msg_id=ctx.unique("cm"),
                to=ctx.user(2),
                kind="text",
                content=text_content(f"backlog {i}"),
            )
            for i in range(batch, min(batch + BATCH, total))
        ]
        for request in requests:
            await b.send(request)
        for i, request in enumerate(requests, start=batch + 1):
            answer = await b.answer(request, ctx.wait * 4)
            if not isinstance(answer, MessageAccepted):
                raise Fail(f"message {i} was answered {failed(answer)}")
            if answer.recipient_backlog_full and first_full is None:
                first_full = i
    if first_full is not None and first_full <= 1000:
        raise Fail(f"bf set on message {first_full}, with a backlog of at most 1000")
    if first_full != total:
        raise Fail(f"bf first set on message {first_full}, expected message {total} (cap {cap})")
    ctx.note(f"{total} messages in {time.monotonic() - started:.1f} s")
    c2, ok = await ctx.logged_in(2, name="C2")
    if ok.cursor + ok.pending < head + total:
        raise Fail(
            f"C's log holds up to {ok.cursor + ok.pending}, expected at least {head + total}"
        )
    _, new_head = await pull_log(c2, ctx, head + total - 5)
    await c2.expect_answer(Delivered(rid=c2.rid(), cursor=new_head), Ok, ctx.wait)


# --- receipts (§11.6) --------------------------------------------------------------------


@case(
    "EL-11.6.2-1",
    "Delivery and read receipts reach the sender and both logs",
    MUST,
    covers=["11.5.2.3-1", "11.5.2.3-2", "11.6.2-1"],
    users=2,
)
async def receipts(ctx: Context) -> None:
    """A sends B a text.  B pulls it and confirms it (Delivered): A must get
    a StatusUpdate ``delivered`` naming B and B's device, and QueryStatus
    must report it delivered.  B marks the conversation read: A must get a
    StatusUpdate ``read`` (without a device), both logs must gain a
    ``status`` entry ``read`` for the message, and QueryStatus must say
    ``read`` with one read receipt."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    a_head = log_head(a)
    sent = await send_text(a, ctx, b.user, "please read")
    events, b_head = await pull_log(b, ctx, log_head(b))
    if sent.msg_id not in message_map(events):
        raise Fail("the message is not in B's log")
    await b.expect_answer(Delivered(rid=b.rid(), cursor=b_head), Ok, ctx.wait)
    update = await a.wait_push(
        lambda pkt: (
            isinstance(pkt, StatusUpdate)
            and pkt.msg_id == sent.msg_id
            and pkt.status == "delivered"
        ),
        ctx.wait,
        what="StatusUpdate delivered",
    )
    assert isinstance(update, StatusUpdate)
    if (update.user, update.device) != (b.user, b.device):
        raise Fail(
            f"StatusUpdate delivered names {update.user}/{update.device}, "
            f"expected {b.user}/{b.device}"
        )
    status = await a.expect_answer(
        QueryStatus(rid=a.rid(), msg_id=sent.msg_id), MessageStatus, ctx.wait
    )
    assert isinstance(status, MessageStatus)
    if status.state != "delivered" or status.delivered_count != 1:
        raise Fail(f"QueryStatus after the delivery: {status}")
    await b.expect_answer(
        MarkRead(rid=b.rid(), conversation=sent.conversation, up_to_seq=sent.seq), Ok, ctx.wait
    )
    update = await a.wait_push(
        lambda pkt: (
            isinstance(pkt, StatusUpdate) and pkt.msg_id == sent.msg_id and pkt.status == "read"
        ),
        ctx.wait,
        what="StatusUpdate read",
    )
    assert isinstance(update, StatusUpdate)
    if update.user != b.user or update.device:
        raise Fail(f"StatusUpdate read: {update}")
    for client, after in ((a, a_head), (b, b_head)):
        log, _ = await pull_log(client, ctx, after)
        reads = [
            e
            for e in log
            if isinstance(e, StatusEvent) and e.msg_id == sent.msg_id and e.status == "read"
        ]
        if len(reads) != 1 or reads[0].by != b.user:
            raise Fail(f"{client.user}'s log has {reads} as read receipts of the message")
    final = await a.expect_answer(
        QueryStatus(rid=a.rid(), msg_id=sent.msg_id), MessageStatus, ctx.wait
    )
    assert isinstance(final, MessageStatus)
    if final.state != "read" or final.read_count != 1 or final.delivered_count < 1:
        raise Fail(f"QueryStatus: {final}")
    if not any(r.user == b.user and r.device == b.device for r in final.delivered):
        raise Fail(f"QueryStatus lacks B's delivery: {final.delivered}")
