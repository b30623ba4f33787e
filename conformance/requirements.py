"""The requirements of docs/protocol.md: every sentence with MUST, MUST NOT,
SHOULD or SHOULD NOT, with a stable id.

Theory of operation
-------------------
The spec numbers its paragraphs (``§4.2 **Sizes.** ...``) and its headings
(``#### §7.3.2 ServerHello``).  The most recent such number is the *label* of
everything that follows it, up to the next one.  Inside a label's text the
parser cuts units -- a paragraph, a list item, a table row -- into sentences,
keeps the sentences that use a key word in capitals, and numbers them from 1
in order: the id of the third requirement after ``§6.5.2`` is ``6.5.2-3``.
An id therefore stays the same as long as the sentences before it under the
same label do not change; editing one paragraph renumbers only that one.

Skipped: fenced code blocks, Appendix A (worked examples, generated), and
§1.1, which *mentions* the key words to define them rather than using them.

The conformance cases name the ids they cover; ``tests/conformance/
test_mapping.py`` checks the mapping both ways with this parser.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from pathlib import Path

import attrs

#: Where the spec lives in a source checkout.
SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

#: Labels whose key words are definitions, not requirements.
_DEFINITIONS = frozenset({"1.1"})

_HEADING = re.compile(r"^#+\s+§([\d.]+)\s")
_PARAGRAPH_LABEL = re.compile(r"^§([\d.]+)\s")
_LIST_ITEM = re.compile(r"^\s*(?:\d+\.|[*-])\s+")
_TABLE_SEPARATOR = re.compile(r"^\|[\s|:-]+\|$")
# A sentence ends with . ! or ? followed by space and a capital, a backtick or
# an emphasis mark.  "e.g. re-send" stays one sentence (lower case follows).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`*])")
_ROW_MARK = "\x00row\x00"
_BOLD_TITLE = re.compile(r"^\*\*[^*]+\*\*\s*")
_KEYWORD = re.compile(r"\b(MUST|SHOULD)\b")


class Level(enum.Enum):
    """How strong a requirement is (RFC 2119)."""

    MUST = "MUST"
    SHOULD = "SHOULD"
    MAY = "MAY"


@attrs.frozen(kw_only=True)
class Requirement:
    """One sentence of the spec that uses MUST or SHOULD."""

    id: str
    """``<label>-<n>``: the n-th requirement sentence after ``§<label>``."""
    section: str
    """The label, e.g. ``6.5.2``."""
    level: Level
    """MUST when the sentence says MUST (or MUST NOT), else SHOULD."""
    text: str
    """The sentence, whitespace collapsed."""


def _units(lines: list[str]) -> Iterator[str]:
    """Paragraphs, list items and table rows of one label's text."""
    current: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            if current:
                yield " ".join(current)
            current = []
        elif stripped.startswith("|"):
            if current:
                yield " ".join(current)
            current = []
            if not _TABLE_SEPARATOR.match(stripped):
                # A table row is one unit and one sentence: its cells only
                # make sense together ("`rl` ... MUST be 0 otherwise").
                yield _ROW_MARK + " | ".join(c.strip() for c in stripped.strip("|").split("|"))
        elif _LIST_ITEM.match(line):
            if current:
                yield " ".join(current)
            current = [_LIST_ITEM.sub("", line).strip()]
        else:
            current.append(stripped)
    if current:
        yield " ".join(current)


def _sentences(unit: str) -> list[str]:
    if unit.startswith(_ROW_MARK):
        return [re.sub(r"\s+", " ", unit[len(_ROW_MARK) :]).strip()]
    # A paragraph's bold title ("**Sizes.**") is a heading, not a sentence.
    text = _BOLD_TITLE.sub("", re.sub(r"\s+", " ", unit))
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _labelled_blocks(text: str) -> Iterator[tuple[str, list[str]]]:
    """(label, lines) for every labelled stretch of the spec, in order."""
    label = ""
    lines: list[str] = []
    in_code = False
    previous_blank = True
    for line in text.splitlines():
        if line.startswith("## Appendix"):
            break
        if line.startswith("```"):
            in_code = not in_code
            previous_blank = False
            continue
        if in_code:
            continue
        heading = _HEADING.match(line)
        paragraph = _PARAGRAPH_LABEL.match(line) if previous_blank else None
        if heading or paragraph:
            if label:
                yield label, lines
            label = (heading or paragraph).group(1).rstrip(".")  # type: ignore[union-attr]
            lines = [] if heading else [_PARAGRAPH_LABEL.sub("", line)]
        elif not line.startswith("#"):
            lines.append(line)
        previous_blank = not line.strip()
    if label:
        yield label, lines


def parse_requirements(text: str) -> list[Requirement]:
    """Every requirement sentence of the spec ``text``, in document order."""
    found: list[Requirement] = []
    for label, lines in _labelled_blocks(text):
        if label in _DEFINITIONS:
            continue
        index = 0
        for unit in _units(lines):
            for sentence in _sentences(unit):
                words = set(_KEYWORD.findall(sentence))
                if not words:
                    continue
                index += 1
                found.append(
                    Requirement(
                        id=f"{label}-{index}",
                        section=label,
                        level=Level.MUST if "MUST" in words else Level.SHOULD,
                        text=sentence,
                    )
                )
    return found


def load_requirements(path: Path = SPEC_PATH) -> dict[str, Requirement]:
    """The requirements of the spec file at ``path``, by id."""
    requirements = parse_requirements(path.read_text(encoding="utf-8"))
    return {r.id: r for r in requirements}


def section_titles(text: str) -> dict[str, str]:
    """``{"6.5": "Sessions, resumption and exactly-once processing", ...}``
    from the spec's numbered headings (bold paragraph titles included)."""
    titles: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("## Appendix"):
            break
        heading = re.match(r"^#+\s+§([\d.]+)\s+(.*)$", line)
        if heading:
            titles[heading.group(1).rstrip(".")] = heading.group(2).strip()
            continue
        paragraph = re.match(r"^§([\d.]+)\s+\*\*(.+?)\.?\*\*", line)
        if paragraph:
            titles[paragraph.group(1).rstrip(".")] = paragraph.group(2).strip()
    return titles


def load_section_titles(path: Path = SPEC_PATH) -> dict[str, str]:
    return section_titles(path.read_text(encoding="utf-8"))
