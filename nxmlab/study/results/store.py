"""The results store (version 2): the only module that knows run-folder file names.

A run lives in two folders with the same relative name ``<task>/<run name>``:

* the **run folder** under the results directory, small and committed
  (a finished MiniLM run stays within 250 KB; the largest, protocol's 10-epoch CoLA ADMM
  runs, are about 245 KB; tests/test_presets.py checks every committed folder);
* the **cache folder** under :func:`cache_root`, large and never committed: weights,
  full masks, checkpoints and the raw dynamics log.

=========================  =========  ====================================================
file                       where      what
=========================  =========  ====================================================
``config.json``            run        the canonical configuration; its hash names the run
``state.json``             run        progress: finished phases and their evaluations
``metrics.json``           run        written last, atomically: present means finished
``predictions.parquet``    run        per-example validation predictions (``idx``, ``prediction``)
``dynamics.parquet``       run        ADMM dynamics per target: every Z/U update, logs downsampled
``mask_distances.parquet`` run        per-target distance of the final mask to each reference mask
``mask_sample.npz``        run        final and reference masks on a fixed 1/64 sample of groups
``magnitudes.parquet``     run        a sample of |w| at kept/pruned positions (ADMM runs)
``log.jsonl``              run        the Trainer's log history, per phase (floats to 6 significant digits)
``model/``                 cache      final weights (the KD teacher and start of ASP)
``phases/<phase>/``        cache      each finished phase's weights (resume)
``checkpoints/<phase>/``   cache      Trainer checkpoints while a phase runs
``masks.npz``              cache      full final and reference masks, bit-packed
``dynamics.jsonl``         cache      the raw ADMM dynamics, appended while training
``admm_state.pt``          cache      the ADMM state and W at the end of the ADMM phase
``learned_state.pt``       cache      learned: the argmax and prior masks at the end of the learning phase
``learned_log.jsonl``      cache      learned: the learning phase's trajectory (tau, kappa, distance to the prior)
=========================  =========  ====================================================

Every file is written through :func:`atomic_write` (temporary file, fsync, rename), so
a killed run never leaves a torn file behind, and one run is written by one process at
a time (:meth:`RunFolder.lock`, a ``filelock`` lock in the cache).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ...nxm import pack_mask, unpack_mask

__all__ = ["STORE_VERSION", "CACHE_ENV", "RunFolder", "check_writable", "StoreVersionError", "DamagedFileError",
           "atomic_write", "atomic_write_json", "append_jsonl", "cache_root", "config_hash", "follow_umask",
           "iter_runs", "metrics_problem", "load_masks", "mask_sample", "read_json", "read_jsonl", "save_masks"]

#: Bumped when the layout or the meaning of a stored field changes.
STORE_VERSION = 2
#: Environment variable naming the cache root (default: ``.nxmlab-cache/<results name>`` beside the results).
CACHE_ENV = "NXMLAB_CACHE_DIR"
#: One group in this many goes into ``mask_sample.npz``.
SAMPLE_EVERY = 64


class StoreVersionError(ValueError):
    """A run folder written by another store version."""


class DamagedFileError(ValueError):
    """A store file that exists but cannot be read or does not hold what it should.

    ``path`` names the file and ``reason`` says what is wrong; the message holds both.
    Readers of many runs catch it, report the file and go on with the other runs.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"damaged file {path}: {reason}")


