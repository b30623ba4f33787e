"""The handshake and session resumption, as a part of :class:`Connection`.

Theory of operation: the cryptography lives in ``crypto.handshake``; this
part moves its packets in and out of frames, drives the state table, re-sends
flights on datagrams (a lost flight is re-sent by the client on a timer and by
the server when it sees the client's flight again, §6.8), and on completion
installs the keys and, for a resumed session, adopts the old session's PIDs
and re-sends what the peer had not processed (§6.5).
"""

from __future__ import annotations

from . import packets as p
from ._connection_core import S, Transport, _ConnectionCore, _Outgoing
from .crypto.handshake import ClientHandshake, ServerHandshake
from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .events import HandshakeComplete, ResumeRequested
from .frame import Flags, Frame, Priority
from .keyring import KeyRing
from .payload import decode_payload_untrusted
from .pid import PID_MASK, pid_add, pid_after
from .reliability import AckScheduler, ReceiveWindow, SendWindow
from .resumption import ResumptionState, SentPacket, UnsentPacket
from .state import Input, Role, transition

_HANDSHAKE_INPUTS: dict[type[p.Packet], Input] = {
    p.ClientHello: Input.RECV_CLIENT_HELLO,
    p.ServerHello: Input.RECV_SERVER_HELLO,
    p.ServerAuth: Input.RECV_SERVER_AUTH,
    p.ClientFinished: Input.RECV_CLIENT_FINISHED,
    p.ServerFinished: Input.RECV_SERVER_FINISHED,
}


