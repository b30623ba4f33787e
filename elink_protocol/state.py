"""The connection state machine: one transition table (docs/protocol.md §3).

Theory of operation: a connection moves through the handshake (§7.3) into
ESTABLISHED and ends in CLOSED.  Every change of state goes through
:func:`transition`, which looks the pair ``(state, input)`` up in
:data:`TRANSITIONS`.  A pair that is not in the table is a protocol error: a
packet the peer may not send in this state (``RemoteProtocolError``,
``UNEXPECTED_PACKET``) or a call the host may not make now
(``LocalProtocolError``).  The diagram in §3 of the spec is generated from
this table by :func:`mermaid_diagram`, and a test checks the two agree.

Rekeying and retransmission do not change the state: they happen inside
ESTABLISHED and have machines of their own (§7.7, §6.4).
"""

from __future__ import annotations

import enum

import attrs

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class ConnectionState(enum.Enum):
    IDLE = "IDLE"
    """Nothing sent or received yet."""
    CLIENT_HELLO_SENT = "CLIENT_HELLO_SENT"
    """Client: waiting for the server's ServerHello."""
    SERVER_HELLO_RECEIVED = "SERVER_HELLO_RECEIVED"
    """Client: waiting for ServerAuth."""
    CLIENT_FINISHED_SENT = "CLIENT_FINISHED_SENT"
    """Client: keys derived, waiting for ServerFinished."""
    SERVER_HELLO_SENT = "SERVER_HELLO_SENT"
    """Server: ServerHello and ServerAuth sent, waiting for ClientFinished."""
    RESUME_PENDING = "RESUME_PENDING"
    """Server: the client asked to resume a session; the host decides."""
    ESTABLISHED = "ESTABLISHED"
    """Handshake complete; application packets flow."""
    CLOSED = "CLOSED"
    """Terminal.  Nothing more is sent or accepted."""


class Input(enum.Enum):
    INITIATE = "initiate"
    RECV_CLIENT_HELLO = "recv ClientHello"
    RECV_SERVER_HELLO = "recv ServerHello"
    RECV_SERVER_AUTH = "recv ServerAuth"
    RECV_CLIENT_FINISHED = "recv ClientFinished"
    RECV_CLIENT_FINISHED_RESUME = "recv ClientFinished (resume)"
    RESUME_DECIDED = "host decides resume"
    RECV_SERVER_FINISHED = "recv ServerFinished"
    RECV_PACKET = "recv established packet"
    SEND_PACKET = "send packet"
    RECV_CLOSE = "recv Close"
    SEND_CLOSE = "send Close"
    TIMEOUT = "timeout"
    EOF = "end of stream"


class SideEffect(enum.Enum):
    SEND_CLIENT_HELLO = "send ClientHello"
    SEND_SERVER_FLIGHT = "send ServerHello+ServerAuth"
    SEND_CLIENT_FINISHED = "send ClientFinished"
    SEND_SERVER_FINISHED = "send ServerFinished"
    EMIT_RESUME_REQUESTED = "emit ResumeRequested"
    EMIT_HANDSHAKE_COMPLETE = "emit HandshakeComplete"
    EMIT_CLOSED = "emit ConnectionClosed"
    SEND_CLOSE = "send Close"


S = ConnectionState
I = Input  # noqa: E741 - a table reads better with short names
E = SideEffect

_Key = tuple[ConnectionState, Input]
_Value = tuple[SideEffect | None, ConnectionState]

_CLIENT: dict[_Key, _Value] = {
    (S.IDLE, I.INITIATE): (E.SEND_CLIENT_HELLO, S.CLIENT_HELLO_SENT),
    (S.CLIENT_HELLO_SENT, I.RECV_SERVER_HELLO): (None, S.SERVER_HELLO_RECEIVED),
    (S.SERVER_HELLO_RECEIVED, I.RECV_SERVER_AUTH): (E.SEND_CLIENT_FINISHED, S.CLIENT_FINISHED_SENT),
    (S.CLIENT_FINISHED_SENT, I.RECV_SERVER_FINISHED): (E.EMIT_HANDSHAKE_COMPLETE, S.ESTABLISHED),
    # A client may queue packets once it sent ClientFinished; they leave after ServerFinished.
    (S.CLIENT_FINISHED_SENT, I.SEND_PACKET): (None, S.CLIENT_FINISHED_SENT),
}

