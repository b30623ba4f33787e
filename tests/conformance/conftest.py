"""Running the conformance suite against in-process servers of ours."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import structlog

from conformance.case import Options, select
from conformance.results import CaseResult, Outcome
from conformance.runner import Report, run_suite
from elink_server.host import Server
from tests.helpers.server import add_user, open_test_server

USERS = ("conf-a", "conf-b", "conf-c", "conf-d")
PASSWORD = "conformance"

#: Short deadlines, so the timing cases take seconds.  The suite is told the
#: same values, as an operator would pass them on the command line.
DEADLINES: dict[str, float] = {
    "handshake_timeout": 1.0,
    "idle_timeout": 2.0,
    "heartbeat_interval": 0.5,
}
SERVER_SETTINGS: dict[str, Any] = {
    **DEADLINES,
    "recall_window": 1.0,
    # Small enough that EL-6.5.3-2 sees answers held back.
    "max_unacked_packets": 16,
    # The heavy bus (§9): any free port, the smallest chunks (so two-chunk
    # files stay small), and tokens short-lived enough that EL-9.3-2 waits
    # for one to expire in about two seconds (a margin for a loaded CI box).
    "files_port": 0,
    "files_chunk_size": 64 * 1024,
    "files_ticket_lifetime": 2.0,
}


@contextlib.asynccontextmanager
async def suite_server(data_dir: Path, **overrides: Any) -> AsyncIterator[Server]:
    """One of our servers, with the suite's accounts.  Its logs are kept to
    warnings: hundreds of connection lines would drown a failure."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        async with open_test_server(data_dir, **{**SERVER_SETTINGS, **overrides}) as server:
            for user in USERS:
                await add_user(server, user, PASSWORD)
            yield server
    finally:
        structlog.reset_defaults()


def options(server: Server, **overrides: Any) -> Options:
    return Options(
        host="127.0.0.1",
        port=server.port,
        users=USERS,
        password=PASSWORD,
        wait=5.0,
        **{**DEADLINES, **overrides},
    )


async def run(server: Server, patterns: Iterable[str] = ("*",), **overrides: Any) -> Report:
    return await run_suite(options(server, **overrides), select(list(patterns)))


def outcomes(report: Report) -> dict[str, Outcome]:
    return {r.id: r.outcome for r in report.results}


def explain(results: Iterable[CaseResult]) -> str:
    return "\n\n".join(f"{r.id} {r.outcome.value}: {r.title}\n{r.detail}" for r in results)
