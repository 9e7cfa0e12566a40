"""The documentation's examples run as written: every Python block of docs/api.md and docs/torch.md."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api.md"


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.+?)\n```", path.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("number", range(len(_blocks(API))))
def test_api_examples_run(number: int, tmp_path: Path) -> None:
    """Each example of docs/api.md runs to the end (the network lab's only where namespaces can be made)."""
    block = _blocks(API)[number]
    if "NetLab(" in block:
        from aiodq.lab.netlab import namespaces_unavailable  # noqa: PLC0415

        reason = namespaces_unavailable()
        if reason is not None:
            pytest.skip(f"network namespaces: {reason}")
    script = tmp_path / "example.py"
    script.write_text(block, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("number", range(len(_blocks(ROOT / "docs" / "torch.md"))))
def test_torch_examples_run(number: int, tmp_path: Path) -> None:
    """Each example of docs/torch.md runs to the end (where torch is installed: the test extra has it)."""
    pytest.importorskip("torch", reason="docs/torch.md needs torch: pip install 'aiodq[torch]'")
    script = tmp_path / "example.py"
    script.write_text(_blocks(ROOT / "docs" / "torch.md")[number], encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
