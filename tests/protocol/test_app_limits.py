"""Every application packet fits one light-bus payload (spec §4.2, §11.1.6):
the largest legal instance of each fixed-shape packet encodes to at most 4096
bytes, the largest single item fits in every page and push that carries one,
and the page builders fill pages to the bound and never past it."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from elink_protocol import app
from elink_protocol import packets as p
from elink_protocol.config import MAX_LIGHT_PAYLOAD
from elink_protocol.errors import ErrorCode, LocalProtocolError
from elink_protocol.payload import decode_payload_untrusted, encode_payload

U16, U32, U64 = 2**16 - 1, 2**32 - 1, 2**64 - 1
NAME = "\U0001f600" * 64  # 64 characters of 4 UTF-8 bytes: the longest name
CONV = f"d:{NAME}:{NAME}"
CMID = "x" * 64
KIND = "k" * 32


def _text(n: int) -> str:
    return "\u00e9" * (n // 2) + "a" * (n % 2)  # exactly n UTF-8 bytes


def largest_content() -> dict[str, Any]:
    """A content map of exactly MAX_CONTENT_SIZE encoded bytes."""
    content: dict[str, Any] = {"text": _text(app.MAX_TEXT), "pad": ""}
    short = app.MAX_CONTENT_SIZE - len(encode_payload(content))
    content["pad"] = "p" * short
    while len(encode_payload(content)) > app.MAX_CONTENT_SIZE:  # str header grew
        content["pad"] = content["pad"][:-1]
    assert len(encode_payload(content)) == app.MAX_CONTENT_SIZE
    app.check_content(KIND, content)
    return content


def largest_message() -> app.Message:
    # Content and recall time together cannot happen; both are set for a bound.
    return app.Message(
        msg_id=U64,
        conversation=CONV,
        seq=U64,
        sender=NAME,
        sender_device=NAME,
        client_msg_id=CMID,
        kind=KIND,
        content=largest_content(),
        created_at_ms=U64,
        recalled_at_ms=U64,
        flags=U32,
    )


def largest_events() -> list[app.SyncEvent]:
    return [
        app.MessageEvent(cursor=U64, message=largest_message()),
        app.RecallEvent(cursor=U64, conversation=CONV, msg_id=U64, by=NAME, at_ms=U64),
        app.StatusEvent(
            cursor=U64,
            conversation=CONV,
            msg_id=U64,
            status=app.ReceiptKind.DELIVERED,
            by=NAME,
            device=NAME,
            at_ms=U64,
        ),
    ]


def largest_presence_entry() -> app.PresenceEntry:
    device = app.DevicePresence(
        device=NAME, kind=app.DeviceKind.MOBILE, status=app.PresenceStatus.OFFLINE
    )
    return app.PresenceEntry(
        user=NAME,
        status=app.PresenceStatus.OFFLINE,
        note=_text(128),
        since_ms=U64,
        devices=(device,) * 8,
    )


REASON = _text(256)
STATUS = app.PresenceStatus.OFFLINE

#: The largest instance of every packet, each optional field set.  Lists whose
#: length the payload bound limits hold one largest item here; the page tests
#: below fill them.
LARGEST: dict[type[p.Packet], app.AppPacket] = {
    app.Login: app.Login(
        rid=U32,
        user=NAME,
        password=_text(256),
        device_id=NAME,
        device_kind=app.DeviceKind.MOBILE,
        client_version=_text(64),
    ),
    app.LoginOk: app.LoginOk(
        rid=U32,
        user=NAME,
        device_id=NAME,
        pending=U32,
        cursor=U64,
        recall_window_s=U32,
        server_time_ms=U64,
        heartbeat_s=U16,
        latest_version=_text(64),
    ),
    app.LoginQueued: app.LoginQueued(rid=U32, position=U32, estimated_wait_ms=U32),
    app.Logout: app.Logout(rid=U32),
    app.GoingAway: app.GoingAway(reason=REASON, reconnect_after_ms=U32),
    app.Ok: app.Ok(rid=U32),
    app.RequestFailed: app.RequestFailed(rid=U32, code=U16, reason=REASON, retry_after_ms=U32),
    app.SendMessage: app.SendMessage(
        rid=U32,
        client_msg_id=CMID,
        to=NAME,
        conversation=CONV,  # only one may be sent; both set for a bound
        kind=KIND,
        content=largest_content(),
        flags=U32,
    ),
    app.MessageAccepted: app.MessageAccepted(
        rid=U32,
        client_msg_id=CMID,
        msg_id=U64,
        conversation=CONV,
        seq=U64,
        created_at_ms=U64,
        duplicate=True,
        recipient_backlog_full=True,
    ),
    app.EventsAvailable: app.EventsAvailable(latest=U64),
    app.EventPush: app.EventPush(event=largest_events()[0]),
    app.Pull: app.Pull(rid=U32, after=U64, limit=1000),
    app.PullResult: app.PullResult(
        rid=U32, events=(largest_events()[0],), next_cursor=U64, more=True, head=U64
    ),
    app.Delivered: app.Delivered(rid=U32, cursor=U64),
    app.MarkRead: app.MarkRead(rid=U32, conversation=CONV, up_to_seq=U64),
    app.StatusUpdate: app.StatusUpdate(
        msg_id=U64,
        conversation=CONV,
        status=app.ReceiptKind.DELIVERED,
        user=NAME,
        device=NAME,
        at_ms=U64,
    ),
    app.QueryStatus: app.QueryStatus(rid=U32, msg_id=U64),
    app.MessageStatus: app.MessageStatus(
        rid=U32,
        msg_id=U64,
        state=app.DeliveryState.DELIVERED,
        sent_at_ms=U64,
        delivered=(app.DeliveryReceipt(user=NAME, device=NAME, at_ms=U64),),
        read=(app.ReadReceipt(user=NAME, at_ms=U64),),
        delivered_count=U32,
        read_count=U32,
    ),
    app.Recall: app.Recall(rid=U32, msg_id=U64),
    app.RecallOk: app.RecallOk(rid=U32, msg_id=U64, recalled_at_ms=U64),
    app.History: app.History(rid=U32, with_user=NAME, conversation=CONV, before_seq=U64, limit=500),
    app.HistoryPage: app.HistoryPage(rid=U32, messages=(largest_message(),), more=True),
    app.Search: app.Search(rid=U32, query=_text(200), limit=500, conversation=CONV),
    app.SearchResult: app.SearchResult(rid=U32, messages=(largest_message(),), more=True),
    app.SetPresence: app.SetPresence(rid=U32, status=STATUS, note=_text(128)),
    app.PresenceUpdate: app.PresenceUpdate(
        user=NAME,
        device=NAME,
        device_kind=app.DeviceKind.MOBILE,
        status=STATUS,
        aggregated=STATUS,
        note=_text(128),
        at_ms=U64,
    ),
    app.Follow: app.Follow(rid=U32, user=NAME),
    app.Unfollow: app.Unfollow(rid=U32, user=NAME),
    app.QueryPresence: app.QueryPresence(rid=U32, users=(NAME,)),
    app.PresenceResult: app.PresenceResult(rid=U32, entries=(largest_presence_entry(),), more=True),
}


def test_every_app_packet_has_a_largest_instance() -> None:
    # The file packets of §9 have their own limits (tests/protocol/test_files_packets.py).
    assert set(LARGEST) == {
        c for t, c in p.PACKET_TYPES.items() if app.APP_TYPES_FIRST <= t < 0x0400
    }


@pytest.mark.parametrize("cls", list(LARGEST), ids=lambda c: c.__name__)
def test_largest_instance_fits_one_payload(cls: type[p.Packet]) -> None:
    packet = LARGEST[cls]
    for f in attrs.fields(cls):  # every optional field is set
        assert f.default is attrs.NOTHING or getattr(packet, f.name) != f.default, f.name
    size = len(encode_payload(packet.to_payload()))
    assert size <= MAX_LIGHT_PAYLOAD, size


def test_largest_items_each_fit_every_carrier() -> None:
    for event in largest_events():
        for packet in (
            app.EventPush(event=event),
            app.PullResult(rid=U32, events=(event,), next_cursor=U64, more=True, head=U64),
        ):
            assert len(encode_payload(packet.to_payload())) <= MAX_LIGHT_PAYLOAD


# --- page builders (§11.1.6) --------------------------------------------------------


def _size(packet: p.Packet) -> int:
    return len(encode_payload(packet.to_payload()))


def test_pull_result_fills_to_the_bound() -> None:
    pull = app.Pull(rid=U32, after=0, limit=1000)
    events = [app.MessageEvent(cursor=i, message=largest_message()) for i in range(1, 6)]
    page = pull.result(events, head=U64)
    assert len(page.events) == 1 and page.more and page.next_cursor == 1
    assert _size(page) <= MAX_LIGHT_PAYLOAD
    small = [
        app.RecallEvent(cursor=i, conversation="d:a:b", msg_id=i, by="a", at_ms=i)
        for i in range(1, 1001)
    ]
    page = pull.result(small, head=1000)
    n = len(page.events)
    assert 50 < n < 1000 and page.more and page.next_cursor == n
    assert _size(page) <= MAX_LIGHT_PAYLOAD
    one_more = app.PullResult(
        rid=U32, events=tuple(small[: n + 1]), next_cursor=n + 1, more=True, head=1000
    )
    assert _size(one_more) > MAX_LIGHT_PAYLOAD  # the page is as full as it can be
    decoded = app.PullResult.from_payload_untrusted(
        decode_payload_untrusted(encode_payload(page.to_payload()))
    )
    assert decoded == page


def test_pull_result_respects_limit_and_head() -> None:
    pull = app.Pull(rid=1, after=10, limit=2)
    events = [app.RecallEvent(cursor=i, conversation="d:a:b", msg_id=i, by="a", at_ms=1)
              for i in (11, 12, 13)]  # fmt: skip
    page = pull.result(events, head=13)
    assert [e.cursor for e in page.events] == [11, 12] and page.more
    page = app.Pull(rid=1, after=10).result(events, head=13)
    assert page.next_cursor == 13 and not page.more
    empty = app.Pull(rid=1, after=13).result([], head=13)
    assert empty.events == () and empty.next_cursor == 13 and not empty.more


@pytest.mark.parametrize("boundary", range(0, 40, 3))
def test_fill_is_exact_at_every_boundary(boundary: int) -> None:
    """Items sized so the page ends near 4096 at varying offsets: the builder
    takes exactly the longest prefix that fits."""
    search = app.Search(rid=U32, query="x")
    base = app.Message(
        msg_id=1, conversation="d:a:b", seq=1, sender="a", sender_device="d",
        client_msg_id="c", kind="text", content={"text": ""}, created_at_ms=1,
    )  # fmt: skip
    messages = [attrs.evolve(base, content={"text": "t" * (200 + boundary + i)}) for i in range(40)]
    result = search.result(messages, more=False)
    n = len(result.messages)
    assert _size(result) <= MAX_LIGHT_PAYLOAD
    assert n < len(messages) and result.more
    bigger = app.SearchResult(rid=U32, messages=tuple(messages[: n + 1]), more=True)
    assert _size(bigger) > MAX_LIGHT_PAYLOAD


def test_history_and_search_pages() -> None:
    history = app.History(rid=U32, with_user=NAME, limit=3)
    messages = [largest_message()] * 2
    page = history.page(messages, more=False)
    assert len(page.messages) == 1 and page.more and _size(page) <= MAX_LIGHT_PAYLOAD
    small = app.Message(
        msg_id=1, conversation="d:a:b", seq=1, sender="a", sender_device="d",
        client_msg_id="c", kind="text", content={"text": "hi"}, created_at_ms=1,
    )  # fmt: skip
    page = history.page([small] * 3, more=False)
    assert len(page.messages) == 3 and not page.more
    assert history.page([small] * 5, more=False).more  # cut by limit
    assert app.Search(rid=1, query="x").result([small], more=True).more


def test_message_status_shares_the_budget() -> None:
    query = app.QueryStatus(rid=U32, msg_id=U64)
    delivered = [app.DeliveryReceipt(user=NAME, device=NAME, at_ms=U64)] * 20
    read = [app.ReadReceipt(user=NAME, at_ms=U64)] * 20
    status = query.status(
        state=app.DeliveryState.READ, sent_at_ms=U64, delivered=delivered, read=read
    )
    assert _size(status) <= MAX_LIGHT_PAYLOAD
    assert 0 < len(status.delivered) < 20 and not status.complete
    assert (status.delivered_count, status.read_count) == (20, 20)
    few = query.status(
        state=app.DeliveryState.SENT, sent_at_ms=1, delivered=delivered[:2], read=read[:1]
    )
    assert few.complete


def test_presence_pages_and_query_splitting() -> None:
    query = app.QueryPresence(rid=U32, users=(NAME,) * 100)
    entries = [largest_presence_entry()] * 100
    result = query.result(entries)
    assert 0 < len(result.entries) < 100 and result.more
    assert _size(result) <= MAX_LIGHT_PAYLOAD
    users = [NAME] * 150
    first, rest = app.query_users(users, rid=U32)
    assert _size(first) <= MAX_LIGHT_PAYLOAD
    assert len(first.users) + len(rest) == 150 and 0 < len(first.users) < 100
    bigger = app.QueryPresence(rid=U32, users=(NAME,) * (len(first.users) + 1))
    assert _size(bigger) > MAX_LIGHT_PAYLOAD
    short, rest = app.query_users(["bob"] * 150, rid=1)
    assert len(short.users) == 100 and len(rest) == 50


def test_an_item_that_can_never_fit_is_a_local_error() -> None:
    huge = app.Message(
        msg_id=1, conversation="d:a:b", seq=1, sender="a", sender_device="d",
        client_msg_id="c", kind="text", content={"text": "x" * 5000}, created_at_ms=1,
    )  # fmt: skip
    with pytest.raises(LocalProtocolError) as info:
        app.Search(rid=1, query="x").result([huge], more=False)
    assert info.value.error_code is ErrorCode.FRAME_TOO_LARGE