# ----------------------------------------------------------------------------- files
def config_hash(config: Mapping[str, Any]) -> str:
    """Short, stable hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def atomic_write(path: str | os.PathLike[str], data: bytes | Callable[[Path], None]) -> None:
    """Write ``path`` atomically: to a temporary file in its folder, fsync, then rename.

    Args:
        path: The target file.
        data: The bytes, or a function that writes the temporary file it is given
            (e.g. ``lambda tmp: frame.to_parquet(tmp)``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, (bytes, bytearray)):
                fh.write(data)
        if callable(data):
            data(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; shared stores need the umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the permissions of the process
    umask: files ``0o666 & ~umask``, folders ``0o777 & ~umask``.  Some writers (safetensors,
    ``tempfile``) make files 0600, which other members of a group sharing a store cannot read.
    """
    umask = os.umask(0)
    os.umask(umask)
    path = Path(path)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically; NaN and infinities are refused (``ValueError``):
    store a missing value as ``None`` (:func:`finite_or_none`)."""
    atomic_write(path, (json.dumps(obj, indent=2, default=str, allow_nan=False) + "\n").encode())


def _no_constant(name: str) -> None:
    raise ValueError(f"holds the non-finite number {name}")


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    """Read a JSON file, or return ``default`` when it does not exist.

    Raises:
        DamagedFileError: the file is not valid JSON (e.g. truncated), or holds NaN or an
            infinity (nxmlab never writes them); the message names the file.
    """
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_bytes().decode(), parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise DamagedFileError(path, f"not valid JSON ({exc})") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise DamagedFileError(path, str(exc)) from exc


#: Significant digits of a float in ``log.jsonl``: a float32 loss or learning rate to 1e-6
#: relative, in about 60 % of the characters of its full repr (CoLA's 10-epoch protocol runs
#: come within 2 % of the 250 KB budget of a committed run folder otherwise).
LOG_DIGITS = 6


def _log_value(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{LOG_DIGITS}g}")
    return value


def append_jsonl(path: str | os.PathLike[str], records: list[Mapping[str, Any]]) -> None:
    """Append records to a JSON-lines file (flushed and fsynced)."""
    if not records:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        for record in records:
            fh.write(json.dumps(record, default=float) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON-lines file; a torn last line (from a kill mid-write) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def save_masks(path: str | os.PathLike[str], mask_sets: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Save named sets of bool masks bit-packed into one ``.npz``, atomically.

    Args:
        path: Target file.
        mask_sets: ``{set name: {module name: bool mask}}``, e.g. ``{"final": masks}``.
    """
    arrays: dict[str, np.ndarray] = {}
    for set_name, masks in mask_sets.items():
        for name, mask in masks.items():
            packed, shape = pack_mask(mask)
            arrays[f"{set_name}/{name}"] = packed.numpy()
            arrays[f"{set_name}/{name}/shape"] = np.asarray(shape, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def load_masks(path: str | os.PathLike[str], set_name: str | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Load masks saved by :func:`save_masks` (optionally one set only)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    with np.load(path) as data:
        for key in data.files:
            if key.endswith("/shape"):
                continue
            group, name = key.split("/", 1)
            if set_name is not None and group != set_name:
                continue
            shape = tuple(int(s) for s in data[f"{key}/shape"])
            out.setdefault(group, {})[name] = unpack_mask(torch.from_numpy(data[key]), shape)
    return out


def _sample_rows(name: str, shape: tuple[int, ...], n: int) -> torch.Tensor:
    """The groups of ``name`` that :func:`mask_sample` keeps: fixed by the name and shape."""
    groups = int(np.prod(shape)) // n
    generator = torch.Generator().manual_seed(zlib.crc32(f"{name}:{tuple(shape)}".encode()))
    count = max(1, groups // SAMPLE_EVERY)
    return torch.randperm(groups, generator=generator)[:count].sort().values


def mask_sample(masks: Mapping[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """The masks on a fixed sample of 1 in :data:`SAMPLE_EVERY` groups of ``n`` positions.

    The sample depends only on the target's name and shape, so two runs of the same
    model are sampled at the same positions and their sampled masks can be compared:
    the fraction of differing kept positions on the sample estimates the full one
    (standard error below 0.002 for MiniLM).
    """
    return {name: mask.reshape(-1, n)[_sample_rows(name, tuple(mask.shape), n)].reshape(-1)
            for name, mask in masks.items()}


# ------------------------------------------------------------------------------ layout
def cache_root(results_dir: str | os.PathLike[str]) -> Path:
    """Where the large files of ``results_dir`` go: ``$NXMLAB_CACHE_DIR/<results name>``, or
    ``.nxmlab-cache/<results name>`` beside ``results_dir``."""
    results = Path(results_dir).absolute()
    base = os.environ.get(CACHE_ENV)
    return (Path(base) if base else results.parent / ".nxmlab-cache") / results.name


def _in_cache(name: str) -> property:
    """A :class:`RunFolder` property: the path of ``name`` in the run's cache folder."""
    return property(lambda self: self.cache / name, doc=f"``<cache>/{name}``")


class RunFolder:
    """The files of one run: ``path`` (committed) and ``cache`` (large, ignored).

    Args:
        results_dir: The results store root.
        task: GLUE task (first folder level).
        name: Run folder name.
    """

    CONFIG = "config.json"
    STATE = "state.json"
    METRICS = "metrics.json"
    PREDICTIONS = "predictions.parquet"
    DYNAMICS = "dynamics.parquet"
    MASK_DISTANCES = "mask_distances.parquet"
    MASK_SAMPLE = "mask_sample.npz"
    MAGNITUDES = "magnitudes.parquet"
    Z_MASKS = "z_mask_distances.parquet"
    LOSS_FREE = "loss_free.parquet"
    LOG = "log.jsonl"

    def __init__(self, results_dir: str | os.PathLike[str], task: str, name: str) -> None:
        self.results_dir = Path(results_dir)
        self.task, self.name = task, name
        self.path = self.results_dir / task / name
        self.cache = cache_root(self.results_dir) / task / name

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> RunFolder:
        """The run whose committed folder is ``path`` (``<results>/<task>/<name>``)."""
        path = Path(path)
        return cls(path.parent.parent, path.parent.name, path.name)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def rel(self) -> str:
        """``<task>/<name>``: the run's name relative to the results directory."""
        return f"{self.task}/{self.name}"

    def file(self, name: str) -> Path:
        """A committed file of the run (one of the class constants)."""
        return self.path / name

    # --- cache paths ---------------------------------------------------------------
    # (the cache files, named once here: see the table in the module docstring)
    model_dir = _in_cache("model")
    masks_file = _in_cache("masks.npz")
    raw_dynamics = _in_cache("dynamics.jsonl")
    admm_state = _in_cache("admm_state.pt")
    learned_state = _in_cache("learned_state.pt")
    learned_log = _in_cache("learned_log.jsonl")
    z_masks_dir = _in_cache("z_masks")  # the packed Z masks, one ``step-<k>.npz`` per Z/U update
    mid_weights = _in_cache("weights_admm_mid.safetensors")

    def phase_dir(self, phase: str) -> Path:  # the model a finished phase saved (cache)
        return self.cache / "phases" / phase

    def checkpoint_dir(self, phase: str) -> Path:  # a phase's Trainer checkpoints (cache)
        return self.cache / "checkpoints" / phase

    # --- reading ----------------------------------------------------------------------
    def config(self) -> dict[str, Any] | None:
        """``config.json``, or ``None``; raises :class:`StoreVersionError` for another store version
        and :class:`DamagedFileError` for a file that is not a JSON object."""
        config = read_json(self.file(self.CONFIG))
        if config is not None and not isinstance(config, dict):
            raise DamagedFileError(self.file(self.CONFIG), f"not a JSON object (holds {type(config).__name__})")
        if config is not None and config.get("store_version") != STORE_VERSION:
            raise StoreVersionError(
                f"{self.path} was written by store version {config.get('store_version')}, and this nxmlab "
                f"reads version {STORE_VERSION} only; retrain it (nxmlab train ... --overwrite) or move it away")
        return config

    def metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` of a finished run, else ``None``.

        Raises:
            DamagedFileError: the file exists but is not valid JSON or lacks a field every
                finished run records (:func:`metrics_problem`).
        """
        path = self.file(self.METRICS)
        metrics = read_json(path)
        if metrics is None:
            return None
        if not isinstance(metrics, dict):
            raise DamagedFileError(path, f"not a JSON object (holds {type(metrics).__name__})")
        if metrics.get("status") != "finished":
            return None
        problem = metrics_problem(metrics)
        if problem:
            raise DamagedFileError(path, problem)
        return metrics

    @property
    def finished(self) -> bool:
        """True once ``metrics.json`` records a finished run."""
        return self.metrics() is not None

    def state(self) -> dict[str, Any]:
        """``state.json`` (progress), or an empty state; :class:`DamagedFileError` if unreadable."""
        path = self.file(self.STATE)
        state = read_json(path, {"phases": {}, "eval": {}})
        if not (isinstance(state, dict) and isinstance(state.get("phases"), dict)
                and isinstance(state.get("eval"), dict)):
            raise DamagedFileError(path, "not a JSON object with 'phases' and 'eval'")
        return state

    def read_frame(self, name: str) -> pd.DataFrame | None:
        """A committed parquet frame of the run, or ``None`` when the run has none;
        :class:`DamagedFileError` when the file cannot be read."""
        path = self.file(name)
        if not path.is_file():
            return None
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a damaged file
            raise DamagedFileError(path, f"not a readable parquet file ({str(exc).splitlines()[0]})") from exc

    def mask_sample(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{set name: {target: sampled bool mask}}`` from ``mask_sample.npz`` (empty if none);
        :class:`DamagedFileError` when the archive cannot be read."""
        path = self.file(self.MASK_SAMPLE)
        if not path.is_file():
            return {}
        out: dict[str, dict[str, torch.Tensor]] = {}
        try:
            with np.load(path) as data:
                for key in data.files:
                    if key.endswith("/size"):
                        continue
                    group, name = key.split("/", 1)
                    size = int(data[f"{key}/size"])
                    out.setdefault(group, {})[name] = unpack_mask(torch.from_numpy(data[key]), (size,))
        except Exception as exc:  # noqa: BLE001 - zipfile, zlib and numpy errors alike
            raise DamagedFileError(path, f"not a readable mask archive ({str(exc).splitlines()[0]})") from exc
        return out

    # --- writing ----------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> None:  # atomically, as every store write
        atomic_write_json(self.file(name), obj)

    def write_frame(self, name: str, frame: pd.DataFrame) -> None:
        """Write a committed parquet frame (zstd, no index), atomically."""
        atomic_write(self.file(name), lambda tmp: frame.to_parquet(tmp, index=False, compression="zstd"))

    def write_mask_sample(self, mask_sets: Mapping[str, Mapping[str, torch.Tensor]], n: int) -> None:
        """Write :func:`mask_sample` of each named mask set into ``mask_sample.npz``."""
        arrays: dict[str, np.ndarray] = {}
        for set_name, masks in mask_sets.items():
            for name, sample in mask_sample(masks, n).items():
                packed, _ = pack_mask(sample)
                arrays[f"{set_name}/{name}"] = packed.numpy()
                arrays[f"{set_name}/{name}/size"] = np.asarray(sample.numel(), dtype=np.int64)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write(self.file(self.MASK_SAMPLE), buffer.getvalue())

    def append_log(self, records: list[Mapping[str, Any]]) -> None:
        """Append Trainer log records to ``log.jsonl``, each float to :data:`LOG_DIGITS`
        significant digits (the run folder's size budget; scores live in ``metrics.json``)."""
        append_jsonl(self.file(self.LOG), [{k: _log_value(v) for k, v in r.items()} for r in records])

    # --- replacing a run (train --overwrite) -------------------------------------------
    def staging(self) -> RunFolder:
        """Where ``--overwrite`` builds the new result: ``.<name>.new`` beside the run and its cache."""
        return RunFolder(self.results_dir, self.task, f".{self.name}.new")

    def _trash(self) -> RunFolder:
        return RunFolder(self.results_dir, self.task, f".{self.name}.old")

    def discard(self) -> None:
        """Delete the run's committed and cache folders."""
        shutil.rmtree(self.path, ignore_errors=True)
        shutil.rmtree(self.cache, ignore_errors=True)

    def replace_with(self, new: RunFolder) -> None:
        """Move the finished run ``new`` (:meth:`staging`) into this run's place.

        The cache moves first and the committed folder last (its ``metrics.json`` says
        "finished"); each move is a rename, the old folders go to ``.<name>.old`` and are
        deleted after.  A kill in between leaves a state :meth:`recover` completes, and at
        no point is there neither the old nor the new finished result.
        """
        trash = self._trash()
        for attr in ("cache", "path"):
            src, dst, old = getattr(new, attr), getattr(self, attr), getattr(trash, attr)
            if not src.exists():  # moved before a kill
                continue
            shutil.rmtree(old, ignore_errors=True)
            if dst.exists():
                os.replace(dst, old)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        trash.discard()

    def recover(self) -> None:
        """Complete a :meth:`replace_with` cut short by a kill (a finished staged run moves in)."""
        new = self.staging()
        if new.path.is_dir() and new.file(self.METRICS).is_file():
            try:
                finished = new.metrics() is not None
            except DamagedFileError:
                finished = False
            if finished:
                self.replace_with(new)
                return
        if self.path.is_dir():
            self._trash().discard()

    def lock(self):
        """An exclusive ``filelock`` lock of this run across processes (in the cache)."""
        from filelock import FileLock

        self.cache.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.cache.parent / f".{self.name}.lock"))


def iter_runs(results_dir: str | os.PathLike[str]) -> Iterator[RunFolder]:
    """Every run folder ``<results_dir>/<task>/<run>/`` holding a ``config.json``, sorted."""
    root = Path(results_dir)
    if not root.is_dir():
        return iter(())
    return iter(RunFolder.at(p.parent) for p in sorted(root.glob(f"*/*/{RunFolder.CONFIG}"))
                if not p.parent.name.startswith(".") and not p.parent.parent.name.startswith("."))


def metrics_problem(metrics: Mapping[str, Any]) -> str | None:
    """What a finished run's ``metrics.json`` lacks, or ``None`` (the fields every reader needs)."""
    expected = {"task": str, "method": str, "model": str, "kd": bool, "seed": int, "eval": dict}
    for key, kind in expected.items():
        if not isinstance(metrics.get(key), kind) or (kind is int and isinstance(metrics.get(key), bool)):
            return f"field {key!r} is missing or not a {kind.__name__} (got {metrics.get(key)!r})"
    score = metrics.get("score", "absent")
    if score is None:
        if not (metrics.get("missing") or {}).get("score"):
            return "score is null without a recorded reason"
    elif isinstance(score, bool) or not isinstance(score, (int, float)):
        return f"score is not a number: {score!r}"
    if "final" not in metrics["eval"]:
        return "no final evaluation"
    return None


def check_writable(folder: Path) -> None:
    """Raise ``ValueError`` unless ``folder`` exists writable or can be created."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to results folder {folder} ({probe} is not a writable folder)")
