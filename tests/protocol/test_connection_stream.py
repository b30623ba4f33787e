"""Connection over a stream: handshake, data, close, errors (spec §3-§8)."""

from __future__ import annotations

import pytest

from elink_protocol import packets as p
from elink_protocol.connection import Connection
from elink_protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from elink_protocol.events import ConnectionClosed, HandshakeComplete
from elink_protocol.frame import Flags, Frame, Priority, decode_frames_untrusted
from elink_protocol.state import ConnectionState
from tests.helpers.pair import ALL_SUITES, drain, establish, make_pair, roundtrip_until_quiet
from tests.helpers.splitting import all_splits


def _data(i: int, size: int = 10) -> p.UnknownPacket:
    return p.UnknownPacket(type=0x8001, payload=p_payload(i, size))


def p_payload(i: int, size: int) -> bytes:
    from elink_protocol.payload import encode_payload

    return encode_payload({"i": i, "pad": b"x" * size})


@pytest.mark.parametrize("suite", ALL_SUITES, ids=lambda s: s.name)
def test_handshake_completes_on_every_suite(suite: int) -> None:
    client, server = make_pair(suite=suite)
    ex = establish(client, server)
    (c_done,) = [e for e in ex.client_events if isinstance(e, HandshakeComplete)]
    (s_done,) = [e for e in ex.server_events if isinstance(e, HandshakeComplete)]
    assert c_done.suite == s_done.suite == suite
    assert c_done.session_id == s_done.session_id and len(c_done.session_id) == 16
    assert not c_done.resumed
    assert client.state is server.state is ConnectionState.ESTABLISHED
    client.queue(_data(1))
    server.queue(_data(2))
    ex = roundtrip_until_quiet(client, server)
    assert ex.server_events == [_data(1)]
    assert ex.client_events == [_data(2)]


def test_handshake_and_data_at_every_split() -> None:
    """The whole conversation parses identically whatever the read sizes."""
    reference = None
    for index in range(7):
        client, server = make_pair(seed=5)
        client.initiate()
        got = []
        for _ in range(3):
            for src, dst in ((client, server), (server, client)):
                data = src.data_to_send()
                for chunk in all_splits(data)[index]:
                    dst.receive_data(chunk)
                    got += [(dst.role, type(e).__name__) for e in drain(dst)]
        client.queue(_data(1, 3000))
        client.queue(_data(2, 0))
        data = client.data_to_send()
        for chunk in all_splits(data)[index]:
            server.receive_data(chunk)
            got += [(server.role, e) for e in drain(server)]
        if reference is None:
            reference = got
        assert got == reference
    assert reference is not None and reference[-2:] == [
        (server.role, _data(1, 3000)),
        (server.role, _data(2, 0)),
    ]


def test_many_packets_each_way_in_order() -> None:
    client, server = make_pair()
    establish(client, server)
    for i in range(500):
        client.queue(_data(i))
        server.queue(_data(1000 + i))
    ex = roundtrip_until_quiet(client, server)
    assert ex.server_events == [_data(i) for i in range(500)]
    assert ex.client_events == [_data(1000 + i) for i in range(500)]
    # acknowledgements freed the resend buffers
    roundtrip_until_quiet(client, server)
    assert client.statistics().unacked < 64 and server.statistics().unacked < 64


def test_client_may_queue_before_the_handshake() -> None:
    client, server = make_pair()
    client.queue(_data(7))
    ex = establish(client, server)
    assert ex.server_events[-1] == _data(7)


def test_ping_is_answered() -> None:
    client, server = make_pair()
    establish(client, server)
    client.ping(b"hi")
    roundtrip_until_quiet(client, server)
    # a Pong came back: the server sent something after the ping
    assert server.statistics().bytes_sent > 0


def test_graceful_close() -> None:
    client, server = make_pair()
    establish(client, server)
    client.queue(_data(1))
    client.close(ErrorCode.NO_ERROR, "bye")
    assert client.state is ConnectionState.CLOSED
    server.receive_data(client.data_to_send())
    events = drain(server)
    assert events == [
        _data(1),
        ConnectionClosed(code=ErrorCode.NO_ERROR, reason="bye", by_peer=True, graceful=True),
    ]
    assert server.state is ConnectionState.CLOSED
    with pytest.raises(LocalProtocolError):
        client.queue(_data(2))


def test_eof_is_a_lost_connection() -> None:
    client, server = make_pair()
    establish(client, server)
    server.receive_data(b"")
    (event,) = drain(server)
    assert isinstance(event, ConnectionClosed) and not event.graceful and event.by_peer


def test_application_cannot_send_control_packets() -> None:
    client, server = make_pair()
    establish(client, server)
    for packet in (p.Ping(), p.Close(code=0), p.Rekey(epoch=1, random=b"r" * 32)):
        with pytest.raises(LocalProtocolError):
            client.queue(packet)


def test_oversized_payload_is_refused_locally() -> None:
    client, server = make_pair()
    establish(client, server)
    with pytest.raises(LocalProtocolError) as info:
        client.queue(p.UnknownPacket(type=0x8001, payload=b"\x80" + b"x" * 4096))
    assert info.value.error_code is ErrorCode.FRAME_TOO_LARGE


