"""Integrity checks of a results store (``nxmlab verify RESULTS_DIR``).

Every file of every finished run is checked, and every problem names its file:

* ``config.json``, ``metrics.json``, ``state.json``: valid JSON objects with a final newline,
  the fields readers need, finite numbers (a missing value is ``null`` with a recorded
  reason), the config hash matching the folder name and ``metrics.json``, the same phases
  in ``state.json``, ``metrics.json`` and ``log.jsonl``;
* ``log.jsonl``: every line a JSON object, and an end record for every phase;
* every ``*.parquet``: readable, and not empty where the run must have rows;
  predictions finite;
* ``mask_sample.npz``: readable; for n:m methods every sampled group keeps exactly m;
* with ``rescore`` (``nxmlab verify --rescore``): the score recomputed from
  ``predictions.parquet`` and the GLUE validation labels equals ``metrics.json``'s (tasks
  with one validation split: not MNLI);
* the checksums ``metrics.json`` recorded when the run finished (runs finished by
  nxmlab 0.2 with this check; older runs get the structural checks only);
* the cache, when it is there (``cache=True``): the final model's ``config.json`` and
  safetensors headers and sizes, ``masks.npz`` (exactly n:m), ``admm_state.pt``
  (loadable) and every line of ``dynamics.jsonl``.

Unfinished runs are listed, not failed.  A run whose ``metrics.json`` cannot be read is
*damaged*: it fails, since it may be a finished run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...nxm import NxM
from ..train.methods import METHODS
from .integrity import file_sha256, model_folder_problem
from .store import STORE_VERSION, DamagedFileError, RunFolder, config_hash, iter_runs, load_masks, metrics_problem, read_json

__all__ = ["RunCheck", "verify_run", "verify_results", "level_problem", "EmptyStoreError", "require_finished_runs"]

#: Committed frames that must hold rows when present (the others may be empty).
_NON_EMPTY = (RunFolder.PREDICTIONS, RunFolder.DYNAMICS, RunFolder.MASK_DISTANCES, RunFolder.MAGNITUDES)


@dataclass
class RunCheck:
    """The outcome for one run folder.

    ``problems`` name their file first (``"metrics.json: ..."``, cache files by path);
    ``damaged`` is true when ``metrics.json`` or ``config.json`` cannot be read, so the run
    may be a finished one.
    """

    run: str
    finished: bool
    problems: list[str] = field(default_factory=list)
    damaged: bool = False

    @property
    def ok(self) -> bool:
        """True when a finished run has no problems."""
        return self.finished and not self.problems

    @property
    def failed(self) -> bool:
        """True when a finished (or damaged) run has problems."""
        return bool(self.problems) and (self.finished or self.damaged)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_file(folder: RunFolder, name: str, problems: list[str]) -> Any:
    """The parsed file, or ``None`` with a problem; a missing final newline is a problem too."""
    path = folder.file(name)
    if not path.is_file():
        problems.append(f"{name}: missing")
        return None
    try:
        data = read_json(path)
    except DamagedFileError as exc:
        problems.append(f"{name}: {exc.reason}")
        return None
    if not path.read_bytes().endswith(b"\n"):
        problems.append(f"{name}: no final newline (cut short?)")
    if not isinstance(data, dict):
        problems.append(f"{name}: not a JSON object")
        return None
    return data


def _check_evals(evals: dict, problems: list[str]) -> None:
    for phase, splits in evals.items():
        if not isinstance(splits, dict) or not splits:
            problems.append(f"metrics.json: eval {phase} holds no splits")
            continue
        for split, metrics in splits.items():
            if not isinstance(metrics, dict):
                problems.append(f"metrics.json: eval {phase}/{split} is not an object")
                continue
            missing = metrics.get("missing") or {}
            if not isinstance(missing, dict):
                problems.append(f"metrics.json: eval {phase}/{split}/missing is not an object")
                missing = {}
            if "score" not in metrics:
                problems.append(f"metrics.json: eval {phase}/{split} has no score")
            for key, value in metrics.items():
                if key == "missing":
                    continue
                if value is None and isinstance(missing.get(key), str):
                    continue  # stored as missing, with its reason
                if not _is_number(value):
                    problems.append(f"metrics.json: eval {phase}/{split}/{key} is not a finite number: {value!r}")


def _check_log(folder: RunFolder, phases: set[str], problems: list[str]) -> None:
    path = folder.file(RunFolder.LOG)
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        problems.append(f"{RunFolder.LOG}: the last line is cut short")
    ended = set()
    for number, line in enumerate(raw.decode(errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            problems.append(f"{RunFolder.LOG}: line {number} is not valid JSON")
            return
        if not isinstance(record, dict) or "phase" not in record:
            problems.append(f"{RunFolder.LOG}: line {number} is not a record with a phase")
            return
        if "train_runtime" in record:
            ended.add(record["phase"])
    if phases - ended:
        problems.append(f"{RunFolder.LOG}: no end record for phase(s) {', '.join(sorted(phases - ended))} (cut short?)")


def _check_frames(folder: RunFolder, problems: list[str]) -> None:
    for path in sorted(folder.path.glob("*.parquet")):
        try:
            frame = folder.read_frame(path.name)
        except DamagedFileError as exc:
            problems.append(f"{path.name}: {exc.reason}")
            continue
        if frame is None or (frame.empty and path.name in _NON_EMPTY):
            problems.append(f"{path.name}: empty")
            continue
        if path.name == RunFolder.PREDICTIONS:
            if list(frame.columns) != ["split", "idx", "prediction"]:
                problems.append(f"{path.name}: columns {list(frame.columns)}, expected split, idx, prediction")
            elif not np.isfinite(frame["prediction"].to_numpy(dtype=np.float64)).all():
                problems.append(f"{path.name}: a prediction is not a finite number")


def _nxm_problems(masks: dict, pattern: NxM, where: str, flat: bool) -> list[str]:
    problems = []
    for name, mask in masks.items():
        groups = mask.reshape(-1) if flat else mask
        if groups.numel() % pattern.n or not bool((groups.reshape(-1, pattern.n).sum(1) == pattern.m).all()):
            problems.append(f"{where}: the final mask of {name} is not exactly {pattern!r}")
            break
    return problems


def _check_checksums(recorded: dict[str, str], root: Path, label: Callable[[str], str], problems: list[str]) -> None:
    for name, digest in sorted(recorded.items()):
        path = root / name
        if not path.is_file():
            problems.append(f"{label(name)}: missing (it was there when the run finished)")
        elif file_sha256(path) != digest:
            problems.append(f"{label(name)}: changed since the run finished (checksum differs)")


def _check_cache(folder: RunFolder, metrics: dict, pattern: NxM | None, structured: bool,
                 problems: list[str]) -> None:
    cache = folder.cache
    if folder.model_dir.is_dir():
        problem = model_folder_problem(folder.model_dir)
        if problem:
            problems.append(f"{folder.model_dir}: {problem}")
    if folder.masks_file.is_file() and pattern is not None:
        try:
            final = load_masks(folder.masks_file, "final").get("final", {})
        except Exception as exc:  # noqa: BLE001 - any unreadable archive is a finding
            problems.append(f"{folder.masks_file}: not a readable mask archive ({str(exc).splitlines()[0]})")
        else:
            if structured:
                problems += _nxm_problems(final, pattern, str(folder.masks_file), flat=False)
    if folder.admm_state.is_file():
        import torch

        try:
            torch.load(folder.admm_state, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{folder.admm_state}: does not load ({str(exc).strip().splitlines()[0][:200]})")
    if folder.raw_dynamics.is_file():
        raw = folder.raw_dynamics.read_bytes()
        lines = raw.decode(errors="replace").splitlines()
        bad = next((i for i, line in enumerate(lines, 1) if not _parses(line)), None)
        if bad is not None or (raw and not raw.endswith(b"\n")):
            problems.append(f"{folder.raw_dynamics}: line {bad or len(lines)} is not a complete JSON record")
    recorded = (metrics.get("checksums") or {}).get("cache") or {}
    if recorded and cache.is_dir():
        _check_checksums(recorded, cache, lambda name: str(cache / name), problems)


def _parses(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _readable(folder: RunFolder, problems: list[str]) -> None:
    """The checks that need neither ``config.json`` nor ``metrics.json``: every file reads."""
    if folder.file(RunFolder.LOG).is_file():
        _check_log(folder, set(), problems)
    _check_frames(folder, problems)
    try:
        folder.mask_sample()
    except DamagedFileError as exc:
        problems.append(f"{RunFolder.MASK_SAMPLE}: {exc.reason}")


def _rescore_problem(folder: RunFolder, metrics: dict, gold: Callable[[str], Any]) -> str | None:
    """Why the score recomputed from the run's predictions is not its recorded score, or ``None``."""
    from ..data.glue import get_task
    from ..data.metrics import glue_metrics
    from .stats import load_predictions

    if (metrics.get("score") is None or not folder.file(RunFolder.PREDICTIONS).is_file()
            or len(get_task(metrics["task"]).eval_splits) > 1):
        return None
    try:
        pred = load_predictions(folder.path.parent, folder.name)
    except Exception as exc:  # noqa: BLE001 - any unreadable frame is reported by _check_frames
        return f"{RunFolder.PREDICTIONS}: cannot rescore: {exc}"
    heldout = (folder.config() or {}).get("heldout") is not None  # a selection run: scored on training examples
    labels = gold(metrics["task"], "train" if heldout else None)
    if not pred.index.isin(labels.index).all():
        where = "training" if heldout else "validation"
        return f"{RunFolder.PREDICTIONS}: idx values that are not GLUE {metrics['task']} {where} examples"
    score = glue_metrics(metrics["task"], pred.to_numpy(), labels.reindex(pred.index).to_numpy())["score"]
    if not math.isclose(score, metrics["score"], rel_tol=0.0, abs_tol=1e-6):
        return (f"{RunFolder.PREDICTIONS}: rescored {score:.6f} from the predictions and the GLUE labels, "
                f"metrics.json records {metrics['score']:.6f}")
    return None


