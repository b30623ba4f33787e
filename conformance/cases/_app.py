"""Helpers of the application-protocol cases: sending a message, pulling a
log, reading history and search results."""

from __future__ import annotations

from typing import Any

from conformance.case import Context
from conformance.session import Client
from elink_protocol.app import (
    History,
    HistoryPage,
    Message,
    MessageAccepted,
    MessageEvent,
    Pull,
    PullResult,
    Search,
    SearchResult,
    SendMessage,
    SyncEvent,
    text_content,
)

#: Requests in flight at once when a case sends many (fewer than the 64
#: answers a server keeps room for, so it never has to refuse a reader).
BATCH = 32


def conversation_of(a: str, b: str) -> str:
    low, high = sorted((a, b))
    return f"d:{low}:{high}"


async def send_text(
    client: Client, ctx: Context, to: str, text: str, *, cm: str | None = None, **fields: Any
) -> MessageAccepted:
    request = SendMessage(
        rid=client.rid(),
        client_msg_id=cm or ctx.unique("cm"),
        to=to,
        kind=fields.pop("kind", "text"),
        content=fields.pop("content", text_content(text)),
        **fields,
    )
    answer = await client.expect_answer(request, MessageAccepted, ctx.wait)
    assert isinstance(answer, MessageAccepted)
    return answer


async def pull_log(
    client: Client, ctx: Context, after: int, *, page: int = 100
) -> tuple[list[SyncEvent], int]:
    """Every log entry after ``after``; returns (entries, head)."""
    events: list[SyncEvent] = []
    cursor = after
    while True:
        result = await client.expect_answer(
            Pull(rid=client.rid(), after=cursor, limit=page), PullResult, ctx.wait
        )
        assert isinstance(result, PullResult)
        events += result.events
        cursor = result.next_cursor
        if not result.more:
            return events, result.head


def log_head(client: Client) -> int:
    assert client.login_ok is not None
    return client.login_ok.cursor + client.login_ok.pending


def message_map(events: list[SyncEvent]) -> dict[int, Message]:
    return {e.message.msg_id: e.message for e in events if isinstance(e, MessageEvent)}


async def history_page(client: Client, ctx: Context, peer: str, **fields: Any) -> HistoryPage:
    page = await client.expect_answer(
        History(rid=client.rid(), with_user=peer, **fields), HistoryPage, ctx.wait
    )
    assert isinstance(page, HistoryPage)
    return page


async def search_for(client: Client, ctx: Context, query: str) -> SearchResult:
    result = await client.expect_answer(
        Search(rid=client.rid(), query=query), SearchResult, ctx.wait
    )
    assert isinstance(result, SearchResult)
    return result
