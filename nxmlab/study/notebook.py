"""The study notebooks' shared setup, and the one place they train: :func:`run_study`.

Every notebook's first code cell is ``P = notebook.setup(preset, **overrides)``; its
later cells call :func:`run_study` and the frames and plots modules.  Training only
happens through :func:`nxmlab.study.recipe.run_experiment`, which reuses finished runs,
so re-executing a notebook only re-draws.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .frames import load_scores
from .presets import Preset, preset_runs, resolve_preset
from .store import DamagedFileError

__all__ = ["setup", "describe_preset", "run_study"]


def describe_preset(preset: Preset) -> str:
    """A few lines describing what a preset trains (the notebooks' first output)."""
    from ..nxm import NxM

    pattern = NxM.parse(preset.pattern)
    table, rho = len(preset_runs(preset, "table")), len(preset_runs(preset, "rho"))
    return (
        f"preset {preset.name!r}: {preset.description}\n"
        f"  model {preset.model}, pattern {pattern!r}, tasks {', '.join(preset.tasks)}, "
        f"seeds {', '.join(map(str, preset.seeds))}\n"
        f"  methods {', '.join(preset.labels)}; {preset.epochs:g} epochs (+{preset.retrain_epochs:g} retrain after "
        f"ADMM), lr {preset.learning_rate:g}, batch {preset.batch_size}, rho {preset.rho:g}\n"
        + (f"  rho grid {', '.join(f'{r:g}' for r in preset.rho_grid)} on {', '.join(preset.rho_tasks)}\n"
           if preset.rho_grid and preset.rho_tasks else "  no rho sweep\n")
        + (f"  matched budget: {preset.budget:g} passes over the training set per sparse run\n" if preset.budget else "")
        + (f"  options: {', '.join(f'{k}={v}' for k, v in preset.options)}\n" if preset.options else "")
        + f"  limits: train {preset.train_limit or 'all'}, eval {preset.eval_limit or 'all'}; "
        f"{table} table runs, {rho} rho-sweep runs"
    )


def setup(preset: str | Preset, **overrides: Any) -> Preset:
    """Resolve the notebook's preset (``None`` overrides keep the preset's values), set the
    plotting style, and print the kernel and what the preset trains."""
    from .plots import set_style

    resolved = resolve_preset(preset, **overrides)
    set_style()
    print("kernel:", sys.executable)
    print(describe_preset(resolved))
    return resolved


@contextlib.contextmanager
def _quiet_datasets():
    """No per-map progress bars from ``datasets`` while runs load their data (restored afterwards)."""
    from datasets.utils import logging as ds_logging

    enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            ds_logging.enable_progress_bar()


def _score_text(metrics: dict[str, Any]) -> str:
    if metrics["score"] is None:
        return f"no score ({(metrics.get('missing') or {}).get('score', 'missing')})"
    return f"score {100 * metrics['score']:.1f}"


def run_study(preset: Preset | str, study: str | Sequence[str], results_dir: str | Path = "results",
              glue_dir: str | None = None, train: bool = True, log: Callable[[str], None] | None = print
              ) -> pd.DataFrame:
    """Train (or reuse) every run of a study and return its rows of the score frame.

    Args:
        preset: A :class:`~nxmlab.study.presets.Preset` or a preset name.
        study: ``"table"``, ``"rho"``, ``"dynamics"`` or a list of them (see :mod:`nxmlab.study.presets`).
        results_dir: Results store root.
        glue_dir: GLUE mirror (``None``: ``$NXMLAB_GLUE_DIR``, else the Hub).
        train: ``False`` only loads finished runs (missing ones are reported, not trained).
        log: Progress printer (one line per run); ``None`` for silence.

    Returns:
        :func:`~nxmlab.study.frames.load_scores` rows of the study's finished runs.
    """
    from .inputs import parse_bool
    from .recipe import run_experiment

    train = parse_bool("train", train, "notebook parameters")  # "no" is false, "maybe" an error
    runs = preset_runs(resolve_preset(preset), study, str(results_dir), glue_dir)
    keys, missing = [], 0
    with _quiet_datasets():
        for i, spec in enumerate(runs, 1):
            folder = spec.folder()
            keys.append(folder.rel)
            what = f"[{i}/{len(runs)}] {spec.task.name} {spec.label} seed {spec.seed}" + (
                f" rho {spec.cfg.rho:g}" if "rho" in spec.method.options else "")
            try:
                metrics = folder.metrics()
            except DamagedFileError as exc:  # reported, skipped: one damaged run never blocks the study
                if log:
                    log(f"{what}: DAMAGED, skipped: {exc} (retrain it with --overwrite or move it away)")
                continue
            if metrics is not None:
                if log:
                    log(f"{what}: reused, {_score_text(metrics)}")
                continue
            if not train:
                missing += 1
                if log:
                    log(f"{what}: not run yet (train=False)")
                continue
            if log:
                log(f"{what}: training ...")
            tic = time.perf_counter()
            metrics = run_experiment(spec)
            if log:
                log(f"{what}: done in {time.perf_counter() - tic:.0f} s, {_score_text(metrics)}")
    scores = load_scores(results_dir)
    out = scores[scores["run"].isin(set(keys))].reset_index(drop=True)
    out.attrs.update(scores.attrs)
    if missing and log:
        log(f"{missing} of {len(runs)} runs are missing; tables and plots show the finished ones")
    return out
