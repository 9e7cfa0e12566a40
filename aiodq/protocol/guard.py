"""What the master checks in an admitted worker's messages before they touch its state (docs/security.md).

The wire format lets an authenticated worker send any finite values.  The master
refuses those that cannot be right for the run it configured, and, with its guard
factor f (``MasterConfig.guard``; 0 turns the statistical checks off), those far
out of line with everything else it has seen:

- GRADIENT: the encoding and width the algorithm sends (DENSE or SPARSE at the
  configured b, the dense codes also in their sparse form with ``sparse_gradients``
  and entropy coding,
  or for a run with ``aligned_codes`` in the aligned container with
  codes in b bits' range; QSGD at the configured s, RAW_F32 for the full-precision
  algorithms, or ZERO); with an L2 term, the dense and full-precision algorithms
  send ZERO only in answer to a model equal to the snapshot (alpha includes
  l2 (x_hat - x_snap), so it is never zero otherwise); an update u = Q(alpha) + g_snap
  whose norm is over f times the larger of ``||g_snap||`` and the typical applied
  update: each live connection's median of its last 64 applied updates, and of
  those the median (the lower of two), once two connections have had updates
  applied (one, with M = 1); and at least f / 100 times the first phase's mean
  gradient norm (a false report that cancels the others' makes g_snap 0).  So no
  worker's own updates raise its bound: a single pooled median let a worker that
  answers faster than the others fill the window with its own updates, each just
  under the bound, and the bound grew with every one (an attack review wrecked a
  run of 3 workers that ended "trained").
- SNAPSHOT_GRADIENT: ``samples`` one of the two shard sizes of n over M (when the
  master knows n; else positive), ``correct <= samples``; and, once the phase's
  reports are in, a per-sample loss or mean gradient norm more than f times out of
  line with the median of the phase's reports, its own included (three reports or
  more: the others' median of two is their mean, which one false report moves), or
  with the previous phase's figures (its own share included: with one or two workers,
  a worker can raise its own reference phase by phase; judged against the other's
  alone, honest shards of other scales were refused).  The loss may be off by f times
  at least 1e-2 and 1e-2 times the first phase's per-sample loss, and the gradient
  norm reach f times 1e-2 times the first phase's, whatever the reference (the first
  reports' upper median: a report of a loss or gradient of about 0 then cannot get the
  other's honest one refused).

A refusal names the wire code and the reason; the coordinator drops the message,
tells the worker, and for a snapshot report, which no later message can correct,
closes its connection.  What the guard cannot see: a worker that sends plausible
wrong values (a gradient of the right size in the wrong direction), or lies small.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..codec.events import SnapshotGradient
from ..codec.packing import aligned_width
from ..codec.vectors import DenseQuantized, QSGDVector, RawVector, SparseQuantized, Vector, ZeroVector
from ..errors import ErrorCode
from .algorithms import TrainConfig
from .members import Member
from .objectives import BUILT_IN

__all__ = [
    "DIVERGED_AFTER",
    "LONE_GRACE",
    "LONE_OUTLIER",
    "DIVERGED_LOSS_FACTOR",
    "OUT_OF_LINE",
    "OVERFLOW",
    "Divergence",
    "Guard",
    "MAX_PEER_ERRORS",
    "Refusal",
    "count_error",
    "refuse_claim",
    "refuse_encodings",
]

#: Refused updates per live worker, with none applied in between, after which the run has diverged.
DIVERGED_AFTER = 4
#: A run whose F(x_snap) passes this many times its first epoch's (or 1, if that is smaller) has diverged.
DIVERGED_LOSS_FACTOR = 1e6

#: How the reason of a snapshot report refused by :meth:`Guard.outliers` begins.
OUT_OF_LINE = "snapshot report out of line"

#: Applied update norms kept per connection for its median.
_WINDOW = 64


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a worker's message was refused, and the wire code that says so."""

    #: The code for the ERROR or CLOSE that tells the worker.
    code: ErrorCode
    #: One line for the worker and the master's log.
    reason: str
    #: False for a judgement an honest worker can fail through no fault of its own: a report out of
    #: line with the others' (one of which may lie), a report or an update that the model's state
    #: makes overflow (others' updates may have brought it there), the master's own failure.  A
    #: removal for it starts no rejoin back-off (admission.py).
    blames_sender: bool = True
    #: True for a worker that held a snapshot phase to its deadline: its removal starts a rejoin back-off
    #: although its code, TIMEOUT, starts none otherwise (an audit: a worker that answered each SNAPSHOT
    #: of the inner loop, rejoining, and none of the phase that then waited for it, held every phase
    #: for the 10 s floor, 37 times the run's time).
    held_the_phase: bool = False


