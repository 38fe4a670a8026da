"""Integrity checks of a results store (``nxmlab verify RESULTS_DIR``).

For every finished run: the config hash matches the folder name and ``metrics.json``;
the store version is this nxmlab's; every metric is present and finite; the committed
files the run's method writes exist and load; the predictions cover the validation
set; the sampled final masks are valid (exactly m kept in every sampled group of n for
n:m methods).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..nxm import NxM
from .methods import METHODS
from .store import RunFolder, StoreVersionError, config_hash, iter_runs, read_json

__all__ = ["RunCheck", "verify_run", "verify_results"]


@dataclass
class RunCheck:
    """The outcome for one run folder."""

    run: str
    finished: bool
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when a finished run has no problems."""
        return self.finished and not self.problems


def _finite_metrics(evals: dict, problems: list[str]) -> None:
    for phase, splits in evals.items():
        for split, metrics in splits.items():
            if "score" not in metrics:
                problems.append(f"eval {phase}/{split} has no score")
            for key, value in metrics.items():
                if not isinstance(value, (int, float)) or not math.isfinite(value):
                    problems.append(f"eval {phase}/{split}/{key} is not a finite number: {value!r}")


def verify_run(folder: RunFolder) -> RunCheck:
    """Check one run; see the module docstring."""
    try:
        config = folder.config()
        metrics = read_json(folder.file(RunFolder.METRICS))
    except (StoreVersionError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        return RunCheck(folder.rel, False, [str(exc).splitlines()[0]])
    finished = bool(metrics) and metrics.get("status") == "finished"
    check = RunCheck(folder.rel, finished)
    problems = check.problems
    if config is None:
        problems.append("config.json is missing")
        return check
    digest = config_hash(config)
    if not folder.name.endswith(digest):
        problems.append(f"config hash {digest} does not match the folder name")
    if not finished:
        return check
    if metrics.get("config_hash") != digest:
        problems.append(f"metrics.json is for config {metrics.get('config_hash')}, config.json hashes to {digest}")
    score = metrics.get("score")
    if not isinstance(score, (int, float)) or not math.isfinite(score):
        problems.append(f"score is not a finite number: {score!r}")
    evals = metrics.get("eval") or {}
    if "final" not in evals:
        problems.append("no final evaluation")
    _finite_metrics(evals, problems)
    method = METHODS.get(metrics.get("method"))
    if method is None:
        problems.append(f"unknown method {metrics.get('method')!r}")
        return check
    expected = [RunFolder.LOG, RunFolder.PREDICTIONS]
    if method.sparse:
        expected += [RunFolder.MASK_DISTANCES, RunFolder.MASK_SAMPLE]
    if method.records_dynamics:
        expected += [RunFolder.DYNAMICS, RunFolder.MAGNITUDES]
    for name in expected:
        if not folder.file(name).is_file():
            problems.append(f"{name} is missing")
        elif name.endswith(".parquet"):
            try:
                frame = folder.read_frame(name)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is a finding
                problems.append(f"{name} is unreadable: {exc}")
                continue
            if frame is None or frame.empty:
                problems.append(f"{name} is empty")
    if method.sparse and folder.file(RunFolder.MASK_SAMPLE).is_file():
        problems.extend(_check_masks(folder, method.rule.structured, metrics))
    return check


def _check_masks(folder: RunFolder, structured: bool, metrics: dict) -> list[str]:
    try:
        final = folder.mask_sample().get("final", {})
    except Exception as exc:  # noqa: BLE001 - any unreadable archive is a finding
        return [f"{RunFolder.MASK_SAMPLE} is unreadable: {exc}"]
    if not final:
        return [f"{RunFolder.MASK_SAMPLE} holds no final masks"]
    problems = []
    pattern = NxM.parse(metrics["pattern"])
    if structured:
        for name, sample in final.items():
            if sample.numel() % pattern.n or not bool((sample.reshape(-1, pattern.n).sum(1) == pattern.m).all()):
                problems.append(f"{name}: sampled final mask is not {pattern!r}")
        if metrics.get("is_nxm") is not True:
            problems.append("metrics.json does not record is_nxm = true")
    return problems


def verify_results(results_dir: str | os.PathLike[str]) -> list[RunCheck]:
    """Check every run under ``results_dir`` (unfinished runs are listed, not failed)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ValueError(f"results folder {root} does not exist")
    return [verify_run(folder) for folder in iter_runs(root)]
