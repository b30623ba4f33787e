"""Recall (§11.7), history and search (§11.8)."""

from __future__ import annotations

import time

import trio

from conformance.case import Context, case
from conformance.cases._app import (
    conversation_of,
    history_page,
    log_head,
    message_map,
    pull_log,
    search_for,
    send_text,
)
from conformance.requirements import Level
from conformance.results import Fail
from elink_protocol import packets as p
from elink_protocol.app import (
    AppErrorCode,
    Pull,
    PullResult,
    Recall,
    RecallEvent,
    RecallOk,
)

MUST, SHOULD = Level.MUST, Level.SHOULD


# --- recall (§11.7) ------------------------------------------------------------------


@case(
    "EL-11.7.3-1",
    "Only the sender may recall a message; an unknown message is NOT_FOUND",
    MUST,
    covers=["11.7.3-1"],
    users=2,
)
async def recall_by_others(ctx: Context) -> None:
    """A sends B a text; B tries to recall it (PERMISSION_DENIED); A recalls
    a message id that does not exist (NOT_FOUND)."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    sent = await send_text(a, ctx, b.user, "not yours to recall")
    await b.expect_failure(
        Recall(rid=b.rid(), msg_id=sent.msg_id), AppErrorCode.PERMISSION_DENIED, ctx.wait
    )
    await a.expect_failure(
        Recall(rid=a.rid(), msg_id=(1 << 62) - 7), AppErrorCode.NOT_FOUND, ctx.wait
    )


@case(
    "EL-11.7.3-2",
    "A recall inside the window hides the content everywhere and reaches both logs",
    MUST,
    covers=["11.7.3-2", "11.7.3-3", "11.4.4-1", "11.8.3-1"],
    users=2,
)
async def recall_inside_window(ctx: Context) -> None:
    """A sends B a text with a unique word and recalls it at once.  RecallOk
    must name the message; A's history must show it with ``rc`` and without
    content; B's log must gain a ``recall`` entry by A, and the message
    entry must now come without content; neither A nor B may find the word
    by search; a second Recall succeeds with the original time."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    word = ctx.unique("recall").replace("-", "")
    sent = await send_text(a, ctx, b.user, f"oops {word}")
    ok = await a.expect_answer(Recall(rid=a.rid(), msg_id=sent.msg_id), RecallOk, ctx.wait)
    assert isinstance(ok, RecallOk)
    if ok.msg_id != sent.msg_id:
        raise Fail(f"RecallOk names message {ok.msg_id}")
    page = await history_page(a, ctx, b.user, limit=5)
    stored = {m.msg_id: m for m in page.messages}.get(sent.msg_id)
    if stored is None or stored.recalled_at_ms != ok.recalled_at_ms or stored.content is not None:
        raise Fail(f"the history shows {stored} after the recall")
    events, _ = await pull_log(b, ctx, log_head(b))
    recalls = [e for e in events if isinstance(e, RecallEvent) and e.msg_id == sent.msg_id]
    if len(recalls) != 1 or recalls[0].by != a.user:
        raise Fail(f"B's log has {recalls} as recall entries")
    message = message_map(events).get(sent.msg_id)
    if message is None or message.content is not None:
        raise Fail(f"B's log shows the message as {message}")
    for client in (a, b):
        result = await search_for(client, ctx, word)
        if any(m.msg_id == sent.msg_id for m in result.messages):
            raise Fail(f"{client.user}'s search finds the recalled message")
    again = await a.expect_answer(Recall(rid=a.rid(), msg_id=sent.msg_id), RecallOk, ctx.wait)
    assert isinstance(again, RecallOk)
    if again.recalled_at_ms != ok.recalled_at_ms:
        raise Fail(
            f"a repeated Recall gave time {again.recalled_at_ms}, the first {ok.recalled_at_ms}"
        )


@case(
    "EL-11.7.3-3",
    "A recall after the window is refused with RECALL_WINDOW_EXPIRED",
    MUST,
    covers=["11.7.3-1"],
    users=2,
)
async def recall_outside_window(ctx: Context) -> None:
    """A sends B a text, waits the recall window its LoginOk announced
    (``rw``) plus 1.5 s, and recalls: RECALL_WINDOW_EXPIRED, and the
    history still shows the content.  SKIPPED when the window is longer
    than --max-wait."""
    a, ok = await ctx.logged_in(0, name="A")
    window = ok.recall_window_s
    ctx.need_wait(window + 1.5, f"waiting out the recall window of {window} s")
    sent = await send_text(a, ctx, ctx.user(1), "too late to recall")
    waited_from = time.monotonic()
    while time.monotonic() - waited_from < window + 1.5:
        await a.ping(b"keepalive")
        await a.expect(p.Pong, ctx.wait)
        await trio.sleep(min(0.5, max(window + 1.5 - (time.monotonic() - waited_from), 0)))
    await a.expect_failure(
        Recall(rid=a.rid(), msg_id=sent.msg_id), AppErrorCode.RECALL_WINDOW_EXPIRED, ctx.wait
    )
    page = await history_page(a, ctx, ctx.user(1), limit=5)
    stored = {m.msg_id: m for m in page.messages}.get(sent.msg_id)
    if stored is None or stored.content is None:
        raise Fail(f"after a refused recall the history shows {stored}")


