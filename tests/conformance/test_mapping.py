"""Every MUST and SHOULD sentence of docs/protocol.md maps to a conformance
case or to the reviewed list of requirements the suite cannot observe, and
every case maps to sentences that exist."""

from __future__ import annotations

import collections

import pytest

from conformance.case import all_cases, select
from conformance.requirements import (
    Level,
    load_requirements,
    load_section_titles,
    parse_requirements,
)
from conformance.uncovered import UNCOVERED, Why

REQUIREMENTS = load_requirements()
CASES = all_cases()
SECTIONS = set(load_section_titles()) | {r.section for r in REQUIREMENTS.values()}
COVERED = {rid: [c.id for c in CASES.values() if rid in c.covers] for rid in REQUIREMENTS}


def test_the_spec_has_the_expected_number_of_requirements() -> None:
    """A guard against a parser that silently finds nothing: the spec has
    well over a hundred MUST sentences."""
    levels = collections.Counter(r.level for r in REQUIREMENTS.values())
    assert levels[Level.MUST] > 120
    assert levels[Level.SHOULD] > 10


def test_every_case_covers_requirements_that_exist() -> None:
    orphans = {
        case.id: [rid for rid in case.covers if rid not in REQUIREMENTS]
        for case in CASES.values()
        if any(rid not in REQUIREMENTS for rid in case.covers)
    }
    assert orphans == {}


def test_every_requirement_is_covered_or_listed_as_unobservable() -> None:
    untested = [
        f"{rid} ({r.level.value}): {r.text}"
        for rid, r in REQUIREMENTS.items()
        if not COVERED[rid] and rid not in UNCOVERED
    ]
    assert untested == []


def test_the_unobservable_list_has_no_stale_entries() -> None:
    gone = [rid for rid in UNCOVERED if rid not in REQUIREMENTS]
    covered_anyway = {rid: COVERED[rid] for rid in UNCOVERED if COVERED.get(rid)}
    assert gone == []
    assert covered_anyway == {}


def test_every_unobservable_entry_says_why() -> None:
    assert all(isinstance(entry.why, Why) for entry in UNCOVERED.values())


def test_case_ids_name_sections_of_the_spec() -> None:
    """A case is named after the section that describes what it tests (§1.4)."""
    assert [c.id for c in CASES.values() if c.section not in SECTIONS] == []


def test_every_case_explains_itself() -> None:
    assert [c.id for c in CASES.values() if len(c.doc) < 40] == []


# --- the parser --------------------------------------------------------------------

SAMPLE = """\
## §1 Conventions

§1.1 The key words MUST and SHOULD are defined in RFC 2119.

## §4 Framing

§4.2 **Sizes.** The payload MUST NOT exceed 4096 bytes, e.g. on a stream.
A receiver MUST reject more. Nothing here.

```
code MUST be ignored
```

| Key | Meaning |
|---|---|
| `v` | Version. MUST be 1. |

1. First item: a sender SHOULD do it.
2. Second item, no key word.

#### §4.3.1 Sub

A side MAY do this. A side SHOULD NOT do that; it MUST NOT do the other.
§9.9 in the middle of a line is no label.

## Appendix A Worked examples

§5.1 Anything MUST be ignored here.
"""


def test_the_parser_numbers_sentences_per_label() -> None:
    found = parse_requirements(SAMPLE)
    assert [(r.id, r.level) for r in found] == [
        ("4.2-1", Level.MUST),
        ("4.2-2", Level.MUST),
        ("4.2-3", Level.MUST),
        ("4.2-4", Level.SHOULD),
        ("4.3.1-1", Level.MUST),
    ]
    texts = [r.text for r in found]
    assert texts[0] == "The payload MUST NOT exceed 4096 bytes, e.g. on a stream."
    assert texts[2] == "`v` | Version. MUST be 1."
    assert texts[4].startswith("A side SHOULD NOT do that; it MUST NOT do the other.")


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("EL-4.3-1", {"EL-4.3-1"}),
        ("4.3-1", {"EL-4.3-1"}),
        ("7.3.8", {f"EL-7.3.8-{n}" for n in range(1, 7)}),
        ("7.3.8.*", {f"EL-7.3.8-{n}" for n in range(1, 7)}),
    ],
)
def test_case_selection(pattern: str, expected: set[str]) -> None:
    assert {c.id for c in select([pattern])} == expected


def test_a_section_selects_its_subsections() -> None:
    chosen = {c.id for c in select(["4.*"])}
    assert "EL-4.3-1" in chosen and "EL-4.5-2" in chosen
    assert all(c.startswith("EL-4.") for c in chosen)