def verify_run(folder: RunFolder, cache: bool = True, gold: Callable[[str], Any] | None = None) -> RunCheck:
    """Check one run; see the module docstring.

    Args:
        folder: The run.
        cache: Also check its cache folder (weights, full masks, ADMM state), when present.
        gold: ``(task, split) -> labels`` (a Series by GLUE ``idx``, as
            :func:`nxmlab.study.results.stats.gold_labels`; ``split`` None is the validation set,
            ``"train"`` the training set a selection run's held-out examples come from): also
            rescore the run from its predictions.
    """
    check = RunCheck(folder.rel, False)
    problems = check.problems
    config = _json_file(folder, RunFolder.CONFIG, problems)
    metrics = None
    if folder.file(RunFolder.METRICS).is_file():
        metrics = _json_file(folder, RunFolder.METRICS, problems)
        check.damaged = metrics is None
    if config is None or check.damaged:  # may be a finished run: check what can be checked without it
        check.damaged = True
        _readable(folder, problems)
        return check
    if config.get("store_version") != STORE_VERSION:
        problems.append(f"config.json: written by store version {config.get('store_version')}, this nxmlab reads "
                        f"version {STORE_VERSION}")
        return check
    digest = config_hash(config)
    if not folder.name.endswith(digest):
        problems.append(f"config.json: its hash {digest} does not match the folder name")
    check.finished = bool(metrics) and metrics.get("status") == "finished"
    if not check.finished:
        return check
    problem = metrics_problem(metrics)
    if problem:
        problems.append(f"metrics.json: {problem}")
        return check
    for key, kind in (("config_hash", str), ("phases", dict)):
        if not isinstance(metrics.get(key), kind):
            problems.append(f"metrics.json: field {key!r} is missing or not a {kind.__name__}")
            return check
    if metrics["config_hash"] != digest:
        problems.append(f"metrics.json: written for config {metrics['config_hash']}, config.json hashes to {digest}")
    for key in ("task", "method", "model"):
        if metrics[key] != config.get(key):
            problems.append(f"metrics.json: {key} {metrics[key]!r} differs from config.json's {config.get(key)!r}")
    score = metrics.get("score")
    if score is not None and not _is_number(score):
        problems.append(f"metrics.json: score is not a finite number: {score!r}")
    _check_evals(metrics["eval"], problems)
    phases = set(metrics["phases"])
    state = _json_file(folder, RunFolder.STATE, problems)
    if state is not None and set(state.get("phases") or {}) != phases:
        problems.append(f"state.json: phases {sorted(state.get('phases') or {})} differ from metrics.json's "
                        f"{sorted(phases)}")
    method = METHODS.get(metrics["method"])
    if method is None:
        problems.append(f"metrics.json: unknown method {metrics['method']!r}")
        return check
    expected = [RunFolder.LOG, RunFolder.PREDICTIONS]
    if method.sparse:
        expected += [RunFolder.MASK_DISTANCES, RunFolder.MASK_SAMPLE]
    if method.records_dynamics:
        expected += [RunFolder.DYNAMICS, RunFolder.MAGNITUDES]
    problems += [f"{name}: missing" for name in expected if not folder.file(name).is_file()]
    if folder.file(RunFolder.LOG).is_file():
        _check_log(folder, phases, problems)
    _check_frames(folder, problems)
    leftovers = sorted(p.name for p in folder.path.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))
    problems += [f"{name}: a temporary file left by an interrupted write" for name in leftovers]
    pattern = None
    if method.sparse:
        try:
            pattern = NxM.parse(metrics.get("pattern"))
        except ValueError:
            problems.append(f"metrics.json: pattern {metrics.get('pattern')!r} is not an n:m pattern")
    if pattern is not None and folder.file(RunFolder.MASK_SAMPLE).is_file():
        try:
            final = folder.mask_sample().get("final", {})
        except DamagedFileError as exc:
            problems.append(f"{RunFolder.MASK_SAMPLE}: {exc.reason}")
        else:
            if not final:
                problems.append(f"{RunFolder.MASK_SAMPLE}: holds no final masks")
            elif method.rule.structured:
                problems += _nxm_problems(final, pattern, RunFolder.MASK_SAMPLE, flat=True)
        if method.rule.structured and metrics.get("is_nxm") is not True:
            problems.append("metrics.json: does not record is_nxm = true")
    recorded = (metrics.get("checksums") or {}).get("run") or {}
    _check_checksums(recorded, folder.path, lambda name: name, problems)
    if cache and folder.cache.is_dir():
        _check_cache(folder, metrics, pattern, method.sparse and method.rule.structured, problems)
    if gold is not None:
        problem = _rescore_problem(folder, metrics, gold)
        problems += [problem] if problem else []
    return check


