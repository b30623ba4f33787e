"""Application packets (spec §11): schemas, cross-field rules, reply helpers,
and that hostile payloads raise only RemoteProtocolError(PAYLOAD_INVALID)."""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elink_protocol import app
from elink_protocol import packets as p
from elink_protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from elink_protocol.frame import Priority
from elink_protocol.payload import decode_payload_untrusted, encode_payload
from elink_protocol.state import Role
from elink_protocol.vectors.generate_app import examples
from tests.helpers.pair import drain, establish, make_pair, roundtrip_until_quiet

EXAMPLES = [packet for _, packet in examples()]
APP_CLASSES = [cls for t, cls in sorted(p.PACKET_TYPES.items()) if t >= app.APP_TYPES_FIRST]


def _ids(packet: p.Packet) -> str:
    return type(packet).__name__


def _parse(cls: type[p.Packet], fields: dict[str, Any]) -> Any:
    return cls.from_payload_untrusted(decode_payload_untrusted(encode_payload(fields)))


def _invalid(cls: type[p.Packet], fields: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        _parse(cls, fields)
    assert info.value.error_code is ErrorCode.PAYLOAD_INVALID


# --- the registry ---------------------------------------------------------------


def test_every_app_packet_has_an_example() -> None:
    assert {type(e) for e in EXAMPLES} == set(APP_CLASSES)
    assert len(APP_CLASSES) >= 30


@pytest.mark.parametrize("cls", APP_CLASSES, ids=lambda c: c.__name__)
def test_class_attributes(cls: type[p.Packet]) -> None:
    assert issubclass(cls, app.AppPacket)
    assert app.APP_TYPES_FIRST <= cls.TYPE <= 0x04FF  # §11 and the file packets of §9
    assert cls.NUMBERED
    assert cls.PHASES is p.Phase.ESTABLISHED
    assert cls.TYPE not in p.CONTROL_TYPES
    keys = [f.metadata["wire"][0] for f in attrs.fields(cls) if "wire" in f.metadata]
    assert len(keys) == len(set(keys))
    if issubclass(cls, app.HeavyPacket):  # §9.5-§9.8: heavy bus only
        assert cls.BUS is p.Bus.HEAVY and 0x0440 <= cls.TYPE <= 0x04FF
        assert cls.PRIORITY in (Priority.INTERACTIVE, Priority.BULK) and "r" not in keys
        assert cls.__doc__
        return
    assert cls.BUS is p.Bus.LIGHT
    assert cls.PRIORITY in (Priority.INTERACTIVE, Priority.SYNC)
    if issubclass(cls, app.Request):
        assert cls.SENDER is Role.CLIENT and "r" in keys
    elif issubclass(cls, app.Response):
        assert cls.SENDER is Role.SERVER and "r" in keys
    else:
        assert issubclass(cls, app.Push) and cls.SENDER is Role.SERVER and "r" not in keys
    assert cls.__doc__
    for f in attrs.fields(cls):
        assert f.metadata.get("wire") is not None, f.name


# --- round trips and schema errors ---------------------------------------------


@pytest.mark.parametrize("packet", EXAMPLES, ids=_ids)
def test_round_trip(packet: app.AppPacket) -> None:
    parsed = _parse(type(packet), packet.to_payload())
    assert parsed == packet
    assert parsed.to_payload() == packet.to_payload()
    packet.validate()


@pytest.mark.parametrize("packet", EXAMPLES, ids=_ids)
def test_unknown_keys_are_ignored(packet: app.AppPacket) -> None:
    assert _parse(type(packet), {**packet.to_payload(), "zz-future": {"a": [1]}}) == packet


def _required_keys(cls: type[p.Packet]) -> list[str]:
    return [
        f.metadata["wire"][0]
        for f in attrs.fields(cls)
        if "wire" in f.metadata and f.default is attrs.NOTHING
    ]


@pytest.mark.parametrize("packet", EXAMPLES, ids=_ids)
def test_missing_required_key_is_payload_invalid(packet: app.AppPacket) -> None:
    for key in _required_keys(type(packet)):
        fields = packet.to_payload()
        del fields[key]
        _invalid(type(packet), fields)


WRONG: list[Any] = [None, -1, 2**64 - 1, "", "s", "a:b", b"", b"x" * 40, [1], [{}], {}, True, 1.5]


@pytest.mark.parametrize("packet", EXAMPLES, ids=_ids)
def test_wrong_values_are_payload_invalid_or_legal(packet: app.AppPacket) -> None:
    for key in packet.to_payload():
        for bad in WRONG:
            fields = {**packet.to_payload(), key: bad}
            try:
                parsed = _parse(type(packet), fields)
            except RemoteProtocolError as exc:
                assert exc.error_code is ErrorCode.PAYLOAD_INVALID
            else:  # accepted only if it is a legal value of that field
                assert _parse(type(packet), parsed.to_payload()) == parsed


def _nested_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _nested_paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _nested_paths(v, (*path, i))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    return [_replace(v, rest, new) if i == head else v for i, v in enumerate(value)]


@pytest.mark.parametrize("packet", EXAMPLES, ids=_ids)
def test_nested_wrong_values_raise_only_payload_invalid(packet: app.AppPacket) -> None:
    payload = packet.to_payload()
    for path in _nested_paths(payload):
        for bad in (None, "x", -5, [], {}, b"\x00"):
            fields = _replace(payload, path, bad)
            with contextlib.suppress(RemoteProtocolError):
                parsed = _parse(type(packet), fields)
                assert _parse(type(packet), parsed.to_payload()) == parsed


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.sampled_from(["alice", "d:a:b", "g:x", "text", "message", "read", "online", "pc"]),
)
_value = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["r", "u", "c", "k", "m", "e", "ev", "ms", "es", "cv", "id", "sq", "to", "cm", "st", "dv"]
)


