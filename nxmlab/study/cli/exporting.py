"""``nxmlab export``: a finished run of the results store as a Hugging Face folder with n:m metadata.

A committed run folder holds only the record; its weights live in the ignored cache
(:mod:`nxmlab.study.results.store`).  On a fresh clone :func:`export_run` therefore stops with one
line, unless ``rebuild=True``: it then retrains the run from its ``config.json`` in a
scratch results folder, checks that the new score matches the committed one, and
installs the weights in the run's cache (the committed files are not touched).  The
retraining shows its progress (:func:`~nxmlab.study.train.progress.progress_callbacks`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

from ... import __version__
from ...export import save_sparse, verify_sparse
from ...nxm import NxM
from ...targets import select_targets
from ..catalog import DTYPES
from ..results.store import RunFolder, cache_root
from ..train.config import TRAINING_KEYS, NxMTrainingArguments, RunConfig, RunSpec

__all__ = ["DTYPES", "export_run", "rebuild_run", "run_arguments", "verify_export"]


def _finished(run: RunFolder) -> tuple[dict[str, Any], dict[str, Any]]:
    config = run.config()
    if config is None:
        raise ValueError(f"{run.path} is not a run folder (no {RunFolder.CONFIG})")
    metrics = run.metrics()
    if metrics is None:
        raise ValueError(f"run {run.rel} is not finished (no finished {RunFolder.METRICS})")
    return config, metrics


def _has_weights(run: RunFolder) -> bool:
    model = run.model_dir
    return (model / "config.json").is_file() and any(model.glob("*.safetensors"))


def run_arguments(config: dict[str, Any], results_dir: str | os.PathLike[str]) -> tuple[RunConfig, NxMTrainingArguments]:
    """The ``RunConfig`` and training arguments whose identity is a stored ``config.json``.

    Raises:
        ValueError: the config does not round-trip (e.g. a run trained under ``torchrun``).
    """
    training = config.get("training", {})
    if training.get("world_size", 1) > 1:
        raise ValueError(f"the run was trained by {training['world_size']} processes (torchrun); "
                         f"retrain it the same way to rebuild it")
    names = {f.name for f in fields(RunConfig)}
    values = {k: v for k, v in config.items() if k in names}
    if isinstance(values.get("components"), list):
        values["components"] = ",".join(values["components"])
    cfg = RunConfig(**{**values, "results_dir": str(results_dir), "overwrite": False})
    args = NxMTrainingArguments(**{k: v for k, v in training.items() if k in TRAINING_KEYS}, disable_tqdm=True,
                                report_to="none")
    canonical = RunSpec.parse(cfg, args).canonical()
    if canonical != config:
        keys = sorted(k for k in set(canonical) | set(config) if canonical.get(k) != config.get(k))
        raise ValueError(f"its config.json does not round-trip through RunConfig (differs in {', '.join(keys)})")
    return cfg, args


def rebuild_run(run: RunFolder, tolerance: float = 1.0) -> dict[str, Any]:
    """Retrain ``run`` from its ``config.json`` and install the weights in its cache.

    The training goes to a scratch results folder (the committed record is not touched); a
    dense run the method needs is retrained there too.  The weights are installed only if
    the new final score is within ``tolerance`` points (x100) of the committed one.

    Returns:
        ``{"committed": score, "rebuilt": score}`` (0-1 scores, as in ``metrics.json``).

    Raises:
        ValueError: the run cannot be rebuilt, or its new score does not match.
    """
    from ..train.progress import progress_callbacks
    from ..train.recipe import run_experiment

    config, metrics = _finished(run)
    try:
        run_arguments(config, run.results_dir)
    except ValueError as exc:
        raise ValueError(f"cannot rebuild {run.rel}: {exc}") from exc
    run.cache.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".rebuild-", dir=run.cache.parent))
    try:
        cfg, args = run_arguments(config, scratch)
        rebuilt = run_experiment(cfg, args, callbacks=progress_callbacks(args))
        again = RunFolder(scratch, run.task, run.name)
        delta = 100 * abs(rebuilt["score"] - metrics["score"])
        if delta > tolerance:
            raise ValueError(f"the rebuilt {run.rel} scores {100 * rebuilt['score']:.2f}, the committed record "
                             f"{100 * metrics['score']:.2f} (|difference| {delta:.2f} > {tolerance:g} points): "
                             f"weights not installed")
        with run.lock():
            shutil.rmtree(run.model_dir, ignore_errors=True)
            shutil.move(str(again.model_dir), str(run.model_dir))
            if again.masks_file.is_file() and not run.masks_file.is_file():
                shutil.move(str(again.masks_file), str(run.masks_file))
    finally:
        shutil.rmtree(cache_root(scratch), ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return {"committed": metrics["score"], "rebuilt": rebuilt["score"]}


def export_run(run_path: str | os.PathLike[str], out: str | os.PathLike[str], *, compressed: bool = False,
               dtype: str = "auto", rebuild: bool = False, tolerance: float = 1.0) -> dict[str, Any]:
    """Export a finished n:m run as a Hugging Face folder (see :func:`nxmlab.export.save_sparse`).

    ``config.json`` carries the pattern, the targets, the method, the source run and its
    score.  Every input is checked before anything is written; the folder appears
    complete or not at all.

    Args:
        run_path: The committed run folder, ``<results>/<task>/<run>``.
        out: The folder to create (it must not exist, or be empty).
        compressed: Write the compressed form (compressed-tensors' bitmask layout).
        dtype: One of :data:`DTYPES`.
        rebuild: Retrain the run first when its weights are not in the cache (:func:`rebuild_run`).
        tolerance: Largest score difference (points) a rebuild may show.

    Returns:
        A summary: ``run``, ``out``, ``form``, ``dtype``, ``pattern``, ``targets``, the sizes
        of :func:`~nxmlab.export.save_sparse` and ``rebuild`` (the scores, when it ran).

    Raises:
        ValueError: bad input (nothing written).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    run = RunFolder.at(Path(run_path).resolve())
    config, metrics = _finished(run)
    if not metrics.get("is_nxm"):
        raise ValueError(f"run {run.rel} is not n:m sparse (method {metrics['method']}); only n:m runs export")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder")
    rebuilt = None
    if not _has_weights(run):
        if not rebuild:
            raise ValueError(f"run {run.rel} has no weights in the cache ({run.model_dir}): a fresh clone keeps only "
                             f"the committed record; add --rebuild to retrain it from its config.json (the score is "
                             f"checked against the record)")
        rebuilt = rebuild_run(run, tolerance)
    pattern = NxM.parse(config["pattern"])
    model = AutoModelForSequenceClassification.from_pretrained(run.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    if dtype != "auto":
        model = model.to(getattr(torch, dtype))
    targets = select_targets(model, config["components"], pattern=pattern)
    metadata = {
        "components": list(config["components"]), "method": metrics["method"], "kd": metrics["kd"],
        "task": metrics["task"], "base_model": config["model"], "seed": metrics["seed"],
        "source_run": run.rel, "config_hash": metrics["config_hash"], "score": metrics["score"],
        "eval": metrics["eval"].get("final"), "nxmlab_version": __version__,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        sizes = save_sparse(model, targets, pattern, tmp, compressed=compressed, metadata=metadata, tokenizer=tokenizer)
        umask = os.umask(0)
        os.umask(umask)
        for path in (tmp, *tmp.iterdir()):  # mkdtemp and some writers make private files
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"run": run.rel, "out": str(out), "form": "compressed" if compressed else "dense",
            "dtype": str(next(iter(targets.values())).weight.dtype).removeprefix("torch."),
            "pattern": repr(pattern), "targets": len(targets), **sizes, "rebuild": rebuilt}


def verify_export(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], list[str]]:
    """``(metadata, problems)`` of an exported folder (:func:`nxmlab.export.verify_sparse`).

    Raises:
        ValueError: a file of the folder cannot be read (``config.json``, the weights, the
            n:m metadata); the message names it.
    """
    from ...export import read_metadata

    problems = verify_sparse(folder)
    return read_metadata(folder), problems
