"""Full-text search: trigram FTS5 for >= 3 characters, LIKE below that."""

from __future__ import annotations

import pytest

from elink_server.storage import InvalidArgument, MessageFlags, MessageKind, SqliteStore

T0 = 1_700_000_000.0


def texts(found) -> list[str]:
    return [m.content["text"] for m in found]


async def test_chinese_substrings(store: SqliteStore, send) -> None:
    await send("alice", "bob", "你好世界")
    await send("bob", "alice", "明天的会议改到下午三点")
    await send("alice", "bob", "hello world")

    assert texts(await store.search("bob", "好世")) == ["你好世界"]  # 2 chars: LIKE
    assert texts(await store.search("bob", "你好世")) == ["你好世界"]  # trigram index
    assert texts(await store.search("bob", "会议")) == ["明天的会议改到下午三点"]
    assert texts(await store.search("alice", "改到下午")) == ["明天的会议改到下午三点"]
    assert texts(await store.search("bob", "好")) == ["你好世界"]
    assert await store.search("bob", "世界和平") == ()


async def test_ascii_case_is_ignored_on_both_paths(store: SqliteStore, send) -> None:
    await send("alice", "bob", "Quarterly Report")
    assert texts(await store.search("bob", "QUARTERLY")) == ["Quarterly Report"]
    assert texts(await store.search("bob", "rE")) == ["Quarterly Report"]


async def test_results_are_newest_first_and_limited(store: SqliteStore, send) -> None:
    for i in range(5):
        await send("alice", "bob", f"report {i}")
    assert texts(await store.search("bob", "report", limit=3)) == [
        "report 4",
        "report 3",
        "report 2",
    ]
    assert texts(await store.search("bob", "rt", limit=2)) == ["report 4", "report 3"]


async def test_only_the_users_conversations(store: SqliteStore, send) -> None:
    await send("alice", "bob", "salary figures")
    await send("alice", "carol", "salary meeting")
    assert texts(await store.search("bob", "salary")) == ["salary figures"]
    assert texts(await store.search("carol", "sa")) == ["salary meeting"]
    assert len(await store.search("alice", "salary")) == 2
    found = await store.search("alice", "salary", conversation="d:alice:carol")
    assert texts(found) == ["salary meeting"]


async def test_recalled_and_secret_messages_are_not_found(store: SqliteStore, send) -> None:
    recalled = await send("alice", "bob", "wrong budget number")
    await store.recall(recalled.message.msg_id, by_user="alice", now=T0, window_seconds=120)
    await send("alice", "bob", "burn after reading", flags=MessageFlags.SECRET)
    await send("alice", "bob", "a file", kind=MessageKind.FILE, content={"name": "budget.xls"})
    for query in ("budget", "bu", "burn", "after"):
        assert await store.search("bob", query) == ()


@pytest.mark.parametrize("query", ["%", "_", "\\", '"', "%%%", 'a"b', "*", "NEAR("])
async def test_special_characters_are_literal(store: SqliteStore, send, query: str) -> None:
    await send("alice", "bob", "plain text")
    marked = f"x{query}y"
    await send("alice", "bob", marked)
    assert texts(await store.search("bob", query)) == [marked]


async def test_query_validation(store: SqliteStore) -> None:
    for bad in ("", "x" * 257):
        with pytest.raises(InvalidArgument):
            await store.search("bob", bad)
    with pytest.raises(InvalidArgument):
        await store.search("bob", "abc", limit=0)