@given(st.sampled_from(APP_CLASSES), st.dictionaries(_keys | st.text(max_size=3), _value))
@settings(max_examples=300, deadline=None)
def test_any_map_parses_or_raises_payload_invalid(cls: type[p.Packet], fields: dict) -> None:
    try:
        _parse(cls, fields)
    except RemoteProtocolError as exc:
        assert exc.error_code is ErrorCode.PAYLOAD_INVALID


@given(st.sampled_from(EXAMPLES), st.data())
@settings(max_examples=1500, deadline=None)
def test_mutated_examples_parse_or_raise_payload_invalid(packet: app.AppPacket, data: Any) -> None:
    payload = packet.to_payload()
    paths = _nested_paths(payload)
    fields = _replace(payload, data.draw(st.sampled_from(paths)), data.draw(_value))
    try:
        parsed = _parse(type(packet), fields)
    except RemoteProtocolError as exc:
        assert exc.error_code is ErrorCode.PAYLOAD_INVALID
    else:
        assert _parse(type(packet), parsed.to_payload()) == parsed


# --- values (§11.2) ---------------------------------------------------------------


def _login(**kw: Any) -> dict[str, Any]:
    return {"r": 1, "u": "alice", "pw": "pw", "d": "pc-1", "dk": "pc", **kw}


@pytest.mark.parametrize(
    "user", ["", "a b", "a:b", "x" * 65, "tab\t", "\x00", "a\u2028", 5, b"alice"]
)
def test_bad_names(user: Any) -> None:
    _invalid(app.Login, _login(u=user))


@pytest.mark.parametrize("user", ["alice", "张伟", "x" * 64, "\U0001f600" * 64, "a.b-c_d@e"])
def test_good_names(user: str) -> None:
    assert _parse(app.Login, _login(u=user)).user == user


def test_device_kind_and_password() -> None:
    _invalid(app.Login, _login(dk="phone"))
    _invalid(app.Login, _login(pw=""))
    _invalid(app.Login, _login(pw="x" * 257))
    assert _parse(app.Login, _login(dk="bot")).device_kind is app.DeviceKind.BOT


def _mark(cv: Any) -> dict[str, Any]:
    return {"r": 1, "cv": cv, "sq": 1}


@pytest.mark.parametrize("cv", ["d:alice:bob", "d:alice:alice", "g:ops", "d:Bob:alice"])
def test_good_conversation_ids(cv: str) -> None:
    assert _parse(app.MarkRead, _mark(cv)).conversation == cv


@pytest.mark.parametrize(
    "cv", ["d:bob:alice", "d:alice", "g:", "x:a", "alice", "d:a:b:c", "g:a b", "", "g:a:b"]
)
def test_bad_conversation_ids(cv: str) -> None:
    _invalid(app.MarkRead, _mark(cv))


