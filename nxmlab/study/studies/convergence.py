"""The ADMM convergence study (issue #12) as tidy frames, and the rule that picks the default.

A preset's ``convergence`` grid names ADMM variants (:data:`~nxmlab.study.studies.presets.VARIANTS`)
and the tasks each runs on.  From the finished runs of that grid:

* :func:`load_convergence`: one row per (task, variant): the setting, the diagnostics at
  the hard prune, the scores before the prune, right after it and after retraining, the
  training loss at the end of ADMM, and ``converged``;
* :func:`load_updates`: one row per (task, variant, source, Z/U update): relative
  distance (root mean square over targets), primal and dual residuals (norms over all targets), flips, and the distance of that update's Z mask to
  the final mask, the start weights' magnitude mask and the ASP mask; ``source`` is
  ``training`` or the ``loss-free`` control (the same schedule with no task loss);
* :func:`choose_default`: the stated rule that picks the preset's ADMM setting.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..results.store import RunFolder, load_masks, read_jsonl
from .presets import Preset, get_preset
from .runs import make_run

__all__ = ["updates_of", "prune_table", "PRUNE_COLUMNS", "convergence_runs", "load_convergence", "load_updates", "choose_default", "DEFAULT_RULE", "backfill_loss_free"]

#: The rule :func:`choose_default` applies, in words (docs/convergence.md quotes it).
DEFAULT_RULE = (
    "Among the variants that meet every convergence criterion (relative distance <= 0.05, flips <= 0.5 % at each "
    "of the last two Z/U updates, last Z mask within 0.5 % of the final mask, prune cost <= 1 validation point) "
    "on every task they ran on, take the one with the lowest training loss at the end of the ADMM phase on the "
    "task every variant ran on (MRPC in the convergence preset). Validation scores enter only through the "
    "prune-cost criterion."
)


def convergence_runs(preset: str | Preset, results_dir: str | os.PathLike[str] = "results") -> pd.DataFrame:
    """``task, variant, label, seed, run, finished``: every run of the preset's convergence grid."""
    preset = get_preset(preset)
    from .runs import study_keys

    rows = []
    for task, label, seed, _rho, variant in study_keys(preset, "convergence"):
        folder = make_run(preset, task, label, seed, str(results_dir), variant=variant).folder()
        rows.append({"task": task, "variant": variant, "label": label, "seed": seed, "run": folder.rel,
                     "finished": folder.finished})
    return pd.DataFrame(rows, columns=["task", "variant", "label", "seed", "run", "finished"])


def _score(metrics: dict, key: str) -> float | None:
    from ..data.metrics import glue_score

    result = metrics["eval"].get(key)
    if not result:
        return None
    return 100 * sum(glue_score(metrics["task"], v) for v in result.values()) / len(result)


def _admm_loss(folder: RunFolder) -> float | None:
    """Mean logged training loss over the second half of the ADMM phase."""
    logs = [r for r in read_jsonl(folder.file(RunFolder.LOG)) if r.get("phase") == "admm" and "loss" in r]
    if not logs:
        return None
    last = max(r["step"] for r in logs)
    late = [r["loss"] for r in logs if r["step"] > last / 2] or [logs[-1]["loss"]]
    return float(np.mean(late))


def load_convergence(preset: str | Preset, results_dir: str | os.PathLike[str] = "results") -> pd.DataFrame:
    """One row per finished (task, variant) run of the preset's convergence grid (see the module doc)."""
    preset = get_preset(preset)
    rows = []
    for run in convergence_runs(preset, results_dir).itertuples(index=False):
        if not run.finished:
            continue
        folder = RunFolder.at(os.path.join(results_dir, run.run))
        spec = make_run(preset, run.task, run.label, run.seed, str(results_dir), variant=run.variant)
        cfg, m = spec.cfg, folder.metrics()
        diag = m.get("diagnostics") or {}
        flips = diag.get("flips_last_two") or []
        rows.append({
            "task": run.task, "variant": run.variant, "run": run.run, "seed": run.seed,
            "penalty": "decoupled" if cfg.decoupled_penalty else "coupled",
            "rho": cfg.rho, "rho_factor": cfg.rho_factor, "u_init": cfg.u_init,
            "updates_per_epoch": cfg.admm_updates_per_epoch or 1, "admm_epochs": float(spec.args.num_train_epochs),
            "retrain_epochs": float(cfg.retrain_epochs),
            "rel_dist_at_prune": diag.get("rel_dist_at_prune"),
            "max_flips_last_two": max(flips) if flips else None,
            "z_final_mask_distance": diag.get("z_final_mask_distance"),
            "prune_cost_points": diag.get("prune_cost_points"),
            "before_prune": _score(m, "before_prune"), "after_prune": _score(m, "after_prune"),
            "score": 100 * m["score"] if m["score"] is not None else float("nan"), "train_loss": _admm_loss(folder),
            "mask_dist_pretrained_magnitude": (m.get("mask_distance") or {}).get("pretrained_magnitude"),
            "converged": diag.get("converged"), "seconds": m.get("seconds"),
        })
    return pd.DataFrame(rows)


