"""``transformers.Trainer`` glue: ADMM and fixed-mask callbacks, and a distillation Trainer.

Everything a user already knows from Hugging Face stays the library's: the loop,
gradient accumulation, mixed precision, distributed runs, checkpoints and progress
bars.  These classes only add the sparsity-specific pieces through public hooks.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from .admm import ADMM
from .distill import distillation_loss
from .learned import LearnedMasks
from .masking import FixedMasks
from .targets import describe_target

__all__ = [
    "ADMMCallback",
    "FixedMaskCallback",
    "LearnedMaskCallback",
    "CheckpointMarker",
    "DistillationTrainer",
    "FiniteGuard",
    "NonFiniteError",
    "last_complete_checkpoint",
    "last_loadable_checkpoint",
    "checkpoint_problem",
    "COMPLETE_MARKER",
    "planned_lr_sum",
    "lr_budget",
    "planned_pull",
]

logger = logging.getLogger(__name__)

#: File written into a Trainer checkpoint once everything nxmlab needs is in it.
COMPLETE_MARKER = "nxmlab_complete"
ADMM_STATE_FILE = "admm_state.pt"


class NonFiniteError(RuntimeError):
    """A NaN/Inf loss or weight appeared during training."""


def _save_torch_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def planned_lr_sum(scheduler: Any, steps: int) -> float | None:
    """Sum of the learning rate over the first ``steps`` optimizer steps of ``scheduler``.

    Read from the scheduler itself (a ``LambdaLR``, as ``Trainer`` builds for its linear
    decay with warm-up): ``sum_s base_lr * lr_lambda(s)``, first parameter group.
    ``None`` for a scheduler without ``lr_lambdas``.
    """
    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper
    lambdas = getattr(scheduler, "lr_lambdas", None)
    base_lrs = getattr(scheduler, "base_lrs", None)
    if not lambdas or not base_lrs:
        return None
    return float(sum(base_lrs[0] * lambdas[0](s) for s in range(max(int(steps), 0))))


def lr_budget(lr_sum: float, pruned_mean_abs: float) -> tuple[bool, str]:
    """``(enough, message)``: can the phase move a weight as far as the prune would remove?

    Under Adam a weight moves by about ``lr`` per step at most, so ADMM moves it by about
    ``Σlr`` at most; the weights a prune removes now have a mean ``|w|`` of
    ``pruned_mean_abs``.  ``enough`` is ``lr_sum >= pruned_mean_abs``.
    """
    enough = lr_sum >= pruned_mean_abs
    message = (f"ADMM phase: planned sum of the learning rate {lr_sum:.4g} vs mean |w| {pruned_mean_abs:.4g} of "
               f"the weights the prune would remove now")
    if not enough:
        message += "; the sum is too small for ADMM to reach the n:m set (raise lr, steps or rho)"
    return enough, message


def planned_pull(lrs: Sequence[float], interval: int, rho: float, rho_factor: float = 1.0,
                 rho_max: float | None = None) -> float:
    """``Σ min(lr·rho, 1)`` over a phase: the decoupled penalty's planned pull.

    Without the loss, each decoupled step shrinks ``W - (Z - U)`` by the factor
    ``1 - lr·rho``, so over the phase the pruned part shrinks by about
    ``exp(-planned_pull)``; rho follows its schedule (times ``rho_factor`` every
    ``interval`` steps, capped at ``rho_max``).
    """
    total, current = 0.0, float(rho)
    for step, lr in enumerate(lrs, 1):
        total += min(lr * current, 1.0)
        if step % interval == 0:
            current = min(current * rho_factor, rho_max) if rho_max is not None else current * rho_factor
    return total


class ADMMCallback(TrainerCallback):
    """Runs the ADMM steps inside ``Trainer``.

    * the penalty (once per optimizer step):

      - default: ``on_pre_optimizer_step`` adds ``rho (W - Z + U)`` to ``.grad`` after
        backward, clipping and any all-reduce, so clipping bounds the loss gradient only;
      - ``penalty_before_clip``: ``on_step_begin`` writes it into ``.grad`` before the
        first micro-batch's backward (``Trainer`` zeroes the gradients after every
        optimizer step), and the loss gradients accumulate on top of it; clipping then
        sees their sum, as when the penalty is part of the loss (the authors' code).
        W, Z and U do not change between ``on_step_begin`` and the optimizer step, so the
        gradient is the same;
      - ``decoupled``: ``on_optimizer_step`` applies ``W -= lr rho (W - Z + U)`` after the
        optimizer step (beyond the paper), with no penalty gradient; ``decoupled_scope``
        ``"pruned"`` restricts it to the positions Z prunes;

    * ``on_step_end``: Z/U update every ``interval`` optimizer steps, and a
      non-mutating measurement every ``log_interval`` steps; both are passed to
      ``record`` as one dict per target;
    * ``on_train_begin``: logs the phase's planned ``Σlr`` against the mean ``|w|`` the
      prune would remove now (a warning when ``Σlr`` is smaller, see :func:`lr_budget`);
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
        penalty_before_clip: bool = False,
        decoupled: bool = False,
        decoupled_scope: str = "all",
    ) -> None:
        if interval < 1 or log_interval < 1:
            raise ValueError(f"admm interval and log interval must be >= 1, got {interval} and {log_interval}")
        if penalty_before_clip and decoupled:
            raise ValueError("penalty_before_clip and the decoupled penalty exclude each other (no penalty gradient)")
        self.admm = admm
        self.interval = interval
        self.log_interval = log_interval
        self.record = record
        self.phase = phase
        self.on_midpoint = on_midpoint
        self.penalty_before_clip = penalty_before_clip
        self.decoupled = decoupled
        self.decoupled_scope = decoupled_scope
        self.lr_plan: tuple[float, float] | None = None

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

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        if self.penalty_before_clip and getattr(args, "fp16", False):
            raise ValueError("penalty_before_clip does not support fp16 loss scaling (use bf16 or fp32)")
        if state.global_step == 0:
            lr_sum = planned_lr_sum(lr_scheduler, state.max_steps)
            if lr_sum is not None and self.decoupled:
                sched = getattr(lr_scheduler, "scheduler", lr_scheduler)
                lrs = [sched.base_lrs[0] * sched.lr_lambdas[0](s) for s in range(state.max_steps)]
                pull = planned_pull(lrs, self.interval, self.admm.rho, self.admm.rho_factor, self.admm.rho_max)
                self.lr_plan = (lr_sum, pull)
                message = (f"ADMM phase, decoupled penalty: planned pull sum(lr*rho) {pull:.3g}; without the loss the "
                           f"pruned weights would shrink to about {math.exp(-pull):.2%} of their size")
                (logger.info if pull >= 3 else logger.warning)(
                    message if pull >= 3 else message + " (too weak to reach the n:m set: raise rho or the steps)")
            elif lr_sum is not None:
                mean_abs = self.admm.pruned_mean_abs()
                self.lr_plan = (lr_sum, mean_abs)
                enough, message = lr_budget(lr_sum, mean_abs)
                (logger.info if enough else logger.warning)(message)
            self._emit(0, 0.0, "init", self.admm.measure())

    def on_step_begin(self, args, state, control, **kwargs):
        if self.penalty_before_clip:
            self.admm.add_penalty_grad()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not self.penalty_before_clip and not self.decoupled:
            self.admm.add_penalty_grad()

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.decoupled:
            self.admm.decoupled_step(optimizer.param_groups[0]["lr"], self.decoupled_scope)

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
        if state.is_world_process_zero and checkpoint.is_dir():  # DDP: the state is replicated; rank 0 saves
            _save_torch_atomic(self.admm.state_dict(), checkpoint / ADMM_STATE_FILE)


