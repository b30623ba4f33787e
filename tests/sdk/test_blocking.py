"""The blocking facade against a real server running in a background thread:
calls from several threads at once, errors as the SDK's own types, events,
and a clean close."""

from __future__ import annotations

import contextlib
import inspect
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import elink_sdk
from elink_sdk import blocking
from tests.helpers.sdk import ServerThread, client_options
from tests.helpers.server import WAIT

THREADS = 4
SENDS_PER_THREAD = 10


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(tmp_path) as running:
        yield running


def _connect(
    server: ServerThread, user: str, **overrides: object
) -> contextlib.AbstractContextManager[blocking.BlockingClient]:
    """A blocking client of ``user``, pinned to the test server."""
    return blocking.connect(
        "127.0.0.1", server.port, **client_options(server.port, user, **overrides)
    )


def _portal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == blocking.THREAD_NAME]


def test_connect_takes_the_same_options_as_the_async_connect() -> None:
    ours = inspect.signature(blocking.connect).parameters
    theirs = inspect.signature(elink_sdk.connect).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]


def test_sends_from_several_threads_are_stored_once_and_all_received(
    server: ServerThread,
) -> None:
    errors: list[BaseException] = []
    with _connect(server, "alice") as alice, _connect(server, "bob") as bob:

        def sender(worker: int) -> None:
            try:
                for n in range(SENDS_PER_THREAD):
                    sent = alice.send_text("bob", f"w{worker} n{n}", client_msg_id=f"w{worker}-{n}")
                    assert not sent.duplicate
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=sender, args=(w,)) for w in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert errors == []
        assert not any(thread.is_alive() for thread in threads)

        expected = {f"w{w} n{n}" for w in range(THREADS) for n in range(SENDS_PER_THREAD)}
        received = []
        for event in bob.events(timeout=WAIT):
            assert isinstance(event, elink_sdk.MessageReceived)
            received.append(event.text)
            if len(received) == len(expected):
                break
        assert sorted(received) == sorted(expected)  # each exactly once

        stored = [message.text for message in bob.iter_history("alice", page_size=7)]
        assert sorted(stored) == sorted(expected)

        # Sending again with a used key stores nothing new.
        again = alice.send_text("bob", "w0 n0", client_msg_id="w0-0")
        assert again.duplicate
        assert bob.history("alice", limit=100).messages[0].seq == len(expected)


def test_receipts_through_the_blocking_sent_message(server: ServerThread) -> None:
    with _connect(server, "alice") as alice, _connect(server, "bob") as bob:
        sent = alice.send_text("bob", "read me")
        assert sent.status is elink_sdk.DeliveryState.SENT
        event = bob.next_event(timeout=WAIT)
        assert isinstance(event, elink_sdk.MessageReceived)
        # Asking for the next event finishes this one: bob's device confirms it.
        assert list(bob.events(timeout=0.1)) == []
        sent.wait_delivered(timeout=WAIT)
        assert sent.status is elink_sdk.DeliveryState.DELIVERED
        bob.mark_read("alice", event.message.seq)
        sent.wait_read(timeout=WAIT)
        report = sent.refresh()
        assert report.state is elink_sdk.DeliveryState.READ
        assert alice.message_status(sent.msg_id).read_count == 1
        assert [m.text for m in alice.search("read").messages] == ["read me"]


def test_errors_come_out_as_the_sdks_own_types(server: ServerThread) -> None:
    with pytest.raises(elink_sdk.AuthenticationError), _connect(server, "alice", password="x"):
        pass
    with (
        pytest.raises(elink_sdk.ServerKeyMismatch),
        _connect(server, "alice", server_fingerprint="SHA256:" + "0" * 64),
    ):
        pass
    with _connect(server, "alice") as alice:
        with pytest.raises(elink_sdk.NotFound):
            alice.send_text("nobody", "hello?")
        with pytest.raises(elink_sdk.DeadlineExceeded):
            alice.next_event(timeout=0.05)
        assert list(alice.events(timeout=0.05)) == []
        with pytest.raises(elink_sdk.NotFound):
            alice.recall(10**9)
        with pytest.raises(ValueError):  # not an SDK error: a bad argument
            alice.send("bob", "text", {"text": 42})
        assert alice.connected  # an error in one call does not end the client
    assert _portal_threads() == []


def test_an_exception_in_the_block_comes_out_as_itself(server: ServerThread) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), _connect(server, "alice") as alice:
        alice.send_text("bob", "before the failure")
        raise Boom
    assert _portal_threads() == []


def test_leaving_the_block_logs_out_and_ends_the_thread(server: ServerThread) -> None:
    with _connect(server, "bob") as bob:
        bob.follow("alice")
        with _connect(server, "alice", device_id="alice-laptop") as alice:
            assert bob.presence("alice")["alice"].status is elink_sdk.PresenceStatus.ONLINE
            alice.set_presence("busy", "in a meeting")
        # alice logged out when her block ended: she is offline for bob now.
        assert bob.presence("alice")["alice"].status is elink_sdk.PresenceStatus.OFFLINE
    assert _portal_threads() == []
    with pytest.raises(elink_sdk.ConnectionLost):
        alice.send_text("bob", "too late")
    with pytest.raises(elink_sdk.ConnectionLost):
        alice.next_event(timeout=0.05)


def test_events_end_when_the_client_logs_out(server: ServerThread) -> None:
    with _connect(server, "alice") as alice:
        done: list[list[elink_sdk.Event]] = []
        reader = threading.Thread(target=lambda: done.append(list(alice.events())))
        reader.start()
        alice.logout()
        reader.join(WAIT)
        assert not reader.is_alive()
        assert done == [[]]
        with pytest.raises(elink_sdk.ConnectionLost):
            alice.send_text("bob", "after logout")


def test_a_replaced_session_ends_the_client_with_session_ended(server: ServerThread) -> None:
    # The second login has the same user and device id: it replaces the first.
    with _connect(server, "alice") as first, _connect(server, "alice") as second:
        second.send_text("bob", "from the newer login")
        with pytest.raises(elink_sdk.SessionEnded):
            for _ in first.events(timeout=WAIT):
                pass
        with pytest.raises(elink_sdk.SessionEnded):
            first.send_text("bob", "from the replaced login")
    assert _portal_threads() == []


def test_ctrl_c_cancels_the_waiting_call_and_loses_no_event(server: ServerThread) -> None:
    with _connect(server, "alice") as alice, _connect(server, "bob") as bob:
        main = threading.main_thread().ident
        assert main == threading.get_ident()
        interrupt = threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT))
        interrupt.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                alice.next_event(timeout=WAIT)
        finally:
            interrupt.join(WAIT)
        # Had the interrupted call kept waiting in the loop, it would take
        # this message and nobody would see it.
        bob.send_text("alice", "after the interrupt")
        event = alice.next_event(timeout=WAIT)
        assert isinstance(event, elink_sdk.MessageReceived)
        assert event.text == "after the interrupt"
