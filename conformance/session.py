"""The application layer of the suite's client (§11): request ids, answers,
pushes and login, on top of :class:`~conformance.wire.RawConnection`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import trio

from elink_protocol import Packet
from elink_protocol.app import (
    DeviceKind,
    Login,
    LoginOk,
    LoginQueued,
    Push,
    Request,
    RequestFailed,
    Response,
)

from .results import Fail, ServerViolation
from .wire import Closed, RawConnection, code_name


def failed(answer: Response) -> str:
    """``RequestFailed NOT_FOUND (0x0111)`` or the answer's type name."""
    if isinstance(answer, RequestFailed):
        return f"RequestFailed {code_name(answer.code)}"
    return type(answer).__name__


class Client(RawConnection):
    """A raw connection that also speaks the application protocol."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._rid = 0
        self.pushes: list[Packet] = []
        """Server pushes received while the case waited for something else."""
        self.queued: list[LoginQueued] = []
        """LoginQueued notices received."""
        self.login_ok: LoginOk | None = None
        self.logged_in_at = 0.0
        """``time.monotonic()`` when LoginOk arrived (its ``st`` is the
        server's clock then)."""
        self.user = ""
        self.device = ""

    def rid(self) -> int:
        """A fresh request id."""
        self._rid += 1
        return self._rid

    async def request(self, request: Request, timeout: float) -> Response:
        """Send ``request`` and return its final answer (pushes meanwhile are
        kept in :attr:`pushes`, LoginQueued notices in :attr:`queued`)."""
        await self.send(request)
        return await self.answer(request, timeout)

    async def answer(self, request: Request, timeout: float) -> Response:
        """The final answer to a request already sent."""
        name = type(request).__name__
        while True:
            event = await self.poll(timeout)
            if event is None:
                raise Fail(f"{self.name}: no answer to {name} r={request.rid} within {timeout:g} s")
            if isinstance(event, Closed):
                raise Fail(
                    f"{self.name}: {event.describe()} while waiting for the answer to {name}"
                )
            packet = event.packet
            if isinstance(packet, Push):
                self.pushes.append(packet)
            elif isinstance(packet, LoginQueued):
                if packet.rid != request.rid:
                    raise ServerViolation("11.3.3", f"LoginQueued r={packet.rid} for no Login")
                self.queued.append(packet)
            elif isinstance(packet, Response) and packet.rid == request.rid:
                return packet
            elif isinstance(packet, Response):
                raise ServerViolation(
                    "11.1.4",
                    f"an answer r={packet.rid} to no request waiting (expected r={request.rid})",
                )

    async def expect_answer(
        self, request: Request, expected: type[Response], timeout: float
    ) -> Response:
        """Send ``request``; fail the case unless the answer is ``expected``."""
        answer = await self.request(request, timeout)
        if not isinstance(answer, expected):
            raise Fail(
                f"{self.name}: {type(request).__name__} was answered {_answer(answer)}, "
                f"expected {expected.__name__}"
            )
        return answer

    async def expect_failure(self, request: Request, code: int, timeout: float) -> RequestFailed:
        """Send ``request``; fail the case unless it is refused with ``code``."""
        answer = await self.request(request, timeout)
        if not isinstance(answer, RequestFailed) or answer.code != code:
            raise Fail(
                f"{self.name}: {type(request).__name__} was answered {_answer(answer)}, "
                f"expected RequestFailed {code_name(code)}"
            )
        return answer

    async def login(
        self,
        user: str,
        password: str,
        device: str,
        *,
        kind: DeviceKind = DeviceKind.BOT,
        timeout: float,
    ) -> LoginOk:
        """Log in; fail the case on any other answer."""
        request = Login(
            rid=self.rid(), user=user, password=password, device_id=device, device_kind=kind
        )
        answer = await self.request(request, timeout)
        if not isinstance(answer, LoginOk):
            raise Fail(f"{self.name}: Login as {user!r} was answered {_answer(answer)}")
        if answer.user != user or answer.device_id != device:
            raise ServerViolation(
                "11.3.2", f"LoginOk names {answer.user}/{answer.device_id}, not {user}/{device}"
            )
        self.login_ok, self.user, self.device = answer, user, device
        self.logged_in_at = time.monotonic()
        return answer

    async def wait_push(
        self, match: Callable[[Packet], bool], timeout: float, *, what: str
    ) -> Packet:
        """The first push (already received or arriving within ``timeout``)
        that ``match``es; it is removed from :attr:`pushes`."""
        for i, packet in enumerate(self.pushes):
            if match(packet):
                return self.pushes.pop(i)
        with trio.move_on_after(timeout):
            while True:
                event = await self.poll(math.inf)
                assert event is not None
                if isinstance(event, Closed):
                    raise Fail(f"{self.name}: {event.describe()} while waiting for {what}")
                packet = event.packet
                if isinstance(packet, Push):
                    if match(packet):
                        return packet
                    self.pushes.append(packet)
                elif isinstance(packet, Response):
                    raise ServerViolation("11.1.4", f"an answer r={packet.rid} to no request")
        raise Fail(f"{self.name}: expected {what} within {timeout:g} s, got none")

    async def quiet(self, period: float) -> list[Packet]:
        """Everything the server sends within ``period`` seconds (pushes are
        also kept in :attr:`pushes`)."""
        seen: list[Packet] = []
        with trio.move_on_after(period):
            while True:
                event = await self.poll(math.inf)
                if event is None or isinstance(event, Closed):
                    return seen
                seen.append(event.packet)
                if isinstance(event.packet, Push):
                    self.pushes.append(event.packet)
        return seen


def _answer(answer: Response) -> str:
    return failed(answer) + (
        f" ({answer.reason!r})" if isinstance(answer, RequestFailed) and answer.reason else ""
    )