def _send(**kw: Any) -> dict[str, Any]:
    return {"r": 1, "cm": "m-1", "to": "bob", "k": "text", "c": {"text": "hi"}, **kw}


@pytest.mark.parametrize("cm", ["", "a b", "x" * 65, "é", "a/b", 7])
def test_bad_client_msg_ids(cm: Any) -> None:
    _invalid(app.SendMessage, _send(cm=cm))


@pytest.mark.parametrize("kind", ["", "Text", "1abc", "a" * 33, "a b", "ä"])
def test_bad_kinds(kind: str) -> None:
    _invalid(app.SendMessage, _send(k=kind, c={}))


# --- messages and content (§11.4) --------------------------------------------------


def test_send_needs_exactly_one_destination() -> None:
    _parse(app.SendMessage, _send())
    both = _send(cv="g:ops")
    _invalid(app.SendMessage, both)
    neither = _send()
    del neither["to"]
    _invalid(app.SendMessage, neither)
    via_conv = _send(cv="g:ops")
    del via_conv["to"]
    assert _parse(app.SendMessage, via_conv).conversation == "g:ops"


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        ("text", {}),
        ("text", {"text": ""}),
        ("text", {"text": 5}),
        ("text", {"text": "x" * (app.MAX_TEXT + 1)}),
        ("emoji", {"text": "caption only"}),
        ("emoji", {"emoji": "x" * 65}),
        ("image", {"text": "no ref"}),
        ("file", {"ref": {"id": b"x" * 16}}),
        ("file", {"ref": {"id": b"x" * 15, "sz": 1, "h": b"h" * 32, "n": "a", "mt": ""}}),
        ("file", {"ref": {"id": b"x" * 16, "sz": 1, "h": b"h" * 32, "n": "a/b", "mt": ""}}),
        ("file", {"ref": {"id": b"x" * 16, "sz": 1, "h": b"h" * 32, "n": "..\\b", "mt": ""}}),
        ("voice", {"ref": "not a map"}),
        ("image", {"ref": {"id": b"x" * 16, "sz": 1, "h": b"h" * 32, "n": "a", "mt": ""}, "w": -1}),
        ("link", {"title": "no url"}),
        ("poll", {"text": 7}),
        ("poll", {"blob": b"x" * app.MAX_CONTENT_SIZE}),
        ("text", []),
    ],
)
def test_bad_content(kind: str, content: Any) -> None:
    _invalid(app.SendMessage, _send(k=kind, c=content))
    with pytest.raises(ValueError):
        app.check_content(kind, content)


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        ("text", {"text": "x" * app.MAX_TEXT}),
        ("text", {"text": "hi", "mentions": ["bob"]}),
        ("emoji", {"emoji": "👍"}),
        ("link", {"url": "https://oa.example/todo/17", "title": "To-do", "text": "approve"}),
        ("folder", {"ref": {"id": b"x" * 16, "sz": 0, "h": b"h" * 32, "n": "docs", "mt": ""}}),
        ("card", {"anything": {"nested": [1, 2]}}),
        ("poll", {"question": "lunch?", "options": ["a", "b"]}),
    ],
)
def test_good_content(kind: str, content: dict[str, Any]) -> None:
    assert _parse(app.SendMessage, _send(k=kind, c=content)).content == content


def test_content_helpers_produce_valid_content() -> None:
    ref = app.TransferRef(id=b"i" * 16, size=3, sha256=b"h" * 32, name="a.png", media_type="")
    for kind, content in [
        ("text", app.text_content("hi")),
        ("emoji", app.emoji_content(":smile:")),
        ("image", app.file_content(ref, caption="look", w=1, h=2)),
    ]:
        app.check_content(kind, content)
    assert app.file_content(ref)["ref"] == ref.to_wire()
    assert app.TransferRef.from_wire_untrusted(ref.to_wire()) == ref


def _message_map(**kw: Any) -> dict[str, Any]:
    base = {
        "id": 1,
        "cv": "d:alice:bob",
        "sq": 1,
        "fr": "alice",
        "fd": "pc",
        "cm": "m1",
        "k": "text",
        "c": {"text": "hi"},
        "t": 5,
    }
    return {**base, **kw}


def _history_page(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"r": 1, "ms": list(messages)}


