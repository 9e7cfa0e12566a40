"""What a run leaves behind: ``result.json``, the loss-against-bits plot, model records, the summary table."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import CheckpointError, RunError
from ..net import checkpoint as checkpoint_file
from ..protocol.accounting import ModelRecord, records_as_arrays, records_from_arrays
from ..protocol.recovery import Checkpoint
from ..protocol.result import RunResult

__all__ = [
    "EARLIER",
    "MODEL_FILE",
    "RESULT_FILES",
    "check_out",
    "free_suffix",
    "load_model",
    "load_records",
    "move_aside",
    "provenance_of",
    "records_saved",
    "same_run",
    "save_records",
    "summary_rows",
    "write_results",
]


_log = logging.getLogger("aiodq.launch")


def check_out(out: Path) -> Path:
    """Create the output folder ``out`` if needed and check that files can be written in it.

    Called before a run starts, so that a run's results are not lost at its end.

    Raises:
        RunError: if the folder cannot be created or written.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except (FileExistsError, NotADirectoryError):  # (mkdir's words for a file in the way)
        raise RunError(f"cannot write to the output folder {out}: a file is where a folder must be") from None
    except OSError as exc:
        raise RunError(f"cannot write to the output folder {out}: {exc.strerror or exc}") from None
    return out


def _json_ready(value: Any) -> Any:
    """``value`` with non-finite floats as strings ("inf", "nan"): result.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    return value


def write_results(result: RunResult, out: str | Path, *, rescue: bool = True) -> list[Path]:
    """Write ``result.json``, ``model.npz`` and ``loss_vs_bits.png`` into ``out``; return their paths.

    ``model.npz`` holds ``model`` (the trained model: the last snapshot, the point the trace's
    last loss evaluates) and ``iterate`` (the master's x when training stopped), with the
    dimension and the configuration in its metadata; read it with :func:`load_model` or
    ``np.load(path)["model"]``.

    Raises:
        RunError: if they cannot be written.  With ``rescue``, the model and result.json that
            cannot be are written to a new folder ``aiodq-rescued-*`` of the temporary directory
            instead, which the message names.
    """
    out = Path(out)
    summary = result.to_json()
    summary_file, model_file, plot_file = RESULT_FILES
    paths = [out / summary_file, out / model_file]
    model = _model_file(result, summary)
    try:
        check_out(out)
    except RunError as exc:  # (a folder removed or made read-only during a long run: the model is rescued)
        raise RunError(f"{exc}{_rescue(model, summary, paths) if rescue else ''}") from None
    # The model first, and each file whatever became of the other: a result.json that cannot be
    # written (a full disk at the end of a long run) does not cost the trained model.
    written: list[Path] = []
    errors: list[str] = []
    try:
        checkpoint_file.save(paths[1], model, what="model file", private=False)
        written.append(paths[1])
    except CheckpointError as exc:
        errors.append(str(exc))
    try:
        _write_json(paths[0], summary)
        written.insert(0, paths[0])
    except OSError as exc:
        errors.append(f"cannot write {paths[0]}: {exc.strerror or exc}")
    if errors:
        wrote = f" (wrote {', '.join(map(str, written))})" if written else ""
        moved = _unmix(out, written, summary.get("provenance")) if written else ""
        if paths[0] in written:  # (its plot, drawn from this result.json, not an earlier run's: a review)
            _plot(summary, out / plot_file)
        rescued = _rescue(model, summary, [path for path in paths if path not in written]) if rescue else ""
        raise RunError("; ".join(errors) + wrote + moved + rescued)
    plot = _plot(summary, out / plot_file)
    return paths if plot is None else [*paths, plot]


def _model_file(result: RunResult, summary: dict[str, Any]) -> Checkpoint:
    """What ``model.npz`` holds: the model, the iterate, and what they are in its metadata."""
    meta = {
        "kind": checkpoint_file.MODEL_KIND,
        "dim": result.dim,
        "config": result.config.to_params(),
        "failure": result.failure,
    }
    # What it was trained on, where known (aiodq run and aiodq master add the data's fingerprint), and
    # with (the module's, "fixed": a torch model's layers, loss, frozen parameters and buffers): a warm
    # start from it on other data, or with another module, is then said so (read_start).
    meta |= {key: summary[key] for key in ("dataset", "data", "fixed") if isinstance(summary.get(key), str)}
    meta |= {"provenance": summary["provenance"]} if "provenance" in summary else {}  # (which run: _unmix)
    return Checkpoint({"model": result.model, "iterate": result.iterate}, meta)


def _write_json(path: Path, summary: dict[str, Any]) -> None:
    """Write ``summary`` to ``path`` through a temporary file and a rename, synced.

    As the model's: a file written again (aiodq run writes its results as training ends, then once
    more complete) is never seen half written.

    Raises:
        OSError: if it cannot be written (no temporary file is left).
    """
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as stream:
            stream.write(json.dumps(_json_ready(summary), indent=2, allow_nan=False) + "\n")
            stream.flush()
            os.fsync(stream.fileno())  # (on disk before the rename, as the model is: an audit)
        os.replace(temporary, path)
        checkpoint_file.sync_folder(path.parent)  # (the rename too, as the model's)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise


def _rescue(model: Checkpoint, summary: dict[str, Any], unwritten: Sequence[Path]) -> str:
    """Write the result files that could not be written to a new folder of the temporary directory.

    Nothing is lost where the output folder alone fails at the end of a run (removed, made
    read-only, its disk full while the temporary directory's is not).  Returns what the error
    message adds: where they are, or that this failed too.
    """
    names = [name for name in (RESULT_FILES[1], RESULT_FILES[0]) if name in {path.name for path in unwritten}]
    if not names:
        return ""
    try:
        folder = Path(tempfile.mkdtemp(prefix="aiodq-rescued-"))
    except OSError as exc:
        return f"; not rescued either: no folder in {tempfile.gettempdir()} ({exc.strerror or exc})"
    rescued: list[str] = []
    for name in names:
        try:
            if name == RESULT_FILES[1]:
                checkpoint_file.save(folder / name, model, what="model file", private=False)
            else:
                _write_json(folder / name, summary)
            rescued.append(name)
        except (OSError, CheckpointError) as exc:
            _log.error("cannot rescue %s in %s: %s", name, folder, exc)
    if not rescued:
        with contextlib.suppress(OSError):
            folder.rmdir()
        return f"; not rescued either in {tempfile.gettempdir()}"
    return f"; rescued {' and '.join(rescued)} in {folder}"


#: What :func:`_unmix` appends to the name of an earlier run's file it moves aside.
EARLIER = ".earlier"


def _unmix(out: Path, written: list[Path], provenance: object) -> str:
    """Move another run's files aside (NAME.earlier) where this run could not replace them.

    An operator trial: a new run's model.npz beside an earlier run's result.json and plot, in a
    folder taken for one finished run's results.  They are moved, not removed: where this run's
    model could not be written, the earlier one may be the only trained model left (a review).
    Files of this run (written as training ended: the same provenance) stay.  Returns what the
    error message adds.
    """
    moved, suffix = move_aside(out, provenance, written)
    if not moved:
        return ""
    return f"; moved an earlier run's {', '.join(moved)} aside ({suffix}), not to be taken for this run's"


def move_aside(
    out: str | Path,
    provenance: object,
    written: Sequence[Path] = (),
    *,
    strict: bool = False,
    also: Sequence[str] = (),
) -> tuple[list[str], str]:
    """Rename the result files in ``out`` that another run wrote; return their names and the suffix.

    Another run's: result.json or model.npz naming another ``provenance`` (those of this run,
    written as training ended, stay), and the plot where result.json is another run's or missing;
    none of ``written``.  They become NAME.earlier, or NAME.earlier.N with the first N free for
    every one of them (and of ``also``, names the caller moves with them): no earlier such file is
    replaced (a review: a third run's lost the first's).

    Raises:
        RunError: with ``strict``, if one cannot be moved (it would be written over).
    """
    out = Path(out)
    summary_file, model_file, plot_file = RESULT_FILES
    stale = [
        out / name
        for name in (summary_file, model_file)
        if out / name not in written
        and (out / name).is_file()
        and not same_run(provenance_of(out / name), provenance)
    ]
    if (out / plot_file).is_file() and (out / summary_file in stale or not (out / summary_file).exists()):
        stale.append(out / plot_file)  # (drawn from the result.json that is not this run's)
    suffix = free_suffix(out, [path.name for path in stale] + list(also))
    moved: list[str] = []
    try:
        for path in stale:
            try:
                path.replace(path.with_name(path.name + suffix))
                moved.append(path.name)
            except OSError as exc:
                if not strict:
                    continue
                for name in moved:  # (put back: the folder as it was, none of it written over)
                    with contextlib.suppress(OSError):
                        (out / (name + suffix)).replace(out / name)
                why = exc.strerror or exc
                raise RunError(
                    f"cannot move an earlier run's {path} aside ({why}): it is not overwritten"
                ) from exc
    finally:
        checkpoint_file.sync_folder(out)
    return moved, suffix


def free_suffix(out: Path, names: Sequence[str]) -> str:
    """:data:`EARLIER`, or ``.earlier.N`` with the first N from 2 that no file ``out/NAME + suffix`` takes."""
    suffix, n = EARLIER, 1
    while any(os.path.lexists(out / (name + suffix)) for name in names):
        n += 1
        suffix = f"{EARLIER}.{n}"
    return suffix


def same_run(one: object, other: object) -> bool:
    """Whether two provenances are of one run: the same ``id`` (a run resumed keeps its own), else equal."""
    if isinstance(one, dict) and isinstance(other, dict) and "id" in one and "id" in other:
        return bool(one["id"] == other["id"])
    return one == other


def provenance_of(path: Path) -> object:
    """The provenance a result.json or model.npz names (None where it names none or cannot be read)."""
    try:
        if path.suffix == ".json":
            return json.loads(checkpoint_file.read_text(path)).get("provenance")
        return checkpoint_file.load(path, arrays=False, what="model file").meta.get("provenance")
    except (OSError, ValueError, AttributeError, RecursionError, CheckpointError):
        # (RecursionError: a result.json nested 100,000 deep cost a finished run its model: a review)
        return None


#: The trained model's file name next to result.json.
MODEL_FILE = "model.npz"
#: What :func:`write_results` writes into its folder: the summary, the model, the plot.
RESULT_FILES = ("result.json", MODEL_FILE, "loss_vs_bits.png")


def load_model(path: str | Path) -> tuple[npt.NDArray[np.float64], dict[str, Any]]:
    """The trained model of a ``model.npz`` and its metadata (dimension, configuration, failure).

    Raises:
        RunError: if the file is missing or not an aiodq model file.
    """
    if Path(path).is_dir():  # (a newcomer trial: the --out folder, read as 'Is a directory')
        raise RunError(f"{path} is a folder: a run's model is {Path(path) / MODEL_FILE}")
    try:
        stored = checkpoint_file.load(path, what="model file")
    except CheckpointError as exc:
        unzipped = isinstance(exc.__cause__, (zipfile.BadZipFile, EOFError))  # (no archive: say what it is)
        raise RunError(f"{exc}{_what_else(Path(path)) if unzipped else ''}") from None
    model = stored.arrays.get("model")
    if (kind := checkpoint_file.kind_of(stored.meta)) != "model" or model is None:
        what = {
            "checkpoint": ": a run's checkpoint (--resume continues it)",
            "records": ": a records file (load_records)",
        }
        raise RunError(f"{path}: not an aiodq model file{what.get(kind or '', '')}")
    if model.ndim != 1 or not model.size or model.dtype.kind not in "fiu":
        raise RunError(f"{path}: its model is not a vector of numbers (shape {model.shape}, {model.dtype})")
    vector = np.asarray(model, dtype=np.float64)
    # (A review: all-NaN models and models of another size than their metadata's were returned.)
    if isinstance(dim := stored.meta.get("dim"), int) and dim != vector.shape[0]:
        raise RunError(f"{path}: its model has {vector.shape[0]} parameters, its metadata {dim}: damaged")
    if not np.isfinite(vector).all():
        raise RunError(f"{path}: its model holds NaN or infinite values")
    return vector, stored.meta


def _what_else(path: Path) -> str:
    """What a file that is no .npz archive is, where its first bytes say; "" if they do not.

    A newcomer trial: load_model said only "File is not a zip file" of a result.json and of a .npy vector.
    """
    try:
        with path.open("rb") as stream:
            start = stream.read(6)
    except OSError:
        return ""
    beside = f"; the model is {path.parent / MODEL_FILE}" if (path.parent / MODEL_FILE).is_file() else ""
    if start == b"\x93NUMPY":
        return " (a .npy array, not a model file: read it with numpy.load)"
    if start.lstrip()[:1] in (b"{", b"["):
        return f" (a JSON file, such as a run's {RESULT_FILES[0]}, not a model file{beside})"
    if start.startswith(b"PK"):
        return " (an .npz archive cut short or damaged)"
    return ""


#: Whether this process said already that matplotlib is missing.
_NO_PLOT: list[bool] = []


def _plot(summary: dict[str, Any], plot: Path) -> Path | None:
    """The loss against bits, if matplotlib is installed."""
    try:
        import matplotlib  # noqa: PLC0415 - the plot is optional; keep import cost off the hot path

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        # Said once a process (a docs review: README promises the plot, and nothing said why there was none).
        if not _NO_PLOT:
            _NO_PLOT.append(True)
            _log.warning(
                "no %s: matplotlib is not installed (pip install 'aiodq[cli]'); result.json holds its trace",
                plot.name,
            )
        return None
    trace = summary["trace"]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([max(r["bits"], 1) for r in trace], [r["loss"] for r in trace], marker="o")
    axis.set_xscale("log")
    axis.set_xlabel("bits transmitted (both directions)")
    axis.set_ylabel("training loss F(x_snap)")
    axis.set_title(f"{summary['config']['algorithm']} on {summary.get('dataset', '?')}")
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    # Through a temporary file and a rename, as the others: never a half-written plot, and an earlier
    # one stays whole if this one cannot be written.  The plot is drawn from result.json's trace, so
    # its failure (a full disk) is a warning, not the run's.
    temporary = plot.with_name(f".{plot.name}.tmp")
    try:
        figure.savefig(temporary, dpi=120, format="png")
        os.replace(temporary, plot)
    except OSError as exc:
        _log.warning("cannot write %s: %s (result.json holds its trace)", plot, exc.strerror or exc)
        return None
    finally:
        plt.close(figure)
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)  # (gone already once renamed)
    return plot


def save_records(records: list[ModelRecord], path: Path) -> None:
    """Write the master's model records to one ``.npz`` file, atomically (``aiodq.net.checkpoint.save``)."""
    arrays, kinds = records_as_arrays(records)
    stored = Checkpoint(arrays, {"content": checkpoint_file.RECORDS_CONTENT, "wire_kinds": kinds})
    checkpoint_file.save(path, stored, what="records file", private=False)


