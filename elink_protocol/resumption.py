"""What a session keeps so that it can survive a lost connection (§6.5).

A :class:`ResumptionState` is an immutable snapshot taken with
``Connection.resumption_state()``.  The host stores it (in memory, or in a
shared store across servers) and hands it to the next connection of the same
session: the client with ``request_resume()``, the server with
``accept_resume()``.  Both sides then re-send exactly the numbered packets the
other did not process, under their original PIDs, and drop anything at or
below their own last processed PID, so nothing is lost and nothing is
processed twice.
"""

from __future__ import annotations

import attrs

from .frame import Priority


@attrs.frozen(kw_only=True, slots=True)
class SentPacket:
    """A numbered packet (or one fragment of one) that the peer has not yet
    acknowledged as processed."""

    pid: int
    """Its PID, kept when it is re-sent on a new connection."""
    type: int
    """Packet type."""
    priority: Priority
    """Priority class it was sent in."""
    more_fragments: bool
    """True for every fragment but the last of a fragmented packet (§6.6)."""
    payload: bytes
    """The plaintext payload (or fragment of it)."""


@attrs.frozen(kw_only=True, slots=True)
class UnsentPacket:
    """A numbered packet (or the rest of a fragmented one) that was queued but
    had no PID yet when the snapshot was taken."""

    type: int
    priority: Priority
    payload: bytes
    """The whole payload, or for a fragment its piece."""
    fragment: bool = False
    """True for the remaining fragments of a packet whose first fragments
    were sent: they must take the next PIDs, before anything else (§6.6)."""
    more_fragments: bool = False
    """For a fragment: True unless it is its packet's last."""


@attrs.frozen(kw_only=True, slots=True)
class ResumptionState:
    """Everything needed to resume a session on a new connection."""

    session_id: bytes
    """16-byte session id from ServerFinished."""
    resumption_secret: bytes
    """32-byte secret of the connection the snapshot was taken from (§7.4)."""
    next_pid: int
    """The PID our next numbered packet will take."""
    last_processed: int
    """The last PID of the peer's that we processed (0: none yet)."""
    unacked: tuple[SentPacket, ...]
    """Our numbered packets the peer has not acknowledged, in PID order."""
    unsent: tuple[UnsentPacket, ...] = ()
    """Numbered packets queued but not yet sent, in the order they would have
    left: they are sent after ``unacked``, taking the next PIDs."""
