"""Discrete-event simulation of two datagram Connections over lossy links.

Time only moves when the simulation says so: it jumps to the next datagram
arrival or the next timer of either connection, so a run with seconds of
simulated retransmission timeouts takes milliseconds of real time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from elink_protocol.connection import Connection
from elink_protocol.errors import RemoteProtocolError
from elink_protocol.events import NEED_DATA
from elink_protocol.state import ConnectionState
from tests.helpers.lossy_link import LossyLink


class DatagramSim:
    def __init__(
        self, client: Connection, server: Connection, c2s: LossyLink, s2c: LossyLink
    ) -> None:
        self.client = client
        self.server = server
        self.links = {id(client): c2s, id(server): s2c}
        self.now = 0.0
        self.events: dict[int, list[Any]] = {id(client): [], id(server): []}
        self.errors: list[RemoteProtocolError] = []

    def client_events(self) -> list[Any]:
        return self.events[id(self.client)]

    def server_events(self) -> list[Any]:
        return self.events[id(self.server)]

    def _flush(self, conn: Connection) -> None:
        for datagram in conn.datagrams_to_send(self.now):
            self.links[id(conn)].send(datagram, self.now)

    def _drain(self, conn: Connection) -> None:
        while (event := conn.next_event()) is not NEED_DATA:
            self.events[id(conn)].append(event)

    def step(self) -> bool:
        """Advance to the next thing that happens; False when nothing will."""
        pairs = ((self.client, self.server), (self.server, self.client))
        for conn, _ in pairs:
            self._flush(conn)
        times = []
        for conn, _ in pairs:
            t = conn.get_timer()
            if t is not None:
                times.append(t)
            arrival = self.links[id(conn)].next_arrival()
            if arrival is not None:
                times.append(arrival)
        if not times:
            return False
        self.now = max(self.now, min(times))
        for sender, receiver in pairs:
            for datagram in self.links[id(sender)].receive(self.now):
                if receiver.state is ConnectionState.CLOSED:
                    continue
                try:
                    receiver.receive_datagram(datagram, self.now)
                except RemoteProtocolError as exc:
                    self.errors.append(exc)
                self._drain(receiver)
        for conn, _ in pairs:
            t = conn.get_timer()
            if t is not None and t <= self.now:
                conn.handle_timer(self.now)
                self._drain(conn)
        return True

    def run_until(
        self, done: Callable[[], bool], *, max_time: float, max_steps: int = 200_000
    ) -> None:
        for _ in range(max_steps):
            if done() or self.now > max_time:
                return
            if not self.step():
                return
        raise AssertionError("simulation did not settle")
