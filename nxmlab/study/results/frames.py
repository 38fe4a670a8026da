"""Results as tidy pandas frames, one per kind: scores, dynamics, mask distances.

* :func:`load_scores`: one row per finished run (``nxmlab table --csv`` prints it);
* :func:`load_dynamics`: one row per (run, ADMM record, target);
* :func:`load_mask_distances`: one row per (run, target, reference mask).

Seeds are averaged in one place, :func:`seed_summary`; the GLUE table, the gaps and the
claims are built on it.  GLUE conventions: the task score is CoLA's MCC, STS-B's mean of
Pearson and Spearman, MRPC/QQP's mean of F1 and accuracy, and accuracy elsewhere;
frames hold it x100.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ...masking import mask_distance
from ...targets import describe_target
from ..data.glue import GLUE_TASKS
from ..data.metrics import glue_score
from ..train.methods import LABELS, method_label
from .store import DamagedFileError, RunFolder, StoreVersionError, iter_runs

__all__ = [
    "SCORE_COLUMNS", "COMPARISONS", "load_scores", "load_dynamics", "load_mask_distances", "load_magnitudes",
    "results_dir", "run_folders", "seed_summary",
    "glue_table", "gap_table", "difference_table", "paper_claims", "format_claims", "to_markdown",
    "mask_distance_table", "label_order", "task_order", "mask_movement", "MOVEMENT_REFERENCES",
]

logger = logging.getLogger(__name__)

SCORE_COLUMNS = [
    "run", "task", "method", "kd", "label", "model", "pattern", "rho", "seed", "score", "before_prune",
    "after_prune", "rel_dist_at_prune", "flips_last_update", "updates", "mask_dist_pretrained_magnitude",
    "mask_dist_dense_magnitude", "epochs", "seconds", "sparsity", "setting", "converged", "split",
    "prune_cost_points", "flips_first_update", "mask_dist_loss_free",
]

#: Config keys that identify a cell of the table rather than a setting of it.
_NOT_SETTINGS = {"store_version", "task", "method", "kd", "rho", "training.seed", "training.data_seed"}


def label_order(labels) -> list[str]:
    """Labels in registry order (unknown ones after, sorted)."""
    known = LABELS()
    labels = list(dict.fromkeys(labels))
    return sorted(labels, key=lambda lb: (known.index(lb) if lb in known else len(known), lb))


def task_order(tasks) -> list[str]:
    """Tasks in GLUE order."""
    present = set(tasks)
    return [t for t in GLUE_TASKS if t in present] + sorted(present - set(GLUE_TASKS))


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif name not in _NOT_SETTINGS:
            out[name] = value
    return out


def _score(task: str, result: Mapping[str, Any] | None) -> float | None:
    """The x100 score of one evaluation; NaN when a split's score is stored as missing."""
    if not result:
        return None
    return 100 * sum(glue_score(task, v) for v in result.values()) / len(result)


def _x100(value: Any) -> float:
    return 100 * float(value) if value is not None else float("nan")