# --- history and search (§11.8) ---------------------------------------------------------


@case(
    "EL-11.8.2-1",
    "History pages go backwards through one conversation in strictly descending sq",
    MUST,
    covers=["11.8.2-1"],
    users=1,
)
async def history_paging(ctx: Context) -> None:
    """A sends five texts to its own file assistant, then pages with
    History ``n`` = 2 from the newest, continuing with ``bs`` = the last
    ``sq``.  Every page must hold at most 2 messages of ``d:A:A`` in
    strictly descending ``sq``, ``mo`` set while older ones exist, and the
    first three pages must be the five messages, newest first."""
    a, _ = await ctx.logged_in(0)
    sent = [await send_text(a, ctx, a.user, f"note {i}") for i in range(5)]
    conversation = conversation_of(a.user, a.user)
    seen: list[int] = []
    before: int | None = None
    for _ in range(3):
        page = await history_page(
            a, ctx, a.user, limit=2, **({} if before is None else {"before_seq": before})
        )
        seqs = [m.seq for m in page.messages]
        if len(seqs) > 2 or seqs != sorted(seqs, reverse=True) or len(set(seqs)) != len(seqs):
            raise Fail(f"a page holds sq {seqs}")
        if any(m.conversation != conversation for m in page.messages):
            raise Fail("a page holds messages of another conversation")
        if before is not None and seqs and seqs[0] >= before:
            raise Fail(f"a page before sq {before} starts at {seqs[0]}")
        if page.more != (bool(seqs) and seqs[-1] > 1):
            raise Fail(f"mo = {page.more} with the oldest sq {seqs[-1] if seqs else None}")
        seen += [m.msg_id for m in page.messages]
        if not seqs:
            break
        before = seqs[-1]
    expected = [x.msg_id for x in reversed(sent)]
    if seen[:5] != expected:
        raise Fail(f"pages gave messages {seen[:5]}, expected {expected}")


@case(
    "EL-11.1.6-1",
    "Pages of large messages hold as many as fit in 4096 bytes and say there is more",
    MUST,
    covers=["11.1.6-1"],
    users=1,
)
async def large_pages(ctx: Context) -> None:
    """A sends three 2500-byte texts to its file assistant.  A History with
    ``n`` = 10 must fit in one payload (the client checks every payload is at
    most 4096 bytes), hold at least one of them, and set ``mo``; so must a
    Pull of A's log over the three entries."""
    a, _ = await ctx.logged_in(0)
    head = log_head(a)
    for i in range(3):
        await send_text(a, ctx, a.user, str(i) * 2500)
    page = await history_page(a, ctx, a.user, limit=10)
    if not page.messages or not page.more:
        raise Fail(
            f"a History page of 2500-byte texts holds {len(page.messages)} with mo={page.more}"
        )
    result = await a.expect_answer(Pull(rid=a.rid(), after=head, limit=10), PullResult, ctx.wait)
    assert isinstance(result, PullResult)
    if not result.events or not result.more:
        raise Fail(
            f"a Pull page of 2500-byte texts holds {len(result.events)} with mo={result.more}"
        )


@case(
    "EL-11.8.3-1",
    "Search finds text in any ASCII case and in Chinese, in the user's own conversations only",
    MUST,
    covers=["11.8.3-1"],
    users=3,
)
async def search_case(ctx: Context) -> None:
    """A sends B ``Conf<word>检索测试`` and then a recalled message with the
    same word.  B's search for the word in lower case and for ``word检索``
    must find the first message and not the recalled one; C (not a member
    of the conversation) must find neither."""
    a, _ = await ctx.logged_in(0, name="A")
    b, _ = await ctx.logged_in(1, name="B")
    word = ctx.unique("w").replace("-", "").upper()
    kept = await send_text(a, ctx, b.user, f"Conf{word}检索测试")
    gone = await send_text(a, ctx, b.user, f"Conf{word} recalled")
    await a.expect_answer(Recall(rid=a.rid(), msg_id=gone.msg_id), RecallOk, ctx.wait)
    for query in (word.lower(), f"{word.lower()}检索"):
        result = await search_for(b, ctx, query)
        ids = {m.msg_id for m in result.messages}
        if kept.msg_id not in ids:
            raise Fail(f"B's search for {query!r} does not find the message")
        if gone.msg_id in ids:
            raise Fail(f"B's search for {query!r} finds the recalled message")
    c, _ = await ctx.logged_in(2, name="C")
    result = await search_for(c, ctx, word.lower())
    if {kept.msg_id, gone.msg_id} & {m.msg_id for m in result.messages}:
        raise Fail("a user who is not a member of the conversation finds its messages")