def _expect_failure(server: Connection, data: bytes, code: ErrorCode) -> None:
    server.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        drain(server)
    assert info.value.error_code is code
    assert server.state is ConnectionState.CLOSED
    # the server's last words are a Close carrying the code
    frames = decode_frames_untrusted(server.data_to_send())
    assert frames[-1].type == p.Close.TYPE


def test_tampered_record_is_decrypt_error() -> None:
    client, server = make_pair()
    establish(client, server)
    data = bytearray(client.send(_data(1)))
    data[-1] ^= 1
    _expect_failure(server, bytes(data), ErrorCode.DECRYPT_ERROR)


def test_tampered_header_is_decrypt_error() -> None:
    client, server = make_pair()
    establish(client, server)
    data = bytearray(client.send(_data(1)))
    data[14] = int(Priority.BULK)  # priority is authenticated
    _expect_failure(server, bytes(data), ErrorCode.DECRYPT_ERROR)


def test_replayed_frame_is_pid_error() -> None:
    client, server = make_pair()
    establish(client, server)
    data = client.send(_data(1))
    server.receive_data(data)
    assert drain(server) == [_data(1)]
    _expect_failure(server, data, ErrorCode.PID_ERROR)


def test_ack_of_a_pid_never_sent_is_pid_error() -> None:
    """§6.5.2: on a stream too, a cumulative ack must name a PID the side sent."""
    client, server = make_pair()
    establish(client, server)
    client._last_processed = 5  # a peer acknowledging what it never received
    client.ping()
    _expect_failure(server, client.data_to_send(), ErrorCode.PID_ERROR)


def test_truncated_frame_then_eof() -> None:
    client, server = make_pair()
    establish(client, server)
    data = client.send(_data(1))
    server.receive_data(data[:-5])
    assert drain(server) == []
    server.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        drain(server)
    assert info.value.error_code is ErrorCode.FRAME_MALFORMED


def test_plaintext_packet_after_handshake_is_rejected() -> None:
    client, server = make_pair()
    establish(client, server)
    frame = Frame(type=p.Ping.TYPE, flags=Flags.UNNUMBERED).encode()
    _expect_failure(server, frame, ErrorCode.UNEXPECTED_PACKET)


def test_data_before_client_hello_is_rejected() -> None:
    _, server = make_pair()
    frame = Frame(type=0x8001, flags=Flags.UNNUMBERED).encode()
    _expect_failure(server, frame, ErrorCode.UNEXPECTED_PACKET)


def test_second_client_hello_is_unexpected() -> None:
    client, server = make_pair()
    client.initiate()
    hello = client.data_to_send()
    server.receive_data(hello)
    drain(server)
    _expect_failure(server, hello, ErrorCode.UNEXPECTED_PACKET)


def test_garbage_before_handshake() -> None:
    _, server = make_pair()
    _expect_failure(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ErrorCode.UNSUPPORTED_VERSION)


def test_unknown_critical_type_closes_and_ignorable_passes() -> None:
    client, server = make_pair()
    establish(client, server)
    # Build an encrypted numbered frame of a critical unknown type by hand,
    # using the client's own sealing so it authenticates.
    client.queue(_data(1))
    data = client.data_to_send()
    server.receive_data(data)
    assert drain(server) == [_data(1)]
    assert client._next_pid == 2
    wire = client._seal(
        0x7F00, counter=2, pid=2, flags=Flags.ENCRYPTED, priority=Priority.INTERACTIVE, payload=b""
    )
    _expect_failure(server, wire, ErrorCode.UNKNOWN_PACKET_TYPE)


def test_version_mismatch_gets_close_with_versions() -> None:
    client, server = make_pair()
    client.initiate()
    hello_frame = decode_frames_untrusted(client.data_to_send())[0]
    from elink_protocol.payload import decode_payload_untrusted, encode_payload

    fields = decode_payload_untrusted(hello_frame.payload)
    fields["v"] = [7]
    forged = Frame(type=hello_frame.type, flags=hello_frame.flags, payload=encode_payload(fields))
    server.receive_data(forged.encode())
    with pytest.raises(RemoteProtocolError) as info:
        drain(server)
    assert info.value.error_code is ErrorCode.UNSUPPORTED_VERSION
    (close_frame,) = decode_frames_untrusted(server.data_to_send())
    client.receive_data(close_frame.encode())
    (event,) = drain(client)
    assert event == ConnectionClosed(
        code=ErrorCode.UNSUPPORTED_VERSION, reason=event.reason, by_peer=True, graceful=True
    )


def test_oversized_stream_buffer_closes_with_resource_limit() -> None:
    client, server = make_pair(server={"max_receive_buffer": 1024})
    establish(client, server)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(b"\x01" * 10_000)
    assert info.value.error_code is ErrorCode.RESOURCE_LIMIT
    assert server.state is ConnectionState.CLOSED
    assert decode_frames_untrusted(server.data_to_send())[-1].type == p.Close.TYPE


def test_ping_flood_is_a_remote_error() -> None:
    client, server = make_pair()
    establish(client, server)
    for _ in range(200):
        client.ping()
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(client.data_to_send())
        drain(server)
    assert info.value.error_code is ErrorCode.RESOURCE_LIMIT
    assert server.state is ConnectionState.CLOSED
