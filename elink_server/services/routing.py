"""Turning typed request handlers into host handlers: the login check and the
mapping of expected failures to RequestFailed (docs/protocol.md §11.10).

A request handler is ``async def handle(peer, session, request)``; it answers
with ``await peer.send(...)`` or raises :class:`Refused` (or lets a store
error of an expected kind escape).  Everything else propagates to the host,
which closes that connection with INTERNAL_ERROR and logs the traceback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import trio

from elink_protocol import Packet
from elink_protocol.app import AppErrorCode, Request
from elink_server.peer import Handler, Peer
from elink_server.storage import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ReadFailed,
    RecallWindowExpired,
    StorageError,
    StoreClosed,
    WriteFailed,
)

from .context import DeviceSession, ServiceContext

R = TypeVar("R", bound=Request)
T = TypeVar("T")

RequestHandler = Callable[[Peer, DeviceSession, R], Awaitable[None]]

#: Longest RequestFailed reason, in UTF-8 bytes (§11.2.7).
MAX_REASON = 256
#: What a client is asked to wait before retrying when storage is unavailable.
RETRY_AFTER_MS = 1000


class Refused(Exception):
    """An expected failure of a request: answered with RequestFailed."""

    def __init__(self, code: AppErrorCode, reason: str = "", *, retry_after_ms: int = 0) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.retry_after_ms = retry_after_ms


def refusal(exc: StorageError) -> Refused | None:
    """The answer to a store error that a request can expect, or None."""
    if isinstance(exc, NotFound):
        return Refused(AppErrorCode.NOT_FOUND, str(exc))
    if isinstance(exc, RecallWindowExpired):
        return Refused(AppErrorCode.RECALL_WINDOW_EXPIRED, str(exc))
    if isinstance(exc, PermissionDenied):
        return Refused(AppErrorCode.PERMISSION_DENIED, str(exc))
    if isinstance(exc, InvalidArgument):
        return Refused(AppErrorCode.INVALID_REQUEST, str(exc))
    if isinstance(exc, WriteFailed | ReadFailed | StoreClosed):
        # Nothing was written or read, or the server is stopping.
        return Refused(
            AppErrorCode.SERVER_BUSY, "storage unavailable", retry_after_ms=RETRY_AFTER_MS
        )
    return None


def _clip(reason: str, limit: int = MAX_REASON) -> str:
    """``reason`` cut to at most ``limit`` UTF-8 bytes (§11.2.7)."""
    return reason.encode()[:limit].decode(errors="ignore")


async def gather(calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``calls`` concurrently (so their store writes share one group
    commit) and return their results in order.  The first exception is
    re-raised as itself, not inside an ExceptionGroup, so the store errors
    stay recognisable."""
    results: list[Any] = [None] * len(calls)
    errors: list[Exception] = []

    async def run(i: int, call: Callable[[], Awaitable[T]]) -> None:
        try:
            results[i] = await call()
        except Exception as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for i, call in enumerate(calls):
            nursery.start_soon(run, i, call)
    if errors:
        raise errors[0]
    return results


def route(
    ctx: ServiceContext,
    handlers: dict[type[Packet], Handler],
    cls: type[R],
    handler: RequestHandler[R],
) -> None:
    """Serve requests of type ``cls`` with ``handler``, for logged-in
    sessions only (§11.3.6: NOT_LOGGED_IN before LoginOk)."""

    async def handle(peer: Peer, packet: Packet) -> None:
        assert isinstance(packet, cls)
        session = ctx.registry.session_of(peer)
        if session is None:
            await peer.send(packet.failed(AppErrorCode.NOT_LOGGED_IN, "log in first"))
            return
        try:
            await handler(peer, session, packet)
        except Refused as exc:
            answer = exc
        except StorageError as exc:
            mapped = refusal(exc)
            if mapped is None:
                raise
            answer = mapped
        else:
            return
        await peer.send(
            packet.failed(answer.code, _clip(answer.reason), retry_after_ms=answer.retry_after_ms)
        )

    handlers[cls] = handle
