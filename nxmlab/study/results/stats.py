"""Paired bootstrap confidence intervals from the runs' validation predictions (issue #14).

Every finished run stores its validation predictions (``predictions.parquet``: GLUE
``idx`` and ``prediction``).  A comparison ``a - b`` of two method labels on one task is
paired twice over: by seed (the two runs share the seed) and by example (both predict
the same validation examples).  One bootstrap replicate draws, independently for every
seed, a resample of the validation examples (with replacement), scores both runs on it
with the task's GLUE score, and averages ``score(a) - score(b)`` over the seeds
("resampling validation examples within each seed and pooling the seeds").  The task
average draws every task independently and averages the pooled task differences.
The training seed is resampled too (issue #28): a replicate first draws the seeds with
replacement, then the examples within each drawn seed (a two-level bootstrap), so that an
interval that reads "supported" covers the seed-to-seed variance; the examples-only
interval is kept beside it.  Intervals are percentile intervals of ``n_boot`` replicates
from a fixed seed.

The metrics are computed exactly on multiplicity weights (a resample is a vector of
counts), vectorised over the replicates: accuracy, binary F1 and MCC from weighted
confusion counts; Pearson from weighted moments; Spearman as the weighted Pearson
correlation of the resample's mid-ranks.  With unit weights they equal
:func:`nxmlab.study.data.metrics.glue_metrics` (tested).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.glue import get_task, load_glue

__all__ = ["Comparison", "COMPARISONS", "COVERS", "weighted_scores", "gold_labels", "load_predictions",
           "paired_bootstrap", "resampling_stream", "verdict", "VERDICTS"]


@dataclass(frozen=True)
class Comparison:
    """``a - b``: two method labels compared run against run on the same seeds.

    Attributes:
        name: Shown in tables and the forest plot.
        a: The label whose gain is measured.
        b: The label it is compared with.
        claim: The paper's claim the comparison tests, if any (the verdicts of docs/cpu.md).
        paper: The difference the paper reports for it (points, its GLUE average on
            BERT-base), if it reports one.
    """

    name: str
    a: str
    b: str
    claim: str = ""
    paper: float | None = None


#: The comparisons of the powered study (issue #14).
COMPARISONS: tuple[Comparison, ...] = (
    Comparison("admm - magnitude", "admm", "magnitude", "ADMM beats one-shot magnitude pruning (ASP)", 1.7),
    Comparison("admm+kd - magnitude+kd", "admm+kd", "magnitude+kd", "ADMM beats ASP with KD on both"),
    Comparison("KD gain: magnitude", "magnitude+kd", "magnitude", "KD adds to ASP"),
    Comparison("KD gain: admm", "admm+kd", "admm", "KD is complementary to ADMM"),
    Comparison("KD gain: sr-ste", "sr-ste+kd", "sr-ste", "KD adds to SR-STE (not a claim of the paper)"),
    Comparison("sr-ste - admm", "sr-ste", "admm", ""),
    Comparison("wanda - magnitude", "wanda", "magnitude", ""),  # the one-shot baselines against ASP (issue #13)
    Comparison("sparsegpt - magnitude", "sparsegpt", "magnitude",
               "calibration-aware one-shot masks beat ASP (not a claim of the paper)"),
    # learned masks (issue #29): does a mask the task loss chooses beat magnitude and calibration masks?
    Comparison("learned - magnitude", "learned", "magnitude", "a learned mask beats ASP (not a claim of the paper)"),
    Comparison("learned - sparsegpt", "learned", "sparsegpt",
               "a learned mask beats SparseGPT's (not a claim of the paper)"),
    # the authors' protocol (issue #28): nxmlab's ADMM beside the authors' setting
    Comparison("nxmlab-admm - magnitude", "nxmlab-admm", "magnitude",
               "nxmlab's ADMM (beyond the paper) beats ASP in the authors' protocol"),
    Comparison("nxmlab-admm - admm", "nxmlab-admm", "admm", ""),
)

#: How a confidence interval of ``a - b`` reads as an answer to "is a better than b?".
VERDICTS = {
    "supported": "the whole 95 % interval is above 0",
    "contradicted": "the whole 95 % interval is below 0",
    "unresolved": "the 95 % interval contains 0: unresolved with this power",
}


def verdict(ci_low: float, ci_high: float) -> str:
    """``supported`` / ``contradicted`` / ``unresolved`` for an interval of ``a - b``."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "unresolved"
    return "supported" if ci_low > 0 else "contradicted" if ci_high < 0 else "unresolved"


