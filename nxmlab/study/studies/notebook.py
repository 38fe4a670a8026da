"""The study notebooks' shared setup, and the one place they train: :func:`run_study`.

Every notebook follows one convention, so that JupyterLab behaves as papermill does:

* a ``parameters`` cell of plain values, among them ``results_dir = None``,
  ``figures_dir = None`` and ``train = False``;
* a setup cell, ``P, results_dir, figures_dir, train = notebook.setup(preset, results_dir,
  figures_dir, train, **overrides)``, which resolves the paths (``None``: the repository's
  ``results/`` and ``figures/``; a relative path: relative to the repository root, whatever
  the kernel's working directory) and reads ``train`` strictly (:func:`as_train`);
* later cells that call :func:`run_study` with ``train=train`` and the frames and plots modules.

Training only happens through :func:`nxmlab.study.train.recipe.run_experiment`, which reuses
finished runs, and only with ``train=True``: otherwise a missing run is reported with the
plan to train it, and the tables and plots show the finished runs.  With ``train=False`` a
results folder that holds no finished run at all is refused
(:class:`~nxmlab.study.results.verify.EmptyStoreError`, naming the folder and the repository's
``results/``): an empty table would look like a result.  Training shows progress: one line
per few steps in a notebook (or wherever stdout is not a terminal), Trainer's progress bars
in a terminal (:mod:`~nxmlab.study.train.progress`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from ..catalog import repo_root, resolve_dir
from ..results.frames import load_scores
from ..results.store import DamagedFileError
from .presets import Preset, resolve_preset
from .runs import preset_runs, row_labels

__all__ = ["Setup", "setup", "describe_preset", "run_study", "answers_beside", "repo_root", "resolve_dir", "as_train"]

#: What a notebook with ``train=False`` and an empty results folder should do instead.
_EMPTY_ADVICE = "set results_dir = None for them, or train = True to train the runs"


def as_train(value: Any) -> bool:
    """The ``train`` parameter as a bool, read strictly by :func:`~nxmlab.study.inputs.parse_bool`
    (``True``/``False``, ``1``/``0``, ``"yes"``/``"no"`` ...); ``None`` and ``"none"`` are False.

    Raises:
        InputError: anything else (e.g. ``"maybe"``), never a truthy True.
    """
    from ..inputs import parse_bool

    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
        return False
    return parse_bool("train", value, "notebook parameters")


class Setup(NamedTuple):
    """What :func:`setup` resolved; a notebook unpacks it into ``P, results_dir, figures_dir, train``."""

    preset: Preset
    results_dir: Path
    figures_dir: Path
    train: bool


def describe_preset(preset: Preset) -> str:
    """A few lines describing what a preset trains (the notebooks' first output)."""
    from ...nxm import NxM

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
        + "".join(f"  {task} only: {', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in opts)}\n"
                  for task, opts in preset.task_options)
        + f"  limits: train {preset.train_limit or 'all'}, eval {preset.eval_limit or 'all'}; "
        f"{table} table runs, {rho} rho-sweep runs"
    )


def setup(preset: str | Preset, results_dir: str | os.PathLike[str] | None = None,
          figures_dir: str | os.PathLike[str] | None = None, train: Any = False, **overrides: Any) -> Setup:
    """Resolve a notebook's parameters and print what it will do.

    Args:
        preset: Preset name or :class:`~nxmlab.study.studies.presets.Preset`.
        results_dir: Results store (:func:`resolve_dir`; ``None``: the repository's ``results/``).
        figures_dir: Figures and tables (``None``: the repository's ``figures/``).
        train: Whether missing runs are trained (:func:`as_train`; default ``False``).
        **overrides: Preset field overrides; ``None`` keeps the preset's value.

    Returns:
        ``Setup(preset, results_dir, figures_dir, train)``, with the plotting style set.

    Raises:
        EmptyStoreError: ``train`` is false and the results folder holds no finished run.
    """
    from ..plots.core import set_style
    from ..results.verify import require_finished_runs

    resolved = resolve_preset(preset, **overrides)
    out = Setup(resolved, resolve_dir(results_dir, "results"), resolve_dir(figures_dir, "figures"), as_train(train))
    if not out.train:
        require_finished_runs(out.results_dir, _EMPTY_ADVICE)
    set_style()
    print("kernel:", sys.executable)
    print(describe_preset(resolved))
    print(f"results: {out.results_dir}\nfigures: {out.figures_dir}")
    print("train=True: missing runs are trained" if out.train
          else "train=False: missing runs are listed with the plan to train them, never trained")
    return out


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