def test_message_recall_state_and_content_agree() -> None:
    recalled = _message_map(rc=9)
    del recalled["c"]
    page = _parse(app.HistoryPage, _history_page(recalled))
    assert page.messages[0].recalled
    _invalid(app.HistoryPage, _history_page(_message_map(rc=9)))
    no_content = _message_map()
    del no_content["c"]
    _invalid(app.HistoryPage, _history_page(no_content))
    _invalid(app.HistoryPage, _history_page(_message_map(c={"text": 1})))


def test_history_page_order_and_conversation() -> None:
    newer, older = _message_map(sq=2, id=2), _message_map(sq=1)
    _parse(app.HistoryPage, _history_page(newer, older))
    _invalid(app.HistoryPage, _history_page(older, newer))
    _invalid(app.HistoryPage, _history_page(newer, _message_map(sq=1, cv="d:alice:carol")))


def test_history_needs_exactly_one_of_with_and_conversation() -> None:
    _parse(app.History, {"r": 1, "w": "bob"})
    _parse(app.History, {"r": 1, "cv": "g:x"})
    _invalid(app.History, {"r": 1})
    _invalid(app.History, {"r": 1, "w": "bob", "cv": "g:x"})
    _invalid(app.History, {"r": 1, "w": "bob", "n": 0})
    _invalid(app.History, {"r": 1, "w": "bob", "n": 501})
    _invalid(app.Search, {"r": 1, "q": ""})
    _invalid(app.Search, {"r": 1, "q": "x" * 201})


# --- sync (§11.5) -------------------------------------------------------------------


def _pull_result(*events: dict[str, Any], nc: int, hd: int = 50) -> dict[str, Any]:
    return {"r": 1, "ev": list(events), "nc": nc, "hd": hd}


def test_events_parse_by_kind() -> None:
    msg = {"k": "message", "c": 3, "m": _message_map()}
    recall = {"k": "recall", "c": 4, "cv": "d:alice:bob", "id": 1, "by": "alice", "at": 7}
    read = {"k": "status", "c": 5, "cv": "d:alice:bob", "id": 1, "st": "read", "by": "bob", "at": 8}
    future = {"k": "poll.vote", "c": 6, "whatever": [1]}
    page = _parse(app.PullResult, _pull_result(msg, recall, read, future, nc=6))
    kinds = [type(e) for e in page.events]
    assert kinds == [app.MessageEvent, app.RecallEvent, app.StatusEvent, app.UnknownEvent]
    assert [e.kind for e in page.events] == ["message", "recall", "status", "poll.vote"]
    assert page.to_payload()["ev"][3] == {"k": "poll.vote", "c": 6}


@pytest.mark.parametrize(
    "event",
    [
        {"k": "message", "c": 3},
        {"k": "recall", "c": 4, "cv": "d:alice:bob", "id": 1, "at": 7},
        {"k": "status", "c": 5, "cv": "d:a:b", "id": 1, "st": "delivered", "by": "b", "at": 8},
        {
            "k": "status",
            "c": 5,
            "cv": "d:a:b",
            "id": 1,
            "st": "read",
            "by": "b",
            "dv": "x",
            "at": 8,
        },
        {"k": "status", "c": 5, "cv": "d:a:b", "id": 1, "st": "signed", "by": "b", "at": 8},
        {"k": "Message", "c": 3},
        {"k": "poll"},
        {"c": 3},
        [],
    ],
)
def test_bad_events(event: Any) -> None:
    _invalid(app.PullResult, _pull_result(event, nc=5))
    _invalid(app.EventPush, {"e": event})


def test_pull_result_cursor_rules() -> None:
    def ev(c: int) -> dict[str, Any]:
        return {"k": "poll", "c": c}

    _parse(app.PullResult, _pull_result(ev(3), ev(4), nc=4))
    _parse(app.PullResult, _pull_result(nc=9))  # empty page: next_cursor is the request's
    _invalid(app.PullResult, _pull_result(ev(4), ev(3), nc=3))
    _invalid(app.PullResult, _pull_result(ev(3), ev(3), nc=3))
    _invalid(app.PullResult, _pull_result(ev(3), ev(4), nc=9))
    _invalid(app.Pull, {"r": 1, "af": 0, "n": 0})
    _invalid(app.Pull, {"r": 1, "af": 0, "n": 1001})


def test_status_update_device_rule() -> None:
    base = {"id": 1, "cv": "d:a:b", "u": "b", "at": 1}
    _parse(app.StatusUpdate, {**base, "st": "delivered", "dv": "phone"})
    _parse(app.StatusUpdate, {**base, "st": "read"})
    _invalid(app.StatusUpdate, {**base, "st": "delivered"})
    _invalid(app.StatusUpdate, {**base, "st": "read", "dv": "phone"})


