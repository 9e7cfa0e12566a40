"""docs/wire-format.md: Appendix B lists every requirement the body states, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

SPEC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


def test_requirement_index_matches_the_body() -> None:
    """Every [WF-...] label in sections 1-12 has a row in Appendix B, and every row a label."""
    text = SPEC.read_text(encoding="utf-8")
    body, index = text.split("## Appendix B", 1)
    stated = set(re.findall(r"\[(WF-[0-9.]+-[0-9]+)\]", body))
    listed = set(re.findall(r"^\| (WF-[0-9.]+-[0-9]+) \|", index, flags=re.MULTILINE))
    assert stated, "no requirement labels found"
    assert stated - listed == set(), f"missing from Appendix B: {sorted(stated - listed)}"
    assert listed - stated == set(), f"in Appendix B but not in the body: {sorted(listed - stated)}"
