"""A preset's run lists: the parsed runs each study trains (:func:`preset_runs`).

:func:`make_run` builds one run of a preset, :func:`study_keys` names the runs of one
study (or several) in training order, and :func:`preset_runs` parses them into
:class:`~nxmlab.study.train.config.RunSpec` runs for :func:`nxmlab.study.train.recipe.run_experiment`.
:func:`row_labels` and :func:`membership` map stored runs back to their table rows and
studies.  The presets themselves are :mod:`nxmlab.study.studies.presets`, which this module reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from ...nxm import NxM
from ..train.methods import parse_label
from .presets import PRESETS, STUDIES, VARIANTS, Preset, get_preset

__all__ = ["make_run", "study_keys", "preset_runs", "pending_runs", "row_labels", "membership"]


def make_run(preset: Preset, task: str, label: str, seed: int, results_dir: str = "results",
             glue_dir: str | None = None, rho: float | None = None,
             variant: str | tuple[tuple[str, Any], ...] | None = None):
    """The parsed :class:`~nxmlab.study.train.config.RunSpec` of one run of ``preset``.

    The preset's ``options`` apply first, then its ``task_options`` for ``task`` (e.g. a
    tuned learning rate), then the ``variant``'s overrides (a name in
    :data:`VARIANTS`, or ``(field, value)`` pairs as the tuning study's grid points),
    (:data:`VARIANTS`), then ``rho``.  With a ``budget``, the method's last phase gets the
    epochs that make the run pay exactly ``budget`` passes over the training set
    (:meth:`~nxmlab.study.train.methods.Method.match_budget`).
    """
    from ..train.config import NxMTrainingArguments, RunConfig, RunSpec

    base, row_options = preset.row(label)
    method, kd = parse_label(base)
    extra = VARIANTS[variant] if isinstance(variant, str) else dict(variant or ())
    chosen = {} if "heldout" in extra else preset.choice(task, label)  # a selection run is a grid point
    overrides = {**dict(preset.options), **dict(dict(preset.task_options).get(task, ())), **row_options, **chosen,
                 **extra}
    if rho is not None:
        overrides["rho"] = float(rho)
    cfg_fields = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    cfg_overrides = {k: (cfg_fields[k] if v is None else v) for k, v in overrides.items() if k in cfg_fields}
    cfg = RunConfig(
        task=task, method=method.name, kd=kd, model=preset.model, pattern=preset.pattern,
        rho=preset.rho, retrain_epochs=float(preset.retrain_epochs),
        max_seq_length=preset.max_seq_length, train_limit=preset.train_limit, eval_limit=preset.eval_limit,
        glue_dir=None if glue_dir is None else str(glue_dir), results_dir=str(results_dir),
        log_interval=preset.log_interval,
    )
    cfg = dataclasses.replace(cfg, **cfg_overrides)
    arg_defaults = {f.name: f.default for f in dataclasses.fields(NxMTrainingArguments)}
    arg_overrides = {k: (arg_defaults[k] if v is None else v) for k, v in overrides.items() if k not in cfg_fields}
    args = NxMTrainingArguments(**{
        "num_train_epochs": float(preset.epochs), "per_device_train_batch_size": preset.batch_size,
        "learning_rate": preset.learning_rate, "seed": seed, "save_steps": preset.save_steps,
        "logging_steps": preset.logging_steps, "disable_tqdm": True, "report_to": "none", **arg_overrides,
    })
    if preset.budget is not None and method.sparse and cfg.dense_epochs is None:
        cfg = dataclasses.replace(cfg, dense_epochs=float(preset.epochs))  # the dense run keeps its length
    if not method.sparse:  # the options' dense_* settings are the dense run's own (RunSpec.dense)
        if cfg.dense_epochs is not None:
            args.num_train_epochs = float(cfg.dense_epochs)
        if cfg.dense_batch_size is not None:
            args.per_device_train_batch_size = int(cfg.dense_batch_size)
        if cfg.dense_learning_rate is not None:
            args.learning_rate = float(cfg.dense_learning_rate)
    spec = RunSpec.parse(cfg, args)
    if preset.budget is not None and method.sparse:
        field, epochs = method.match_budget(spec, preset.budget)
        if hasattr(args, field) and field not in cfg_fields:
            setattr(args, field, epochs)
        else:
            cfg = dataclasses.replace(cfg, **{field: epochs})
        spec = RunSpec.parse(cfg, args)
    return spec


def _with_dense(preset: Preset, task: str, seed: int, labels: list[str]) -> list[str]:
    """``labels`` with ``dense`` first when one of them needs the dense run."""
    specs = [make_run(preset, task, label, seed) for label in labels]  # the identity needs no store
    if "dense" not in labels and any(spec.method.needs_dense(spec) for spec in specs):
        labels = ["dense", *labels]
    return labels


def study_keys(preset: str | Preset, study: str | Sequence[str] = "table"
               ) -> list[tuple[str, str, int, float | None, str | None]]:
    """``(task, label, seed, rho, variant)`` of every run one study (or several) needs, in training order.

    * ``table``: every label of the preset (the labels of ``one_seed`` on the first seed only);
    * ``rho``: the labels whose method has a ``rho`` option, without KD, over ``rho_grid``
      on ``rho_tasks``;
    * ``dynamics``: the labels whose method records training dynamics (has phase hooks);
    * ``convergence``: the same labels without KD, once per ``(variant, tasks)`` of the
      preset's ``convergence`` grid (:data:`VARIANTS`).

    * ``patterns``: every label of ``pattern_methods`` at every n:m of ``patterns`` on
      ``pattern_tasks`` (the preset's seeds; ``variant`` holds the pattern), after the
      dense runs they need; a method whose mask is not n:m (``unstructured``) runs once
      per density, at the first pattern of that density;
    * ``tuning``: ``dense`` at every ``(learning_rate, epochs)`` of ``dense_grid`` on
      ``tuning_tasks`` and ``tuning_seeds`` (``variant`` holds the grid point).

    ``rho`` is set for the rho sweep's runs and ``variant`` for the convergence and tuning studies'
    (both ``None`` elsewhere); a dense run comes before the sparse runs that need it.
    Duplicates are kept: :func:`preset_runs` merges runs with identical configurations.
    """
    preset = get_preset(preset)
    studies = STUDIES if study == "all" else ((study,) if isinstance(study, str) else tuple(study))
    for name in studies:
        if name not in STUDIES:
            raise ValueError(f"unknown study {name!r}; choose from {', '.join(STUDIES)} or all")
    wanted: list[tuple[str, str, int, float | None, str | None]] = []
    for name in studies:
        if name == "rho":
            swept = [lb for lb in preset.labels if lb == preset.row(lb)[0]
                     and "rho" in parse_label(lb)[0].options and not parse_label(lb)[1]]
            wanted += [(task, label, seed, rho, None) for task in preset.rho_tasks for seed in preset.seeds
                       for label in swept for rho in sorted(preset.rho_grid)]
            continue
        if name == "patterns":
            for task in preset.pattern_tasks:
                for seed in preset.seeds:
                    labels = _with_dense(preset, task, seed, list(preset.pattern_methods))
                    for label in labels:
                        structured = label == "dense" or parse_label(label)[0].rule.structured
                        densities = set()
                        for pattern in preset.patterns:
                            # dense runs once; an unstructured rule runs once per density
                            key = pattern if structured else NxM.parse(pattern).density
                            if (label == "dense" and densities) or key in densities:
                                continue
                            densities.add(key)
                            wanted.append((task, label, seed, None,
                                           None if label == "dense" else (("pattern", pattern),)))
            continue
        if name == "selection":
            # per task: the held-out dense start, then every grid point of every selected label
            heldout = (("heldout", preset.heldout),)
            for task in preset.tasks if preset.selection else ():
                wanted.append((task, "dense", preset.selection_seed, None, heldout))
                wanted += [(task, label, preset.selection_seed, None, point + heldout)
                           for label, grid in preset.selection if label in preset.methods for point in grid]
            continue
        if name == "tuning":
            wanted += [(task, "dense", seed, None, (("learning_rate", lr), ("num_train_epochs", epochs)))
                       for task in preset.tuning_tasks for lr, epochs in preset.dense_grid
                       for seed in preset.tuning_seeds]
            continue
        if name == "convergence":
            labels = [lb for lb in preset.labels if lb == preset.row(lb)[0]
                      and parse_label(lb)[0].records_dynamics and not parse_label(lb)[1]]
            wanted += [(task, label, seed, None, variant) for variant, tasks in preset.convergence
                       for task in tasks for seed in preset.seeds for label in labels]
            continue
        table = []
        for task in preset.tasks:
            for seed in preset.seeds:
                labels = [lb for lb in preset.labels if (lb not in preset.one_seed or seed == preset.seeds[0])
                          and not preset.pending(task, lb)]
                if name == "dynamics":
                    labels = [lb for lb in labels if parse_label(preset.row(lb)[0])[0].records_dynamics]
                table += [(task, label, seed, None, None) for label in _with_dense(preset, task, seed, labels)]
        if preset.kd_last:  # seed by seed, and every KD run after every run without KD
            tasks = list(preset.tasks)
            table.sort(key=lambda k: (k[1].endswith("+kd"), k[2], tasks.index(k[0])))
        wanted += table
    return wanted


def preset_runs(preset: str | Preset, study: str | Sequence[str] = "table", results_dir: str = "results",
                glue_dir: str | None = None) -> list:
    """The runs of one study (or several, deduplicated), in training order.

    Args:
        preset: A :class:`Preset` or its name.
        study: ``"table"``, ``"rho"``, ``"dynamics"``, ``"convergence"``, a list of them, or ``"all"``.
        results_dir: Results store root written into each run.
        glue_dir: GLUE mirror (``None``: ``$NXMLAB_GLUE_DIR``, else the Hub).

    Returns:
        Parsed :class:`~nxmlab.study.train.config.RunSpec` runs; a dense run comes before the
        sparse runs that need it, and a run shared by two studies appears once.
    """
    preset = get_preset(preset)
    runs, seen = [], set()
    for task, label, seed, rho, variant in study_keys(preset, study):
        spec = make_run(preset, task, label, seed, results_dir, glue_dir, rho, variant)
        key = spec.folder().path
        if key not in seen:
            seen.add(key)
            runs.append(spec)
    return runs


def pending_runs(preset: str | Preset, results_dir: str = "results", glue_dir: str | None = None) -> list:
    """The ``table`` runs that wait for the selection study: every (task, seed, label) whose
    label has a selection grid but no recorded choice on that task (:meth:`Preset.pending`).

    Their settings are not chosen yet, so each is built at its method's first grid point: a
    stand-in with the batch size, epochs and trained layers every grid point shares, for
    pricing them (:func:`nxmlab.study.studies.cost.live_cost`), never for training.
    """
    preset = get_preset(preset)
    grids = dict(preset.selection)
    runs = []
    for task in preset.tasks:
        for seed in preset.seeds:
            labels = [lb for lb in preset.labels if (lb not in preset.one_seed or seed == preset.seeds[0])
                      and preset.pending(task, lb)]
            runs += [make_run(preset, task, label, seed, results_dir, glue_dir,
                              variant=grids[label.removesuffix("+kd")][0]) for label in labels]
    return runs


def row_labels(preset: str | Preset, study: str | Sequence[str] = "table", results_dir: str = "results",
               glue_dir: str | None = None) -> dict[str, str]:
    """``{run folder (relative to the store): table row}`` for the runs of a study whose row
    is a named row of the preset (``rows``, e.g. ``nxmlab-admm``), not its method label."""
    preset = get_preset(preset)
    named = dict(preset.rows)
    out = {}
    for task, label, seed, rho, variant in study_keys(preset, study):
        if label in named:
            spec = make_run(preset, task, label, seed, results_dir, glue_dir, rho=rho, variant=variant)
            out[spec.folder().rel] = label
    return out


def membership(results_dir: str = "results", models: Iterable[str] | None = None
               ) -> dict[str, tuple[list[str], str | None]]:
    """``{run folder: (["preset:study", ...], row label or None)}`` over every preset (of
    ``models``, default all) and study: which studies list a stored run (``nxmlab table
    --csv`` prints it beside each run)."""
    out: dict[str, tuple[list[str], str | None]] = {}
    wanted = None if models is None else set(models)
    for name, preset in PRESETS.items():
        if wanted is not None and preset.model not in wanted:
            continue
        studies = [s for s in STUDIES if study_keys(preset, s)]
        for study in studies:
            rows = row_labels(preset, study, results_dir)
            for spec in preset_runs(preset, study, results_dir):
                rel = spec.folder().rel
                where, row = out.setdefault(rel, ([], None))
                where.append(f"{name}:{study}")
                if rel in rows:
                    out[rel] = (where, rows[rel])
    return out
