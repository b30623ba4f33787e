"""Running cases: one at a time, each with its own connections and a bound on
its duration, turning what it raised into an outcome."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable

import attrs
import trio

from .case import Case, Context, Options, all_cases
from .requirements import Level
from .results import CaseEnd, CaseResult, Outcome, outcome_of

#: Every case ends within this many seconds beyond the deadlines it waits for.
CASE_BUDGET = 60.0


#: Outcomes whose detail ends with the traffic of the case's connections.
_WITH_TRAFFIC = frozenset({Outcome.FAILED, Outcome.NON_STRICT, Outcome.ERROR})


class Unreachable(Exception):
    """The server cannot be reached at all (no TCP connection)."""


@attrs.frozen(kw_only=True)
class Report:
    """Everything one run found."""

    options: Options
    results: tuple[CaseResult, ...]
    started: float
    """Unix time."""
    duration: float

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)

    @property
    def passed(self) -> bool:
        """No case FAILED and none ERRORed: the exit status is 0."""
        return not any(r.outcome in (Outcome.FAILED, Outcome.ERROR) for r in self.results)


async def check_reachable(options: Options) -> None:
    """Raise :class:`Unreachable` if no TCP connection can be made."""
    try:
        with trio.fail_after(options.wait):
            stream = await trio.open_tcp_stream(options.host, options.port)
    except (OSError, trio.TooSlowError) as exc:
        raise Unreachable(f"cannot connect to {options.host}:{options.port}: {exc}") from None
    await trio.aclose_forcefully(stream)


def _budget(options: Options) -> float:
    waits = (
        options.handshake_timeout,
        options.idle_timeout,
        options.heartbeat_interval,
        options.max_wait,
    )
    return CASE_BUDGET + 2 * min(max(waits), options.max_wait)


async def run_case(item: Case, options: Options) -> CaseResult:
    """Run one case and report its outcome."""
    ctx = Context(options, item.id)
    started = time.monotonic()
    outcome, detail = Outcome.OK, ""
    try:
        with trio.fail_after(_budget(options)):
            try:
                await item.run(ctx)
            finally:
                await ctx.close_all()
    except CaseEnd as end:
        outcome, detail = outcome_of(end, item.level), end.detail
    except trio.TooSlowError:
        outcome = Outcome.FAILED if item.level is Level.MUST else Outcome.NON_STRICT
        detail = f"the case did not finish within {_budget(options):g} s"
    except Exception:
        outcome = Outcome.ERROR
        detail = "the suite failed (this is a bug in the case, not a finding):\n" + (
            traceback.format_exc(limit=8)
        )
    extra = list(ctx.notes)
    if outcome in _WITH_TRAFFIC:
        traffic = [line for client in ctx.clients for line in client.log]
        if traffic:
            extra += ["traffic (last lines per connection):", *traffic]
    if extra:
        detail = "\n".join([detail, *extra] if detail else extra)
    return CaseResult(
        id=item.id,
        title=item.title,
        level=item.level,
        requirements=item.covers,
        outcome=outcome,
        detail=detail,
        duration=time.monotonic() - started,
    )


async def run_suite(
    options: Options,
    selected: Iterable[Case] | None = None,
    *,
    progress: Callable[[CaseResult], None] | None = None,
) -> Report:
    """Run ``selected`` cases (default: all) against the server in
    ``options``.  Raises :class:`Unreachable` before any case runs if the
    server cannot be reached."""
    await check_reachable(options)
    started_wall, started = time.time(), time.monotonic()
    results = []
    for item in selected if selected is not None else all_cases().values():
        result = await run_case(item, options)
        results.append(result)
        if progress is not None:
            progress(result)
    return Report(
        options=options,
        results=tuple(results),
        started=started_wall,
        duration=time.monotonic() - started,
    )
