"""The dense learning-rate and epoch sweep (issue #12): which dense baseline each task gets.

A preset's ``tuning`` study trains ``dense`` at every ``(learning_rate, epochs)`` of its
``dense_grid`` on ``tuning_tasks`` with ``tuning_seeds``.  :func:`choose_dense` then picks,
per task, the grid point with the best mean validation score over the seeds.  That is
selection on the validation set, as the paper did; every score of a chosen setting is
therefore optimistic, and the README says so next to it.
"""

from __future__ import annotations

import os

import pandas as pd

from .presets import Preset, get_preset, make_run, study_keys

__all__ = ["TUNING_RULE", "load_tuning", "choose_dense"]

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
