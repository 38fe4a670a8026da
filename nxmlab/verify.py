"""Integrity checks of a results store (``nxmlab verify RESULTS_DIR``).

For every finished run: the config hash matches the folder name and ``metrics.json``;
the store version is this nxmlab's; every metric is present and finite; the expected
files exist; the final masks are valid (exactly m kept in every group of n for NxM
methods, the exact density for the unstructured reference).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .nxm import NxM
from .store import STORE_VERSION, config_hash, is_finished, iter_runs, load_masks, read_json, read_jsonl

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


def verify_run(run_dir: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> RunCheck:
    """Check one run folder; see the module docstring."""
    run_dir = Path(run_dir)
    name = str(run_dir.relative_to(root)) if root is not None else str(run_dir)
    check = RunCheck(name, is_finished(run_dir))
    problems = check.problems
    try:
        config = read_json(run_dir / "config.json")
        metrics = read_json(run_dir / "metrics.json")
    except ValueError as exc:  # json.JSONDecodeError
        problems.append(f"unreadable JSON: {exc}")
        return check
    if config is None:
        problems.append("config.json is missing")
        return check
    if config.get("store_version") != STORE_VERSION:
        problems.append(f"store version {config.get('store_version')} is not this nxmlab's ({STORE_VERSION})")
    digest = config_hash(config)
    if not run_dir.name.endswith(digest):
        problems.append(f"config hash {digest} does not match the folder name")
    if not check.finished:
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
    if not (run_dir / "log.jsonl").is_file():
        problems.append("log.jsonl is missing")
    method = metrics.get("method")
    if method == "admm" and not read_jsonl(run_dir / "dynamics.jsonl"):
        problems.append("dynamics.jsonl is missing or empty")
    if method in ("magnitude", "unstructured", "admm"):
        problems.extend(_check_masks(run_dir, method, metrics))
    return check


def _check_masks(run_dir: Path, method: str, metrics: dict) -> list[str]:
    problems = []
    if not (run_dir / "masks.npz").is_file():
        return ["masks.npz is missing"]
    try:
        final = load_masks(run_dir / "masks.npz").get("final", {})
    except Exception as exc:  # noqa: BLE001 - any unreadable archive is a finding
        return [f"masks.npz is unreadable: {exc}"]
    if not final:
        return ["masks.npz holds no final masks"]
    pattern = NxM.parse(metrics["pattern"])
    for name, mask in final.items():
        if method == "unstructured":
            kept = int(mask.sum())
            if kept != round(pattern.density * mask.numel()):
                problems.append(f"{name}: unstructured mask keeps {kept} of {mask.numel()}, not {pattern.density:g}")
        else:
            if mask.dim() != 2 or mask.shape[1] % pattern.n:
                problems.append(f"{name}: mask shape {tuple(mask.shape)} does not fit {pattern!r}")
                continue
            per_group = mask.reshape(-1, pattern.n).sum(1)
            if not bool((per_group == pattern.m).all()):
                problems.append(f"{name}: mask is not {pattern!r}")
    if method != "unstructured" and metrics.get("is_nxm") is not True:
        problems.append("metrics.json does not record is_nxm = true")
    return problems


def verify_results(results_dir: str | os.PathLike[str]) -> list[RunCheck]:
    """Check every run under ``results_dir`` (unfinished runs are listed, not failed)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ValueError(f"results folder {root} does not exist")
    return [verify_run(run_dir, root) for run_dir in iter_runs(root)]