class _Handshaking(_ConnectionCore):
    """Handshake and resumption (see the module docstring)."""

    def initiate(self, now: float | None = None) -> None:
        """Client: start the handshake (queues ClientHello)."""
        self._tick(now)
        if self.role is not Role.CLIENT:
            raise LocalProtocolError("only a client initiates")
        self._apply(Input.INITIATE)
        assert isinstance(self._handshake, ClientHandshake)
        self._started = self._now
        self._send_flight(self._handshake.start())

    def request_resume(self, state: ResumptionState) -> None:
        """Client: ask to resume ``state``'s session in this handshake.  Call
        before :meth:`initiate`."""
        if self.role is not Role.CLIENT or self._state is not S.IDLE:
            raise LocalProtocolError("request_resume() is for a client before initiate()")
        assert isinstance(self._handshake, ClientHandshake)
        self._handshake.request_resume(
            session_id=state.session_id,
            resumption_secret=state.resumption_secret,
            last_processed=state.last_processed,
        )
        self._pending_resume = state

    def resume_proof_matches(self, resumption_secret: bytes) -> bool:
        """Server, while a resumption is pending (:class:`ResumeRequested`):
        whether the client proved it holds ``resumption_secret``, the named
        session's secret.  Check it before touching that session: a refused
        request must not affect it (§7.9.2)."""
        if self._state is not S.RESUME_PENDING:
            raise LocalProtocolError("no resumption is pending")
        assert isinstance(self._handshake, ServerHandshake)
        return self._handshake.proof_matches(resumption_secret)

    def resume_proof_material(self) -> bytes:
        """Server, while a resumption is pending: the material that
        :func:`~elink_protocol.crypto.handshake.proof_material_matches` checks
        against the session's secret, for a host whose session lives in
        another process (the check must happen before that process touches
        the session, §7.9.2)."""
        if self._state is not S.RESUME_PENDING:
            raise LocalProtocolError("no resumption is pending")
        assert isinstance(self._handshake, ServerHandshake)
        return self._handshake.proof_material()

    def accept_resume(self, state: ResumptionState) -> None:
        """Server: resume ``state`` (answering :class:`ResumeRequested`)."""
        if self._state is not S.RESUME_PENDING:
            raise LocalProtocolError("no resumption is pending")
        assert isinstance(self._handshake, ServerHandshake)
        request = self._handshake.resume_request
        if request is None or request.session_id != state.session_id:
            raise LocalProtocolError("state is for another session than the one requested")
        flight = self._handshake.accept_resume(
            resumption_secret=state.resumption_secret, last_processed=state.last_processed
        )
        result = self._handshake.result
        self._apply(Input.RESUME_DECIDED)
        self._send_flight(flight)
        if result is not None and result.resumed:
            self._pending_resume = state
        self._complete_handshake()

    def reject_resume(self) -> None:
        """Server: refuse the requested resumption; the connection continues
        as a fresh session."""
        if self._state is not S.RESUME_PENDING:
            raise LocalProtocolError("no resumption is pending")
        assert isinstance(self._handshake, ServerHandshake)
        flight = self._handshake.reject_resume()
        self._apply(Input.RESUME_DECIDED)
        self._send_flight(flight)
        self._complete_handshake()

    def _send_flight(self, flight: list[tuple[p.Packet, bytes]]) -> None:
        frames = [
            Frame(
                type=packet.TYPE,
                flags=Flags.UNNUMBERED,
                priority=Priority.CONTROL,
                payload=payload,
            ).encode()
            for packet, payload in flight
        ]
        if not frames:
            return
        self._flight = frames
        self._flight_count = 0
        # A new flight answers the peer's: the path works, so its timer
        # starts from the initial value again (as DTLS does, RFC 6347 4.2.4.1).
        self._flight_timeout = self.config.initial_rtt * 2
        if self.transport is Transport.DATAGRAM and self.role is Role.CLIENT:
            self._flight_retransmit_at = self._now + self._flight_timeout
        for frame in frames:
            self._emit(frame)

    def _on_handshake_packet(self, frame: Frame) -> None:
        cls = p.PACKET_TYPES.get(frame.type)
        if cls is None or cls is p.Close or not (cls.PHASES & p.Phase.HANDSHAKE):
            raise RemoteProtocolError(
                f"packet type {frame.type:#06x} during the handshake", ErrorCode.UNEXPECTED_PACKET
            )
        if self._datagram_duplicate_flight(cls, frame.payload):
            return
        packet = cls.from_payload_untrusted(decode_payload_untrusted(frame.payload))
        event = _HANDSHAKE_INPUTS[cls]
        if isinstance(packet, p.ClientFinished) and packet.resume_session:
            event = Input.RECV_CLIENT_FINISHED_RESUME
        transition(self.role, self._state, event)  # legality first, then crypto
        flight = self._handshake.receive(packet, frame.payload)
        self._apply(event)
        if isinstance(packet, p.ClientHello):
            self._first_client_hello = frame.payload
        elif isinstance(packet, p.ClientFinished):
            self._client_finished_payload = frame.payload
        self._send_flight(flight)
        if event is Input.RECV_CLIENT_FINISHED_RESUME:
            assert isinstance(self._handshake, ServerHandshake)
            request = self._handshake.resume_request
            assert request is not None
            self._events.append(
                ResumeRequested(
                    session_id=request.session_id, last_processed=request.last_processed
                )
            )
        elif self._handshake.complete:
            self._flight_retransmit_at = None
            self._complete_handshake()

    def _datagram_duplicate_flight(self, cls: type[p.Packet], payload: bytes) -> bool:
        """On datagrams a peer re-sends its last flight when ours was lost.
        Answer a repeated ClientHello or ClientFinished with our flight again;
        ignore other repeats (§6.4.6)."""
        if self.transport is not Transport.DATAGRAM:
            return False
        if self.role is Role.SERVER:
            repeat = (cls is p.ClientHello and payload == self._first_client_hello) or (
                cls is p.ClientFinished and payload == self._client_finished_payload
            )
            if repeat:
                for frame in self._flight:
                    self._emit(frame)
                return True
            if self._state is not S.IDLE and cls is p.ClientHello:
                return True  # a different ClientHello: stale or spoofed
            return self._state is S.ESTABLISHED or self._state is S.RESUME_PENDING
        # client: repeats of the server's flights are harmless
        return self._state is S.ESTABLISHED or (
            self._state is S.CLIENT_FINISHED_SENT and cls in (p.ServerHello, p.ServerAuth)
        )

    def _complete_handshake(self) -> None:
        result = self._handshake.result
        assert result is not None
        self._result = result
        # Datagrams reorder: keep the previous receive key a while after the
        # peer's first packet under a new one (§7.7.2).  Streams do not.
        grace = 3 * self.config.max_rto if self.transport is Transport.DATAGRAM else 0.0
        self._keys = KeyRing(result.suite, result.master_secret, self.role, grace=grace)
        self._session_id = result.session_id
        self._resumption_secret = result.resumption_secret
        self._epoch_started = self._now
        resent = 0
        if result.resumed and self._pending_resume is not None:
            resent = self._adopt(self._pending_resume, result.peer_last_processed)
        self._pending_resume = None
        self._events.append(
            HandshakeComplete(
                version=result.version,
                suite=result.suite,
                features=result.features,
                session_id=result.session_id,
                resumed=result.resumed,
                server_fingerprint=result.server_fingerprint,
                resent=resent,
            )
        )

    def _adopt(self, state: ResumptionState, peer_last_processed: int) -> int:
        """Continue ``state``'s session: PIDs carry on; re-send what the peer
        did not process, under the original PIDs (§6.5)."""
        self._next_pid = state.next_pid
        self._last_processed = state.last_processed
        # The peer's claim must lie between the PID before the first packet
        # still stored -- the next PID when every packet was acknowledged --
        # and the last PID sent (§6.5.5).  ``unacked`` is in PID order.
        first_stored = state.unacked[0].pid if state.unacked else state.next_pid
        if pid_after(pid_add(first_stored, -1), peer_last_processed):
            raise RemoteProtocolError(
                "peer claims to have processed fewer packets than it acknowledged",
                ErrorCode.RESUME_REJECTED,
            )
        if pid_after(peer_last_processed, pid_add(state.next_pid, -1)):
            raise RemoteProtocolError(
                "peer claims to have processed packets never sent", ErrorCode.RESUME_REJECTED
            )
        resend = [sent for sent in state.unacked if pid_after(sent.pid, peer_last_processed)]
        if self.transport is Transport.DATAGRAM:
            first_expected = pid_add(state.last_processed, 1)
            self._receive_window = ReceiveWindow(self.config, first_pid=first_expected)
            self._ack_scheduler = AckScheduler(self.config, first_pid=first_expected)
            first_resent = resend[0].pid if resend else state.next_pid
            self._send_window = SendWindow(self.config, first_pid=first_resent)
        for sent in resend:
            self._resend_first.append(
                _Outgoing(
                    type=sent.type,
                    priority=sent.priority,
                    payload=sent.payload,
                    numbered=True,
                    more_fragments=sent.more_fragments,
                    pid=sent.pid,
                )
            )
        for unsent in state.unsent:
            item = _Outgoing(
                type=unsent.type,
                priority=unsent.priority,
                payload=unsent.payload,
                numbered=True,
                more_fragments=unsent.more_fragments,
            )
            # In the old order, ahead of anything queued on this connection:
            # a chain's remaining fragments as they are, whole packets cut up
            # as this transport needs.
            self._resend_first.extend([item] if unsent.fragment else self._fragments(item))
        return len(resend)

    def resumption_state(self) -> ResumptionState:
        """A snapshot for resuming this session on a later connection.  Take
        it after the last event of this connection was processed."""
        if not self._session_id:
            raise LocalProtocolError("no session to resume before the handshake completes")
        unacked = [record.packet for record in self._unacked.values()]
        queued = [
            SentPacket(
                pid=item.pid,
                type=item.type,
                priority=item.priority,
                more_fragments=item.more_fragments,
                payload=item.payload,
            )
            for item in self._resend_first
            if item.pid is not None
        ]
        # Queued packets without a PID yet: the rest of a fragmented packet
        # first (its fragments must take consecutive PIDs), then the scheduler's.
        unsent = [
            UnsentPacket(
                type=item.type,
                priority=item.priority,
                payload=item.payload,
                fragment=True,
                more_fragments=item.more_fragments,
            )
            for item in self._resend_first
            if item.pid is None
        ] + [
            UnsentPacket(type=item.type, priority=item.priority, payload=item.payload)
            for _, item in self._scheduler.queued()
            if item.numbered and item.type not in p.CONTROL_TYPES
        ]
        return ResumptionState(
            session_id=self._session_id,
            resumption_secret=self._resumption_secret,
            next_pid=self._next_pid,
            last_processed=self._last_processed,
            unacked=tuple(
                sorted(unacked + queued, key=lambda s: (s.pid - self._next_pid) & PID_MASK)
            ),
            unsent=tuple(unsent),
        )
