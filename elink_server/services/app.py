"""The application: every service of the server, combined in one place.

:func:`build_application` makes the service map the host dispatches on
(``{packet class: handler}``) from one :class:`ServiceContext`, plus the
session hooks (resumption, end of a connection) and a background task.

**The login gate.**  Until a connection's session has logged in, every
request but Login is answered RequestFailed NOT_LOGGED_IN (§11.3.6 rule 1);
the services behind the gate can rely on ``registry.session_of(peer)``.
Packets a client must never send (the server's own) are closed with
UNEXPECTED_PACKET by the peer before they get here (§11.1.3).

**Other services** register themselves in :data:`SERVICE_MODULES`: a module
there that exists provides ``<factory>(ctx) -> dict[type[Packet], Handler]``.
Listing a module that is not written yet is harmless, so services can be
added one at a time.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
import trio

from elink_protocol import Packet, ResumeRequested
from elink_protocol.app import AppErrorCode, Login, PresenceUpdate, Request
from elink_protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from elink_server.peer import Peer, PeerGone, SessionHooks

from .context import DeviceSession, ServiceContext
from .login import LoginService
from .presence import PresenceService
from .resume import ResumeService
from .router import Handover

Handler = Callable[[Peer, Packet], Awaitable[None]]

logger = structlog.get_logger("elink_server")

#: Longest wait, when a session is handed over to another worker, for the
#: old connection's last handler and queued pushes (they run at memory speed:
#: the connection is closed).
HANDOVER_TIMEOUT = 15.0

#: Service modules beside the session services: ``(module, factory name)``.
SERVICE_MODULES: tuple[tuple[str, str], ...] = (
    ("elink_server.services.messaging", "messaging_handlers"),
    ("elink_server.files.service", "file_handlers"),
)


def _optional_services(ctx: ServiceContext) -> dict[type[Packet], Handler]:
    handlers: dict[type[Packet], Handler] = {}
    for module_name, factory in SERVICE_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise  # the module exists but one of its imports is missing
            continue
        handlers.update(getattr(module, factory)(ctx))
    return handlers


class Application(SessionHooks):
    """All services of one server; also its session hooks."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.context = ctx
        self.presence = PresenceService(ctx)
        self.resume = ResumeService(ctx)
        self.login = LoginService(ctx, on_login=self._logged_in, on_logout=self._logging_out)
        handlers: dict[type[Packet], Handler] = {}
        handlers.update(_optional_services(ctx))
        handlers.update(self.presence.handlers())
        handlers.update(self.login.handlers())
        self.handlers: Mapping[type[Packet], Handler] = {
            cls: handler if cls is Login else self._gated(handler)
            for cls, handler in handlers.items()
        }

    def _gated(self, handler: Handler) -> Handler:
        registry = self.context.registry

        async def gated(peer: Peer, packet: Packet) -> None:
            if registry.session_of(peer) is None:
                if isinstance(packet, Request):
                    await peer.send(packet.failed(AppErrorCode.NOT_LOGGED_IN, "log in first"))
                return
            await handler(peer, packet)

        return gated

    async def run(self) -> None:
        """Background work of the services, until cancelled."""
        async with trio.open_nursery() as nursery:
            for work in self.context.background:
                nursery.start_soon(work)
            await self.resume.run(self._expire)

    # ------------------------------------------------------------- sessions

    async def _logged_in(self, session: DeviceSession, replaced: DeviceSession | None) -> None:
        if replaced is not None:
            # §11.3.6 rule 4: the older session ends, and is told why.
            self.resume.end_for_good(replaced.peer)
            self.resume.forget(replaced.peer)
            await replaced.peer.close(AppErrorCode.SESSION_REPLACED, "replaced by a newer login")
        self.resume.logged_in(session.peer)
        await self.presence.device_online(session)

    async def _logging_out(self, session: DeviceSession) -> None:
        self.resume.end_for_good(session.peer)
        await self._end(session)

    async def _end(self, session: DeviceSession) -> None:
        """The session is over: unbind it and mark the device offline."""
        self.resume.forget(session.peer)
        if self.context.registry.unbind(session.peer) is None:
            return  # already ended (or replaced)
        if not session.peer.going_away:  # at shutdown nobody is left to tell
            await self.presence.device_gone(session)

    async def _expire(self, peer: Peer) -> None:
        session = self.context.registry.session_of(peer)
        if session is not None:
            peer.log.info("resumable session expired", user=session.user)
            await self._end(session)

    async def connection_ended(self, peer: Peer) -> None:
        if peer in self.resume.handing:
            return  # its session leaves for another worker (hand_over)
        session = self.context.registry.session_of(peer)
        if session is None:
            self.resume.forget(peer)
            return
        if self.resume.detach(peer):
            peer.log.info("session detached, resumable", user=session.user)
            return
        await self._end(session)

    async def resume_requested(self, peer: Peer, event: ResumeRequested) -> None:
        # Checked against the session's secret wherever the session is,
        # before anything touches it (§7.9.2).
        proof = peer.connection.resume_proof_material()
        taken = await self.resume.take_over(event.session_id, proof)
        if taken is not None:
            session, old = taken
            state = old.connection.resumption_state()
            try:
                peer.connection.accept_resume(state)
            except RemoteProtocolError:
                # RESUME_REJECTED from the library: the client's claim
                # contradicts the stored state.  The session cannot continue.
                await self._end(session)
                raise
            # No await from taking the state to the bind: nothing sent to the
            # device can fall between the two connections.
            undelivered, old.undelivered = old.undelivered, []
            old.successor = peer  # late senders to the old peer reach this one
            self._bind_resumed(
                peer, session, undelivered, resent=len(state.unacked), old=old.number
            )
            return
        # Not here: maybe on another worker of the node.
        rejected: list[ProtocolError] = []

        def install(handover: Handover) -> None:
            session = DeviceSession(
                user=handover.user,
                device_id=handover.device_id,
                kind=handover.kind,
                peer=peer,
                session_id=handover.state.session_id,
            )
            try:
                peer.connection.accept_resume(handover.state)
            except (RemoteProtocolError, LocalProtocolError) as exc:
                # The client's claim contradicts the state, or this connection
                # ended while the state was on its way: the session, which no
                # worker holds any more, ends for the whole node.
                rejected.append(exc)
                self.context.spawn(functools.partial(self.presence.device_gone, session))
                return
            self._bind_resumed(
                peer,
                session,
                list(handover.undelivered),
                resent=len(handover.state.unacked),
                old=None,
            )
            outboxes = self.context.router.outboxes
            if handover.pushed_up_to is not None:
                outboxes.start(peer, handover.pushed_up_to)
            for entry in handover.held:
                outboxes.push_entry(peer, entry)

        if await self.context.router.take_session(event.session_id, proof, install):
            if rejected and isinstance(rejected[0], RemoteProtocolError):
                raise rejected[0]
            return
        peer.log.info("resumption refused", session=event.session_id.hex())
        peer.connection.reject_resume()

    def _bind_resumed(
        self,
        peer: Peer,
        session: DeviceSession,
        undelivered: list[Packet],
        *,
        resent: int,
        old: int | None,
    ) -> None:
        self.context.registry.bind(
            peer, user=session.user, device_id=session.device_id, kind=session.kind
        )
        self.resume.logged_in(peer)
        try:
            for packet in undelivered:
                peer.send_nowait(packet)
        except PeerGone:
            return
        peer.log.info(
            "session resumed",
            user=session.user,
            device=session.device_id,
            old_conn=old,
            resent=resent,
            undelivered=len(undelivered),
        )

    # --------------------------------------------------- for the node's router

    def session_peer(self, session_id: bytes) -> Peer | None:
        return self.resume.peer_of(session_id)

    def replace_session(self, session_id: bytes) -> None:
        peer = self.resume.peer_of(session_id)
        if peer is None:
            return
        # Unbound first, so the end of its connection changes no presence:
        # the device is online under its newer session.
        self.resume.end_for_good(peer)
        self.resume.forget(peer)
        self.context.registry.unbind(peer)
        self.context.spawn(
            lambda: peer.close(AppErrorCode.SESSION_REPLACED, "replaced by a newer login")
        )

    async def hand_over(self, session_id: bytes, proof: bytes) -> Handover | None:
        taken = await self.resume.take_over(session_id, proof)
        if taken is None:
            return None
        session, old = taken
        registry = self.context.registry
        # A handler still running for the old connection (its connection was
        # lost mid-request) and the pushes queued for it must land in
        # ``undelivered`` before the state is taken.
        self.resume.handing.add(old)
        try:
            with trio.move_on_after(HANDOVER_TIMEOUT):
                await old.wait_processed()
                await self.context.router.outboxes.flush(old)
        finally:
            self.resume.handing.discard(old)
        if registry.session_of(old) is not session:
            return None  # replaced by a newer login meanwhile
        if old.undelivered_overflow:
            await self._end(session)  # packets were lost: not resumable
            return None
        # No await from here: the state is final and the session leaves.
        pushed, held = self.context.router.outboxes.handed_over(old)
        undelivered, old.undelivered = old.undelivered, []
        registry.unbind(old)
        old.log.info("session handed over", user=session.user, device=session.device_id)
        return Handover(
            user=session.user,
            device_id=session.device_id,
            kind=session.kind,
            state=old.connection.resumption_state(),
            undelivered=tuple(undelivered),
            pushed_up_to=pushed,
            held=tuple(held),
        )

    async def publish_presence(self, user: str, update: PresenceUpdate) -> None:
        await self.presence.publish(user, update)

    def statistics(self) -> dict[str, Any]:
        ctx = self.context
        return {
            "sessions": len(ctx.registry),
            "detached": self.resume.detached,
            "logins_pending": self.login.pending,
            "messages_stored": ctx.counters.messages_stored,
            "outboxes": len(ctx.router.outboxes),
            "pushes_dropped": ctx.router.outboxes.dropped,
        }


def build_application(ctx: ServiceContext) -> Application:
    """Every service of the server, sharing ``ctx``."""
    return Application(ctx)