class FixedMaskCallback(TrainerCallback):
    """Re-masks the weights after every optimizer step (see :mod:`nxmlab.masking`)."""

    def __init__(self, fixed: FixedMasks) -> None:
        self.fixed = fixed

    def on_train_begin(self, args, state, control, **kwargs):
        self.fixed.enforce()  # also after a checkpoint was loaded

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.fixed.enforce()


class LearnedMaskCallback(TrainerCallback):
    """Drives :class:`~nxmlab.learned.LearnedMasks` inside ``Trainer``.

    The masks must be attached (:meth:`LearnedMasks.attach`) before the ``Trainer`` builds its
    optimizer, so that the gates are among the model's parameters: Trainer then optimises,
    clips, checkpoints, restores and (under DDP) all-reduces them like any weight, and its
    restored RNG state makes a resumed run draw the same Gumbel noise.

    * ``on_train_begin``: ``grad_scale = 1 / gradient_accumulation_steps`` (the regulariser's
      gradient is added per micro-batch, weighted as Trainer weights the loss); refuses fp16
      loss scaling with the regulariser on (the hook's term would not be scaled);
    * ``on_step_begin``: the schedules at progress ``global_step / max_steps``;
    * ``on_step_end``: every ``log_interval`` optimizer steps and at the last one,
      ``record({"step", "epoch", "tau", "scale", "reg", "confidence", "prior_distance"})``.
    """

    def __init__(self, learner: LearnedMasks, log_interval: int = 50,
                 record: Callable[[dict[str, Any]], None] | None = None) -> None:
        if log_interval < 1:
            raise ValueError(f"log_interval must be >= 1, got {log_interval}")
        self.learner, self.log_interval, self.record = learner, log_interval, record

    def _progress(self, state) -> None:
        self.learner.set_progress(state.global_step / max(state.max_steps, 1))

    def on_train_begin(self, args, state, control, **kwargs):
        if getattr(args, "fp16", False) and self.learner.schedule.reg > 0:
            raise ValueError("learned masks: the sparse weight regulariser does not support fp16 loss scaling "
                             "(use bf16 or fp32, or turn the regulariser off)")
        self.learner.grad_scale = 1.0 / max(int(args.gradient_accumulation_steps), 1)
        self._progress(state)

    def on_step_begin(self, args, state, control, **kwargs):
        self._progress(state)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if self.record is None or (step % self.log_interval and step != state.max_steps):
            return
        self.record({"step": step, "epoch": state.epoch, "tau": self.learner.tau, "scale": self.learner.scale,
                     "reg": self.learner.reg, "confidence": self.learner.confidence(),
                     "prior_distance": self.learner.prior_distance()})


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
    resumed from.  Under DDP every rank writes its RNG state into the checkpoint, so
    the ranks meet at a barrier first and rank 0 writes the marker.
    """

    def __init__(self, phase: str = "train") -> None:
        self.phase = phase

    def on_save(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            (checkpoint / COMPLETE_MARKER).write_text("ok\n")


def last_complete_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest ``checkpoint-N`` folder carrying :data:`COMPLETE_MARKER`, if any."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    done = [p for p in root.glob("checkpoint-*") if (p / COMPLETE_MARKER).exists() and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def checkpoint_problem(checkpoint: str | os.PathLike[str]) -> str | None:
    """Why a Trainer checkpoint cannot be resumed from, or ``None``: every file in it must load.

    Loads ``*.safetensors`` with safetensors, ``*.pt``/``*.pth``/``*.bin`` with
    ``torch.load(weights_only=True)`` (as ``Trainer`` does) and ``*.json`` with ``json``.
    """
    import json

    from safetensors.torch import load_file
    from transformers.trainer_pt_utils import safe_globals  # the numpy types of rng_state.pth, as Trainer loads it

    checkpoint = Path(checkpoint)
    for path in sorted(checkpoint.iterdir()):
        if not path.is_file() or path.name == "training_args.bin":  # a pickle Trainer never reloads
            continue
        try:
            if path.suffix == ".safetensors":
                load_file(path)
            elif path.suffix in (".pt", ".pth", ".bin"):
                with safe_globals():
                    torch.load(path, map_location="cpu", weights_only=True)
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"{path.name} does not load ({message[:200]})"
    return None


def last_loadable_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint that loads (:func:`checkpoint_problem`), if any.

    A complete checkpoint that does not load (e.g. a damaged ``optimizer.pt``) is renamed
    ``damaged-checkpoint-N`` (out of ``Trainer``'s rotation, kept for inspection) with a
    warning, and the previous one is tried.
    """
    while (checkpoint := last_complete_checkpoint(output_dir)) is not None:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        damaged = checkpoint.with_name(f"damaged-{checkpoint.name}")
        logger.warning("checkpoint %s cannot be resumed from: %s; falling back to the previous one (kept as %s)",
                       checkpoint, problem, damaged.name)
        if damaged.exists():
            import shutil

            shutil.rmtree(damaged)
        checkpoint.rename(damaged)
    return None