# --------------------------------------------------------------------------- metrics
def _wmean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (w * x).sum(axis=-1) / w.sum(axis=-1)


def _wpearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Pearson correlation per row of ``w`` (``x``, ``y``: ``[n]`` or ``[B, n]``); 0 when undefined."""
    mx, my = _wmean(x, w)[..., None], _wmean(y, w)[..., None]
    dx, dy = x - mx, y - my
    cov, vx, vy = (w * dx * dy).sum(-1), (w * dx * dx).sum(-1), (w * dy * dy).sum(-1)
    den = np.sqrt(vx * vy)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, cov / np.where(den > 0, den, 1.0), 0.0)
    return np.clip(r, -1.0, 1.0)


def _midranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mid-ranks of every original item within each resample (``w``: ``[B, n]`` counts).

    An item of value v gets ``W(< v) + (W(= v) + 1) / 2``, the average rank its copies
    (and any tied items) take in the resampled sample, as ``scipy.stats.rankdata``.
    """
    order = np.argsort(x, kind="stable")
    xs = x[order]
    ws = w[:, order]
    cum = np.cumsum(ws, axis=1)
    # tie blocks of equal values: first/last position of each item's block
    starts = np.searchsorted(xs, xs, side="left")
    ends = np.searchsorted(xs, xs, side="right") - 1
    before = np.where(starts > 0, cum[:, np.maximum(starts - 1, 0)], 0.0)
    equal = cum[:, ends] - before
    ranks_sorted = before + (equal + 1.0) / 2.0
    ranks = np.empty_like(ranks_sorted)
    ranks[:, order] = ranks_sorted
    return ranks


