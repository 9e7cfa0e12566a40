"""The objective a process trains: a built-in model by name, or yours by ``MODULE:NAME``.

``aiodq run --model mypackage.models:LeastSquares`` (and ``aiodq master`` / ``aiodq worker``
with the same ``--model``) imports ``mypackage.models`` and calls ``LeastSquares(features,
labels)`` with the process's samples: the whole dataset at the master (for the dimension, x_0
and n), each worker's share at the workers.  It must return an :class:`~aiodq.Objective`.
Only the command line's own ``--model`` is ever imported: a worker never imports a model
that the master's CONFIG names (docs/security.md).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..config import MOST_PARAMETERS
from ..errors import CheckpointError, RunError, UsageError, raised_at
from ..net import checkpoint as checkpoint_file
from ..protocol.algorithms import TrainConfig
from ..protocol.dataset import Dataset, class_count, labels_for, other_data
from ..protocol.objectives import BUILT_IN, Objective, check_objective, measures_accuracy
from ..protocol.start import check_start, starting_point
from .results import load_model

__all__ = [
    "check_test_set",
    "import_root",
    "load_factory",
    "refuse_a_run_at_import",
    "objective_for",
    "read_start",
    "start_vector",
    "test_scores",
]

_log = logging.getLogger("aiodq.models")


#: The module :func:`load_factory` imports in each thread, while it does: ``thread ident -> module``.
_IMPORTING: dict[int, str] = {}


def refuse_a_run_at_import() -> None:
    """Refuse a run started by a model's module as :func:`load_factory` imports it (in this thread).

    Every process of a run imports the model's module; one that trains when imported (no
    ``if __name__ == '__main__'``) starts a run that imports it again, from another thread,
    behind the import lock its first import holds (a newcomer trial: ``run_local`` said nothing
    until it was killed).

    Raises:
        UsageError: if this thread is importing a model's module.
    """
    module = _IMPORTING.get(threading.get_ident())
    if module is not None:
        raise UsageError(
            f"the model's module {module} starts a run when it is imported, and every process of a run "
            "imports it: put the code that trains under if __name__ == '__main__'"
        )


def load_factory(spec: str) -> Callable[[Any, Any], Objective]:
    """Import ``MODULE:NAME`` (the current folder is on the path, as for ``python -m``).

    Raises:
        UsageError: if the spec is malformed, the module cannot be imported or has no such
            callable; the text says which.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(
            f"--model {spec!r}: a built-in model ({', '.join(BUILT_IN)}) or your objective as MODULE:NAME"
        )
    if module_name == "__main__":
        # Each process's own script: the workers' is aiodq's (a trial's run_local passed this check and
        # every worker failed, told to restart them).
        script = getattr(sys.modules.get("__main__"), "__file__", None)
        named = f" (here: {Path(script).stem}:{attribute})" if script else ""
        raise UsageError(
            f"--model {spec}: worker processes import the model by its module's name, and __main__ is each "
            f"process's own program: name the module that defines it{named}"
        )
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    thread = threading.get_ident()
    outer = _IMPORTING.get(thread)
    _IMPORTING[thread] = module_name
    try:
        module = importlib.import_module(module_name)
    except UsageError:  # (refuse_a_run_at_import's, from a run its body starts: said as it is)
        raise
    except ImportError as exc:
        # (A newcomer trial: MODULE.py:NAME, and a module in another folder, said only what Python says.)
        hint = f"; name the module without .py: --model {module_name[:-3]}:{attribute}"
        if not (module_name.endswith(".py") and Path(module_name).is_file()):
            hint = f"; modules are imported from {Path.cwd()} (the current folder) and PYTHONPATH"
        if not isinstance(exc, ModuleNotFoundError) or exc.name not in (
            module_name,
            module_name.partition(".")[0],
        ):
            hint = ""  # (the module was found: something it imports is missing)
        raise UsageError(f"--model {spec}: cannot import {module_name}: {exc}{hint}") from exc
    except Exception as exc:  # the module's own code failed (a SyntaxError, an error at import)
        raise UsageError(f"--model {spec}: cannot import {module_name}: {_what_failed(exc)}") from exc
    except SystemExit as exc:  # (a review: sys.exit or argparse at import left aiodq without a word)
        raise UsageError(
            f"--model {spec}: importing {module_name} called sys.exit({exc.code!r}){raised_at(exc)}: a "
            "model's module must not exit or parse the command line when imported (put that under "
            "if __name__ == '__main__')"
        ) from None
    finally:
        if outer is None:
            del _IMPORTING[thread]
        else:
            _IMPORTING[thread] = outer
    factory: Any = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UsageError(f"--model {spec}: {module_name} has no {attribute}")
    if not callable(factory):
        raise UsageError(f"--model {spec}: {attribute} is not a class or a function")
    return factory  # type: ignore[no-any-return]