class DistillationTrainer(Trainer):
    """A ``Trainer`` whose training loss distils from a frozen teacher.

    The teacher runs in eval mode under ``torch.no_grad`` on the student's device;
    the loss is :func:`nxmlab.distill.distillation_loss`.  A frozen teacher in eval mode
    gives every example the same logits in every epoch, so they are kept per example (keyed
    by its unpadded ``input_ids`` and ``token_type_ids``), and the teacher runs only on a
    batch that holds an example it has not seen: in the first epoch, and after a resume.
    The kept logits are those of the first batch that held the example; a later batch would
    pad it differently, which changes its logits only by float rounding.
    """

    def __init__(self, *args: Any, teacher: torch.nn.Module, temperature: float = 2.0, alpha: float = 0.5,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().to(self.args.device)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature = temperature
        self.alpha = alpha
        self.teacher_logits: dict[bytes, torch.Tensor] = {}
        self.teacher_batches = 0  # batches the teacher ran on

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The student's :func:`nxmlab.distill.distillation_loss` against the teacher's logits
        (the teacher in eval mode, without gradients)."""
        labels = inputs.get("labels")
        outputs = model(**inputs)
        loss = distillation_loss(outputs.logits, self.teach(inputs), labels, self.temperature, self.alpha)
        return (loss, outputs) if return_outputs else loss

    def teach(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's logits for a batch: the kept ones when it has seen every example."""
        keys = _example_keys(inputs)
        if not all(key in self.teacher_logits for key in keys):
            with torch.no_grad():
                logits = self.teacher(**inputs).logits
            self.teacher_batches += 1
            for key, row in zip(keys, logits):
                self.teacher_logits.setdefault(key, row)
            return logits
        return torch.stack([self.teacher_logits[key] for key in keys])


def _example_keys(inputs: dict[str, torch.Tensor]) -> list[bytes]:
    """One key per row of a padded batch: its unpadded ``input_ids`` (and ``token_type_ids``)."""
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    mask = (mask if mask is not None else torch.ones_like(ids)).bool().cpu()
    parts = [inputs[name].cpu() for name in ("input_ids", "token_type_ids") if name in inputs]
    return [b"|".join(part[i][mask[i]].numpy().tobytes() for part in parts) for i in range(ids.shape[0])]