def run_study(preset: Preset | str, study: str | Sequence[str], results_dir: str | os.PathLike[str] | None = None,
              glue_dir: str | None = None, train: Any = False, log: Callable[[str], None] | None = print
              ) -> pd.DataFrame:
    """Reuse (and with ``train=True`` train) every run of a study and return its rows of the score frame.

    Args:
        preset: A :class:`~nxmlab.study.studies.presets.Preset` or a preset name.
        study: ``"table"``, ``"rho"``, ``"dynamics"`` or a list of them (see :mod:`nxmlab.study.studies.presets`).
        results_dir: Results store root (:func:`resolve_dir`; ``None``: the repository's ``results/``).
        glue_dir: GLUE mirror (``None``: ``$NXMLAB_GLUE_DIR``, else the Hub).
        train: Only ``True`` trains missing runs (:func:`as_train`); otherwise they are listed
            with the plan to train them, and nothing is written to the store.
        log: Progress printer (one line per run, then the plan); ``None`` for silence.

    Returns:
        :func:`~nxmlab.study.results.frames.load_scores` rows of the study's finished runs.

    Raises:
        EmptyStoreError: ``train`` is false and the results folder holds no finished run.
    """
    from ..results.verify import require_finished_runs
    from ..train.progress import progress_callbacks
    from ..train.recipe import run_experiment

    train = as_train(train)
    results_dir = resolve_dir(results_dir, "results")
    preset = resolve_preset(preset)
    if not train:
        require_finished_runs(results_dir, _EMPTY_ADVICE)
    runs = preset_runs(preset, study, str(results_dir), glue_dir)
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
            metrics = run_experiment(spec, callbacks=progress_callbacks(spec.args))
            if log:
                log(f"{what}: done in {time.perf_counter() - tic:.0f} s, {_score_text(metrics)}")
    scores = load_scores(results_dir)
    out = scores[scores["run"].isin(set(keys))].reset_index(drop=True)
    rows = row_labels(preset, study, str(results_dir), glue_dir)  # e.g. nxmlab-admm beside the authors' admm
    out["label"] = [rows.get(run, label) for run, label in zip(out["run"], out["label"], strict=True)]
    out.attrs.update(scores.attrs)
    if missing and log:
        log(_plan(preset, len(runs), missing, results_dir))
    return out


def _plan(preset: Preset, total: int, missing: int, results_dir: Path) -> str:
    """What ``train=True`` would do: the missing runs, how to train them, and the projected cost."""
    from .cost import projected_cost
    from .presets import get_preset

    lines = [f"plan: {missing} of {total} runs (marked 'not run yet' above) are not in {results_dir}; "
             "nothing was trained (train=False).",
             "To train them, set train = True in the parameters cell and run the notebook again "
             f"(`nxmlab reproduce --preset {preset.name} --dry-run` prints the whole preset's plan)."]
    if preset == get_preset(preset.name):
        lines += projected_cost(preset.name)
    lines.append("The tables and plots below show the finished runs.")
    return "\n".join(lines)


def answers_beside(preset: Preset | str, beside: str | None, figures_dir: str | os.PathLike[str]
                   ) -> pd.DataFrame | None:
    """This preset's task-average answers beside another preset's, as committed.

    Reads ``paired_differences.csv`` of this preset (written into ``figures_dir`` by its
    ``glue_table`` notebook) and of ``beside`` (``<figures_dir>/../<beside>/``, where ``make
    figures`` draws it beside ``figures/protocol/``, else ``<figures_dir>/<beside>/``: the
    notebook's default ``figures/``, else the repository's ``figures/<beside>/``), keeps the
    comparisons this preset measured, and writes ``answers_side_by_side.csv`` and ``.md`` into ``figures_dir``
    (:func:`~nxmlab.study.plots.stats.write_side_by_side`; each preset's ``setting`` heads its
    column).  Returns the tidy frame, or ``None`` (saying why) when ``beside`` is ``None`` or a
    file is missing.
    """
    from ..plots.stats import read_differences, side_by_side, write_side_by_side

    preset = resolve_preset(preset)
    if beside is None:
        return None
    other = resolve_preset(beside)
    figures_dir = Path(figures_dir)
    # beside figures/protocol, or in figures/, else the repository's committed figures/<beside>/
    places = [figures_dir.parent / other.name, figures_dir / other.name, resolve_dir(None, "figures") / other.name]
    there = next((p for p in places if (p / "paired_differences.csv").is_file()), places[0])
    own, theirs = read_differences(figures_dir), read_differences(there)
    for name, frame, where in ((preset.name, own, figures_dir), (other.name, theirs, there)):
        if frame is None:
            print(f"no answers of {name} to put side by side: {where / 'paired_differences.csv'} is missing "
                  f"(its glue_table notebook writes it)")
            return None
    answers = side_by_side({other.name: theirs, preset.name: own})
    answers = answers[answers["comparison"].isin(answers.loc[answers["study"] == preset.name, "comparison"])]
    write_side_by_side(answers, figures_dir, {p.name: p.setting or p.description for p in (other, preset)})
    return answers.reset_index(drop=True)
