"""Integrity of stored files: checksums, safetensors headers, model folders, non-finite values.

Used by the recipe (what it records when a run finishes, whether a saved model can be
used) and by ``nxmlab verify``; every check reads headers or bytes, never trusts a
file's name.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from .store import DamagedFileError, read_json

__all__ = ["file_sha256", "finite_or_none", "model_folder_problem", "safetensors_problem"]


def finite_or_none(obj: Any, prefix: str = "") -> tuple[Any, list[str]]:
    """``obj`` with every NaN or infinite float replaced by ``None``, and the dotted paths replaced.

    Non-results never become numbers: what a metric could not measure is stored as
    missing, and its reason is recorded beside it.
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [prefix or "."]
    if isinstance(obj, dict):
        out, paths = {}, []
        for key, value in obj.items():
            out[key], found = finite_or_none(value, f"{prefix}.{key}" if prefix else str(key))
            paths += found
        return out, paths
    if isinstance(obj, (list, tuple)):
        pairs = [finite_or_none(v, f"{prefix}[{i}]") for i, v in enumerate(obj)]
        return [v for v, _ in pairs], [p for _, found in pairs for p in found]
    return obj, []


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors_problem(path: str | os.PathLike[str]) -> str | None:
    """What is wrong with a ``.safetensors`` file's header and size, or ``None`` (reads the header only).

    The header must be valid JSON, and the tensors it describes must fill the file
    exactly: a truncated or padded file is found without loading the weights.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than the 8-byte safetensors header length"
            length = int.from_bytes(head, "little")
            if length > size - 8:
                return f"its header claims {length} bytes but the file has {size}"
            header = json.loads(fh.read(length))
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    except (ValueError, UnicodeDecodeError) as exc:
        return f"safetensors header is not valid JSON ({exc})"
    if not isinstance(header, dict):
        return "safetensors header is not a JSON object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
            count = math.prod(info["shape"])
            width = _DTYPE_BYTES.get(info["dtype"])
        except (KeyError, TypeError, ValueError):
            return f"safetensors header entry {name!r} is malformed"
        if width is not None and stop - begin != count * width:
            return f"tensor {name!r} takes {stop - begin} bytes, its shape and dtype need {count * width}"
        end = max(end, stop)
    expected = 8 + length + end
    if size != expected:
        return f"{size} bytes, but its header describes {expected} (truncated?)" if size < expected else (
            f"{size} bytes, but its header describes {expected}")
    return None


def model_folder_problem(folder: str | os.PathLike[str]) -> str | None:
    """What is wrong with a saved Hugging Face model folder, or ``None``.

    Checks ``config.json`` (valid JSON) and every ``*.safetensors`` file
    (:func:`safetensors_problem`); at least one weights file must exist.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return f"{folder / 'config.json'} is missing"
    try:
        read_json(folder / "config.json")
    except DamagedFileError as exc:
        return str(exc)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not any(folder.glob("pytorch_model*.bin")):
        return f"no weights file (model.safetensors) in {folder}"
    for path in weights:
        problem = safetensors_problem(path)
        if problem:
            return f"{path}: {problem}"
    return None
