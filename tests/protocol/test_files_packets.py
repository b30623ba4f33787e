"""The file packets of §9 and the heavy-bus connection configuration: large
payloads on the heavy bus only, each bus's packets on its own bus only,
folder manifests and their hostile paths."""

from __future__ import annotations

import hashlib

import pytest

from elink_protocol import (
    Bus,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    app,
    heavy_bus_config,
)
from elink_protocol.app.manifest import check_relative_path
from elink_protocol.config import MAX_HEAVY_PAYLOAD, Config
from elink_protocol.payload import encode_payload
from elink_protocol.vectors.generate_app import file_examples
from tests.helpers.pair import drain, establish, make_pair, roundtrip_until_quiet

HEAVY = {"bus": Bus.HEAVY, "max_payload_size": MAX_HEAVY_PAYLOAD, "max_unacked_packets": 32}


def heavy_pair() -> tuple[object, object]:
    client, server = make_pair(client=dict(HEAVY), server=dict(HEAVY))
    establish(client, server)
    return client, server


def test_heavy_config_is_derived_from_the_light_one() -> None:
    light = Config()
    heavy = heavy_bus_config(light)
    assert heavy.bus is Bus.HEAVY and heavy.max_payload_size == MAX_HEAVY_PAYLOAD
    assert heavy.max_frame_length == 65_535 and light.max_frame_length == 4160
    with pytest.raises(ValueError, match="light bus"):
        Config(max_payload_size=4097)
    with pytest.raises(ValueError, match="heavy bus"):
        Config(bus=Bus.HEAVY, max_payload_size=MAX_HEAVY_PAYLOAD + 1)


def test_largest_data_packet_fits_a_heavy_payload() -> None:
    packet = app.Data(offset=(1 << 64) - 1, data=bytes(app.MAX_DATA_BLOCK))
    assert len(encode_payload(packet.to_payload())) <= MAX_HEAVY_PAYLOAD


def test_file_packets_cross_a_heavy_connection() -> None:
    client, server = heavy_pair()
    block = bytes(range(256)) * 255  # 65,280 bytes: one full Data block
    sent_up = [
        app.Admit(token=b"t" * 58, user="alice"),
        app.Data(offset=0, data=block),
        app.ChunkEnd(offset=0, length=len(block), sha256=hashlib.sha256(block).digest()),
    ]
    sent_down = [
        app.Admitted(
            file_id=bytes(16), offset=0, length=len(block), size=len(block), chunk_size=1 << 20
        ),
        app.ChunkAck(offset=len(block)),
        app.Done(file_id=bytes(16), size=len(block), sha256=hashlib.sha256(block).digest()),
    ]
    for packet in sent_up:
        client.queue(packet)  # type: ignore[attr-defined]
    for packet in sent_down:
        server.queue(packet)  # type: ignore[attr-defined]
    ex = roundtrip_until_quiet(client, server)  # type: ignore[arg-type]
    assert [e for e in ex.server_events if isinstance(e, app.AppPacket)] == sent_up
    assert [e for e in ex.client_events if isinstance(e, app.AppPacket)] == sent_down
    assert drain(client) == [] and drain(server) == []  # type: ignore[arg-type]


def test_light_bus_refuses_heavy_packets_both_ways() -> None:
    client, server = make_pair()
    establish(client, server)
    with pytest.raises(LocalProtocolError, match="light bus"):
        client.queue(app.Admit(token=b"t", user="alice"))
    heavy_client, _ = heavy_pair()
    with pytest.raises(LocalProtocolError, match="heavy bus"):
        heavy_client.queue(  # type: ignore[attr-defined]
            app.OpenDownload(rid=1, file_id=bytes(16))
        )


def test_a_heavy_packet_received_on_the_light_bus_closes_it() -> None:
    # A client configured for the heavy bus talking to a light-bus server.
    client, server = make_pair(client=dict(HEAVY))
    establish(client, server)
    client.queue(app.Admit(token=b"t", user="alice"))
    with pytest.raises(RemoteProtocolError) as info:
        roundtrip_until_quiet(client, server)
    assert info.value.error_code == ErrorCode.UNEXPECTED_PACKET
    assert "light bus" in str(info.value)


def test_file_examples_validate_as_their_receivers_check_them() -> None:
    for _name, packet in file_examples():
        if packet.BUS is Bus.LIGHT:
            packet.validate()
        else:
            decoded = type(packet).from_payload_untrusted(packet.to_payload())
            assert decoded == packet


@pytest.mark.parametrize(
    "path",
    [
        "../x",
        "a/../../x",
        "/etc/passwd",
        "a\\b",
        "a//b",
        "a/./b",
        "",
        ".",
        "a/",
        "nul\x00byte",
        "C:/windows",
        "tab\tname",
        "x" * 256,
        "a/" + "y" * 256,
    ],
)
def test_hostile_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError):
        check_relative_path(path)


@pytest.mark.parametrize("path", ["a", "a/b/c.txt", "报告/二〇二六.pdf", "..hidden", "a.b/..c"])
def test_ordinary_paths_pass(path: str) -> None:
    assert check_relative_path(path) == path


def _entry(path: str) -> app.ManifestEntry:
    return app.ManifestEntry(path=path, file_id=bytes(16), size=1, sha256=bytes(32))


def test_manifest_round_trip_and_structure_checks() -> None:
    manifest = app.Manifest(entries=(_entry("a/b.txt"), _entry("c")))
    assert app.decode_manifest_untrusted(manifest.encode()) == manifest
    for bad in [(_entry("a"), _entry("a")), (_entry("a"), _entry("a/b"))]:
        with pytest.raises(ValueError):
            app.decode_manifest_untrusted(app.Manifest(entries=bad).encode())
    with pytest.raises(ValueError):
        app.decode_manifest_untrusted(b"\xc1")
    with pytest.raises(ValueError):
        app.decode_manifest_untrusted(encode_payload({"v": 2, "e": []}))
