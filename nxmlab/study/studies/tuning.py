"""The dense learning-rate and epoch sweep (issue #12): which dense baseline each task gets.

A preset's ``tuning`` study trains ``dense`` at every ``(learning_rate, epochs)`` of its
``dense_grid`` on ``tuning_tasks`` with ``tuning_seeds``.  :func:`choose_dense` then picks,
per task, the grid point with the best mean validation score over the seeds.  That is
selection on the validation set, as the paper did; every score of a chosen setting is
therefore optimistic, and docs/cpu.md says so next to it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .presets import Preset, get_preset
from .runs import make_run, study_keys

__all__ = ["TUNING_RULE", "load_tuning", "choose_dense", "chosen_settings", "write_tuning"]

#: The rule :func:`choose_dense` applies, in words.
TUNING_RULE = ("Per task, the (learning rate, epochs) of the dense grid with the highest mean validation score "
               "over the tuning seeds, among the points every seed finished: selection on the validation set, "
               "as in the paper.")


def load_tuning(preset: str | Preset, results_dir: str | os.PathLike[str] = "results") -> pd.DataFrame:
    """``task, learning_rate, epochs, seed, score, run`` for every finished run of the sweep."""
    preset = get_preset(preset)
    rows = []
    for task, label, seed, _rho, point in study_keys(preset, "tuning"):
        folder = make_run(preset, task, label, seed, str(results_dir), variant=point).folder()
        metrics = folder.metrics()
        if metrics is None:
            continue
        grid = dict(point)
        rows.append({"task": task, "learning_rate": grid["learning_rate"], "epochs": grid["num_train_epochs"],
                     "seed": seed, "score": 100 * metrics["score"] if metrics["score"] is not None else float("nan"), "run": folder.rel})
    return pd.DataFrame(rows, columns=["task", "learning_rate", "epochs", "seed", "score", "run"])


def choose_dense(tuning: pd.DataFrame, seeds: int) -> pd.DataFrame:
    """Per task and grid point ``mean, std, n``, with ``chosen`` marking the :data:`TUNING_RULE` pick.

    Args:
        tuning: :func:`load_tuning`'s frame.
        seeds: How many seeds a grid point needs before it can be chosen.
    """
    columns = ["task", "learning_rate", "epochs", "mean", "std", "n", "chosen"]
    if tuning.empty:
        return pd.DataFrame(columns=columns)
    summary = (tuning.groupby(["task", "learning_rate", "epochs"], sort=True)["score"]
               .agg(["mean", "std", "count"]).rename(columns={"count": "n"}).reset_index())
    summary["chosen"] = False
    complete = summary[summary["n"] >= seeds]
    for _task, group in complete.groupby("task"):
        summary.loc[group["mean"].idxmax(), "chosen"] = True
    return summary[columns]


def chosen_settings(summary: pd.DataFrame) -> dict[str, dict[str, float]]:
    """``{task: {"learning_rate": ..., "num_train_epochs": ..., "score": ...}}`` of the chosen points."""
    return {row.task: {"learning_rate": float(row.learning_rate), "num_train_epochs": float(row.epochs),
                       "score": float(row.mean)}
            for row in summary[summary["chosen"].astype(bool)].itertuples(index=False)}


def write_tuning(summary: pd.DataFrame, figures_dir: str | os.PathLike[str] = "figures") -> list[Path]:
    """Write :func:`choose_dense`'s frame as ``dense_tuning.csv`` (4 decimals) and ``dense_tuning.md``
    (a table per task with the chosen point in bold, and :data:`TUNING_RULE`)."""
    folder = Path(figures_dir)
    folder.mkdir(parents=True, exist_ok=True)
    csv, md = folder / "dense_tuning.csv", folder / "dense_tuning.md"
    summary.to_csv(csv, index=False, float_format="%.4f")
    lines = ["# Dense tuning sweep (validation score x100, mean +- std over seeds)\n", f"Rule: {TUNING_RULE}\n",
             "| task | learning rate | epochs | mean | std | seeds | chosen |", "|---|---:|---:|---:|---:|---:|---|"]
    for row in summary.itertuples(index=False):
        std = "" if pd.isna(row.std) else f"{row.std:.2f}"
        mean = f"**{row.mean:.2f}**" if row.chosen else f"{row.mean:.2f}"
        lines.append(f"| {row.task} | {row.learning_rate:g} | {row.epochs:g} | {mean} | {std} | {row.n} | "
                     f"{'yes' if row.chosen else ''} |")
    md.write_text("\n".join(lines) + "\n")
    return [csv, md]


def __getattr__(name: str):
    """``plot_tuning``, drawn in :mod:`nxmlab.study.plots.tuning` since issue #30, still answers here."""
    if name == "plot_tuning":
        from ..plots.tuning import plot_tuning

        return plot_tuning
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