def import_root(spec: str) -> str | None:
    """The folder this process imported the model ``MODULE:NAME`` from (its top package's parent).

    Worker processes get it on their path: they start in the current folder, where a model
    that the caller's script found beside itself is not.  None for a built-in model or a
    module not imported (yet), or without a file or a folder.
    """
    top = spec.partition(":")[0].split(".")[0]
    module = sys.modules.get(top)
    if spec in BUILT_IN or module is None:
        return None
    if where := getattr(module, "__file__", None):
        place = Path(where).resolve().parent
        return str(place.parent if Path(where).name == "__init__.py" else place)
    folders = list(getattr(module, "__path__", []))  # a namespace package: no __init__.py
    return str(Path(folders[0]).resolve().parent) if folders else None


def objective_for(
    config: TrainConfig,
    dataset: Dataset,
    *,
    training_set: bool = False,
    label_values: npt.NDArray[Any] | None = None,
) -> Objective:
    """The objective of ``config.model`` on ``dataset``'s samples.

    A built-in model gets the labels mapped as it reads them (the mapping is logged); a user
    model gets the samples unchanged.  A ``training_set`` (a run's whole training data) must
    hold two classes or more for a built-in model.  ``label_values``, the training set's
    distinct labels, map a test set's labels and give its classes as training saw them.  For a
    built-in model, give the whole dataset: its workers build their own from CONFIG
    (:class:`~aiodq.protocol.session.WorkerSession`).

    Raises:
        UsageError: if the model cannot be loaded, does not fit the data, or is not an Objective.
    """
    if config.model in BUILT_IN:
        try:
            mapped, note = dataset.for_model(config.model, training_set=training_set, values=label_values)
            classes = mapped.classes
            if label_values is not None:  # the training set's classes, some perhaps absent here
                classes = class_count(labels_for(config.model, label_values)[0])
            if note:  # a mapping is news; classes without samples are probably a mistake
                level = logging.WARNING if "no samples" in note else logging.INFO  # (a hint may follow it)
                _log.log(level, "%s: %s", dataset.name or "the data", note)
            return config.built_in(mapped.features, mapped.labels, classes=classes)
        except ValueError as exc:  # DataError included
            raise UsageError(f"--model {config.model} on {dataset.name or 'the data'}: {exc}") from exc
    factory = load_factory(config.model)
    try:
        objective = factory(dataset.features, dataset.labels)
    except Exception as exc:  # the user's code: one line, with where it failed
        raise UsageError(f"--model {config.model}: {_what_failed(exc)}") from exc
    except SystemExit as exc:
        raise UsageError(
            f"--model {config.model}: it called sys.exit({exc.code!r}){raised_at(exc)}"
        ) from None
    try:
        checked = check_objective(objective)
        if checked.samples != dataset.samples:  # (a review: the master's refusals took 68 s to say so)
            raise ValueError(
                f"its samples is {checked.samples}, but it was given {dataset.samples} rows: samples is the "
                "number of rows its loss_grad sums over (rows=None)"
            )
        starting_point(config, checked)  # its name and its x_0, before anything starts
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--model {config.model}: {exc}") from exc
    except Exception as exc:  # the user's initial(): one line, with where it failed
        raise UsageError(f"--model {config.model}: {_what_failed(exc)}") from exc
    return checked


def _what_failed(exc: Exception) -> str:
    """``Type: message (at FILE:LINE)``, the line where the user's code raised it."""
    text = f"{type(exc).__name__}: {exc}"
    return text if isinstance(exc, SyntaxError) else text + raised_at(exc)  # (a SyntaxError's names its line)


def check_test_set(config: TrainConfig, training: Dataset, test: Dataset) -> None:
    """Refuse, before training, a test set that the trained model could not be scored on.

    Its samples must have the training set's features, and a built-in model's labels must map
    as the training set's do (:func:`~aiodq.protocol.dataset.labels_for`): the end of the run
    would otherwise fail to score it, or score it wrong.

    Raises:
        UsageError: naming the test set and what does not fit.
    """
    width, own = test.features.shape[1], training.features.shape[1]
    if width != own:
        raise UsageError(
            f"the test set {test.name} has {width} features per sample, the training set "
            f"{training.name} {own}"
        )
    if config.model in BUILT_IN:
        try:
            labels_for(config.model, test.labels, training.labels)
        except ValueError as exc:  # DataError
            raise UsageError(f"the test set {test.name}: {exc}") from exc


