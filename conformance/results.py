"""What a case reports: its outcome, and the exceptions a case raises to say so.

A case is an ``async`` function.  It returns normally when the server did what
the spec requires (outcome OK) and raises one of the exceptions below
otherwise.  The runner turns them into an outcome according to the case's
level: a check that fails in a MUST case is FAILED, in a SHOULD case
NON-STRICT.  A :class:`ServerViolation` -- the suite's client noticed the
server breaking a MUST of the spec in passing, whatever the case was about --
is FAILED at every level.
"""

from __future__ import annotations

import enum

import attrs

from .requirements import Level


class Outcome(enum.Enum):
    """The result of one case.  The first five are Autobahn|Testsuite's; the
    suite adds SKIPPED and ERROR so that a case it could not run is never
    counted as passed, nor blamed on the server."""

    OK = "OK"
    """The server behaved as the spec requires."""
    NON_STRICT = "NON-STRICT"
    """A SHOULD (or SHOULD NOT) was not met."""
    FAILED = "FAILED"
    """A MUST (or MUST NOT) was broken."""
    UNIMPLEMENTED = "UNIMPLEMENTED"
    """An optional feature (a suite, a MAY) is absent: not an error."""
    INFORMATIONAL = "INFORMATIONAL"
    """The case reports what the server does where the spec leaves a choice."""
    SKIPPED = "SKIPPED"
    """The case could not run with the given options (a wait longer than
    ``--max-wait``, an account the suite was not given)."""
    ERROR = "ERROR"
    """The suite itself failed (a bug in the case): says nothing about the server."""


class CaseEnd(Exception):
    """Base of the exceptions that end a case with an outcome other than OK."""

    outcome: Outcome = Outcome.FAILED

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Fail(CaseEnd):
    """The server did not do what the case checks: FAILED in a MUST case,
    NON-STRICT in a SHOULD case, FAILED in a MAY case (a feature present but
    wrong)."""


class ServerViolation(Fail):
    """The server broke a MUST of the spec, noticed by the suite's client
    while it ran any case (a malformed frame, a PID out of sequence...).
    Always FAILED."""

    def __init__(self, requirement: str, detail: str) -> None:
        super().__init__(f"server violated §{requirement}: {detail}")
        self.requirement = requirement


class Unimplemented(CaseEnd):
    """An optional feature is absent."""

    outcome = Outcome.UNIMPLEMENTED


class Informational(CaseEnd):
    """Nothing to judge; the detail says what the server does."""

    outcome = Outcome.INFORMATIONAL


class Skip(CaseEnd):
    """The case cannot run with these options; the detail says why."""

    outcome = Outcome.SKIPPED


def outcome_of(error: CaseEnd, level: Level) -> Outcome:
    """The outcome a case of ``level`` gets when it ends with ``error``."""
    if isinstance(error, ServerViolation):
        return Outcome.FAILED
    if isinstance(error, Fail):
        return Outcome.NON_STRICT if level is Level.SHOULD else Outcome.FAILED
    return error.outcome


@attrs.frozen(kw_only=True)
class CaseResult:
    """One case as the report shows it."""

    id: str
    """``EL-<section>-<n>``."""
    title: str
    level: Level
    requirements: tuple[str, ...]
    """The requirement ids (``requirements.py``) the case covers."""
    outcome: Outcome
    detail: str
    """What was sent, what was expected and what came back (empty when OK)."""
    duration: float
    """Seconds."""
