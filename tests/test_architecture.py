"""The package's shape (docs/architecture.md): rings, import direction, module sizes, a light import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "aiodq"

#: The rings, innermost first.  A module may import its own ring and the rings inside it only.
RINGS: dict[str, int] = {
    "aiodq.errors": 0,
    "aiodq.version": 0,
    "aiodq.config": 0,
    "aiodq.codec": 1,
    "aiodq.protocol": 2,
    "aiodq.net": 3,
    "aiodq.data": 3,
    "aiodq.torch": 3,
    "aiodq.launch": 4,
    "aiodq.lab": 5,
    "aiodq.cli": 6,
}
#: The facades: ``aiodq`` (the public API) reaches the launchers; ``python -m aiodq`` is the CLI.
FACADES = {"aiodq": 4, "aiodq.__main__": 6}
MAX_MODULE_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _ring(module: str) -> int:
    if module in FACADES:
        return FACADES[module]
    for prefix, ring in RINGS.items():
        if module == prefix or module.startswith(prefix + "."):
            return ring
    raise AssertionError(f"{module} belongs to no ring: add it to RINGS in tests/test_architecture.py")


def _imports(module: str, path: Path, *, top_level_only: bool) -> set[str]:
    """The aiodq modules that ``module`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "aiodq")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "aiodq":
                continue
            # ``from .x import y`` may name a submodule y: count it as an import of x.y where x.y exists.
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(
                    candidate
                    if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists()
                    or (PACKAGE.parent / candidate.replace(".", "/") / "__init__.py").exists()
                    else target
                )
    return found - {module}


def test_every_import_points_inward() -> None:
    """No module imports a ring outside its own (lazy imports inside functions included)."""
    upward = []
    for module, path in _modules().items():
        for target in _imports(module, path, top_level_only=False):
            if _ring(target) > _ring(module):
                upward.append(f"{module} (ring {_ring(module)}) imports {target} (ring {_ring(target)})")
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    """The module-level import graph has no cycle."""
    modules = _modules()
    graph = {m: {t for t in _imports(m, p, top_level_only=True) if t in modules} for m, p in modules.items()}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The import scan resolves relative imports: a codec module importing the protocol is found."""
    path = tmp_path / "payload.py"
    path.write_text("from ..protocol.coordinator import Coordinator\nfrom . import registry\n")
    assert _imports("aiodq.codec.payload", path, top_level_only=True) == {
        "aiodq.protocol.coordinator",
        "aiodq.codec.registry",
    }


def test_modules_are_small() -> None:
    """No module is over 600 lines or over 10 % of the package (docs/architecture.md)."""
    sizes = {
        module: len(path.read_text(encoding="utf-8").splitlines()) for module, path in _modules().items()
    }
    total = sum(sizes.values())
    big = {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES or n > total / 10}
    assert not big, f"{big} (package: {total} lines)"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in a fresh interpreter, from the repository root."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)


def test_import_aiodq_is_light() -> None:
    """``import aiodq`` loads none of numpy, msgpack and bitarray (so that the command takes Ctrl-C before
    them); its first name loads those three, and none of scipy, matplotlib, rich, torch, ray."""
    code = (
        "import sys, aiodq\n"
        "heavy = ('scipy', 'matplotlib', 'rich', 'torch', 'ray')\n"
        "light = ('numpy', 'msgpack', 'bitarray')\n"
        "print(','.join(m for m in light if m in sys.modules))\n"
        "from aiodq import Master, TrainConfig, quantize_model\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
        "print(','.join(m for m in light if m in sys.modules))\n"
        "print(aiodq.codec.__name__, aiodq.Master is Master, set(aiodq.__all__) <= set(dir(aiodq)))"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    before, heavy, light, names = result.stdout.splitlines()
    assert before == ""
    assert heavy == ""
    assert light == "numpy,msgpack,bitarray"
    assert names == "aiodq.codec True True"


@pytest.mark.parametrize(
    ("stop", "parent", "status", "said"),
    [
        ("SIGINT", "", "130", "aiodq: interrupted\n"),
        ("SIGTERM", "", "143", "aiodq: stopped by SIGTERM\n"),
        ("SIGHUP", "", "129", "aiodq: stopped by SIGHUP\n"),
        ("SIGHUP", "1:nohup", "0", ""),  # a worker of a launcher that ignores SIGHUP ignores it too
    ],
)
def test_a_stop_during_the_commands_imports_ends_it_saying_so(
    stop: str, parent: str, status: str, said: str
) -> None:
    """A newcomer trial: Ctrl-C in a command's first few tenths of a second printed a traceback, or, sent to
    one started with SIGINT ignored (a background job of a shell without job control), was lost: the run
    went on and exited 0; a review: SIGTERM and SIGHUP then ended it with no word.  The entry point takes
    them before the command line's imports; here one arrives as ``aiodq.cli`` is imported, in a process
    started with SIGINT ignored."""
    from importlib.metadata import entry_points  # noqa: PLC0415

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "aiodq"]
    assert script.value == "aiodq.__main__:main"
    code = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        f"os.environ['AIODQ_PARENT'] = {parent!r}\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'aiodq.cli':\n"
        f"            os.kill(os.getpid(), signal.{stop})\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from aiodq.__main__ import main\n"
        "sys.argv = ['aiodq', 'demo', '--dim', '10']\n"
        "status = main()\n"
        "sys.stdout = sys.__stdout__\n"
        "print('STATUS', status, signal.getsignal(signal.SIGINT) is signal.SIG_IGN)\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-3:] == ["STATUS", status, "True"]  # and SIGINT ignored again, as it was
    assert result.stderr == said


def test_lazy_names_resolve() -> None:
    """The names ``aiodq`` loads on first use exist and are the ones their modules define."""
    import aiodq  # noqa: PLC0415
    from aiodq.data import load_dataset  # noqa: PLC0415
    from aiodq.launch.local import run_local  # noqa: PLC0415

    assert aiodq.load_dataset is load_dataset
    assert aiodq.run_local is run_local
    assert set(aiodq.__all__) >= {
        "Master",
        "run_worker",
        "TrainConfig",
        "load_bundled_a9a",
        "shard",
        "run_local",
    }


def test_without_the_cli_extra_the_demo_still_runs_and_stops_cleanly() -> None:
    """scipy missing (no cli extra): the other commands say what to install, and ``aiodq demo``, which
    needs none of it, still ends a Ctrl-C with "interrupted" and 130 (a review: a NameError)."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'scipy' or name.startswith('scipy.'):\n"
        "            raise ImportError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import aiodq.cli as cli\n"
        "print(cli.main(['run']))\n"
        "def interrupted(*args, **kwargs):\n"
        "    raise KeyboardInterrupt\n"
        "cli.demo = interrupted\n"
        "print(cli.main(['demo']))\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "130"]
    said = result.stderr.strip().splitlines()
    # Said once, whole (a docs review read "(aiodq.data reads ... 'aiodq[data]' is not installed)").
    assert said[0] == (
        "aiodq run: needs the command line's extra (aiodq.data reads sparse files with scipy: "
        "pip install 'aiodq[data]'): pip install 'aiodq[cli]'"
    ), said[0]
    assert said[-1] == "aiodq demo: interrupted"