_SERVER: dict[_Key, _Value] = {
    (S.IDLE, I.RECV_CLIENT_HELLO): (E.SEND_SERVER_FLIGHT, S.SERVER_HELLO_SENT),
    (S.SERVER_HELLO_SENT, I.RECV_CLIENT_FINISHED): (E.SEND_SERVER_FINISHED, S.ESTABLISHED),
    (S.SERVER_HELLO_SENT, I.RECV_CLIENT_FINISHED_RESUME): (
        E.EMIT_RESUME_REQUESTED,
        S.RESUME_PENDING,
    ),
    (S.RESUME_PENDING, I.RESUME_DECIDED): (E.SEND_SERVER_FINISHED, S.ESTABLISHED),
}

_BOTH: dict[_Key, _Value] = {
    (S.ESTABLISHED, I.RECV_PACKET): (None, S.ESTABLISHED),
    (S.ESTABLISHED, I.SEND_PACKET): (None, S.ESTABLISHED),
}

_HANDSHAKE_STATES = (
    S.IDLE,
    S.CLIENT_HELLO_SENT,
    S.SERVER_HELLO_RECEIVED,
    S.CLIENT_FINISHED_SENT,
    S.SERVER_HELLO_SENT,
    S.RESUME_PENDING,
)

# Every live state can be closed by either side, by a timer, or by the stream
# ending.
for _state in (*_HANDSHAKE_STATES, S.ESTABLISHED):
    _BOTH[(_state, I.RECV_CLOSE)] = (E.EMIT_CLOSED, S.CLOSED)
    _BOTH[(_state, I.SEND_CLOSE)] = (E.SEND_CLOSE, S.CLOSED)
    _BOTH[(_state, I.TIMEOUT)] = (E.SEND_CLOSE, S.CLOSED)
    _BOTH[(_state, I.EOF)] = (E.EMIT_CLOSED, S.CLOSED)

TRANSITIONS: dict[Role, dict[_Key, _Value]] = {
    Role.CLIENT: {**_CLIENT, **_BOTH},
    Role.SERVER: {**_SERVER, **_BOTH},
}
"""``TRANSITIONS[role][(state, input)] = (side_effect, next_state)``."""

#: Inputs that come from the peer; a missing pair with one of these is the
#: peer's fault.
REMOTE_INPUTS = frozenset(
    {
        I.RECV_CLIENT_HELLO,
        I.RECV_SERVER_HELLO,
        I.RECV_SERVER_AUTH,
        I.RECV_CLIENT_FINISHED,
        I.RECV_CLIENT_FINISHED_RESUME,
        I.RECV_SERVER_FINISHED,
        I.RECV_PACKET,
        I.RECV_CLOSE,
        I.EOF,
    }
)


@attrs.frozen
class Transition:
    side_effect: SideEffect | None
    state: ConnectionState


def transition(role: Role, state: ConnectionState, event: Input) -> Transition:
    """Look up ``(state, event)``; raise the right error if it is not legal."""
    try:
        effect, new_state = TRANSITIONS[role][(state, event)]
    except KeyError:
        message = f"{event.value!r} is not allowed for a {role.value} in state {state.value}"
        if event in REMOTE_INPUTS:
            raise RemoteProtocolError(message, ErrorCode.UNEXPECTED_PACKET) from None
        raise LocalProtocolError(message, ErrorCode.PROTOCOL_VIOLATION) from None
    return Transition(effect, new_state)


def mermaid_diagram(role: Role) -> str:
    """The state diagram of ``role`` in Mermaid syntax, generated from the
    table.  Self-loops and the close edges of every state are folded into one
    line each to keep the picture readable."""
    lines = ["stateDiagram-v2", "    [*] --> IDLE"]
    for (state, event), (effect, new_state) in TRANSITIONS[role].items():
        if new_state is S.CLOSED and state is not S.ESTABLISHED:
            continue  # drawn once below
        label = event.value + (f" / {effect.value}" if effect else "")
        lines.append(f"    {state.value} --> {new_state.value}: {label}")
    lines.append("    note right of CLOSED: every handshake state also goes to CLOSED")
    lines.append("    note right of CLOSED: on recv/send Close, timeout or end of stream")
    lines.append("    CLOSED --> [*]")
    return "\n".join(lines)
