"""The report of a run: a human summary, JSON and JUnit XML.

The human summary prints one line per case (colour only on a terminal), the
detail of every case that did not pass, the number of cases per spec
section, the SHOULDs the server does not meet, what the suite cannot observe,
and a last line that CI logs can grep::

    e-Link conformance: 121 cases, 113 OK, 1 NON-STRICT, 0 FAILED, ...
"""

from __future__ import annotations

import collections
import datetime
import json
import xml.etree.ElementTree as ET
from typing import Any

from .case import all_cases
from .requirements import Level, Requirement, load_requirements, load_section_titles
from .results import CaseResult, Outcome
from .runner import Report
from .uncovered import UNCOVERED, Why

ORDER = tuple(Outcome)
_COLORS = {
    Outcome.OK: "32",
    Outcome.NON_STRICT: "33",
    Outcome.FAILED: "31;1",
    Outcome.UNIMPLEMENTED: "36",
    Outcome.INFORMATIONAL: "34",
    Outcome.SKIPPED: "90",
    Outcome.ERROR: "35;1",
}
#: Lines of detail shown per case in the human summary (JSON has all).
DETAIL_LINES = 30


def _requirements() -> dict[str, Requirement]:
    try:
        return load_requirements()
    except OSError:  # installed without the source tree: ids only
        return {}


def _titles() -> dict[str, str]:
    try:
        return load_section_titles()
    except OSError:
        return {}


def summary_line(report: Report) -> str:
    counts = ", ".join(f"{report.count(o)} {o.value}" for o in ORDER)
    return f"e-Link conformance: {len(report.results)} cases, {counts} ({report.duration:.1f} s)"


def group(section: str) -> str:
    """The section a case is counted under: its first two levels (7.3.8 -> 7.3)."""
    return ".".join(section.split(".")[:2])


def _section_of(result: CaseResult) -> str:
    case = all_cases().get(result.id)
    return group(case.section if case else result.id.removeprefix("EL-").rsplit("-", 1)[0])


def _sort_key(section: str) -> tuple[int, ...]:
    return tuple(int(x) for x in section.split("."))


def sections(report: Report) -> dict[str, collections.Counter[Outcome]]:
    """Outcomes per section, in spec order."""
    per: dict[str, collections.Counter[Outcome]] = collections.defaultdict(collections.Counter)
    for result in report.results:
        per[_section_of(result)][result.outcome] += 1
    return {key: per[key] for key in sorted(per, key=_sort_key)}


def unmet_shoulds(report: Report) -> list[CaseResult]:
    return [r for r in report.results if r.outcome is Outcome.NON_STRICT]


def line_for(result: CaseResult, *, color: bool) -> str:
    outcome = result.outcome.value
    shown = f"\x1b[{_COLORS[result.outcome]}m{outcome:<13}\x1b[0m" if color else f"{outcome:<13}"
    return (
        f"{result.id:<14} {result.level.value:<6} {shown} {result.duration:6.2f}s  {result.title}"
    )


def detail_lines(result: CaseResult) -> list[str]:
    """The indented detail of a case that did not pass (none for OK)."""
    if result.outcome is Outcome.OK or not result.detail:
        return []
    lines = result.detail.splitlines()
    out = ["      " + line for line in lines[:DETAIL_LINES]]
    if len(lines) > DETAIL_LINES:
        out.append(f"      ... {len(lines) - DETAIL_LINES} more lines in the JSON report")
    return out


def render_text(report: Report, *, color: bool = False, verbose: bool = True) -> str:
    """The human summary (see the module docstring); ``verbose`` adds the
    line and detail of every case first."""
    requirements = _requirements()
    titles = _titles()
    out: list[str] = []
    if verbose:
        for result in report.results:
            out.append(line_for(result, color=color))
            out += detail_lines(result)
        out.append("")
    out.append("Cases per section:")
    for section, counts in sections(report).items():
        title = titles.get(section) or titles.get(section.split(".")[0], "")
        parts = ", ".join(f"{counts[o]} {o.value}" for o in ORDER if counts[o])
        out.append(f"  §{section:<6} {title[:48]:<48} {sum(counts.values()):3d} cases: {parts}")
    unmet = unmet_shoulds(report)
    out.append("")
    out.append(f"SHOULDs not met: {len(unmet)}")
    for result in unmet:
        out.append(f"  {result.id} {result.title}")
        for rid in result.requirements:
            requirement = requirements.get(rid)
            if requirement is not None and requirement.level is Level.SHOULD:
                out.append(f"      §{rid}: {requirement.text}")
    if requirements:
        covered = {r for c in all_cases().values() for r in c.covers}
        by_why = collections.Counter(u.why for u in UNCOVERED.values())
        musts = sum(1 for r in requirements.values() if r.level is Level.MUST)
        out.append("")
        out.append(
            f"Spec requirements: {len(requirements)} ({musts} MUST, {len(requirements) - musts} "
            f"SHOULD); {len(covered & set(requirements))} covered by cases, {len(UNCOVERED)} not "
            "observable by this suite:"
        )
        for why in Why:
            if by_why[why]:
                out.append(f"  {by_why[why]:3d} {why.value}")
    out.append("")
    out.append(summary_line(report))
    return "\n".join(out)