def test_scores(
    config: TrainConfig,
    test: Dataset,
    model: npt.NDArray[np.float64],
    train_labels: npt.NDArray[Any] | None = None,
) -> dict[str, Any]:
    """The trained ``model``'s loss and accuracy on the held-out ``test`` set.

    ``train_labels`` (the training set's labels, or their distinct values) map the test set's
    labels as training mapped its own: a test set of one class is then scored as that class.

    The loss is the data term's mean ``(1/n) sum f_i`` (no regulariser); the accuracy needs
    the objective's optional ``correct`` (None without it, or where ``measures_accuracy`` is
    False, as for a regression: an audit saw a test accuracy of 0.0000 beside "measures none").

    Raises:
        UsageError: if the objective on the test set has another dimension than the model.
    """
    objective = objective_for(config, test, label_values=train_labels)
    if objective.dim != model.shape[0]:
        raise UsageError(
            f"the test set {test.name} gives {objective.dim} parameters, the model has {model.shape[0]}"
        )
    loss, _ = objective.loss_grad(model)
    correct = getattr(objective, "correct", None) if measures_accuracy(objective) else None
    return {
        "test_set": test.name,
        "test_samples": test.samples,
        "test_loss": float(loss) / test.samples,
        "test_accuracy": None if correct is None else int(correct(model)) / test.samples,
    }


def read_start(
    path: str | os.PathLike[str],
    config: TrainConfig,
    dim: int | None = None,
    *,
    option: str = "--start-from",
    data: Dataset | None = None,
    fingerprint: str | None = None,
    fixed: str | None = None,
) -> npt.NDArray[np.float64]:
    """x_0 for a warm start (``--start-from``): a run's ``model.npz``, or one vector in a ``.npy`` file.

    The model of a ``model.npz`` is the one its run's last loss evaluates (the last snapshot).  A
    ``.npy`` file's header is checked (one dimension of floats or integers, ``dim`` values if
    given, else no more than a frame can carry) before its data are read.  With ``dim``, the
    vector must have that many parameters.  A model that its run trained as another ``--model``
    than ``config.model`` is taken, with a warning, as is one of a run that did not finish, and
    (given this run's ``data``) one trained on other data, where its file says what it was trained on:
    ``fingerprint`` is the data's as read, where a model's factory may have changed it since (else
    ``data.fingerprint()``); and, given this run's ``fixed`` (:func:`fixed_fingerprint`), one whose
    module differs where x does not reach.  ``option`` names the setting in messages.

    Raises:
        UsageError: if the file cannot be read or holds no such vector (the text says why).
    """
    path = Path(path)
    where = f"{option} {path}"
    try:  # (a regular file: a FIFO held the start for ever, a durability audit)
        with checkpoint_file.open_regular(path) as file:  # by content: a .npy file, or an .npz's zip
            magic = file.read(6)
    except OSError as exc:
        if path.is_dir():
            inside = " (a run's model is FOLDER/model.npz)" if (path / "model.npz").is_file() else ""
            raise UsageError(f"{where}: a folder{inside}") from None
        raise UsageError(f"{where}: {exc.strerror or exc}") from None
    trained, shape = None, ""
    if magic == b"\x93NUMPY":
        values: Any = _npy_vector(path, where, dim)
    elif magic.startswith(b"PK"):
        try:
            values, meta = load_model(path)
        except RunError as exc:
            hint = _not_a_model(path)  # (the command line's own words for the two kinds load_model names)
            raise UsageError(
                f"{option}: {f'{path}: not an aiodq model file' if hint else exc}{hint}"
            ) from None
        trained = (meta.get("config") or {}).get("model")
        _trained_on(meta, where, data, fingerprint)
        if isinstance(was := meta.get("fixed"), str) and fixed is not None and was != fixed:
            _log.warning(  # (a torch audit: a warm start with another frozen layer began untrained, unsaid)
                "%s was trained with another module than this run's (its layers, loss, frozen parameters or "
                "buffers: fingerprint %s, this run's %s): x means something else there",
                where,
                was,
                fixed,
            )
        shape = _shape_options(meta.get("config") or {}, config)
    else:
        beside = " (its model.npz is beside it)" if (path.parent / "model.npz").is_file() else ""
        raise UsageError(f"{where}: neither a run's model.npz nor a .npy file{beside}")
    if dim is not None and np.ndim(values) == 1 and len(values) != dim:
        model = f" (trained as --model {trained})" if trained else ""
        raise UsageError(
            f"{where} holds {len(values):,} parameters{model}; "
            f"--model {config.model} on this data has {dim:,}{shape}"
        )
    try:
        x0 = check_start(values, "its model" if trained is not None else "its array")
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}: {exc}") from None
    if trained is not None and trained != config.model:
        _log.warning("%s was trained as --model %s; this run trains %s", where, trained, config.model)
    return x0