def _numel(folder: RunFolder, density: float) -> float | None:
    distances = folder.read_frame(RunFolder.MASK_DISTANCES)
    if distances is None or distances.empty:
        return None
    per_reference = distances.groupby("reference")["kept"].sum().iloc[0]
    return per_reference / 2 / density


def load_updates(preset: str | Preset, results_dir: str | os.PathLike[str] = "results") -> pd.DataFrame:
    """One row per (task, variant, source, Z/U update) of the convergence grid (see the module doc).

    Runs trained before a record existed lack it: the loss-free control and the Z-mask
    distances then have no rows, and the ``dist_*`` columns are missing (NaN).
    """
    from ...nxm import NxM

    preset = get_preset(preset)
    density = NxM.parse(preset.pattern).density
    parts = []
    for run in convergence_runs(preset, results_dir).itertuples(index=False):
        if not run.finished:
            continue
        folder = RunFolder.at(os.path.join(results_dir, run.run))
        parts += _run_updates(folder, density, {"task": run.task, "variant": run.variant, "run": run.run})
    if not parts:
        return pd.DataFrame()
    frame = pd.concat(parts, ignore_index=True)
    first = ["task", "variant", "run", "source", "step"]
    return frame[first + [c for c in frame.columns if c not in first]]


def updates_of(scores: pd.DataFrame) -> pd.DataFrame:
    """:func:`load_updates`'s rows for any runs of a :func:`~nxmlab.study.results.frames.load_scores`
    frame that have ADMM dynamics, keyed by ``task, label, seed, run, source, step`` and
    ``update`` (1, 2, ... per run and source)."""
    from ...nxm import NxM
    from ..results.frames import run_folders

    parts = []
    for row, folder in run_folders(scores):
        pattern = scores.loc[scores["run"] == row.run, "pattern"].iloc[0]
        if pattern is None or pd.isna(pattern):
            continue
        parts += _run_updates(folder, NxM.parse(pattern).density,
                              {"task": row.task, "label": row.label, "seed": row.seed, "run": row.run})
    if not parts:
        return pd.DataFrame()
    frame = pd.concat(parts, ignore_index=True)
    frame["update"] = frame.groupby(["run", "source"])["step"].rank(method="dense").astype(int)
    first = ["task", "label", "seed", "run", "source", "update", "step"]
    return frame[first + [c for c in frame.columns if c not in first]]


def _run_updates(folder: RunFolder, density: float, keys: dict) -> list[pd.DataFrame]:
    """Per Z/U update of one run: the training run's records and its loss-free control's."""
    parts = []
    dynamics = folder.read_frame(RunFolder.DYNAMICS)
    numel = _numel(folder, density)
    if dynamics is not None and not dynamics.empty and numel:
        upd = dynamics[(dynamics["event"] == "update") & (dynamics["phase"] == "admm")].copy()
        upd["w2"] = upd["rel_dist"].astype("float64") ** 2  # rel_dist: root mean square over targets
        frame = upd.groupby("step").agg(
            rho_used=("rho_used", "first"), flips=("flips", "sum"),
            primal=("primal", lambda s: math.sqrt(float((s.astype("float64") ** 2).sum()))),
            dual=("dual", lambda s: math.sqrt(float((s.astype("float64") ** 2).sum()))),
            rel_dist=("w2", lambda s: math.sqrt(float(s.mean())))).reset_index()
        frame["flips"] = frame["flips"] / numel
        z = folder.read_frame(RunFolder.Z_MASKS)
        if z is not None and not z.empty:
            wide = z.pivot_table(index="step", columns="reference", values="distance").add_prefix("dist_")
            frame = frame.merge(wide.reset_index(), on="step", how="left")
        parts.append(frame.assign(source="training", **keys))
    control = folder.read_frame(RunFolder.LOSS_FREE)
    if control is not None and not control.empty:
        control = control.rename(columns={"start_distance": "dist_start_magnitude",
                                          "final_distance": "dist_final"})
        parts.append(control.assign(source="loss-free", **keys))
    return parts


