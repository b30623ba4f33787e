"""History paging and full-text search (Chinese included) over a user's own
conversations."""

from __future__ import annotations

from pathlib import Path

from elink_protocol.app import (
    AppErrorCode,
    History,
    HistoryPage,
    RequestFailed,
    Search,
    SearchResult,
    SendMessage,
    text_content,
)
from tests.helpers.messaging import FakePeer, Kit, open_kit


async def _say(kit: Kit, peer: FakePeer, cm: str, to: str, text: str) -> None:
    request = SendMessage(
        rid=kit.rid(), client_msg_id=cm, to=to, kind="text", content=text_content(text)
    )
    assert (await kit.call(peer, request)).client_msg_id == cm


async def test_history_pages_backwards_without_gaps(tmp_path: Path) -> None:
    async with open_kit(tmp_path) as kit:
        for name in ("alice", "bob", "carol"):
            await kit.user(name)
        alice = await kit.device("alice", "alice-pc")
        bob = await kit.device("bob", "bob-pc")
        carol = await kit.device("carol", "carol-pc")
        for i in range(120):
            sender, to = (alice, "bob") if i % 3 else (bob, "alice")
            await _say(kit, sender, f"m{i}", to, f"message number {i} " + "x" * 60)
        seqs: list[int] = []
        before = None
        while True:
            page = await kit.call(alice, History(rid=kit.rid(), with_user="bob", before_seq=before))
            assert isinstance(page, HistoryPage)
            assert 0 < len(page.messages) <= 50
            seqs += [m.seq for m in page.messages]
            if not page.more:
                break
            before = page.messages[-1].seq
        assert seqs == list(range(120, 0, -1))
        # The same conversation by id, from the other side, a small page.
        page = await kit.call(bob, History(rid=kit.rid(), conversation="d:alice:bob", limit=3))
        assert [m.seq for m in page.messages] == [120, 119, 118] and page.more
        # A full page of long messages stops at the payload bound.
        long_page = await kit.call(alice, History(rid=kit.rid(), with_user="bob", limit=500))
        assert 0 < len(long_page.messages) < 120 and long_page.more
        # Others' conversations, unknown users, empty conversations.
        denied = await kit.call(carol, History(rid=kit.rid(), conversation="d:alice:bob"))
        assert isinstance(denied, RequestFailed)
        assert denied.code == AppErrorCode.PERMISSION_DENIED
        missing = await kit.call(carol, History(rid=kit.rid(), with_user="nobody"))
        assert missing.code == AppErrorCode.NOT_FOUND
        group = await kit.call(carol, History(rid=kit.rid(), conversation="g:team"))
        assert group.code == AppErrorCode.NOT_FOUND
        empty = await kit.call(carol, History(rid=kit.rid(), with_user="alice"))
        assert empty.messages == () and not empty.more
        oldest = await kit.call(alice, History(rid=kit.rid(), with_user="bob", before_seq=1))
        assert oldest.messages == () and not oldest.more


async def test_chinese_search_over_own_conversations_only(tmp_path: Path) -> None:
    async with open_kit(tmp_path) as kit:
        for name in ("alice", "bob", "carol"):
            await kit.user(name)
        alice = await kit.device("alice", "alice-pc")
        bob = await kit.device("bob", "bob-pc")
        carol = await kit.device("carol", "carol-pc")
        await _say(kit, alice, "a1", "bob", "你好世界")
        await _say(kit, bob, "b1", "alice", "明天开会议吗")
        await _say(kit, carol, "c1", "carol", "我的你好世界笔记")
        await _say(kit, alice, "a2", "bob", "Hello World")

        async def search(peer: FakePeer, query: str, **kwargs: object) -> list[str]:
            answer = await kit.call(peer, Search(rid=kit.rid(), query=query, **kwargs))  # type: ignore[arg-type]
            assert isinstance(answer, SearchResult), answer
            return [m.content["text"] for m in answer.messages]

        assert await search(alice, "好世") == ["你好世界"]
        assert await search(bob, "你好世界") == ["你好世界"]
        assert await search(bob, "会议") == ["明天开会议吗"]
        assert await search(alice, "hello world") == ["Hello World"]
        assert await search(carol, "好世") == ["我的你好世界笔记"]
        assert await search(carol, "会议") == []
        assert await search(alice, "好世", conversation="d:alice:bob") == ["你好世界"]
        denied = await kit.call(
            carol, Search(rid=kit.rid(), query="好世", conversation="d:alice:bob")
        )
        assert denied.code == AppErrorCode.PERMISSION_DENIED
        # More matches than asked for: the first n, newest first, and `more`.
        for i in range(4):
            await _say(kit, alice, f"n{i}", "bob", f"世界 {i}")
        answer = await kit.call(alice, Search(rid=kit.rid(), query="世界", limit=3))
        assert [m.content["text"] for m in answer.messages] == ["世界 3", "世界 2", "世界 1"]
        assert answer.more
