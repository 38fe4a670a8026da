"""The results store: one folder per run, written so that a killed run never looks finished.

Layout of a run folder ``<results>/<task>/<method>[+kd]-<pattern>-<model>-seed<S>-<hash>/``:

================  =============================================================
``config.json``   the canonical configuration; its hash names the folder
``state.json``    progress: finished phases and their evaluations (for resume)
``metrics.json``  written last, atomically: present means finished
``dynamics.jsonl`` ADMM dynamics, one record per target per logging event
``log.jsonl``     the Trainer's log history, per phase
``masks.npz``     bit-packed final masks (and reference masks, see below)
``model/``        final weights (not committed; the dense teacher is reused from here)
``checkpoints/``  Trainer checkpoints while a phase runs (deleted at the end)
================  =============================================================

Every JSON file is written to a temporary file and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .nxm import pack_mask, unpack_mask

__all__ = [
    "STORE_VERSION",
    "config_hash",
    "atomic_write_json",
    "read_json",
    "save_masks",
    "load_masks",
    "is_finished",
    "iter_runs",
    "append_jsonl",
    "read_jsonl",
]

#: Bumped when the layout or the meaning of a stored field changes.
STORE_VERSION = 1


def config_hash(config: Mapping[str, Any]) -> str:
    """Short, stable hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON via a temporary file and an atomic rename."""
    _atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    """Read a JSON file, or return ``default`` when it does not exist."""
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text())


def append_jsonl(path: str | os.PathLike[str], records: list[Mapping[str, Any]]) -> None:
    """Append records to a JSON-lines file (flushed and fsynced)."""
    if not records:
        return
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
    """Save named sets of bool masks bit-packed into one ``.npz`` (atomically).

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def is_finished(run_dir: str | os.PathLike[str]) -> bool:
    """True if the run folder holds a finished run's ``metrics.json``."""
    metrics = read_json(Path(run_dir) / "metrics.json")
    return bool(metrics) and metrics.get("status") == "finished"


def iter_runs(results_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Every run folder ``<results_dir>/<task>/<run>/`` holding a ``config.json``, sorted."""
    root = Path(results_dir)
    if not root.is_dir():
        return iter(())
    return iter(sorted(p.parent for p in root.glob("*/*/config.json")))
