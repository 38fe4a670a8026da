"""Settings chosen on held-out data: the ``selection`` study of a preset (issue #28).

A preset with a ``selection`` grid trains every grid point of every selected label on a
seeded held-out split of the training set (``heldout``, see
:func:`nxmlab.study.data.glue.heldout_split`) with its ``selection_seed``, which is never one
of its reported seeds.  :func:`choose` applies the rule below to the finished selection
runs; the preset records the result in its ``chosen`` field, and its ``table`` runs
(reported on the GLUE validation set, with fresh seeds) use it.  Validation scores never
enter a choice, and selection runs never enter a reported table.

**The rule.** Per task and label, once every grid point has finished: among the points
that are *eligible*, take the one with the highest held-out score (the first in grid
order on a tie).  Every point is eligible, except for the labels in the preset's
``must_converge``: those points must meet the convergence criteria at the prune
(:data:`nxmlab.study.train.hooks.CONVERGENCE`, the prune cost measured on the held-out split)
*and* leave the mask free at the first Z/U update (at least :data:`FREE_FLIPS` of the
positions flip there, as much movement as the convergence criteria allow at the last two
updates).  When no point is eligible the label has no choice on that task, and its table
runs wait.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pandas as pd

from ..results.store import DamagedFileError
from .presets import Preset, get_preset
from .runs import make_run, study_keys

__all__ = ["FREE_FLIPS", "RULE", "load_selection", "choose", "recorded"]

#: Smallest fraction of all target positions that must flip at the first Z/U update for the
#: mask to count as free to move (the convergence criteria's bound on the last two updates).
FREE_FLIPS = 0.005

#: The selection rule in one sentence (docs/protocol.md and the notebook print it).
RULE = ("per task and label, the grid point with the highest score on the preset's held-out split of the "
        "training set (10 %; with its selection seed, never a reported seed: protocol 42, cpu 41); for nxmlab's "
        "ADMM only among the points that converge at the "
        "prune (relative distance <= 0.05, <= 0.5 % flips at each of the last two Z/U updates, last Z mask "
        "within 0.5 % of the final mask, prune cost <= 1 held-out point) and whose first Z/U update flips "
        f">= {100 * FREE_FLIPS:g} % of the positions")

COLUMNS = ["task", "label", "point", "run", "finished", "score", "converged", "flips_first_update",
           "rel_dist_at_prune", "prune_cost_points", "eligible", "chosen"]


def load_selection(preset: str | Preset, results_dir: str | os.PathLike[str] = "results") -> pd.DataFrame:
    """One row per grid point of the preset's selection study (columns :data:`COLUMNS`).

    ``point`` is the grid point as JSON; ``score`` the held-out score (x100); ``eligible``
    whether the rule may choose it; ``chosen`` marks the point :func:`choose` picks (only
    once every point of its task and label has finished).
    """
    preset = get_preset(preset)
    must = set(preset.must_converge)
    rows = []
    for task, label, seed, _rho, point in study_keys(preset, "selection"):
        if label == "dense":
            continue
        spec = make_run(preset, task, label, seed, str(results_dir), variant=point)
        folder = spec.folder()
        grid = {k: v for k, v in point if k != "heldout"}
        row = {"task": task, "label": label, "point": json.dumps(grid, sort_keys=True), "run": folder.rel,
               "finished": False, "score": None, "converged": None, "flips_first_update": None,
               "rel_dist_at_prune": None, "prune_cost_points": None, "eligible": False, "chosen": False}
        try:
            metrics = folder.metrics()
        except DamagedFileError:
            metrics = None
        if metrics is not None:
            diag = metrics.get("diagnostics") or {}
            flips = diag.get("flips_first_update")
            row.update(finished=True, score=None if metrics["score"] is None else 100 * metrics["score"],
                       converged=diag.get("converged"), flips_first_update=flips,
                       rel_dist_at_prune=diag.get("rel_dist_at_prune"), prune_cost_points=diag.get("prune_cost_points"))
            row["eligible"] = row["score"] is not None and (label not in must or (
                bool(diag.get("converged")) and flips is not None and flips >= FREE_FLIPS))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for (_task, _label), group in frame.groupby(["task", "label"], sort=False):
        if group["finished"].all() and group["eligible"].any():
            best = group[group["eligible"]]["score"].astype(float).idxmax()  # first on a tie
            frame.loc[best, "chosen"] = True
    return frame


def choose(preset: str | Preset, results_dir: str | os.PathLike[str] = "results"
           ) -> dict[str, dict[str, dict[str, Any]]]:
    """``{task: {label: options}}``: the rule's choice from the finished selection runs
    (tasks and labels whose grid is unfinished, or has no eligible point, are left out).
    The preset's ``chosen`` field records it."""
    frame = load_selection(preset, results_dir)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in frame[frame["chosen"]].itertuples(index=False):
        out.setdefault(row.task, {})[row.label] = json.loads(row.point)
    return out


def recorded(preset: str | Preset) -> dict[str, dict[str, dict[str, Any]]]:
    """The preset's ``chosen`` field in :func:`choose`'s form, to compare the two."""
    return {task: {label: dict(options) for label, options in per_label}
            for task, per_label in get_preset(preset).chosen}