def weighted_scores(task: str, predictions: np.ndarray, gold: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The task's GLUE score for each row of ``weights`` (example multiplicities, ``[B, n]``).

    ``predictions`` are class ids (float scores for STS-B) aligned with ``gold``.  Unit
    weights give :func:`~nxmlab.study.data.metrics.glue_metrics`'s ``score``.
    """
    spec = get_task(task)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    p, y = np.asarray(predictions), np.asarray(gold)
    if spec.is_regression:
        p, y = p.astype(np.float64), y.astype(np.float64)
        parts = {"pearson": _wpearson(p, y, w),
                 "spearmanr": _wpearson(_midranks(p, w), _midranks(y, w), w)}
    else:
        p, y = p.astype(np.int64), y.astype(np.int64)
        n = w.sum(axis=1)
        parts = {"accuracy": (w * (p == y)).sum(axis=1) / n}
        if "f1" in spec.score_keys or "mcc" in spec.score_keys:
            tp = (w * ((p == 1) & (y == 1))).sum(axis=1)
            fp = (w * ((p == 1) & (y != 1))).sum(axis=1)
            fn = (w * ((p != 1) & (y == 1))).sum(axis=1)
            tn = n - tp - fp - fn
            with np.errstate(invalid="ignore", divide="ignore"):
                den = 2 * tp + fp + fn
                parts["f1"] = np.where(den > 0, 2 * tp / np.where(den > 0, den, 1.0), 0.0)
                mden = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
                parts["mcc"] = np.where(mden > 0, (tp * tn - fp * fn) / np.where(mden > 0, mden, 1.0), 0.0)
    return np.mean([parts[k] for k in spec.score_keys], axis=0)


# --------------------------------------------------------------------------- data
def gold_labels(task: str, glue_dir: str | None = None, split: str | None = None) -> pd.Series:
    """Gold labels of ``task`` indexed by GLUE ``idx`` (the mirror, else the Hub): of its
    (first) validation split, or of ``split`` (e.g. ``"train"`` for a selection run's
    held-out examples)."""
    spec = get_task(task)
    split = split or spec.eval_splits[0]
    raw = load_glue(spec.name, split, glue_dir)
    return pd.Series(np.asarray(raw["label"]), index=pd.Index(np.asarray(raw["idx"]), name="idx"), name="label")


def load_predictions(results_dir: str | Path, run: str) -> pd.Series:
    """``prediction`` of the run folder ``run`` (relative to ``results_dir``) indexed by ``idx``
    (the first validation split)."""
    frame = pd.read_parquet(Path(results_dir) / run / "predictions.parquet")
    if "split" in frame:
        frame = frame[frame["split"] == frame["split"].iloc[0]]
    return frame.set_index("idx")["prediction"].sort_index()


# --------------------------------------------------------------------------- bootstrap
def resampling_stream(seed: int, *names) -> np.random.Generator:
    """The bootstrap's random stream for one cell, e.g. ``(seed, comparison, task, training
    seed)``: a function of those values alone (CRC-32 of each name, not Python's salted
    ``hash``), the same in every process and whatever else is resampled."""
    return np.random.default_rng([seed, *(zlib.crc32(str(name).encode()) for name in names)])


def paired_bootstrap(scores: pd.DataFrame, results_dir: str | Path, glue_dir: str | None = None,
                     comparisons: Sequence[Comparison] = COMPARISONS, n_boot: int = 2000, seed: int = 0,
                     confidence: float = 0.95, average_tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Paired bootstrap intervals of every comparison, per task and for the task average.

    Args:
        scores: A :func:`~nxmlab.study.results.frames.load_scores` frame (one row per run), already
            restricted to the runs of the study (one run per task, label and seed).
        results_dir: The results store the ``run`` column is relative to.
        glue_dir: GLUE mirror for the gold labels.
        comparisons: What to compare.
        n_boot: Bootstrap replicates.
        seed: Seed of the resampling (fixed: the intervals are reproducible).
        confidence: Interval coverage.
        average_tasks: The tasks of the average (default: every task with paired runs);
            e.g. without a task at chance level, reported apart.

    Returns:
        ``comparison, a, b, task, tasks, seeds, n_seeds, diff, ci_low, ci_high, verdict,
        seed_min, seed_max, interval, ex_ci_low, ex_ci_high, ex_verdict`` (x100 score
        points), one row per comparison and task with paired runs, then one ``task ==
        "average"`` row per comparison over ``tasks`` (``n_seeds``: the fewest seeds of its
        tasks).  ``diff`` is the observed difference averaged over seeds (and tasks);
        ``seed_min`` / ``seed_max`` are the smallest and largest difference of one seed (for
        the average: of one seed averaged over the tasks, when every task has the same
        seeds, else NaN; ``seeds`` is then empty).

        ``ci_low, ci_high, verdict`` come from a **two-level bootstrap** (issue #28): each
        replicate resamples the training seeds with replacement, then the validation
        examples within each drawn seed, so the interval covers the seed-to-seed variance
        as well as the examples' (``interval == "seeds+examples"``).  With one seed it can
        only resample examples (``interval == "examples"``).  ``ex_ci_low, ex_ci_high,
        ex_verdict`` are the examples-only interval of the same replicates (seeds fixed),
        kept for comparison.  With S seeds the two-level interval is coarse: the seed
        draws take at most C(2S-1, S) distinct multisets (10 for three seeds).  Each
        (comparison, task, training seed)
        draws its replicates from its own stream, fixed by ``seed`` and those names
        (:func:`resampling_stream`), so an interval never moves when runs of other tasks or
        comparisons are added to the frame, and a fixed ``seed`` gives identical intervals.
    """
    columns = ["comparison", "a", "b", "task", "tasks", "seeds", "n_seeds", "diff", "ci_low", "ci_high", "verdict",
               "seed_min", "seed_max", "interval", "ex_ci_low", "ex_ci_high", "ex_verdict"]
    if scores.empty:
        return pd.DataFrame(columns=columns)
    alpha = (1.0 - confidence) / 2.0
    golds: dict[str, pd.Series] = {}
    rows = []
    for comp in comparisons:
        per_task: dict[str, tuple[float, np.ndarray, dict[int, float]]] = {}
        for task in dict.fromkeys(scores["task"]):
            part = scores[scores["task"] == task]
            a = part[part["label"] == comp.a].set_index("seed")["run"]
            b = part[part["label"] == comp.b].set_index("seed")["run"]
            if a.index.duplicated().any() or b.index.duplicated().any():
                raise ValueError(f"{task}: several runs of one label and seed; restrict the frame to one study")
            seeds = sorted(set(a.index) & set(b.index))
            if not seeds:
                continue
            if task not in golds:
                golds[task] = gold_labels(task, glue_dir)
            gold = golds[task]
            observed, reps = [], []
            for s in seeds:
                pa, pb = load_predictions(results_dir, a[s]), load_predictions(results_dir, b[s])
                if not pa.index.equals(pb.index) or not pa.index.isin(gold.index).all():
                    raise ValueError(f"{task}: {a[s]} and {b[s]} did not predict the same validation examples")
                y = gold.reindex(pa.index).to_numpy()  # every example, or the runs' eval_limit subset
                n = len(y)
                rng = resampling_stream(seed, comp.name, task, s)
                counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
                ones = np.ones((1, n))
                observed.append(float(weighted_scores(task, pa.to_numpy(), y, ones)[0]
                                       - weighted_scores(task, pb.to_numpy(), y, ones)[0]))
                reps.append(weighted_scores(task, pa.to_numpy(), y, counts)
                            - weighted_scores(task, pb.to_numpy(), y, counts))
            reps = np.asarray(reps)
            diff, examples = float(np.mean(observed)), reps.mean(axis=0)
            both = _two_level(reps, resampling_stream(seed, comp.name, task, "seeds"))
            per_task[task] = (diff, both, examples, dict(zip(seeds, observed, strict=True)))
            rows.append([comp.name, comp.a, comp.b, task, task, ",".join(map(str, seeds)), len(seeds), 100 * diff,
                         *_interval(both, alpha), 100 * min(observed), 100 * max(observed), _covers(len(seeds)),
                         *_interval(examples, alpha)])
        averaged = {t: v for t, v in per_task.items() if average_tasks is None or t in set(average_tasks)}
        if averaged:
            diff = float(np.mean([v[0] for v in averaged.values()]))
            both = np.mean([v[1] for v in averaged.values()], axis=0)
            examples = np.mean([v[2] for v in averaged.values()], axis=0)
            seed_sets = {tuple(sorted(v[3])) for v in averaged.values()}
            shared = list(seed_sets.pop()) if len(seed_sets) == 1 else []  # one seed set, or no per-seed range
            by_seed = [100 * float(np.mean([v[3][s] for v in averaged.values()])) for s in shared]
            n_seeds = min(len(v[3]) for v in averaged.values())
            rows.append([comp.name, comp.a, comp.b, "average", ",".join(averaged), ",".join(map(str, shared)),
                         n_seeds, 100 * diff, *_interval(both, alpha),
                         min(by_seed, default=np.nan), max(by_seed, default=np.nan), _covers(n_seeds),
                         *_interval(examples, alpha)])
    return pd.DataFrame(rows, columns=columns)


