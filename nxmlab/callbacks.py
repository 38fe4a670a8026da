"""``transformers.Trainer`` glue: ADMM and fixed-mask callbacks, and a distillation Trainer.

Everything a user already knows from Hugging Face stays the library's: the loop,
gradient accumulation, mixed precision, distributed runs, checkpoints and progress
bars.  These classes only add the sparsity-specific pieces through public hooks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from .admm import ADMM
from .distill import distillation_loss
from .masking import FixedMasks
from .targets import describe_target

__all__ = [
    "ADMMCallback",
    "FixedMaskCallback",
    "CheckpointMarker",
    "DistillationTrainer",
    "FiniteGuard",
    "NonFiniteError",
    "last_complete_checkpoint",
    "COMPLETE_MARKER",
]

#: File written into a Trainer checkpoint once everything nxmlab needs is in it.
COMPLETE_MARKER = "nxmlab_complete"
ADMM_STATE_FILE = "admm_state.pt"


class NonFiniteError(RuntimeError):
    """A NaN/Inf loss or weight appeared during training."""


def _save_torch_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class ADMMCallback(TrainerCallback):
    """Runs the ADMM steps inside ``Trainer``.

    * ``on_pre_optimizer_step``: adds the penalty gradient (once per optimizer step,
      after backward, clipping and any all-reduce);
    * ``on_step_end``: Z/U update every ``interval`` optimizer steps, and a
      non-mutating measurement every ``log_interval`` steps; both are passed to
      ``record`` as one dict per target;
    * ``on_save``: stores the ADMM state inside the checkpoint folder;
    * ``on_midpoint(step)``: called once, at the first Z/U update past half of the
      phase (before that update), e.g. to snapshot the weights.
    """

    def __init__(
        self,
        admm: ADMM,
        interval: int,
        log_interval: int,
        record: Callable[[list[dict[str, Any]]], None] | None = None,
        phase: str = "admm",
        on_midpoint: Callable[[int], None] | None = None,
    ) -> None:
        if interval < 1 or log_interval < 1:
            raise ValueError(f"admm interval and log interval must be >= 1, got {interval} and {log_interval}")
        self.admm = admm
        self.interval = interval
        self.log_interval = log_interval
        self.record = record
        self.phase = phase
        self.on_midpoint = on_midpoint

    def _emit(self, step: int, epoch: float | None, event: str, per_target: dict[str, dict[str, Any]]) -> None:
        rows = []
        for name, values in per_target.items():
            component, layer = describe_target(name)
            rows.append(
                {"phase": self.phase, "step": step, "epoch": epoch, "event": event, "target": name,
                 "component": component, "layer": layer, "rho": self.admm.rho, **values}
            )
        if self.record is not None:
            self.record(rows)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self._emit(0, 0.0, "init", self.admm.measure())

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.admm.add_penalty_grad()

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step % self.interval == 0:
            rho = self.admm.rho
            if self.on_midpoint is not None and step >= state.max_steps / 2 > step - self.interval:
                self.on_midpoint(step)  # W at the first update past half-way, before it
            diagnostics = {n: {**d.to_dict(), "rho_used": rho} for n, d in self.admm.update().items()}
            self._emit(step, state.epoch, "update", diagnostics)
        elif step % self.log_interval == 0:
            self._emit(step, state.epoch, "log", self.admm.measure())

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            _save_torch_atomic(self.admm.state_dict(), checkpoint / ADMM_STATE_FILE)


class FixedMaskCallback(TrainerCallback):
    """Re-masks the weights after every optimizer step (see :mod:`nxmlab.masking`)."""

    def __init__(self, fixed: FixedMasks) -> None:
        self.fixed = fixed

    def on_train_begin(self, args, state, control, **kwargs):
        self.fixed.enforce()  # also after a checkpoint was loaded

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.fixed.enforce()


class FiniteGuard(TrainerCallback):
    """Stops training with :class:`NonFiniteError` at the first NaN/Inf loss or weight.

    Weights are checked after every optimizer step (one fused norm over all
    trainable parameters), i.e. before that step's checkpoint could be saved, so the
    newest complete checkpoint is always a good one.
    """

    def __init__(self, phase: str = "train") -> None:
        self.phase = phase

    def _fail(self, what: str, step: int, args) -> None:
        last = last_complete_checkpoint(args.output_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
        raise NonFiniteError(f"{what} at step {step} in phase '{self.phase}'; {kept}; the run is not marked finished")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        params = [p.detach() for p in model.parameters() if p.requires_grad]
        if params and not bool(torch.stack(torch._foreach_norm(params)).isfinite().all()):
            self._fail("non-finite weights", state.global_step, args)

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._fail(f"non-finite training loss {loss}", state.global_step, args)


class CheckpointMarker(TrainerCallback):
    """Marks a checkpoint complete once every callback has written into it.

    Add it *last*: a checkpoint cut short by a kill has no marker and is never
    resumed from.
    """

    def __init__(self, phase: str = "train") -> None:
        self.phase = phase

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            (checkpoint / COMPLETE_MARKER).write_text("ok\n")


def last_complete_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest ``checkpoint-N`` folder carrying :data:`COMPLETE_MARKER`, if any."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    done = [p for p in root.glob("checkpoint-*") if (p / COMPLETE_MARKER).exists() and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


class DistillationTrainer(Trainer):
    """A ``Trainer`` whose training loss distils from a frozen teacher.

    The teacher runs in eval mode under ``torch.no_grad`` on the student's device;
    the loss is :func:`nxmlab.distill.distillation_loss`.
    """

    def __init__(self, *args: Any, teacher: torch.nn.Module, temperature: float = 2.0, alpha: float = 0.5,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().to(self.args.device)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature = temperature
        self.alpha = alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        outputs = model(**inputs)
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs).logits
        loss = distillation_loss(outputs.logits, teacher_logits, labels, self.temperature, self.alpha)
        return (loss, outputs) if return_outputs else loss