def choose_default(convergence: pd.DataFrame, task: str | None = None) -> tuple[str | None, pd.DataFrame]:
    """``(variant, table)``: the variant :data:`DEFAULT_RULE` picks, and per variant the
    tasks it ran on, whether it converged on all of them, and its ADMM training loss on
    ``task`` (losses of different tasks are on different scales, so only one task's are
    compared).

    ``task`` defaults to the (alphabetically first) task every variant ran on.
    ``variant`` is ``None`` when no variant that ran on ``task`` converged everywhere.
    """
    if task is None and not convergence.empty:
        common = set.intersection(*(set(g["task"]) for _, g in convergence.groupby("variant")))
        task = min(common) if common else None
    rows = []
    for variant, group in convergence.groupby("variant", sort=False):
        on_task = pd.to_numeric(group.loc[group["task"] == task, "train_loss"], errors="coerce")
        rows.append({"variant": variant, "tasks": ", ".join(sorted(group["task"])),
                     "converged_everywhere": bool(group["converged"].fillna(False).astype(bool).all()),
                     "train_loss": float(on_task.iloc[0]) if len(on_task) else float("nan")})
    table = pd.DataFrame(rows, columns=["variant", "tasks", "converged_everywhere", "train_loss"])
    eligible = table[table["converged_everywhere"] & table["train_loss"].notna()].sort_values("train_loss")
    return (None if eligible.empty else str(eligible.iloc[0]["variant"])), table


def backfill_loss_free(preset: str | Preset, results_dir: str | os.PathLike[str] = "results") -> list[str]:
    """Write ``loss_free.parquet`` into finished grid runs that were trained before it existed.

    The control depends only on the run's configuration (start weights, schedule, learning
    rates), so it is computed afterwards exactly as a new run computes it at its end.
    ``admm_init="pretrained"`` runs only (the start is the pretrained model).  Returns the
    runs it wrote.
    """
    from ...targets import select_targets
    from ..data.models import load_model_and_tokenizer
    from ..train.hooks import ADMMHooks

    preset = get_preset(preset)
    written = []
    for run in convergence_runs(preset, results_dir).itertuples(index=False):
        folder = RunFolder.at(os.path.join(results_dir, run.run))
        if not run.finished or folder.file(RunFolder.LOSS_FREE).is_file():
            continue
        spec = make_run(preset, run.task, run.label, run.seed, str(results_dir), variant=run.variant)
        if spec.method.start(spec) != "pretrained":
            continue
        phase = folder.state()["phases"]["admm"]
        model, _ = load_model_and_tokenizer(spec.cfg.model, spec.task.num_labels,
                                            is_regression=spec.task.is_regression, seed=spec.seed)
        steps_per_epoch = round(phase["steps"] / phase["epochs"])
        hooks = ADMMHooks(spec, folder, model, lambda m: select_targets(m, spec.components, pattern=spec.pattern),
                          steps_per_epoch)
        final = load_masks(folder.masks_file, "final").get("final") if folder.masks_file.is_file() else None
        folder.write_frame(RunFolder.LOSS_FREE, hooks.loss_free(final))
        written.append(run.run)
    return written


#: Columns of :func:`prune_table`.
PRUNE_COLUMNS = ["task", "label", "seed", "score", "before_prune", "after_prune", "prune_cost_points",
                 "rel_dist_at_prune", "flips_first_update", "flips_last_update", "converged",
                 "mask_dist_dense_magnitude", "mask_dist_loss_free", "mask_dist_pretrained_magnitude"]


def prune_table(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per ADMM run of a score frame (runs with ADMM diagnostics): the scores before
    and right after the hard prune and its cost (points), the relative distance at the prune,
    the flips at the first and last Z/U updates (fraction of positions), ``converged``, and
    the final mask's distance (fraction of kept positions) to ASP's mask from the same dense
    model, to the loss-free control's prune mask and to the pretrained magnitude mask."""
    if scores.empty or "rel_dist_at_prune" not in scores:
        return pd.DataFrame(columns=PRUNE_COLUMNS)
    admm = scores[scores["rel_dist_at_prune"].notna()].copy()
    admm["task"] = pd.Categorical(admm["task"], [t for t in dict.fromkeys(
        ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli", *admm["task"]])])
    return admm.sort_values(["task", "label", "seed"])[PRUNE_COLUMNS].reset_index(drop=True)