def level_problem(results_dir: str | os.PathLike[str], verb: str = "verify") -> str | None:
    """Why ``results_dir`` is not a results folder (``<results>/<task>/<run>/config.json``), or ``None``.

    ``verb`` is the command the message suggests (``nxmlab <verb> <the right folder>``).
    """
    root = Path(results_dir)
    what = f"{verb} reads" if verb != "verify" else "verify checks"
    if not root.is_dir():
        return f"results folder {root} does not exist"
    if (root / RunFolder.CONFIG).is_file():
        return (f"{root} is a run folder; {what} a results folder (<results>/<task>/<run>): "
                f"nxmlab {verb} {root.parent.parent}")
    if any(p.is_file() for p in root.glob(f"*/{RunFolder.CONFIG}")):
        return f"{root} is a task folder; {what} a results folder (<results>/<task>/<run>): nxmlab {verb} {root.parent}"
    return None


class EmptyStoreError(ValueError):
    """A results folder with no finished run where finished runs are expected (nothing to show)."""


def require_finished_runs(results_dir: str | os.PathLike[str], advice: str = "") -> None:
    """Raise :class:`EmptyStoreError` unless ``results_dir`` holds a finished run
    (``<results>/<task>/<run>/metrics.json``); reads only.

    The message names the folder, why it holds none (missing, a task or run folder, empty),
    where the repository's ``results/`` is, and ``advice`` (e.g. how to train the runs).
    """
    from ..catalog import repo_root

    root = Path(os.path.abspath(Path(results_dir).expanduser()))
    if any(run.file(RunFolder.METRICS).is_file() for run in iter_runs(root)):
        return
    level = level_problem(root, "table")
    why = (level.split(";")[0] if level else f"no finished run under {root}") + \
        " (expected <results>/<task>/<run>/metrics.json)"
    repo = repo_root()
    if repo is not None and root != repo / "results":
        where = f"the repository's results are in {repo / 'results'}"
    elif repo is None:
        where = "this nxmlab is installed, not checked out: pass the results/ folder of a checkout"
    else:
        where = "the repository's results/ holds no finished run"
    raise EmptyStoreError(f"nothing to show: {why}; {where}" + (f"; {advice}" if advice else ""))


def verify_results(results_dir: str | os.PathLike[str], cache: bool = True, rescore: bool = False,
                   glue_dir: str | None = None) -> list[RunCheck]:
    """Check every run under ``results_dir`` (unfinished runs are listed, not failed); with
    ``rescore``, also recompute every score from its predictions and the GLUE labels
    (``glue_dir``, else ``$NXMLAB_GLUE_DIR``, else the Hub).

    Raises:
        ValueError: ``results_dir`` does not exist.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise ValueError(f"results folder {root} does not exist")
    gold = None
    if rescore:
        from functools import cache as memo

        from .stats import gold_labels

        gold = memo(lambda task, split=None: gold_labels(task, glue_dir, split))
    return [verify_run(folder, cache, gold) for folder in iter_runs(root)]