def as_json(report: Report) -> dict[str, Any]:
    """The machine-readable report."""
    requirements = _requirements()
    titles = _titles()
    options = report.options
    return {
        "suite": "e-Link conformance",
        "target": f"{options.host}:{options.port}",
        "started": datetime.datetime.fromtimestamp(report.started, datetime.UTC).isoformat(),
        "duration": round(report.duration, 3),
        "passed": report.passed,
        "summary": {"cases": len(report.results)} | {o.value: report.count(o) for o in ORDER},
        "summary_line": summary_line(report),
        "options": {
            "users": list(options.users),
            "handshake_timeout": options.handshake_timeout,
            "idle_timeout": options.idle_timeout,
            "heartbeat_interval": options.heartbeat_interval,
            "max_wait": options.max_wait,
            "legacy_suites": options.legacy_suites,
            "offline_cap": options.offline_cap,
        },
        "cases": [
            {
                "id": r.id,
                "title": r.title,
                "level": r.level.value,
                "requirements": [
                    {"id": rid, "text": requirements[rid].text if rid in requirements else None}
                    for rid in r.requirements
                ],
                "outcome": r.outcome.value,
                "detail": r.detail,
                "duration": round(r.duration, 4),
            }
            for r in report.results
        ],
        "sections": {
            section: {"title": titles.get(section, ""), "cases": sum(counts.values())}
            | {o.value: counts[o] for o in ORDER if counts[o]}
            for section, counts in sections(report).items()
        },
        "should_not_met": [
            {"case": r.id, "title": r.title, "requirements": list(r.requirements)}
            for r in unmet_shoulds(report)
        ],
        "not_observable": [
            {
                "id": rid,
                "level": requirements[rid].level.value if rid in requirements else None,
                "why": entry.why.name,
                "reason": entry.why.value + (f"; {entry.note}" if entry.note else ""),
            }
            for rid, entry in UNCOVERED.items()
        ],
    }


def write_json(report: Report, path: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(as_json(report), file, indent=2, ensure_ascii=False)
        file.write("\n")


def as_junit(report: Report) -> ET.Element:
    """JUnit XML: one testsuite per section, one testcase per case.  FAILED
    is a failure, ERROR an error, UNIMPLEMENTED and SKIPPED are skipped;
    NON-STRICT and INFORMATIONAL pass with their detail in system-out."""
    titles = _titles()
    root = ET.Element(
        "testsuites",
        name="e-Link conformance",
        tests=str(len(report.results)),
        failures=str(report.count(Outcome.FAILED)),
        errors=str(report.count(Outcome.ERROR)),
        skipped=str(report.count(Outcome.UNIMPLEMENTED) + report.count(Outcome.SKIPPED)),
        time=f"{report.duration:.3f}",
    )
    by_section: dict[str, list[CaseResult]] = collections.defaultdict(list)
    for result in report.results:
        by_section[_section_of(result)].append(result)
    for section in sorted(by_section, key=_sort_key):
        results = by_section[section]
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"§{section} {titles.get(section, '')}".strip(),
            tests=str(len(results)),
            failures=str(sum(r.outcome is Outcome.FAILED for r in results)),
            errors=str(sum(r.outcome is Outcome.ERROR for r in results)),
            skipped=str(
                sum(r.outcome in (Outcome.UNIMPLEMENTED, Outcome.SKIPPED) for r in results)
            ),
            time=f"{sum(r.duration for r in results):.3f}",
        )
        for result in results:
            testcase = ET.SubElement(
                suite,
                "testcase",
                classname=f"elink.conformance.{section}",
                name=f"{result.id} [{result.level.value}] {result.title}",
                time=f"{result.duration:.3f}",
            )
            message = result.detail.splitlines()[0] if result.detail else result.outcome.value
            if result.outcome is Outcome.FAILED:
                ET.SubElement(testcase, "failure", message=message).text = result.detail
            elif result.outcome is Outcome.ERROR:
                ET.SubElement(testcase, "error", message=message).text = result.detail
            elif result.outcome in (Outcome.UNIMPLEMENTED, Outcome.SKIPPED):
                ET.SubElement(testcase, "skipped", message=f"{result.outcome.value}: {message}")
            elif result.outcome is not Outcome.OK:
                ET.SubElement(
                    testcase, "system-out"
                ).text = f"{result.outcome.value}: {result.detail}"
    return root


def write_junit(report: Report, path: str) -> None:
    tree = ET.ElementTree(as_junit(report))
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
