"""docs/wire-format.md: Appendix B lists every requirement the body states, summarised from the body itself.

The index is derived, not written: each row is the requirement's ID and the start of its text (its
first sentence, cut at about 95 characters).  ``python tests/conformance/test_spec_index.py``
rewrites Appendix B from the body; the test fails if the committed index differs from that.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SPEC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"
_ENDS = (r"\n\s*\n", r"\n- ", r"\n\|", r"\n#", r"\n\*\*", r"\n  [0-9]+\. ", r"\n[0-9]+\. ", r"\n  - ")


def requirements(body: str) -> dict[str, str]:
    """Every ``[WF-...]`` label of the body and its text, up to the next bullet, item, table or blank line."""
    found: dict[str, str] = {}
    for match in re.finditer(r"\[(WF-[0-9.]+-[0-9]+)\]\s*", body):
        rest = body[match.end() :]
        end = min([m.start() for pattern in _ENDS if (m := re.search(pattern, rest))] or [len(rest)])
        found.setdefault(match.group(1), " ".join(rest[:end].split()))
    return found


def summary(text: str) -> str:
    """The index row's summary: a bold lead, then the first sentence, cut at a word near 95 characters."""
    lead = ""
    if match := re.match(r"\*\*(.+?)\*\*\s*", text):
        lead, text = match.group(1).rstrip(".") + ": ", text[match.end() :]
    out = lead + re.split(r"(?<=[a-z0-9)`\"])\. (?=[A-Z`(])", text)[0].rstrip(".:")
    if len(out) > 95:
        out = out[:92].rsplit(" ", 1)[0] + " …"
    return out.replace("|", "\\|")


def index_rows(text: str) -> list[str]:
    """The rows Appendix B should have for the body of ``text``."""
    body = text.split("## Appendix B", 1)[0]
    return [f"| {rid} | {summary(requirement)} |" for rid, requirement in requirements(body).items()]


def _committed_rows(text: str) -> list[str]:
    index = text.split("## Appendix B", 1)[1]
    return [line for line in index.splitlines() if re.match(r"^\| WF-", line)]


def test_requirement_index_matches_the_body() -> None:
    """Every [WF-...] label in sections 1-12 has a row in Appendix B, and every row a label."""
    text = SPEC.read_text(encoding="utf-8")
    stated = set(requirements(text.split("## Appendix B", 1)[0]))
    listed = {line.split(" | ")[0][2:] for line in _committed_rows(text)}
    assert stated, "no requirement labels found"
    assert stated - listed == set(), f"missing from Appendix B: {sorted(stated - listed)}"
    assert listed - stated == set(), f"in Appendix B but not in the body: {sorted(listed - stated)}"


def test_requirement_summaries_come_from_the_body() -> None:
    """Each row summarises its requirement's current text (run this file to rewrite the index)."""
    text = SPEC.read_text(encoding="utf-8")
    expected, committed = index_rows(text), _committed_rows(text)
    stale = [f"{old}\n  should be {new}" for old, new in zip(committed, expected, strict=False) if old != new]
    assert committed == expected, "\n".join(stale[:10]) or "rows differ in number or order"


def _rewrite() -> None:
    text = SPEC.read_text(encoding="utf-8")
    body, index = text.split("## Appendix B", 1)
    lines = index.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| ID |"))
    last = first + 2
    while last < len(lines) and lines[last].startswith("|"):
        last += 1
    lines[first + 2 : last] = index_rows(text)
    SPEC.write_text(body + "## Appendix B" + "\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    _rewrite()
    sys.exit(0)