#: What an interval covers (the ``interval`` column of :func:`paired_bootstrap`).
COVERS = {"seeds+examples": "training seeds and validation examples (two-level bootstrap)",
          "examples": "validation examples only: one training seed, so the seed's variance is not in it"}


def _covers(n_seeds: int) -> str:
    return "seeds+examples" if n_seeds > 1 else "examples"


def _interval(boot: np.ndarray, alpha: float) -> list:
    """``[low, high, verdict]`` (x100) of a bootstrap distribution."""
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return [100 * lo, 100 * hi, verdict(lo, hi)]


def _two_level(reps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replicates of the seed-averaged difference that resample the training seeds too.

    ``reps[s, b]`` is seed ``s``'s difference on example resample ``b``.  Replicate ``b``
    draws ``S`` seeds with replacement and averages, for the ``j``-th draw, the drawn seed's
    difference on an example resample of its own (column ``perm_j[b]``), so a seed drawn
    twice contributes two independent example resamples.  With one seed this is the
    examples-only bootstrap.
    """
    n_seeds, n_boot = reps.shape
    if n_seeds == 1:
        return reps[0]
    drawn = rng.integers(0, n_seeds, size=(n_seeds, n_boot))
    columns = np.stack([rng.permutation(n_boot) for _ in range(n_seeds)])
    return reps[drawn, columns].mean(axis=0)
