"""``nxmlab train --help``, cached so that it answers at once.

``train``'s options are :class:`~nxmlab.study.train.config.RunConfig` and Hugging Face
``TrainingArguments``, read by ``HfArgumentParser``; building that help imports torch,
transformers and the recipe's modules (several seconds).  The text is therefore kept in
``$XDG_CACHE_HOME/nxmlab/`` (default ``~/.cache/nxmlab/``) under a key that changes with
everything the text depends on: nxmlab's source files, the versions of Python, torch,
transformers and accelerate, the terminal width argparse wraps to, and whether a GPU is
visible (``--dataloader_pin_memory`` defaults to it).  The first ``train --help`` after any
of those changes builds the text (and caches it); every later one reads it.  A cache that
cannot be written is skipped silently: the help is then built every time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["cache_file", "train_help"]

_PACKAGES = ("torch", "transformers", "accelerate")


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def cache_file() -> Path:
    """Where the help text for this installation, terminal width and device lives."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[2]
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    gpu = os.path.exists("/dev/nvidiactl") and os.environ.get("CUDA_VISIBLE_DEVICES", "all") != ""
    parts = [sys.version, *(_version(p) for p in _PACKAGES), str(shutil.get_terminal_size().columns), str(gpu),
             os.environ.get("CUDA_VISIBLE_DEVICES", "")]
    digest.update("\0".join(parts).encode())
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nxmlab"
    return root / f"train-help-{digest.hexdigest()[:16]}.txt"


def train_help(build: Callable[[], str]) -> str:
    """The text of ``nxmlab train --help``: from the cache, else ``build()`` (then cached)."""
    path = cache_file()
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        pass
    text = build()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return text