#: An update that would take the model beyond the range a MODEL carries: its sender is removed, with no
#: rejoin back-off (others' updates may have brought the model to the edge).
OVERFLOW = Refusal(ErrorCode.INVALID_PAYLOAD, "the update takes the model out of range", blames_sender=False)

#: The one worker left whose updates keep being out of line (:meth:`Divergence.outlier`): removed (no
#: rejoin back-off: it is judged against the updates before it, which an honest worker can fail when the
#: run diverges); the run waits for workers rather than end as diverged, for :data:`LONE_GRACE` seconds.
LONE_OUTLIER = Refusal(
    ErrorCode.INVALID_PAYLOAD,
    f"{DIVERGED_AFTER} updates in a row out of line, and no other worker's to apply",
    blames_sender=False,
)
#: Seconds that lone workers' updates may keep being refused, none applied, before the run ends as diverged.
LONE_GRACE = 30.0


def _norm(values: np.ndarray) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        square = float(np.dot(values, values))
        if not math.isfinite(square) and values.dtype != np.float64:
            # float32 squares overflow from 1.8e19: only a float64 sum says whether the norm is finite.
            wide = values.astype(np.float64)
            square = float(np.dot(wide, wide))
        return math.sqrt(square)


class Guard:
    """The master's checks of one run's gradients and snapshot reports (module docstring)."""

    def __init__(self, config: TrainConfig, *, factor: float, workers: int, samples: int | None) -> None:
        """Set up the checks.

        Args:
            config: the run's hyperparameters (the encodings and widths the workers send).
            factor: the guard factor f; 0 turns the statistical checks off.
            workers: M.
            samples: n, the samples of the whole dataset, if the master knows it.
        """
        self.config = config
        self.factor = factor
        self.samples = samples  #: n, if known
        self._workers = workers
        self._shard_sizes = {samples // workers, -(-samples // workers)} if samples else None
        #: Each live connection's latest applied update norms, and their median (kept as they come).
        self._norms: dict[int, tuple[deque[float], float]] = {}
        #: The previous phase's per-sample loss (all its reports') and median mean gradient norm.
        self._previous: tuple[float, float] | None = None
        #: The run's first snapshot phase (epoch 0): its reports' upper medians of the per-sample loss
        #: and the mean gradient norm (None before it, or restored from a checkpoint that kept none).
        self._first: tuple[float, float] | None = None
        self._last: list[float] = []  # the latest phase's per-sample losses

    def memory(self) -> dict[str, list[float] | None]:
        """For a checkpoint: the previous and the first snapshot phase's figures (None where none).

        The update norms are the live connections' and end with them: a resumed run, whose workers
        connect anew, gathers them again.
        """
        return {"previous": _figures(self._previous), "first": _figures(self._first)}

    def remember(self, previous: tuple[float, float] | None, first: tuple[float, float] | None) -> None:
        """Take back what :meth:`memory` gave, checked (:func:`aiodq.protocol.recovery.restore`)."""
        self._previous, self._first = previous, first

    def forget(self, worker_id: int) -> None:
        """The connection ``worker_id`` is gone, and its figures with it.

        A source is a live connection: a worker that reconnects is a new one, and figures kept for
        its old connections would let it outnumber the others in the medians (an attack review).
        """
        self._norms.pop(worker_id, None)

    # -- the inner loop -----------------------------------------------------------

    def refuse_gradient(self, vector: Vector, *, model_equals_snapshot: bool) -> Refusal | None:
        """The encoding and width checks, and ZERO's plausibility."""
        config, kind = self.config, self.config.spec.gradient
        if isinstance(vector, ZeroVector):
            # alpha = grad f_B(x_hat) - grad f_B(x_snap) + l2 (x_hat - x_snap) is zero only where
            # x_hat = x_snap when l2 > 0, and the dense and float32 compressors never round a nonzero
            # alpha to ZERO (b = 2 aside, p < 2^-16).  Without an L2 term alpha can be zero elsewhere:
            # a loss whose gradient is piecewise constant (hinge, L1) gives the same mini-batch
            # gradient at two nearby models.  QSVRG's is Q(alpha + g_snap), and QSGD with s levels
            # rounds a nonzero vector to zero with probability at most e^-s (its levels' expected sum is
            # at least s): an attack's ZERO floods were applied as 1,927 of 4,072 updates.
            plausible_zero = kind == "qsgd" and config.qsgd_levels < 16
            if (
                (kind in ("dense", "float32", "qsgd") and not plausible_zero)
                and config.l2 > 0
                and not model_equals_snapshot
                and (config.bits > 2 or kind != "dense")  # (b = 2 rounds a dense alpha to zero: p < 2^-16)
            ):
                return Refusal(
                    ErrorCode.INVALID_PAYLOAD, "a ZERO gradient for a model other than the snapshot"
                )
            return None
        wanted: tuple[type, int | None]
        if kind == "dense":
            wanted, width = (DenseQuantized, config.bits), getattr(vector, "bits", None)
            if config.sparse_gradients and config.entropy_coding and isinstance(vector, SparseQuantized):
                # The sparse form of the same b-bit codes (TrainConfig.sparse_gradients): every
                # b-bit sparse vector is a b-bit dense one with zeros elsewhere.
                wanted = (SparseQuantized, config.bits)
        elif kind == "sparse":
            wanted, width = (SparseQuantized, config.bits), getattr(vector, "bits", None)
        elif kind == "qsgd":
            wanted, width = (QSGDVector, config.qsgd_levels), getattr(vector, "s", None)
        else:
            wanted = (RawVector, None)
            width = None
            if isinstance(vector, RawVector) and vector.values.dtype != np.float32:
                return Refusal(ErrorCode.INVALID_PAYLOAD, f"{config.algorithm} gradients travel as RAW_F32")
        if (
            config.aligned_codes
            and kind in ("dense", "sparse")
            and width == aligned_width(config.bits) != config.bits
        ):
            # Byte-aligned fixed-width codes (wire-format.md 5.5-5): b-bit codes in a wider container
            # (Rice-coded ones keep b).  The container admits codes that b bits do not: refuse them.
            codes = vector.codes  # type: ignore[union-attr]
            half = 1 << (config.bits - 1)
            if codes.shape[0] and not (-half <= int(codes.min()) and int(codes.max()) < half):
                return Refusal(
                    ErrorCode.INVALID_PAYLOAD,
                    f"codes outside the {config.bits}-bit range in a {width}-bit container",
                )
            width = config.bits
        if not isinstance(vector, wanted[0]) or width != wanted[1]:
            got = type(vector).__name__ + (f" ({width})" if width is not None else "")
            expected = wanted[0].__name__ + (f" ({wanted[1]})" if wanted[1] is not None else "")
            return Refusal(
                ErrorCode.INVALID_PAYLOAD, f"a {got} gradient where {config.algorithm} sends {expected}"
            )
        return None

    def max_update_norm(self, full_gradient: np.ndarray) -> float | None:
        """The largest update norm accepted now (None: no bound)."""
        if not self.factor:
            return None
        # u = Q(alpha) + g_snap: its scale is ||g_snap|| at least, and the recent updates' median.
        # The median alone would refuse every honest update once g_snap grows (a worker back
        # after many epochs brings its shard's gradient into it), and end the run as diverged.
        # At least a hundredth of the first phase's (per shard, per sample): a false report that cancels
        # the others' makes g_snap 0, and the honest updates with it (an attack review: no bound then, and
        # one update of norm 1e33 was applied).
        reference = max(_norm(full_gradient), 1e-2 * (self._first or (0.0, 0.0))[1])
        typical = [median for _, median in self._norms.values()]
        if len(typical) >= min(2, self._workers):  # (a majority of live connections can still lift it)
            reference = max(reference, statistics.median_low(typical))
        return self.factor * reference if reference > 0 else None

    def applied(self, norm: float, worker_id: int) -> None:
        """An update of this norm, from the connection ``worker_id``, was applied."""
        if self.factor:
            norms = self._norms[worker_id][0] if worker_id in self._norms else deque(maxlen=_WINDOW)
            norms.append(norm)
            self._norms[worker_id] = (norms, statistics.median(norms))

    # -- the snapshot phase -----------------------------------------------------------

    def refuse_report(self, report: SnapshotGradient) -> Refusal | None:
        """The checks a single SNAPSHOT_GRADIENT must pass on arrival."""
        if report.samples < 1:
            return Refusal(ErrorCode.INVALID_PAYLOAD, "samples must be positive")
        if self._shard_sizes is not None and report.samples not in self._shard_sizes:
            sizes = " or ".join(str(size) for size in sorted(self._shard_sizes))
            return Refusal(
                ErrorCode.INVALID_PAYLOAD, f"samples {report.samples}: a shard of this run has {sizes}"
            )
        if report.correct > report.samples:
            return Refusal(ErrorCode.INVALID_PAYLOAD, f"correct {report.correct} > samples {report.samples}")
        if self.config.model in BUILT_IN and report.loss < 0:
            # (An attack review: -1e300 was accepted, the trace's every loss with it, and exit 0.)
            return Refusal(
                ErrorCode.INVALID_PAYLOAD,
                f"loss {report.loss:.3g}: the built-in {self.config.model} model's losses are not negative",
            )
        if not math.isfinite(_norm(report.vector.values) / report.samples):
            # (An honest worker's too, at an x_snap that overflows: Divergence.unreported.)
            return Refusal(ErrorCode.NON_FINITE, "the gradient sum's norm is not finite", blames_sender=False)
        return None

    def outliers(self, reports: dict[int, SnapshotGradient]) -> dict[int, Refusal]:
        """Reports out of line with the phase's median (or the previous phase's figures), by worker id."""
        if not self.factor or not reports:
            return {}
        stats = {w: (r.loss / r.samples, _norm(r.vector.values) / r.samples) for w, r in reports.items()}
        # Each limit is at least f / 100 times the first phase's: a worker's report of a loss or
        # gradient of about 0 then cannot get the other's refused.
        first_loss, first_gradient = self._first or (0.0, 0.0)
        refused: dict[int, Refusal] = {}
        # Three reports or more: their median, the reporter's own included.  The others' median of two
        # is their mean, which one false report moves as it likes (an attack review: losses 50, 50 and
        # -50 had both honest workers refused); the median of three stays between the honest two.
        losses, gradients = zip(*stats.values(), strict=True)
        median = (statistics.median(losses), statistics.median(gradients))
        for worker_id, (loss, gradient) in stats.items():
            if len(stats) >= 3:
                reference = median
            elif self._previous is not None:
                # The previous phase's, the reporter's own share included: with two workers a report
                # measured against the other's alone refused honest shards of other scales (a trial:
                # features 150 times the other shard's, the worker removed at epoch 0, half the data
                # gone from every epoch after), so a worker can raise its own reference phase by phase.
                reference = self._previous
            else:
                continue  # nothing to compare with yet
            # Either way: a loss far below the others' (or negative) skews F and g_snap as much.
            limit_loss = self.factor * max(abs(reference[0]), 1e-2, 1e-2 * abs(first_loss))
            limit_gradient = self.factor * max(reference[1], 1e-2 * first_gradient) + 1e-6
            if not abs(loss - reference[0]) <= limit_loss or gradient > limit_gradient:
                refused[worker_id] = Refusal(
                    ErrorCode.INVALID_PAYLOAD,
                    f"{OUT_OF_LINE}: loss {loss:.3g} and gradient norm {gradient:.3g} per "
                    f"sample against {reference[0]:.3g} and {reference[1]:.3g}",
                    blames_sender=False,
                )
        return refused

    def phase_finished(self, reports: dict[int, SnapshotGradient]) -> None:
        """Remember the accepted reports' per-sample loss and their median mean gradient norm.

        Per report, as a report is judged: the whole data's gradient goes to zero at the optimum
        (with no L2 term), while each shard's does not, so a shard measured against it would look
        more out of line the better the run converges.
        """
        figures = {
            worker_id: (report.loss / report.samples, _norm(report.vector.values) / report.samples)
            for worker_id, report in reports.items()
            if report.samples
        }
        samples = sum(report.samples for report in reports.values())
        if figures:
            loss = sum(report.loss for report in reports.values()) / samples
            self._previous = (loss, statistics.median(norm for _, norm in figures.values()))
        self._last = [loss for loss, _ in figures.values()]
        if figures and self._first is None and all(report.epoch == 0 for report in reports.values()):
            losses, norms = zip(*figures.values(), strict=True)
            self._first = (statistics.median_high(losses), statistics.median_high(norms))

    def untrained(self, epoch: int, loss: float, first: float) -> str | None:
        """After the final phase: the failure if the run did not train, else None.

        The lower median of this phase's per-sample losses (the lower of two) more than its size
        above the upper median of the first phase's (``first``, the trace's first F, if this guard
        does not know that phase: resumed from a checkpoint that kept none): F more than doubled. An
        attack review: a worker's updates, each within the bound, took F from 0.69 to 480 in six
        epochs, and the run ended as trained.  One false report, the first phase's or the last's,
        cannot fail an honest run with three workers or more (the medians), nor, with two, move the
        comparison its way (the lower of the last, the higher of the first).  So with two the same
        worker hides the rise by reporting its first loss (F went to 24,065 in that review); then F
        itself, ``loss``, more than ``2 (f + 2)`` times ``|first|`` above ``first``, is the rise:
        one false report within f times the other's makes F at most about ``(f + 2) / 2`` times the
        honest one's.
        """
        if self._last:
            start = first if self._first is None else self._first[0]
            end = statistics.median_low(self._last)
            if start and end - start > abs(start):
                return (
                    f"the workers' median loss a sample (F: their mean, plus the regulariser) rose "
                    f"from {start:.4g} at the first epoch to {end:.4g} at the last, epoch {epoch}: the run "
                    "did not train (is the step size too large? or a worker's updates took it there: "
                    "docs/security.md)"
                )
        if first and loss - first > 2 * (self.factor + 2) * abs(first):
            return (
                f"the training objective rose from {first:.4g} at the first epoch to {loss:.4g} at the last, "
                f"epoch {epoch}, more than {2 * (self.factor + 2):g} times: the run did not train (is the "
                "step size too large? or a worker's updates took it there: docs/security.md)"
            )
        return None


def _figures(pair: tuple[float, float] | None) -> list[float] | None:
    """A pair of the guard's figures for a checkpoint: None where it has none, or where one overflowed."""
    return list(pair) if pair is not None and all(math.isfinite(value) for value in pair) else None


def refuse_claim(shard: tuple[int, int] | None, workers: int, held: dict[int, int]) -> Refusal | None:
    """A HELLO's shard claim against the run (wire-format.md 7.1-9), or None if it fits.

    Args:
        shard: the claim ``(index, count)``, or None (no claim: nothing to check).
        workers: the run's M.
        held: the shard index each member that claimed one holds, by worker id.
    """
    if shard is None:
        return None
    index, count = shard
    if count != workers:
        return Refusal(
            ErrorCode.WORLD_SIZE_MISMATCH,
            f"shard {index}/{count}: this run has {workers} workers (claim a shard I/{workers})",
        )
    holder = next((worker_id for worker_id, taken in held.items() if taken == index), None)
    if holder is not None:
        return Refusal(ErrorCode.SHARD_TAKEN, f"shard {index}/{count} is held by worker {holder}")
    return None


#: ERROR messages a worker may send in a session; a reference worker sends none (wire-format.md 7.10).
MAX_PEER_ERRORS = 256


def count_error(member: Member) -> Refusal | None:
    """Count an ERROR message from ``member``; a refusal once it has sent more than MAX_PEER_ERRORS.

    Each is recorded and may be logged (an attack review: a flood of valid ERRORs, 40,000 a
    second, held the others up; the flooder's own answers queued behind it delayed every phase).
    """
    member.errors += 1
    if member.errors <= MAX_PEER_ERRORS:
        return None
    return Refusal(ErrorCode.LIMIT_EXCEEDED, f"more than {MAX_PEER_ERRORS} ERROR messages in one session")


def refuse_encodings(config: TrainConfig, announced: frozenset[int]) -> Refusal | None:
    """A HELLO whose encodings leave out one that this run's master may send the worker, or None.

    Every run sends SNAPSHOT and, for some algorithms, FULL_GRADIENT in RAW_F32 (RAW_F64 for
    values beyond float32's range), and quantized models as DENSE, ZERO or EQUALS_SNAPSHOT (RAW
    above the bits cap); DENSE_RICE is used only with a peer that announced it.  Refused before
    WELCOME (UNSUPPORTED_ENCODING), as a send that the peer cannot decode would fail part way
    through a phase (wire-format.md 6.2-2; a review's attack made it close another worker).
    """
    names = config.spec.unannounced(announced, worker=False)
    if not names:
        return None
    return Refusal(
        ErrorCode.UNSUPPORTED_ENCODING,
        f"this run ({config.algorithm}) sends vectors as {names}, which the worker did not announce",
    )


class _Grace:
    """Since when lone workers' refusals have lasted: from the first :meth:`within` until ``since = None``."""

    __slots__ = ("since",)

    def __init__(self) -> None:
        self.since: float | None = None

    def within(self, now: float) -> bool:
        """One more such refusal at ``now``: True while within :data:`LONE_GRACE` of the first."""
        self.since = now if self.since is None else self.since
        return now - self.since < LONE_GRACE


class Divergence:
    """When refusals mean the run itself has diverged, not one worker misbehaved.

    Every live worker's updates refused as out of line ``DIVERGED_AFTER`` times in a row (with
    none applied in between; of M >= 2, two workers' at least, or one alone's for ``LONE_GRACE``
    seconds), or ``DIVERGED_AFTER`` times M updates taking the model out of range since the last
    applied one (workers that rejoin and overflow again), or no worker left; or
    every report of a snapshot phase out of line, or not finite.
    """

    def __init__(self, workers: int = 1) -> None:
        self._workers = workers  # M: of M >= 2, one worker alone is judged only after LONE_GRACE
        self._overflows = 0
        self._lone_updates, self._lone_reports = _Grace(), _Grace()  # lone workers' refusals, since when
        self._epoch = -1  # the epoch of the snapshot reports counted below
        self._finite = self._non_finite = 0
        self._awaited = 0  # workers the snapshot phase of that epoch last started waiting for

    def _count_for(self, epoch: int) -> None:
        """Count the snapshot reports of ``epoch`` from now on (from zero, if it is another epoch)."""
        if epoch != self._epoch:
            self._epoch, self._finite, self._non_finite = epoch, 0, 0

    def awaiting(self, epoch: int, workers: int) -> None:
        """A snapshot phase of ``epoch`` started, waiting for ``workers`` reports."""
        self._count_for(epoch)
        self._awaited = workers

    def report(self, epoch: int, current: int, refusal: Refusal | None) -> None:
        """A snapshot report for ``epoch`` arrived in epoch ``current``: accepted (None) or refused.

        Only reports for the current epoch count (an older one's answer says nothing of x_snap).
        """
        if epoch != current:
            return
        self._count_for(epoch)
        if refusal is None:
            self._finite += 1
        elif refusal.code is ErrorCode.NON_FINITE:
            self._non_finite += 1

    def unreported(self, epoch: int, now: float) -> str | None:
        """Every worker left ``epoch``'s snapshot phase: the failure, if its reports were all non-finite.

        As many of them as the phase last started waiting for (at least one), and none finite:
        then it is x_snap that overflows, not a worker, and the workers would rejoin and report
        the same for ever.  One hostile worker among honest ones cannot end the run this way
        (theirs are finite), nor one whose non-finite report meets honest workers that left
        without reporting: it would have to rejoin and be refused as often as the phase waits for
        reports while no honest one came.  Of a run of M >= 2 workers, a phase that waited for
        one worker alone judges so only after :data:`LONE_GRACE` seconds of such phases (:class:`_Grace`).
        """
        if epoch == self._epoch and self._non_finite >= max(1, self._awaited) and not self._finite:
            if self._awaited < min(self._workers, 2) and self._lone_reports.within(now):
                return None
            return (
                f"every snapshot report at epoch {epoch} is not finite: the run diverged "
                "(is the step size too large?)"
            )
        return None

    @staticmethod
    def loss(epoch: int, loss: float, first: float) -> str | None:
        """After a snapshot phase found F(x_snap) = ``loss`` (``first``: the first phase's): any failure.

        Not finite, or past :data:`DIVERGED_LOSS_FACTOR` times ``max(|first|, 1)``: no training that
        converges, convex or not, takes its objective a million times above where it began.
        """
        if not math.isfinite(loss):
            return f"the training objective at epoch {epoch} is not finite: the run diverged"
        if loss > DIVERGED_LOSS_FACTOR * max(abs(first), 1.0):
            return (
                f"the training objective at epoch {epoch} is {loss:.4g}, over {DIVERGED_LOSS_FACTOR:.0e} "
                f"times the first epoch's {first:.4g}: the run diverged (is the step size too large?)"
            )
        return None

    def applied(self) -> None:
        """An update was applied: the counts start again (the caller zeroes its workers')."""
        self._overflows = 0
        self._lone_updates.since = None

    def outlier(self, refused_counts: list[int], version: int, now: float) -> str | Refusal | None:
        """After one more out-of-line update: the failure, if every live worker's keep being refused.

        Of a run of M >= 2 workers, two workers' at least: one alone (the others gone for a
        moment) is removed instead, :data:`LONE_OUTLIER` (an attack: an admitted worker that sent
        outliers ended a healthy run as diverged whenever it was the only one connected), unless
        lone workers' updates have been refused so for :data:`LONE_GRACE` seconds with none applied:
        then the run diverged (a lone honest worker would otherwise rejoin and be removed for ever).
        """
        if not refused_counts or not all(count >= DIVERGED_AFTER for count in refused_counts):
            return None
        if len(refused_counts) < min(self._workers, 2) and self._lone_updates.within(now):
            return LONE_OUTLIER
        return (
            f"every worker's updates are out of line since version {version}: the run diverged "
            "(or the guard is too tight)"
        )

    def reports(
        self,
        refusals: dict[int, Refusal],
        reports: dict[int, SnapshotGradient],
        epoch: int,
        now: float,
    ) -> str | None:
        """After a snapshot phase's check: the failure, if every report was refused.

        That happens with one or two reports, judged against the previous phase's: it is the
        snapshot that is off, not a worker, and removed workers would rejoin and report the same.
        Of a run of M >= 2 workers, one report alone is so judged only after :data:`LONE_GRACE`
        seconds of such phases (an attack: a lone worker's reports out of line ended a healthy run).
        """
        if reports and len(refusals) < len(reports):
            self._lone_reports.since = None  # a report stood
        if not refusals or len(refusals) != len(reports):
            return None
        if len(reports) < min(self._workers, 2) and self._lone_reports.within(now):
            return None
        return (
            f"every snapshot report at epoch {epoch} is out of line with the previous phase's: "
            "the run diverged (or the guard is too tight)"
        )

    def overflow(self, live: int, workers: int, version: int) -> str | None:
        """After an update that would take the model out of range: the failure, if the run diverged."""
        self._overflows += 1
        if live == 0 or self._overflows >= DIVERGED_AFTER * workers:
            return f"updates at version {version} take the model out of range: the run diverged"
        return None