def records_saved(records: list[ModelRecord], path: Path) -> dict[str, str]:
    """:func:`save_records`; ``{"records_error": why}`` where they could not be written, else ``{}``.

    For a master's run: its results are still written, and the error reported after them.
    """
    try:
        save_records(records, path)
    except CheckpointError as exc:  # (an audit: caught as OSError, it never was, and ended the command)
        return {"records_error": str(exc)}
    return {}


def load_records(path: Path) -> list[ModelRecord]:
    """Read records written by :func:`save_records`.

    Raises:
        RunError: if the file is missing or not a records file.
    """
    try:
        saved = checkpoint_file.load(path, what="records file")
    except CheckpointError as exc:
        if isinstance(exc.__cause__, OSError):  # missing or unreadable: not a question of what it holds
            raise RunError(str(exc)) from exc
        raise RunError(f"{path}: not a model records file ({exc})") from exc
    if saved.meta.get("content") != checkpoint_file.RECORDS_CONTENT:
        raise RunError(f"{path}: not a model records file")
    try:
        return records_from_arrays(saved.arrays, saved.meta.get("wire_kinds", []))
    except ValueError as exc:
        raise RunError(f"{path}: not a model records file ({exc})") from None


def _float32_equivalent_bits(summary: dict[str, Any]) -> int:
    """Payload bits the same vector messages would take in float32."""
    dim = summary["dim"]
    messages = summary["traffic"]["messages"]
    vector_kinds = ("SNAPSHOT", "SNAPSHOT_GRADIENT", "FULL_GRADIENT", "MODEL", "GRADIENT")
    count = sum(messages.get(d, {}).get(kind, 0) for d in ("down", "up") for kind in vector_kinds)
    return int(32 * dim * count)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary table: (label, value) rows (a run that never trained: what there is)."""
    if not summary["trace"]:
        return [
            ("algorithm", summary["config"]["algorithm"]),
            ("dataset", str(summary.get("dataset", ""))),
            ("workers", str(summary["workers"])),
            *([("failure", str(summary["failure"]))] if summary.get("failure") else []),
            ("epochs", "0 (no snapshot phase finished)"),
            ("wall time", f"{summary['wall_time']:.2f} s"),
        ]
    final = summary["trace"][-1]
    totals = summary["traffic"]["total_bytes"]
    payload = summary["traffic"]["payload_bits"]
    payload_bits = sum(v for table in payload.values() for v in table.values())
    float32_bits = _float32_equivalent_bits(summary)
    staleness = summary["staleness"]
    test = summary.get("test") or {}
    tested = []
    if test.get("test_accuracy") is not None:
        tested = [
            (f"test accuracy ({test['test_set']}, {test['test_samples']:,})", f"{test['test_accuracy']:.4f}")
        ]
    elif test.get("error"):
        tested = [(f"test set {test['test_set']}", test["error"])]
    # A shard missing from the last snapshot phase (security.md): the loss is over the others' samples.
    most = max(record["samples"] for record in summary["trace"])
    over = f" (over {final['samples']:,} of {most:,} samples)" if final["samples"] < most else ""
    failure = summary.get("failure")
    return [
        ("algorithm", summary["config"]["algorithm"]),
        ("dataset", str(summary.get("dataset", ""))),
        ("workers", str(summary["workers"])),
        *([("failure", str(failure))] if failure else []),
        ("epochs", f"{final['epoch']} of {summary['config']['epochs']}" if failure else str(final["epoch"])),
        ("final training loss", f"{final['loss']:.6f}{over}"),
        (
            "final training accuracy",
            f"{final['accuracy']:.4f}"
            if summary.get("measures_accuracy", True)
            else "- (the model measures none)",
        ),
        *tested,
        ("bits master -> workers", f"{8 * totals['down']:,}"),
        ("bits workers -> master", f"{8 * totals['up']:,}"),
        ("bits total", f"{8 * totals['both']:,}"),
        # (Not the saving on the wire, which the bits rows give: a newcomer read this row as that.)
        ("fixed-width codes vs float32", f"{payload_bits / float32_bits:.4f}" if float32_bits else "-"),
        ("applied updates", f"{summary['version']:,}"),
        ("staleness mean / max (tau)", f"{staleness['mean']:.2f} / {staleness['max']} ({staleness['tau']})"),
        ("dropped gradients", json.dumps(staleness["dropped"])),
        ("wall time", f"{summary['wall_time']:.2f} s"),
    ]
