"""The documentation's examples run as written and print what they say: every Python block of docs/api.md and
docs/torch.md; and docs/usage.md names every option of every command."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api.md"


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.+?)\n```", path.read_text(encoding="utf-8"), re.S)


#: A top-level print with the output it gives in a comment after it.
_TRAILING = re.compile(r"^(print\(.*\))\s+# (.*)$")
_MARK = "\x1e{}\n"


def _with_marks(block: str) -> tuple[str, list[tuple[int, str, bool]]]:
    """The block with a mark printed around each documented output; the checks: (mark, expected, exact).

    Two styles document an output: ``print(...)  # OUTPUT`` (the comment starts with what that
    print printed, then maybe ``: why``), and a top-level ``print(...)`` followed by comment
    lines that are, exactly, everything printed since the previous documented output (a loop's
    lines included). A comment starting with ``~`` is an approximate figure: not compared.
    """
    lines, checks, out, index = block.splitlines(), [], [], 0
    for number, line in enumerate(lines):
        trailing = _TRAILING.match(line)
        following = []
        for after in lines[number + 1 :]:
            if not after.startswith("# "):
                break
            following.append(after[2:])
        if trailing is not None and not trailing.group(2).startswith("~"):
            out += [f"print({_MARK.format(index)!r}, end='', flush=True)", line]
            index += 1
            out.append(f"print({_MARK.format(index)!r}, end='', flush=True)")
            checks.append((index, trailing.group(2), False))
            index += 1
        elif line.startswith("print(") and following and not following[0].startswith("~"):
            out += [line, f"print({_MARK.format(index)!r}, end='', flush=True)"]
            checks.append((index, "\n".join(following), True))
            index += 1
        else:
            out.append(line)
    return "\n".join(out), checks


def _check_outputs(stdout: str, checks: list[tuple[int, str, bool]]) -> list[str]:
    """What differs between the documented outputs and ``stdout`` of the marked block (each check
    names the mark that follows its output)."""
    # What was printed before each mark, since the one before it.
    parts = re.split("\x1e([0-9]+)\n", stdout)
    printed = {int(parts[i]): parts[i - 1] for i in range(1, len(parts), 2)}
    wrong = []
    for index, expected, exact in checks:
        got = printed[index].rstrip("\n")
        boundary = expected[len(got) : len(got) + 1]
        if not (expected == got if exact else expected.startswith(got) and boundary in ("", ":", " ", ";")):
            wrong.append(f"documented {expected!r}, printed {got!r}")
    return wrong


@pytest.mark.parametrize("number", range(len(_blocks(API))))
def test_api_examples_run(number: int, tmp_path: Path) -> None:
    """Each example of docs/api.md runs to the end (the network lab's only where namespaces can be made)."""
    block = _blocks(API)[number]
    if "NetLab(" in block:
        from aiodq.lab.netlab import namespaces_unavailable  # noqa: PLC0415

        reason = namespaces_unavailable()
        if reason is not None:
            pytest.skip(f"network namespaces: {reason}")
    # The network lab's figures depend on the machine (its measured throughput, why it cannot run).
    marked, checks = _with_marks(block) if "NetLab(" not in block else (block, [])
    script = tmp_path / "example.py"
    script.write_text(marked, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not _check_outputs(result.stdout, checks), _check_outputs(result.stdout, checks)


@pytest.mark.parametrize("number", range(len(_blocks(ROOT / "docs" / "torch.md"))))
def test_torch_examples_run(number: int, tmp_path: Path) -> None:
    """Each example of docs/torch.md runs to the end (where torch is installed: the test extra has it)."""
    pytest.importorskip("torch", reason="docs/torch.md needs torch: pip install 'aiodq[torch]'")
    marked, checks = _with_marks(_blocks(ROOT / "docs" / "torch.md")[number])
    script = tmp_path / "example.py"
    script.write_text(marked, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not _check_outputs(result.stdout, checks), _check_outputs(result.stdout, checks)


def _options(parser: argparse.ArgumentParser, command: str = "aiodq") -> list[tuple[str, str]]:
    """Every ``--option`` of the parser and its subcommands', with the command that takes it."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _options(sub, f"{command} {name}")
        else:
            found += [(command, option) for option in action.option_strings if option.startswith("--")]
    return found


def test_usage_names_every_option_of_every_command() -> None:
    """An option that docs/usage.md never names is one a user finds only in --help (two were so)."""
    from aiodq.cli import _parser  # noqa: PLC0415

    text = (ROOT / "docs" / "usage.md").read_text(encoding="utf-8")
    options = _options(_parser())
    assert len({command for (command, _) in options}) >= 9  # run, master, worker, the benches, ...
    missing = [
        f"{command} {option}"
        for (command, option) in options
        if option not in ("--help", "--version") and not re.search(f"`{re.escape(option)}(?![\\w-])", text)
    ]
    assert not missing, missing
