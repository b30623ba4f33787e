"""Recall: inside and outside the window (fake clock), by whom, what every
device of both sides sees, and what is kept for audit."""

from __future__ import annotations

from pathlib import Path

from elink_protocol.app import (
    AppErrorCode,
    EventPush,
    History,
    Pull,
    Recall,
    RecallEvent,
    RecallOk,
    RequestFailed,
    Search,
    SendMessage,
    text_content,
)
from tests.helpers.messaging import Kit, open_kit


def _send(kit: Kit, cm: str, text: str) -> SendMessage:
    return SendMessage(
        rid=kit.rid(), client_msg_id=cm, to="bob", kind="text", content=text_content(text)
    )


async def test_recall_inside_the_window_reaches_every_device(tmp_path: Path) -> None:
    async with open_kit(tmp_path, recall_window=120.0) as kit:
        await kit.user("alice")
        await kit.user("bob")
        a_pc = await kit.device("alice", "alice-pc")
        a_phone = await kit.device("alice", "alice-phone")
        b_pc = await kit.device("bob", "bob-pc")
        b_phone = await kit.device("bob", "bob-phone")
        sent = await kit.call(a_pc, _send(kit, "oops", "secret plan"))
        for peer in (a_pc, a_phone, b_pc, b_phone):
            await peer.push(EventPush)
        kit.clock.ms += 120_000  # exactly the window: still allowed
        answer = await kit.call(a_phone, Recall(rid=kit.rid(), msg_id=sent.msg_id))
        assert isinstance(answer, RecallOk)
        assert answer.recalled_at_ms == kit.clock.ms
        for peer in (a_pc, a_phone, b_pc, b_phone):
            event = (await peer.push(EventPush)).event
            assert isinstance(event, RecallEvent)
            assert (event.msg_id, event.by, event.at_ms, event.cursor) == (
                sent.msg_id,
                "alice",
                kit.clock.ms,
                2,
            )
        # Users never see the content again: not in the log, history or search.
        page = await kit.call(b_pc, Pull(rid=kit.rid(), after=0))
        message = page.events[0].message
        assert message.recalled_at_ms == kit.clock.ms and message.content is None
        history = await kit.call(b_pc, History(rid=kit.rid(), with_user="alice"))
        assert history.messages[0].content is None
        found = await kit.call(b_pc, Search(rid=kit.rid(), query="secret"))
        assert found.messages == ()
        # ...but the original is kept for audit.
        audit = await kit.ctx.store.audit_message(sent.msg_id)
        assert audit is not None and audit.content == {"text": "secret plan"}
        # A retry succeeds with the original time, even after the window.
        kit.clock.ms += 3_600_000
        again = await kit.call(a_pc, Recall(rid=kit.rid(), msg_id=sent.msg_id))
        assert again.recalled_at_ms == answer.recalled_at_ms
        assert await b_pc.pushes() == []


async def test_recall_refusals(tmp_path: Path) -> None:
    async with open_kit(tmp_path, recall_window=120.0) as kit:
        await kit.user("alice")
        await kit.user("bob")
        a_pc = await kit.device("alice", "alice-pc")
        b_pc = await kit.device("bob", "bob-pc")
        sent = await kit.call(a_pc, _send(kit, "m1", "hello"))
        await b_pc.pushes()
        denied = await kit.call(b_pc, Recall(rid=kit.rid(), msg_id=sent.msg_id))
        assert isinstance(denied, RequestFailed)
        assert denied.code == AppErrorCode.PERMISSION_DENIED
        for msg_id in (0, 999, 2**64 - 1):
            missing = await kit.call(a_pc, Recall(rid=kit.rid(), msg_id=msg_id))
            assert missing.code == AppErrorCode.NOT_FOUND
        kit.clock.ms += 120_001
        late = await kit.call(a_pc, Recall(rid=kit.rid(), msg_id=sent.msg_id))
        assert late.code == AppErrorCode.RECALL_WINDOW_EXPIRED
        # Nothing changed and nobody was told.
        assert await b_pc.pushes() == []
        message = await kit.ctx.store.get_message(sent.msg_id)
        assert message is not None and not message.recalled