def start_vector(
    start_from: str | os.PathLike[str] | npt.ArrayLike | None, config: TrainConfig, *, resume: bool
) -> npt.ArrayLike | None:
    """A launcher's ``start_from``: a file read here (:func:`read_start`), or the vector as it is.

    Raises:
        UsageError: with ``resume``, or for a file that holds no starting point.
    """
    if start_from is not None and resume:
        raise UsageError("start_from starts a new run; resume continues the checkpoint's")
    if isinstance(start_from, str | os.PathLike):
        return read_start(start_from, config, option="start_from")
    return start_from


def _npy_vector(path: str | Path, where: str, dim: int | None) -> npt.NDArray[Any]:
    """The vector in a ``.npy`` file, its header checked before its data are read (mapped, then copied)."""
    try:
        mapped: npt.NDArray[Any] = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # a file's header is parsed here: any failure is one line
        text = " ".join(str(exc).split())
        if "Python objects" in text:
            text = "its array holds Python objects, not numbers"
        elif "mmap length is greater than file size" in text:
            text = "shorter than its header says: cut off?"
        raise UsageError(f"{where}: not a readable .npy file ({text[:200]})") from None
    if mapped.dtype.kind not in "fiu" or mapped.ndim != 1:
        kind = f"{mapped.dtype} values" if mapped.dtype.kind not in "fiu" else f"shape {mapped.shape}"
        raise UsageError(f"{where}: its array must be one vector of numbers (floats or integers), not {kind}")
    if mapped.shape[0] > MOST_PARAMETERS:
        raise UsageError(
            f"{where}: {mapped.shape[0]:,} values, more than a model can have ({MOST_PARAMETERS:,})"
        )
    if dim is not None and mapped.shape[0] != dim:
        return mapped  # (read_start says so, from its shape: nothing is read)
    try:
        return np.array(mapped)
    except OSError as exc:  # (an I/O error reading the data)
        raise UsageError(f"{where}: {exc.strerror or exc}") from None


def _shape_options(trained: dict[str, Any], config: TrainConfig) -> str:
    """The options that set a model's size where the start model's run had others: a hint, or ""."""
    if trained.get("model") != config.model:
        return ""
    others = []
    if isinstance(bias := trained.get("bias"), bool) and bias != config.bias:
        others.append("with --bias" if bias else "without --bias")
    if config.model == "mlp" and isinstance(hidden := trained.get("hidden"), int) and hidden != config.hidden:
        others.append(f"with --hidden {hidden}")
    return f" (its run trained it {' and '.join(others)})" if others else ""


def _trained_on(meta: dict[str, Any], where: str, data: Dataset | None, read_as: str | None) -> None:
    """Warn of a model file whose run did not finish, or that was trained on other data than ``data``."""
    if isinstance(failure := meta.get("failure"), str):
        _log.warning("%s is the model of a run that did not finish (%s)", where, failure)
    fingerprint = meta.get("data")
    if (
        data is not None
        and isinstance(fingerprint, str)
        and other_data(fingerprint, read_as or data.fingerprint())
    ):
        was = f" ({meta['dataset']})" if isinstance(meta.get("dataset"), str) else ""
        _log.warning("%s was trained on other data%s than this run's %s", where, was, data.name or "data")


def _not_a_model(path: str | Path) -> str:
    """A hint for an aiodq file that is not a model file: a checkpoint, or a records file."""
    try:
        kind = checkpoint_file.kind_of(checkpoint_file.load(path, arrays=False).meta)
    except CheckpointError:
        return ""
    return {
        "checkpoint": " (a checkpoint is continued with --checkpoint FILE --resume)",
        "records": " (a records file: save one of its models, np.load(FILE)['models'][i], as a .npy file)",
    }.get(kind or "", "")
