"""Training progress where nxmlab trains for the user without ``nxmlab train``: ``nxmlab export
--rebuild`` and the notebooks with ``train=True``.

In a terminal, Trainer's own progress bars are shown.  Elsewhere (a notebook, papermill, a log
file) a bar is unreadable, so :class:`ProgressLines` prints one line per few optimizer steps:
the phase, the step, the loss and the time left.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

__all__ = ["ProgressLines", "progress_callbacks"]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ProgressLines(TrainerCallback):
    """One line every ``every`` optimizer steps (default: about 20 lines per phase), and at the end.

    ``[admm] step 40/400 (10%), loss 0.6931, 12 s, about 1 min 48 s left``; the phase is the
    name of the checkpoint folder (``checkpoints/<phase>``).  Printed by the main process only.
    """

    def __init__(self, every: int | None = None, write: Callable[[str], Any] | None = None) -> None:
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.every = every
        self.write = write or (lambda line: print(line, flush=True))
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.tic, self.start, self.loss = time.perf_counter(), state.global_step, None
        self.step_every = self.every or max(1, math.ceil(state.max_steps / 20))
        self.phase = Path(args.output_dir).name if args.output_dir else "train"

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and isinstance(logs.get("loss"), (int, float)):
            self.loss = float(logs["loss"])

    def on_step_end(self, args, state, control, **kwargs):
        step, total = state.global_step, state.max_steps
        if not state.is_world_process_zero or (step % self.step_every and step != total):
            return
        elapsed = time.perf_counter() - self.tic
        done = step - self.start
        left = elapsed / done * (total - step) if done > 0 else float("nan")
        loss = f", loss {self.loss:.4f}" if self.loss is not None else ""
        eta = f", about {_duration(left)} left" if step < total and math.isfinite(left) else ""
        self.write(f"[{self.phase}] step {step}/{total} ({100 * step / max(total, 1):.0f}%){loss}, "
                   f"{_duration(elapsed)}{eta}")


def progress_callbacks(args: Any, every: int | None = None) -> list[TrainerCallback]:
    """Progress for a run trained on the user's behalf: Trainer's bars when stdout is a terminal
    (``args.disable_tqdm`` is set to ``False``), else ``[ProgressLines(every)]``.

    ``disable_tqdm`` is not part of a run's identity: the results store is unaffected.
    """
    if sys.stdout.isatty():
        args.disable_tqdm = False
        return []
    return [ProgressLines(every)]