# --- helpers ---------------------------------------------------------------------


def test_reply_helpers_echo_the_rid() -> None:
    send = app.SendMessage(rid=77, client_msg_id="m", to="bob", kind="text", content={"text": "x"})
    failed = send.failed(app.AppErrorCode.PERMISSION_DENIED, "no", retry_after_ms=5)
    assert (failed.rid, failed.code, failed.reason, failed.retry_after_ms) == (77, 0x0112, "no", 5)
    assert failed.error is app.AppErrorCode.PERMISSION_DENIED
    assert app.RequestFailed(rid=1, code=0x7000).error is None
    accepted = send.accepted(msg_id=1, conversation="d:a:bob", seq=1, created_at_ms=2)
    assert (accepted.rid, accepted.client_msg_id) == (77, "m")
    for request in (app.Logout(rid=3), app.Delivered(rid=3, cursor=1), app.Follow(rid=3, user="b")):
        assert request.ok() == app.Ok(rid=3)
    login = app.Login(rid=4, user="a", password="p", device_id="d", device_kind=app.DeviceKind.WEB)
    assert login.ok(pending=2**40, cursor=1, recall_window_s=120, server_time_ms=1).pending == (
        2**32 - 1
    )
    assert login.queued(position=3, estimated_wait_ms=10).rid == 4


def test_check_sender() -> None:
    login = app.Login(rid=1, user="a", password="p", device_id="d", device_kind=app.DeviceKind.PC)
    push = app.EventsAvailable(latest=3)
    app.check_sender(login, Role.SERVER)
    app.check_sender(push, Role.CLIENT)
    app.check_sender(p.Ping(), Role.SERVER)
    for packet, receiver in (
        (login, Role.CLIENT),
        (push, Role.SERVER),
        (app.Ok(rid=1), Role.SERVER),
    ):
        with pytest.raises(RemoteProtocolError) as info:
            app.check_sender(packet, receiver)
        assert info.value.error_code is ErrorCode.UNEXPECTED_PACKET


def test_validate_reports_local_errors() -> None:
    bad = app.SendMessage(rid=1, client_msg_id="m", to="bob", conversation="g:x", kind="text",
                          content={"text": "x"})  # fmt: skip
    with pytest.raises(LocalProtocolError) as info:
        bad.validate()
    assert info.value.error_code is ErrorCode.PAYLOAD_INVALID
    huge = app.GoingAway(reason="x" * 5000)
    with pytest.raises(LocalProtocolError) as info:
        huge.validate()
    assert info.value.error_code is ErrorCode.FRAME_TOO_LARGE


def test_presence_aggregation() -> None:
    s = app.PresenceStatus
    assert app.aggregate([]) is s.OFFLINE
    assert app.aggregate([s.AWAY, s.OFFLINE]) is s.AWAY
    assert app.aggregate([s.AWAY, s.BUSY]) is s.BUSY
    assert app.aggregate([s.BUSY, s.ONLINE, s.AWAY]) is s.ONLINE


# --- through a real connection ------------------------------------------------------


def test_app_packets_cross_an_established_connection() -> None:
    client, server = make_pair()
    establish(client, server)
    requests = [e for e in EXAMPLES if e.BUS is p.Bus.LIGHT and e.SENDER is Role.CLIENT]
    answers = [e for e in EXAMPLES if e.BUS is p.Bus.LIGHT and e.SENDER is Role.SERVER]
    for packet in requests:
        client.queue(packet)
    for packet in answers:
        server.queue(packet)
    ex = roundtrip_until_quiet(client, server)
    got_server = [e for e in ex.server_events if isinstance(e, app.AppPacket)]
    got_client = [e for e in ex.client_events if isinstance(e, app.AppPacket)]
    # Priorities reorder packets across classes (§6.1), never within one.
    for priority in (Priority.INTERACTIVE, Priority.SYNC):
        for got, sent in ((got_server, requests), (got_client, answers)):
            assert [e for e in got if e.PRIORITY is priority] == [
                e for e in sent if e.PRIORITY is priority
            ]
    assert len(got_server) == len(requests) and len(got_client) == len(answers)
    assert drain(client) == [] and drain(server) == []
