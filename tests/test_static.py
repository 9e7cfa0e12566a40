"""Static checks and set-up rules: ruff, mypy --strict, and the README's two commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_ruff_clean() -> None:
    """The package, tests and examples pass ruff with the project's rule set."""
    result = _run(sys.executable, "-m", "ruff", "check", "aiodq", "tests", "examples")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_clean() -> None:
    """The package passes mypy --strict (configured in pyproject.toml)."""
    result = _run(sys.executable, "-m", "mypy", "--strict", "aiodq")
    assert result.returncode == 0, result.stdout + result.stderr


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_readme_has_two_commands_and_ci_runs_the_test_one() -> None:
    """README gives one install-and-run command and one install-and-test command; .ci/run runs the latter."""
    commands = _readme_commands()
    assert len(commands) == 2, commands
    run_command, test_command = commands
    assert "pip install '.[cli]'" in run_command and "aiodq" in run_command.split("&&")[-1]
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci.splitlines(), "the README's test command must appear verbatim in .ci/run"


def test_py_typed_is_shipped() -> None:
    """The package ships py.typed, so its annotations reach users' type checkers."""
    assert (ROOT / "aiodq" / "py.typed").exists()


def test_readme_python_examples_run(tmp_path: Path) -> None:
    """Every Python block of the README runs as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.+?)\n```", text, re.S)
    assert blocks
    for number, block in enumerate(blocks):
        script = tmp_path / f"example_{number}.py"
        script.write_text(block, encoding="utf-8")
        result = _run(sys.executable, str(script))
        assert result.returncode == 0, (number, result.stderr)
