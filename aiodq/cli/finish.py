"""How ``aiodq run`` and ``aiodq master`` write a run's results and say where they are.

As training ends (:class:`EarlyResults`, the launchers' ``finished`` hook), again complete when the
run returns (:func:`finish`), and as it stood when it was stopped (:meth:`EarlyResults.keep`);
another run's results in ``--out`` are moved aside (:func:`write_results_line`), a finished run's are
never replaced by a run that stopped or failed (:func:`kept_instead`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import RunError, UsageError
from ..launch.common import as_it_stood, checkpoint_note, print_out, stdout_gone
from ..launch.models import test_scores
from ..launch.results import move_aside, summary_rows, write_results
from ..net.checkpoint import finished_run, resumable
from ..protocol.dataset import Dataset
from ..protocol.guard import OUT_OF_LINE
from ..protocol.result import RunResult
from .logs import SAID, say
from .outfolder import LOG, NEW_LOG, holds_finished_run, replaces_log, results_written, signals_deferred

__all__ = [
    "DIVERGED",
    "EXIT_FAILED",
    "EarlyResults",
    "finish",
    "kept_instead",
    "print_summary",
    "stopped_finishing",
    "write_results_line",
]

#: What every failure of a run that diverged says (protocol/guard.py).
DIVERGED = "the run diverged"
EXIT_FAILED = 1


def print_summary(summary: dict[str, object], command: str) -> None:
    """The summary table of a run's ``summary`` (result.json's keys), on stdout."""
    # rich only here, where the summary is printed, so that a worker process does not import it
    # (aiodq.cli.commands imported in 0.70 instead of 0.72 s of CPU, medians, on the project's VM).
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    class GoOnWithout(Console):  # (rich's own ends the process: an operator's audit lost the last words)
        def on_broken_pipe(self) -> None:
            self.quiet = True
            stdout_gone(BrokenPipeError(), command)

    table = Table(title=f"aiodq {command}: summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for label, value in summary_rows(summary):
        table.add_row(label, value)
    try:  # (markup off: a worker's CLOSE reason in the failure row, '[/]', ended aiodq master in a traceback)
        GoOnWithout(markup=False, emoji=False, highlight=False).print(table)
    except OSError as exc:  # (other than a reader gone: a full disk)
        stdout_gone(exc, command)


class _Memo:
    """What :func:`write_results_line` keeps between passes: what it moved aside, the test scores."""

    aside: ClassVar[dict[str, str]] = {}
    scores: ClassVar[dict[str, dict[str, object]]] = {}


def write_results_line(
    result: RunResult,
    out: Path,
    test: Dataset | None = None,
    train: Dataset | None = None,
    *,
    rescue: bool = True,
) -> str:
    """Score the model on ``test`` and write the results into ``out``; the line that says where.

    ``rescue``: as :func:`~aiodq.launch.results.write_results`'s (off for the pass as training
    ends, which the last pass follows).

    Raises:
        RunError: if they cannot be written.
    """
    if test is not None and result.trace:
        # Once per model: the last pass writes the model the first wrote as training ended (a review: a
        # test set scored twice, the first time with stops deferred).
        digest = hashlib.blake2b(np.ascontiguousarray(result.model).tobytes()).hexdigest()
        key = f"{id(test)}:{test.name}:{digest}"
        if key not in _Memo.scores:
            try:
                labels = None if train is None else train.labels
                _Memo.scores[key] = test_scores(result.config, test, result.model, labels)
            except (UsageError, ValueError) as exc:
                _Memo.scores[key] = {"test_set": test.name, "error": str(exc)}
        result.summary["test"] = _Memo.scores[key]
    with signals_deferred():
        # Another run's results there are kept, not replaced (a newcomer trial: a run stopped at epoch 2
        # replaced the model of one stopped at epoch 8; nothing said so), with their log where it goes too.
        provenance, log_too = result.summary.get("provenance"), [LOG] if replaces_log(out) else []
        moved, suffix = move_aside(out, provenance, strict=True, also=log_too)  # (one it cannot move: kept)
        # (Those the results written as training ended moved: said again, for the same folder and run.)
        key = f"{out.resolve()}\0{json.dumps(provenance, default=str)}"
        if moved:
            _Memo.aside[key] = f"moved the earlier run's {', '.join(moved + log_too)} aside ({suffix})"
        aside = _Memo.aside.get(key, "")
        try:
            paths = write_results(result, out, rescue=rescue)
        except RunError as exc:
            # (The log moves only with results written: a review read it named as moved on a full disk.)
            said = f"moved the earlier run's {', '.join(moved)} aside ({suffix})" if moved else aside
            raise RunError(f"{exc}; {said}" if said else str(exc), result=exc.result) from exc
        # (Inside: a stop noted in the write comes after the log's rename.  A folder removed during the run
        # takes its log with it: an operator trial.)
        log = results_written(out, suffix)
    where = f"log in {log}" if log.exists() else f"the log {log} was removed during the run"
    return f"wrote {', '.join(str(p) for p in paths)}{'; ' + aside if aside else ''}; {where}"


def finish(
    command: str,
    result: RunResult,
    out: Path | None,
    test: Dataset | None = None,
    train: Dataset | None = None,
    *,
    early: str | RunError | None = None,
    checkpoint: str | None = None,
) -> int:
    """Score the model on ``test``, write the results, print the summary.

    ``early``: what writing them as training ended gave (:class:`EarlyResults`).  If they cannot be
    written now but were then, those are kept (each file is replaced whole or not at all): a warning.
    ``checkpoint``: the run's; a failed run that it can continue (the workers left and did not
    come back, say) is said to be resumable from it, as a stopped one is.
    A run that ended without finishing fails (status 1), as does one whose results are not written, or
    one where a shard was missing from every snapshot phase (a newcomer's audit: aiodq master trained
    without a worker that refused the run, and exited 0, which a cluster engine reads as success).
    """
    written, unwritten = "", False  # (the summary is printed either way: an operator trial saw none)
    kept = kept_instead(result, out) if out is not None and result.failure else None
    if kept is not None:
        say(command, f"the results were not written: {kept}")
    elif out is not None:
        try:
            # (Rescued elsewhere if not written, unless written as training ended: kept then.)
            written = write_results_line(result, out, test, train, rescue=not isinstance(early, str))
        except RunError as exc:
            said_then = early is not None and str(exc).startswith(str(early))  # (said once: with its rescue)
            then = f"; as training ended: {early}" if early is not None and not said_then else ""
            if unwritten := not isinstance(early, str):  # (the early pass's own account, where it wrote some)
                again = ""  # (an audit: the recovery usage.md gives was not said)
                if checkpoint and finished_run(checkpoint):
                    again = f"; --resume gives them again from the checkpoint {checkpoint}"
                say(command, f"{exc}{then}{again}")
            else:
                said = "kept the results written as training ended (without the last CLOSE frames' bytes)"
                say(command, f"{exc}; {said}", level=logging.WARNING)
    print_summary(result.to_json(), command)
    if written:
        print_out(written, command)
        SAID.info("aiodq %s: %s", command, written)
    partial = train is not None and bool(result.trace) and result.trace[-1].samples < train.samples
    # Missing from every phase, a shard never counted (a worker that refused the run, and none came in
    # its place): the run fails.  From the last only (a worker replaced late, say), a warning (a review).
    never = partial and train is not None and all(record.samples < train.samples for record in result.trace)
    if partial and train is not None:
        # A shard missing from the last snapshot phase (security.md): the loss is over the others only.
        errors = result.summary.get("errors", ())
        refused = sorted({e["worker"] for e in errors if str(e["reason"]).startswith(OUT_OF_LINE)})
        # (An attack: a liar's refused reports had the master advise turning the guard off.)
        why = (
            f"; the guard refused the snapshot reports of worker {', '.join(map(str, refused))} as out of "
            "line with the others': a worker that lies, or honest shards of very different scales "
            "(docs/algorithms.md 11; --guard 0 would let every report in, a liar's too)"
            if refused
            else " (docs/security.md)"
        )
        say(
            command,
            f"the final loss is over {result.trace[-1].samples:,} of the {train.samples:,} "
            f"samples: a worker's shard was missing from the last snapshot phase{why}"
            + ("; exit status 1: it was missing from every snapshot phase" if never else ""),
            level=logging.ERROR if never else logging.WARNING,
        )
    if not result.failure and len(result.trace) > 1 and not result.trace[-1].loss < result.trace[0].loss:
        # (A trial: a torch model at the default step stayed at chance, 2.307 to 2.315, and exit 0.)
        first, last = result.trace[0], result.trace[-1]
        say(
            command,
            f"the training objective did not fall: {first.loss:.6g} at epoch {first.epoch}, {last.loss:.6g} "
            f"at epoch {last.epoch}; is the step size right? (--step {result.config.step:g}; docs/usage.md)",
            level=logging.WARNING,
        )
    if result.ok and checkpoint and (stood := resumable(checkpoint)) is not None:
        # Its end not written there (a full disk): a crash-recovery trial's --resume, as the next start
        # advised, trained the finished run again and replaced its results.
        said = f"the checkpoint {checkpoint} still holds the run at epoch {stood[0]}, version {stood[1]}"
        say(command, f"{said}: --resume would train it again; the run finished", level=logging.WARNING)
    if result.failure:
        # (A newcomer trial: a user model diverged at the default step, and nothing named the step.)
        hint = (
            f"; the step was {result.config.step:g}: a smaller --step may train"
            if DIVERGED in result.failure
            else ""
        )
        hint += "; --guard 0 turns that check off" if hint and "guard is too tight" in result.failure else ""
        say(
            command,
            result.failure
            + hint
            + (checkpoint_note(checkpoint, resumable(checkpoint)) if checkpoint else ""),
        )
    return EXIT_FAILED if result.failure or unwritten or never else 0


class EarlyResults:
    """The launchers' ``finished`` hook: the results written as soon as training ends.

    A stop while the workers' sessions end (or a failure then) loses nothing; :meth:`say` tells
    what was written.  The command writes them again, complete, when the run returns.  A run
    stopped before training ended is written as it stood (:meth:`keep`); the launchers hand a
    cancelled one to :meth:`stopped`.
    """

    def __init__(self, out: Path, test: Dataset | None, train: Dataset) -> None:
        self._out, self._test, self._train = out, test, train
        self.written: str | RunError | None = None  # the line that says where, or why not
        self.stood: RunResult | None = None  # a cancelled run as it stood

    def __call__(self, result: RunResult) -> None:
        """Write ``result``, the run as training ended (or not, as :func:`kept_instead` says)."""
        if result.failure and kept_instead(result, self._out) is not None:
            return  # not written: the command says why as the run returns (:func:`finish`)
        try:
            self.written = write_results_line(result, self._out, self._test, self._train, rescue=False)
        except RunError as exc:
            self.written = exc

    def stopped(self, result: RunResult) -> None:
        """The launchers' ``stopped`` hook: a cancelled run as it stood, kept for :meth:`keep`."""
        self.stood = result

    def say(self, command: str) -> None:
        """On stderr, if training had finished: where the results are (or why they are not)."""
        if self.written is not None:
            say(command, f"training had finished: {self.written}", level=logging.INFO)

    def keep(self, command: str, stood: RunResult | None, failure: str | None = None) -> None:
        """Write a run stopped before training ended as it stood (``failure`` set, if given); say so.

        Nothing if training had ended (the results are written) or there is no such run.
        """
        if self.written is not None or stood is None:
            return
        if failure is not None and (stood := as_it_stood(stood, failure)) is None:
            return
        if (kept := kept_instead(stood, self._out)) is not None:
            say(command, f"the run as it stood was not written: {kept}")
            return
        last = stood.trace[-1]
        with signals_deferred():  # (a second Ctrl-C comes after the line that says where they are)
            try:
                written = write_results_line(stood, self._out, self._test, self._train)
            except RunError as exc:
                say(command, f"the run as it stood was not written: {exc}")
                return
            said = f"at epoch {last.epoch} of {stood.config.epochs} (loss {last.loss:.6g})"
            say(command, f"the run as it stood, {said}: {written}", level=logging.WARNING)


def kept_instead(failed: RunResult, out: Path) -> str | None:
    """Why a run that did not finish is not written into ``out``; None if it is.

    It never trained (no epoch ended: its model is the starting point), or ``out``
    holds the results of a run that finished (result.json with no failure), which are kept.
    """
    if not failed.trace:
        return "the run never trained (no snapshot phase ended)"
    if len(failed.trace) == 1:  # (a newcomer trial: a run diverged in its first epoch wrote x_0 as model.npz)
        return "the run never trained (no epoch ended: its model is the starting point)"
    if holds_finished_run(out):
        theirs = f" with their {LOG}" if (out / LOG).exists() else ""
        kept = f"kept{theirs} (this run's log is at the end of {NEW_LOG}; give another --out)"
        return f"{out} holds the results of a run that finished, {kept}"
    return None


def stopped_finishing(command: str, written: EarlyResults | None, args: argparse.Namespace) -> None:
    """A stop as a run's results were written the last time: where those of the end of training are.

    (A newcomer trial: a Ctrl-C then left complete results, and only "interrupted" said; an audit's
    SIGTERM then ended the command with no word.)
    """
    if written is not None:
        written.say(command)
        args.results_written = isinstance(written.written, str)