def load_scores(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per finished run under ``results_dir`` (columns :data:`SCORE_COLUMNS`).

    Scores are x100: ``score`` (final), ``before_prune`` and ``after_prune`` where the
    method prunes.  ``rel_dist_at_prune``, ``flips_last_update`` and ``updates`` are ADMM's
    diagnostics at the hard prune, ``converged`` their verdict against
    :data:`nxmlab.study.train.hooks.CONVERGENCE` (``None`` for runs without one); ``mask_dist_*``
    the fraction of kept positions where the final mask differs from the magnitude mask of the pretrained / dense fine-tuned
    weights (``mask_dist_loss_free``: to the prune mask of ADMM's loss-free control;
    ``flips_first_update``: the fraction of positions ADMM's first Z/U update flips;
    ``prune_cost_points``: the score lost at the hard prune).  ``setting`` is the run's config as JSON without its task, seed, method and
    rho, so runs that differ in anything else are never pooled as seeds.  ``split`` is
    ``validation`` (the GLUE validation set: a reported run) or ``heldout`` (a selection
    run, scored on held-out training examples: never in a reported table).  Runs of another
    store version, or with unreadable files, are skipped with a warning naming the file;
    ``attrs["skipped"]`` lists them as ``{run: reason}``.  A score stored as missing (an
    undefined metric) is NaN, and ``attrs["missing"]`` holds ``{run: reason}``.
    """
    rows, skipped, missing = [], {}, {}
    for folder in iter_runs(results_dir):
        try:
            config = folder.config()
            m = folder.metrics()
            if m is None:
                continue
            diag, dist = m.get("diagnostics") or {}, m.get("mask_distance") or {}
            row = {
                "run": folder.rel, "task": m["task"], "method": m["method"], "kd": bool(m["kd"]),
                "label": method_label(m["method"], m["kd"]), "model": m["model"], "pattern": m.get("pattern"),
                "rho": m.get("rho"), "seed": m["seed"], "score": _x100(m["score"]),
                "before_prune": _score(m["task"], m["eval"].get("before_prune")),
                "after_prune": _score(m["task"], m["eval"].get("after_prune")),
                "rel_dist_at_prune": diag.get("rel_dist_at_prune"), "flips_last_update": diag.get("flips_last_update"),
                "updates": diag.get("updates"),
                "mask_dist_pretrained_magnitude": dist.get("pretrained_magnitude"),
                "mask_dist_dense_magnitude": dist.get("dense_magnitude"),
                "epochs": config["training"]["num_train_epochs"], "seconds": m.get("seconds"),
                "sparsity": m.get("sparsity", {}).get("mean"), "setting": json.dumps(_flatten(config), sort_keys=True),
                "converged": diag.get("converged"),
                "split": "heldout" if config.get("heldout") is not None else "validation",
                "prune_cost_points": diag.get("prune_cost_points"), "flips_first_update": diag.get("flips_first_update"),
                "mask_dist_loss_free": diag.get("mask_dist_loss_free"),
            }
        except (StoreVersionError, ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = str(exc) if isinstance(exc, ValueError) else f"{folder.path}: unexpected content ({exc!r})"
            logger.warning("skipping %s: %s", folder.path, reason)
            skipped[folder.rel] = reason
            continue
        if m["score"] is None:
            missing[folder.rel] = (m.get("missing") or {}).get("score", "missing")
        rows.append(row)
    frame = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    frame.attrs.update(results_dir=str(results_dir), skipped=skipped, missing=missing)
    return frame


def results_dir(scores: pd.DataFrame) -> Path:
    """The results folder a score frame came from (:func:`load_scores` records it)."""
    if "results_dir" not in scores.attrs:
        raise ValueError("the scores frame does not say which results folder it came from; use frames.load_scores()")
    return Path(scores.attrs["results_dir"])


def run_folders(scores: pd.DataFrame):
    """``(row, RunFolder)`` for every run of ``scores``; ``row`` has ``run, task, label, seed, rho``."""
    if scores.empty:
        return
    root = results_dir(scores)
    for row in scores[["run", "task", "label", "seed", "rho"]].itertuples(index=False):
        yield row, RunFolder.at(root / row.run)


def _per_run(scores: pd.DataFrame, name: str) -> pd.DataFrame:
    parts = []
    for row, folder in run_folders(scores):
        try:
            frame = folder.read_frame(name)
        except DamagedFileError as exc:  # one damaged file never blocks the others
            logger.warning("skipping %s", exc)
            continue
        if frame is not None and not frame.empty:
            parts.append(frame.assign(**row._asdict()))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def load_dynamics(scores: pd.DataFrame) -> pd.DataFrame:
    """``dynamics.parquet`` of every run in ``scores`` (from :func:`load_scores`), with its
    ``run, task, label, seed, rho`` columns; empty when no run has dynamics."""
    return _per_run(scores, RunFolder.DYNAMICS)


def load_mask_distances(scores: pd.DataFrame) -> pd.DataFrame:
    """``mask_distances.parquet`` of every run in ``scores``: per target and reference mask."""
    return _per_run(scores, RunFolder.MASK_DISTANCES)


def load_magnitudes(scores: pd.DataFrame) -> pd.DataFrame:
    """``magnitudes.parquet`` of every run in ``scores`` that has one: a sample of |w| at the final
    mask's kept and pruned positions per weight snapshot (``stage``), with ``abs_w`` as float32."""
    frame = _per_run(scores, RunFolder.MAGNITUDES)
    return frame.astype({"abs_w": "float32"}) if not frame.empty else frame


def mask_distance_table(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Per target both sets have: ``module, component, layer, kept, differ, distance``."""
    rows = []
    for name in a:
        if name not in b:
            continue
        ma, mb = a[name].bool(), b[name].bool()
        component, layer = describe_target(name)
        rows.append({"module": name, "component": component, "layer": layer,
                     "kept": int(ma.sum()) + int(mb.sum()), "differ": int((ma ^ mb).sum()),
                     "distance": mask_distance(ma, mb)})
    return pd.DataFrame(rows, columns=["module", "component", "layer", "kept", "differ", "distance"])


#: The reference masks of ``mask_movement`` (score-frame column -> meaning).
MOVEMENT_REFERENCES = {
    "mask_dist_pretrained_magnitude": "the pretrained weights' magnitude mask",
    "mask_dist_dense_magnitude": "the dense model's magnitude mask (ASP's)",
}


def mask_movement(scores: pd.DataFrame, baseline: str = "magnitude") -> pd.DataFrame:
    """How far each sparse run's final mask moved from the magnitude masks, against its score.

    One row per (run, reference): ``run, task, label, seed, reference, distance, score,
    gain``.  ``distance`` is the fraction of kept positions where the final mask differs
    from the reference (``MOVEMENT_REFERENCES``), ``gain`` the run's score minus the
    ``baseline`` label's score on the same task and seed (NaN without one): seeds are
    replicates, so a point never mixes two seeds.
    """
    columns = ["run", "task", "label", "seed", "reference", "distance", "score", "gain"]
    sparse = scores[scores["pattern"].notna()] if not scores.empty else scores
    if sparse.empty:
        return pd.DataFrame(columns=columns)
    base = sparse[sparse["label"] == baseline].set_index(["task", "seed"])["score"]
    base = base[~base.index.duplicated()]
    long = sparse.melt(id_vars=["run", "task", "label", "seed", "score"], value_vars=list(MOVEMENT_REFERENCES),
                       var_name="reference", value_name="distance").dropna(subset=["distance"])
    keys = pd.MultiIndex.from_frame(long[["task", "seed"]])
    long["gain"] = long["score"].to_numpy() - base.reindex(keys).to_numpy()
    long["reference"] = long["reference"].str.removeprefix("mask_dist_")
    return long[columns].reset_index(drop=True)


# ------------------------------------------------------------------------ seed averages
def seed_summary(scores: pd.DataFrame, tasks: Sequence[str] | None = None, value: str = "score",
                 average_tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """``label, task, mean, std, n`` over seeds: the one place seeds are averaged.

    Runs that differ in any setting besides the seed get a ``[key=value]`` suffix on
    their label first, so they stay apart.  The ``avg`` task is the mean over
    ``average_tasks`` (default: ``tasks``; e.g. without a task at chance level, reported
    apart) per seed (seeds that have every one of them), then over seeds.
    """
    columns = ["label", "task", "mean", "std", "n"]
    if scores.empty:
        return pd.DataFrame(columns=columns)
    tasks = list(tasks) if tasks else task_order(scores["task"])
    averaged = [t for t in tasks if t in set(average_tasks)] if average_tasks else tasks
    df = scores[scores["task"].isin(tasks)].copy()
    df["label"] = df["label"] + _setting_suffixes(df)
    rows = []
    for label in label_order(df["label"]):
        group = df[df["label"] == label]
        per_seed = group.pivot_table(index="seed", columns="task", values=value, aggfunc="mean")
        cells = {task: per_seed[task].dropna() for task in tasks if task in per_seed}
        if averaged and set(averaged) <= set(per_seed.columns):
            cells["avg"] = per_seed[averaged].dropna().mean(axis=1)
        for task, values in cells.items():
            if not values.empty:
                rows.append({"label": label, "task": task, "mean": values.mean(),
                             "std": values.std(ddof=1) if len(values) > 1 else float("nan"), "n": len(values)})
    return pd.DataFrame(rows, columns=columns)


def _setting_suffixes(df: pd.DataFrame) -> pd.Series:
    """`` [key=value, ...]`` for the setting keys (and rho) that differ between runs of the same
    label on the same task (a setting fixed per task, e.g. a tuned learning rate, does not split)."""
    settings = df["setting"].map(json.loads) if "setting" in df else pd.Series([{}] * len(df), index=df.index)
    if "rho" in df:
        settings = pd.Series([{**s, "rho": r} if pd.notna(r) else s for s, r in zip(settings, df["rho"], strict=True)],
                             index=df.index)
    first = ["rho", "training.num_train_epochs", "retrain_epochs"]
    out = pd.Series("", index=df.index)
    task = df["task"] if "task" in df else pd.Series("", index=df.index)
    for _, group in settings.groupby(df["label"], sort=False):
        keys = sorted(set().union(*group.tolist()), key=lambda k: (first.index(k) if k in first else len(first), k))
        differing = [k for k in keys if any(len({json.dumps(s.get(k), sort_keys=True) for s in part}) > 1
                                            for _, part in group.groupby(task[group.index], sort=False))]
        if differing:
            out[group.index] = group.map(lambda s: " [" + ", ".join(_describe(k, s[k]) for k in differing if k in s)
                                         + "]")
    return out


def _describe(key: str, value: Any) -> str:
    short = key.removeprefix("training.")
    if short == "num_train_epochs" and isinstance(value, int | float):
        return f"{value:g} ep"
    if short == "retrain_epochs" and isinstance(value, int | float):
        return f"+{value:g} retrain"
    return f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}"


def _wide(summary: pd.DataFrame, stat: str = "mean") -> pd.DataFrame:
    if summary.empty:
        return pd.DataFrame()
    wide = summary.pivot(index="label", columns="task", values=stat)
    tasks = [t for t in dict.fromkeys(summary["task"]) if t != "avg"]
    return wide.reindex(index=label_order(wide.index), columns=tasks + (["avg"] if "avg" in wide else []))


def glue_table(scores: pd.DataFrame, tasks: Sequence[str] | None = None,
               average_tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """The GLUE table: a row per label, a column per task and ``avg`` (over ``average_tasks``,
    default ``tasks``: :func:`seed_summary`); cells ``mean ± std`` (strings).

    A run whose score is stored as missing (``NaN``) never enters a mean or the average;
    its cell reads ``–*`` when no seed has a score, and ``attrs["footnotes"]`` gives
    the reason (:func:`to_markdown` prints it under the table).
    """
    summary = seed_summary(scores, tasks, average_tasks=average_tasks)
    if summary.empty:
        return pd.DataFrame()
    cell = summary.assign(cell=[f"{m:.1f}" if n == 1 else f"{m:.1f} ± {s:.1f}"
                                for m, s, n in zip(summary["mean"], summary["std"], summary["n"], strict=True)])
    table = _wide(cell, "cell")
    footnotes = []
    unscored = scores[scores["score"].isna() & (scores["task"].isin(tasks) if tasks else True)]
    if not unscored.empty:
        labels = (scores["label"] + _setting_suffixes(scores)).loc[unscored.index]
        reasons = scores.attrs.get("missing", {})
        columns = task_order([*(c for c in table.columns if c != "avg"), *unscored["task"]])
        table = table.reindex(index=label_order([*table.index, *labels]),
                              columns=columns + (["avg"] if "avg" in table.columns else [])).astype(object)
        for (label, task), group in unscored.groupby([labels, unscored["task"]], sort=True):
            for column in (task, "avg") if not average_tasks or task in average_tasks else (task,):
                if column in table.columns and pd.isna(table.at[label, column]):
                    table.at[label, column] = "–*"
            runs = ", ".join(f"seed {r.seed}: {reasons.get(r.run, 'no score')}" for r in group.itertuples())
            footnotes.append(f"{label} on {task}: no score ({runs}); left out of every mean and average")
    table = table.fillna("–")
    if footnotes:
        table.attrs["footnotes"] = footnotes
    return table


def gap_table(summary: pd.DataFrame, baseline: str = "dense") -> pd.DataFrame:
    """Each other label's mean minus ``baseline``'s, per task and on the average (points)."""
    wide = _wide(summary)
    if wide.empty or baseline not in wide.index:
        return pd.DataFrame()
    return wide.drop(index=baseline) - wide.loc[baseline]


#: The comparisons behind the paper's claims: (a, b) for ``a − b``.
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("admm", "magnitude"), ("admm+kd", "magnitude+kd"), ("magnitude+kd", "magnitude"), ("admm+kd", "admm"),
)


def difference_table(summary: pd.DataFrame, pairs: Sequence[tuple[str, str]] = COMPARISONS) -> pd.DataFrame:
    """``a − b`` of mean scores per task and average, for each pair whose labels both exist."""
    wide = _wide(summary)
    rows = {f"{a} − {b}": wide.loc[a] - wide.loc[b] for a, b in pairs if a in wide.index and b in wide.index}
    return pd.DataFrame(rows).T if rows else pd.DataFrame()


_CLAIMS = (
    ("ADMM beats one-shot magnitude pruning (ASP)", "admm", "magnitude", "+1.7 GLUE average points (BERT-base, 4:2)"),
    ("ADMM beats magnitude pruning, both with KD", "admm+kd", "magnitude+kd", "ADMM ahead"),
    ("KD helps ADMM", "admm+kd", "admm", "KD improves the sparse model"),
    ("KD helps magnitude pruning", "magnitude+kd", "magnitude", "KD improves the sparse model"),
)


def paper_claims(summary: pd.DataFrame, average_tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """The point estimate behind each of the paper's qualitative claims in ``summary``
    (computed, never hard-coded); the verdict with its uncertainty is the paired bootstrap's
    (:func:`nxmlab.study.results.stats.paired_bootstrap`).

    Each claim compares the GLUE average of two labels (``avg`` when both have it, else the
    mean over the tasks both have, among ``average_tasks`` when given: the same tasks as
    ``avg``).  ``holds`` (the point estimate is above 0) is ``None`` when a label is missing.
    """
    wide = _wide(summary)
    rows = []
    for claim, a, b, paper in _CLAIMS:
        delta, basis = None, "missing runs"
        if not wide.empty and a in wide.index and b in wide.index:
            if "avg" in wide and pd.notna(wide.at[a, "avg"]) and pd.notna(wide.at[b, "avg"]):
                delta, basis = float(wide.at[a, "avg"] - wide.at[b, "avg"]), "GLUE average"
            else:
                common = [t for t in wide.columns if t != "avg" and pd.notna(wide.at[a, t]) and pd.notna(wide.at[b, t])
                          and (not average_tasks or t in average_tasks)]
                if common:
                    delta = float((wide.loc[a, common] - wide.loc[b, common]).mean())
                    basis = f"mean over {', '.join(common)}"
        rows.append({"claim": claim, "comparison": f"{a} − {b}", "paper": paper, "measured": delta,
                     "basis": basis, "holds": None if delta is None else bool(delta > 0)})
    return pd.DataFrame(rows, columns=["claim", "comparison", "paper", "measured", "basis", "holds"])


def format_claims(claims: pd.DataFrame, tie: float = 0.5) -> str:
    """One line per claim: the point estimate is for / against it, or not measured
    (``|Δ| < tie`` flagged as a near tie).  Whether the difference is resolved is the
    paired bootstrap's to say, not this line's."""
    lines = []
    for row in claims.itertuples():
        if row.holds is None:
            verdict = "not measured (needs both methods)"
        else:
            verdict = (f"point estimate {'FOR' if row.holds else 'AGAINST'} the claim: {row.measured:+.2f} points "
                       f"({row.basis})")
            if abs(row.measured) < tie:
                verdict += f"; |Δ| < {tie:g}: a near tie, within run-to-run noise"
        lines.append(f"{row.claim} [{row.comparison}; paper: {row.paper}] -> {verdict}")
    return "\n".join(lines)


def to_markdown(table: pd.DataFrame, index_name: str = "method", fmt: str | None = None) -> str:
    """A GitHub-flavoured markdown table; numbers formatted with ``fmt`` (e.g. ``"{:+.1f}"``)."""
    if table.empty:
        return "_not available_\n"
    if fmt is not None:
        table = table.apply(lambda col: col.map(lambda v: "–" if pd.isna(v) else fmt.format(v)))
    header = [index_name, *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    lines += ["| " + " | ".join([str(idx), *map(str, row.tolist())]) + " |" for idx, row in table.iterrows()]
    notes = table.attrs.get("footnotes") or []
    if notes:  # why a cell reads "–*" (glue_table)
        lines += ["", *(f"\\* {note}" for note in notes)]
    return "\n".join(lines) + "\n"
