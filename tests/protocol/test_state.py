"""The transition table (spec §3)."""

from __future__ import annotations

import pytest

from elink_protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from elink_protocol.state import (
    REMOTE_INPUTS,
    TRANSITIONS,
    ConnectionState,
    Input,
    Role,
    mermaid_diagram,
    transition,
)

ALL = [(role, state, event) for role in Role for state in ConnectionState for event in Input]


@pytest.mark.parametrize(("role", "state", "event"), ALL)
def test_every_pair_is_legal_or_the_right_error(
    role: Role, state: ConnectionState, event: Input
) -> None:
    if (state, event) in TRANSITIONS[role]:
        result = transition(role, state, event)
        assert result.state in set(ConnectionState)
    elif event in REMOTE_INPUTS:
        with pytest.raises(RemoteProtocolError) as info:
            transition(role, state, event)
        assert info.value.error_code is ErrorCode.UNEXPECTED_PACKET
    else:
        with pytest.raises(LocalProtocolError):
            transition(role, state, event)


def test_closed_is_terminal() -> None:
    for role in Role:
        assert not [k for k in TRANSITIONS[role] if k[0] is ConnectionState.CLOSED]


def test_every_state_can_reach_established_or_closed() -> None:
    for role in Role:
        edges: dict[ConnectionState, set[ConnectionState]] = {}
        for (src, _), (_, dst) in TRANSITIONS[role].items():
            edges.setdefault(src, set()).add(dst)
        for start in edges:
            seen, todo = {start}, [start]
            while todo:
                for nxt in edges.get(todo.pop(), ()):
                    if nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)
            assert ConnectionState.CLOSED in seen


def test_diagram_draws_every_non_close_transition() -> None:
    for role in Role:
        diagram = mermaid_diagram(role)
        for (src, event), (_, dst) in TRANSITIONS[role].items():
            if dst is not ConnectionState.CLOSED or src is ConnectionState.ESTABLISHED:
                assert f"{src.value} --> {dst.value}: {event.value}" in diagram
