"""Session resumption on the server (docs/protocol.md §6.5, §11.3.6 rule 5).

Theory of operation
-------------------
A logged-in session is known by its session id, mapped to the
:class:`~elink_server.peer.Peer` that currently carries it.  When that
connection is *lost* -- the transport ended without a Close, or the idle
deadline passed -- the session is **detached**, not ended: it stays bound in
the registry, so the device still appears online and every packet sent to it
lands in the dead peer's :attr:`~elink_server.peer.Peer.undelivered` list,
and it expires ``settings.resume_timeout`` seconds later (the oldest expire
early when more than ``settings.resume_sessions`` are detached).  A session
that ends on purpose (Logout, a Close from the client, a newer login of the
same device, a protocol error, the server shutting down) is not resumable.

When a client asks to resume (``ResumeRequested``) a known session, the old
connection is closed first if it is still open (§6.5.6: its reader finishes
the packet it is processing, so the state is taken after its last processed
packet).  The state is the old connection's ``resumption_state()`` -- the
packets it numbered but the client did not acknowledge, which the library
re-sends under their PIDs -- followed by the undelivered packets, which the
new connection queues as new packets.  Between taking the state and binding
the new peer nothing awaits, so no packet can fall between the two
connections, and none is sent twice.

**Across workers** (a node of several processes): the new connection may
reach another worker than the one holding the session.  That worker asks the
router (:meth:`~.router.Router.take_session`); the holder takes the session
over exactly as above, also waits for a handler still running for the old
connection and for its outbox to drain into ``undelivered``, and hands the
state and the undelivered packets over (``Application.hand_over``).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Awaitable, Callable

import trio

from elink_protocol import ErrorCode
from elink_protocol.crypto.handshake import proof_material_matches
from elink_server.peer import Peer

from .context import DeviceSession, ServiceContext

#: How long to wait for a still-open old connection to finish what it is
#: processing when a resumption takes its session over.
TAKEOVER_TIMEOUT = 5.0


class ResumeService:
    """The table of resumable sessions (see the module docstring)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._peers: dict[bytes, Peer] = {}
        """Logged-in sessions (open or detached) by session id."""
        self._detached: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        """Detached sessions by session id: when they expire (oldest first)."""
        self._final: set[Peer] = set()
        """Logged-in peers whose session must not be resumed."""
        self._taking: set[Peer] = set()
        """Old peers being closed because a new connection resumes them."""
        self.handing: set[Peer] = set()
        """Old peers whose session is being handed to another worker: the end
        of their connection ends nothing here."""
        self._changed = trio.Event()

    @property
    def detached(self) -> int:
        """Sessions waiting to be resumed."""
        return len(self._detached)

    def logged_in(self, peer: Peer) -> None:
        """``peer``'s session is logged in (by a Login or a resumption)."""
        self._peers[peer.session_id] = peer

    def end_for_good(self, peer: Peer) -> None:
        """``peer``'s session ends on purpose: it will not be resumable."""
        self._final.add(peer)

    def forget(self, peer: Peer) -> None:
        """``peer`` no longer carries a session."""
        self._final.discard(peer)
        if self._peers.get(peer.session_id) is peer:
            del self._peers[peer.session_id]
            self._detached.pop(peer.session_id, None)

    def detach(self, peer: Peer) -> bool:
        """``peer``'s connection ended: keep its session for resumption if it
        was lost rather than ended.  False when the session ends now."""
        lost = peer.close_code is None or (
            peer.close_code == ErrorCode.TIMEOUT and not peer.closed_by_peer
        )
        if peer in self._taking:
            lost = True  # closed by us for a resumption: keep it for that
        if (
            not lost
            or peer in self._final
            or peer.going_away
            or peer.undelivered_overflow
            or self._peers.get(peer.session_id) is not peer
            or self._ctx.settings.resume_sessions == 0
        ):
            return False
        self._detached[peer.session_id] = trio.current_time() + self._ctx.settings.resume_timeout
        self._changed.set()
        return True

    def peer_of(self, session_id: bytes) -> Peer | None:
        """The peer carrying logged-in session ``session_id`` (open or
        detached), if this worker holds it."""
        return self._peers.get(session_id)

    async def take_over(self, session_id: bytes, proof: bytes) -> tuple[DeviceSession, Peer] | None:
        """The session ``session_id``, for a new connection to resume: its
        registry entry and its old peer, whose connection is closed by now
        (its ``resumption_state()`` is final).  None if it cannot be resumed
        -- unknown, ended, or ``proof`` (the new connection's
        ``resume_proof_material()``, possibly from another worker) does not
        verify against the session's secret, in which case the session is
        left exactly as it was (§7.9.2: session ids travel in clear, so a
        request that merely names one must not end it).  The caller must bind
        the new peer (or hand the session over) before it awaits."""
        old = self._peers.get(session_id)
        if old is None:
            return None
        secret = old.connection.resumption_state().resumption_secret
        if not proof_material_matches(secret, proof):
            return None
        if not old.is_closed:
            self._taking.add(old)
            try:
                with trio.move_on_after(TAKEOVER_TIMEOUT):
                    await old.close(ErrorCode.NO_ERROR, "session resumed on another connection")
            finally:
                self._taking.discard(old)
            if not old.is_closed or self._peers.get(session_id) is not old:
                return None
        session = self._ctx.registry.session_of(old)
        if session is None or old in self._final or old.undelivered_overflow:
            return None
        del self._peers[session_id]
        self._detached.pop(session_id, None)
        return session, old

    async def run(self, expire: Callable[[Peer], Awaitable[None]]) -> None:
        """Expire detached sessions, forever (``expire`` ends one)."""
        while True:
            limit = self._ctx.settings.resume_sessions
            now = trio.current_time()
            due: list[Peer] = []
            while self._detached:
                session_id, deadline = next(iter(self._detached.items()))
                if deadline > now and len(self._detached) <= limit:
                    break
                del self._detached[session_id]
                peer = self._peers.pop(session_id, None)
                if peer is not None:
                    due.append(peer)
            for peer in due:
                await expire(peer)
            deadline = next(iter(self._detached.values()), math.inf)
            with trio.move_on_at(deadline):
                await self._changed.wait()
            self._changed = trio.Event()
