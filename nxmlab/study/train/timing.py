"""The wall time of a training phase across resumes.

A phase killed and resumed from its last checkpoint would otherwise record only the time
after the resume.  :class:`ElapsedTime` writes the time so far into every checkpoint
(:data:`ELAPSED_FILE`); :func:`elapsed_before` reads it back when the phase resumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

__all__ = ["ELAPSED_FILE", "ElapsedTime", "elapsed_before"]

ELAPSED_FILE = "nxmlab_elapsed.json"


class ElapsedTime(TrainerCallback):
    """Writes the phase's wall time so far (``prior`` seconds from the segments before a
    resume plus this one's) into every checkpoint, so a resumed phase records its whole time."""

    def __init__(self, prior: float) -> None:
        self.prior, self.tic = prior, time.perf_counter()

    def start(self) -> float:
        """Start this segment's clock; returns its start (``time.perf_counter()``)."""
        self.tic = time.perf_counter()
        return self.tic

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            seconds = self.prior + time.perf_counter() - self.tic
            (checkpoint / ELAPSED_FILE).write_text(json.dumps({"seconds": seconds}) + "\n")


def elapsed_before(checkpoint: Path | None) -> float:
    """The wall time a phase had spent up to ``checkpoint`` (0 without one, or for a checkpoint
    written before this was recorded)."""
    try:
        return float(json.loads((checkpoint / ELAPSED_FILE).read_text())["seconds"]) if checkpoint else 0.0
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
