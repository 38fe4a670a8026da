"""Phase hooks: the method-specific part of a training phase, as the recipe sees it.

A hooks class is named by a :class:`~nxmlab.study.train.methods.Train` step of the registry.
The recipe builds it with ``(spec, folder, model, targets, steps_per_epoch,
calibration=...)`` (``calibration()``: the run's calibration batches, as mask rules get
them) from the phase's start model and calls, in order:
:meth:`callbacks`, :meth:`resume` (a checkpoint or ``None``), :meth:`end` when the phase
finished, and :meth:`finish` once the run's final masks are known (also in a later
process, when the phase had finished before a kill).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from ...admm import ADMM, loss_free_run
from ...callbacks import ADMM_STATE_FILE, ADMMCallback
from ...nxm import nxm_mask
from ..results.store import RunFolder, append_jsonl, atomic_write, follow_umask, load_masks, read_jsonl, save_masks
from .distributed import check_replicated, is_main
from .spec import Spec

__all__ = ["ADMMHooks", "SRSTEHooks", "LearnedHooks", "STAGES", "downsample_dynamics", "ConvergenceCriteria", "CONVERGENCE", "is_converged"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvergenceCriteria:
    """When an ADMM run counts as converged at the hard prune (issue #12).

    Attributes:
        rel_dist: Largest ``||W - Proj(W)|| / ||W||`` at the prune.
        flips: Largest fraction of all target positions flipped at each of the last two Z/U updates.
        z_mask_distance: Largest mask distance of the last Z mask to the final mask.
        prune_cost_points: Largest drop of the validation score at the prune (x100).
    """

    rel_dist: float = 0.05
    flips: float = 0.005
    z_mask_distance: float = 0.005
    prune_cost_points: float = 1.0


#: The criteria every ADMM run records ``converged`` against.
CONVERGENCE = ConvergenceCriteria()


def is_converged(rel_dist: float, flips_last_two: Sequence[float], z_final_mask_distance: float,
                 prune_cost_points: float | None, criteria: ConvergenceCriteria = CONVERGENCE) -> bool:
    """Whether the measured numbers meet ``criteria``; fewer than two Z/U updates, or an
    unknown prune cost, never count as converged."""
    return (len(flips_last_two) >= 2 and prune_cost_points is not None
            and rel_dist <= criteria.rel_dist
            and all(f <= criteria.flips for f in flips_last_two[-2:])
            and z_final_mask_distance <= criteria.z_mask_distance
            and prune_cost_points <= criteria.prune_cost_points)

#: Snapshots of the target weights in ``magnitudes.parquet``.
STAGES = {
    "start": "start: W at the start of ADMM",
    "admm_mid": "middle: W half-way through ADMM",
    "admm_end": "end of ADMM: W before the hard prune",
    "final": "end: final W (after hard prune + retraining)",
}
#: |w| values kept per (stage, position) in ``magnitudes.parquet``.
MAGNITUDE_SAMPLE = 2000
#: ``log`` records kept per ADMM phase in ``dynamics.parquet`` (every init/update record is kept).
LOG_STEPS_KEPT = 40


def downsample_dynamics(records: list[dict[str, Any]], log_steps: int = LOG_STEPS_KEPT) -> pd.DataFrame:
    """The raw dynamics as a frame: every ``init``/``update`` record, ``log`` records at
    ``log_steps`` evenly spaced steps at most; floats as float32."""
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return frame
    logs = np.sort(frame.loc[frame["event"] == "log", "step"].unique())
    if len(logs) > log_steps:
        keep = set(logs[np.unique(np.linspace(0, len(logs) - 1, log_steps).round().astype(int))])
        frame = frame[(frame["event"] != "log") | frame["step"].isin(keep)]
    floats = frame.select_dtypes("float64").columns
    return frame.astype({c: "float32" for c in floats if c != "epoch"}).reset_index(drop=True)


class ADMMHooks:
    """The ADMM phase: the ADMM state, its callback, the dynamics log and the diagnostics.

    ``records_dynamics``: the phase writes ``dynamics.parquet`` (the dynamics notebook reads it).

    Args:
        spec: The run.
        folder: Its store folder.
        model: The model at the start of the phase.
        targets: ``targets(model) -> {name: nn.Linear}``.
        steps_per_epoch: Optimizer steps per epoch (the default Z/U interval).
    """

    records_dynamics = True

    def __init__(self, spec: Spec, folder: RunFolder, model, targets: Callable, steps_per_epoch: int,
                 calibration: Callable[[], list] | None = None) -> None:
        cfg = spec.cfg
        self.spec, self.folder = spec, folder
        self.admm = ADMM(model, targets(model), spec.pattern, rho=cfg.rho, rho_factor=cfg.rho_factor,
                         rho_max=cfg.rho_max, u_init=cfg.u_init)
        self.start = self._weights()
        per_epoch = cfg.admm_updates_per_epoch
        self.interval = cfg.admm_interval or (max(1, round(steps_per_epoch / per_epoch)) if per_epoch else steps_per_epoch)

    def _weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone().contiguous() for name, p in self.admm.params.items()}

    def _midpoint(self, step: int) -> None:
        if is_main():  # rank 0 owns the store
            save_file(self._weights(), str(self.folder.mid_weights), metadata={"step": str(step)})
            follow_umask(self.folder.mid_weights)

    def _record(self, rows: list[dict[str, Any]]) -> None:
        if not is_main():
            return
        append_jsonl(self.folder.raw_dynamics, rows)
        if rows and rows[0]["event"] == "update":  # keep this update's Z mask (cache) for z_mask_distances
            self.folder.z_masks_dir.mkdir(parents=True, exist_ok=True)
            save_masks(self.folder.z_masks_dir / f"step-{rows[0]['step']}.npz", {"z": self.admm.masks})

    def callbacks(self) -> list:
        """The Trainer callbacks of the phase."""
        self.folder.cache.mkdir(parents=True, exist_ok=True)
        return [ADMMCallback(self.admm, self.interval, self.spec.cfg.log_interval, record=self._record,
                             on_midpoint=self._midpoint, penalty_before_clip=self.spec.cfg.penalty_before_clip,
                             decoupled=self.spec.cfg.decoupled_penalty,
                             decoupled_scope=self.spec.cfg.decoupled_scope)]

    def resume(self, checkpoint: Path | None, step: int) -> None:
        """Restore the ADMM state of ``checkpoint`` and drop later dynamics, or start a fresh log."""
        if checkpoint is not None:
            self.admm.load_state_dict(torch.load(checkpoint / ADMM_STATE_FILE, weights_only=True))
        if not is_main():
            return
        raw = self.folder.raw_dynamics
        for path in self.folder.z_masks_dir.glob("step-*.npz"):
            if checkpoint is None or int(path.stem.split("-")[1]) > step:
                path.unlink()
        if checkpoint is None:
            raw.unlink(missing_ok=True)
            return
        kept = [r for r in read_jsonl(raw) if r["step"] <= step]
        raw.unlink(missing_ok=True)
        append_jsonl(raw, kept)

    def end(self) -> None:
        """Keep the final ADMM state and W before the prune (cache); under DDP, check that the
        ranks agree on Z, U and the masks."""
        check_replicated({**{f"Z/{n}": z for n, z in self.admm.Z.items()}, **{f"U/{n}": u for n, u in self.admm.U.items()},
                          **{f"mask/{n}": m for n, m in self.admm.masks.items()}}, "ADMM states (Z, U, masks)")
        if is_main():
            state = {**self.admm.state_dict(), "W": self._weights()}
            atomic_write(self.folder.admm_state, lambda tmp: torch.save(state, tmp))  # never a torn file

    # --- at the end of the run --------------------------------------------------------
    def finish(self, final_masks: Mapping[str, torch.Tensor], final_model,
               scores: Mapping[str, float] | None = None,
               references: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> dict[str, Any]:
        """Write ``dynamics.parquet``, ``magnitudes.parquet``, ``z_mask_distances.parquet`` and
        ``loss_free.parquet``; return the diagnostics at the prune.

        ``z_mask_distances`` holds, per Z/U update, the mask distance of that update's Z mask
        to the final mask, to the magnitude mask of the weights ADMM started from, and to
        the ASP mask (``references["dense_magnitude"]``, when the dense run is known).
        ``loss_free`` is the control run (:func:`~nxmlab.admm.loss_free_run`): the same
        start weights, schedule and learning rates with no task loss.

        ``rel_dist_at_prune`` is ``||W - Proj(W)|| / ||W||`` over all targets with W at the
        end of ADMM; ``flips_last_update`` the fraction of positions whose mask changed at
        the last Z/U update (``flips_last_two``: at each of the last two); ``updates`` the
        number of Z/U updates; ``z_final_mask_distance`` the mask distance of the last Z
        mask to ``final_masks``; ``prune_cost_points`` ``(before_prune - after_prune) x 100``
        from ``scores``; ``converged`` the verdict of :func:`is_converged` (a warning when false).
        """
        records = read_jsonl(self.folder.raw_dynamics)
        self.folder.write_frame(RunFolder.DYNAMICS, downsample_dynamics(records))
        state = torch.load(self.folder.admm_state, weights_only=True)
        end = state["W"]
        pruned = sum(float(w.masked_fill(nxm_mask(w, self.spec.pattern), 0).float().pow(2).sum()) for w in end.values())
        total = sum(float(w.float().pow(2).sum()) for w in end.values())
        updates = [r for r in records if r["event"] == "update"]
        last_step = max((r["step"] for r in updates), default=None)
        numel = sum(w.numel() for w in end.values())
        flips = sum(r["flips"] for r in updates if r["step"] == last_step) / numel if updates else None
        update_steps = sorted({r["step"] for r in updates})
        flips_last_two = [sum(r["flips"] for r in updates if r["step"] == s) / numel for s in update_steps[-2:]]
        flips_first = sum(r["flips"] for r in updates if r["step"] == update_steps[0]) / numel if updates else None
        z_masks = state["masks"]
        kept = sum(int(m.sum()) for m in final_masks.values()) + sum(int(z_masks[n].sum()) for n in final_masks)
        differ = sum(int((z_masks[n].bool() ^ m.bool()).sum()) for n, m in final_masks.items())
        z_distance = differ / kept if kept else 0.0
        scores = scores or {}
        cost = (100 * (scores["before_prune"] - scores["after_prune"])
                if "before_prune" in scores and "after_prune" in scores else None)
        modules = dict(final_model.named_modules())
        snapshots = {"start": self.start, "admm_end": end,
                     "final": {n: modules[n].weight.detach() for n in final_masks}}
        if self.folder.mid_weights.is_file():
            snapshots["admm_mid"] = load_file(self.folder.mid_weights)
        self.folder.write_frame(RunFolder.MAGNITUDES, magnitude_sample(snapshots, final_masks))
        self.folder.write_frame(RunFolder.Z_MASKS, self._z_mask_distances(update_steps, final_masks, references or {}))
        loss_free = self.loss_free(final_masks)
        self.folder.write_frame(RunFolder.LOSS_FREE, loss_free)
        loss_free_distance = (float(loss_free["reference_distance"].dropna().iloc[-1])
                              if "reference_distance" in loss_free and loss_free["reference_distance"].notna().any()
                              else None)
        rel_dist = math.sqrt(pruned / total) if total > 0 else 0.0
        converged = is_converged(rel_dist, flips_last_two, z_distance, cost)
        if not converged:
            logger.warning("%s: ADMM did not converge before the hard prune (rel. distance %.4g, flips at the last two "
                           "updates %s, last Z mask vs final mask %.4g, prune cost %s points; criteria %s)",
                           self.folder.name, rel_dist, [round(f, 5) for f in flips_last_two], z_distance,
                           "unknown" if cost is None else f"{cost:.3g}", CONVERGENCE)
        return {"rel_dist_at_prune": rel_dist, "flips_last_update": flips, "updates": len(update_steps),
                "flips_last_two": flips_last_two, "z_final_mask_distance": z_distance, "prune_cost_points": cost,
                "flips_first_update": flips_first, "mask_dist_loss_free": loss_free_distance,
                "converged": converged}


    def _z_mask_distances(self, steps: Sequence[int], final_masks: Mapping[str, torch.Tensor],
                          references: Mapping[str, Mapping[str, torch.Tensor]]) -> pd.DataFrame:
        refs = {"final": final_masks, "start_magnitude": {n: nxm_mask(w, self.spec.pattern, n) for n, w in self.start.items()}}
        if "dense_magnitude" in references:
            refs["asp"] = references["dense_magnitude"]
        rows = []
        for step in steps:
            path = self.folder.z_masks_dir / f"step-{step}.npz"
            if not path.is_file():
                continue
            z = load_masks(path, "z")["z"]
            kept = 2 * sum(int(m.sum()) for m in z.values())
            for name, ref in refs.items():
                differ = sum(int((z[n] ^ ref[n].bool()).sum()) for n in z)
                rows.append({"step": step, "reference": name, "distance": differ / kept if kept else 0.0})
        return pd.DataFrame(rows, columns=["step", "reference", "distance"])

    def loss_free(self, final_masks: Mapping[str, torch.Tensor] | None = None) -> pd.DataFrame:
        """The control: this phase's ADMM schedule on the start weights with no task loss
        (its last record's ``reference_distance``: its own prune mask against ``final_masks``)."""
        from transformers import get_scheduler

        args, cfg = self.spec.args, self.spec.cfg
        phase = self.folder.state().get("phases", {}).get("admm", {})
        steps = int(phase.get("steps", 0))
        if steps < 1:
            return pd.DataFrame()
        dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
        scheduler = get_scheduler(args.lr_scheduler_type, dummy, num_warmup_steps=args.get_warmup_steps(steps),
                                  num_training_steps=steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
        lrs = []
        for _ in range(steps):
            lrs.append(dummy.param_groups[0]["lr"])
            dummy.step()
            scheduler.step()
        records = loss_free_run(self.start, self.spec.pattern, lrs, self.interval, rho=cfg.rho,
                                rho_factor=cfg.rho_factor, rho_max=cfg.rho_max, u_init=cfg.u_init,
                                decoupled=cfg.decoupled_penalty, decoupled_scope=cfg.decoupled_scope, betas=(args.adam_beta1, args.adam_beta2),
                                eps=args.adam_epsilon, weight_decay=args.weight_decay,
                                max_grad_norm=args.max_grad_norm if cfg.penalty_before_clip else None,
                                reference=final_masks)
        return pd.DataFrame.from_records(records).astype({"rho_used": "float64"})


class SRSTEHooks:
    """The SR-STE phase (Zhou et al., 2021): forward with the n:m-masked weights, the mask
    recomputed from the dense weights at every step, straight-through gradients plus the
    sparse-refined term.  SR-STE holds no state besides the weights, so a resumed phase
    needs nothing restored; at the end the plain Linear layers (dense weights) come back
    and the registry's prune step fixes the mask of those weights.
    """

    records_dynamics = False

    def __init__(self, spec: Spec, folder: RunFolder, model, targets: Callable, steps_per_epoch: int,
                 calibration: Callable[[], list] | None = None) -> None:
        self.spec, self.model, self.targets = spec, model, targets
        self.srste = None

    def callbacks(self) -> list:
        """Install SR-STE on the targets; its callback adds the refined term every optimizer step."""
        from ...srste import SRSTE, SRSTECallback

        self.srste = SRSTE(self.targets(self.model), self.spec.pattern, lambda_w=self.spec.cfg.srste_lambda)
        return [SRSTECallback(self.srste)]

    def resume(self, checkpoint: Path | None, step: int) -> None:
        """Nothing to restore: the mask is a function of the (restored) weights."""

    def end(self) -> None:
        """Restore the plain Linear layers (the weights stay dense until the prune step)."""
        if self.srste is not None:
            self.srste.remove()

    def finish(self, final_masks, final_model, scores=None, references=None) -> dict[str, Any]:
        """No diagnostics beyond the run's own."""
        return {}


class LearnedHooks:
    """The mask-learning phase (MaskLLM, :mod:`nxmlab.learned`): Gumbel-softmax masks over the
    n:m candidates of every group, their gates initialised from a one-shot prior mask.

    The gates are attached as parameters of the targets before Trainer builds its
    optimizer, so Trainer trains, clips, checkpoints and restores them (their learning
    rate is ``mask_lr_mult`` x the run's through the stored ``g / mask_lr_mult``).  With
    ``freeze_weights`` (default) every weight of the model is frozen and only the gates
    train.  At the end the argmax masks (exactly n:m) and the prior go to
    ``learned_state.pt`` in the cache, where the registry's mask rule (:func:`learned_masks`)
    reads them, also in a later process; the model goes back to plain Linear layers with
    its weights, unmasked until the prune.
    """

    records_dynamics = False

    def __init__(self, spec: Spec, folder: RunFolder, model, targets: Callable, steps_per_epoch: int,
                 calibration: Callable[[], list] | None = None) -> None:
        self.spec, self.folder, self.model, self.targets = spec, folder, model, targets
        self.calibration = calibration if calibration is not None else list
        self.learner = None

    def prior(self) -> dict[str, torch.Tensor]:
        """The prior masks: magnitude n:m of the start weights, or SparseGPT's mask (computed on
        a copy of the model, so the weights the masks learn on stay the start weights)."""
        if self.spec.cfg.mask_prior == "sparsegpt":
            import copy

            from ...sparsegpt import sparsegpt_model

            scratch = copy.deepcopy(self.model)
            return sparsegpt_model(scratch, self.targets(scratch), self.calibration(), self.spec.pattern)
        return {name: nxm_mask(m.weight, self.spec.pattern, name) for name, m in self.targets(self.model).items()}

    def callbacks(self) -> list:
        """Attach the learned masks (gates from the prior) and return their callback."""
        from ...callbacks import LearnedMaskCallback
        from ...learned import LearnedMasks, MaskSchedule

        cfg = self.spec.cfg
        optim = str(getattr(self.spec.args.optim, "value", self.spec.args.optim))
        if cfg.mask_lr_mult != 1 and "adam" not in optim:
            logger.warning("learned masks: mask_lr_mult %g is a learning-rate multiplier only under Adam-type "
                           "optimizers, not %s", cfg.mask_lr_mult, optim)
        schedule = MaskSchedule(tau=(cfg.mask_tau_start, cfg.mask_tau_end),
                                scale=(cfg.mask_scale_start, cfg.mask_scale_end), reg=cfg.mask_reg)
        self.learner = LearnedMasks(self.targets(self.model), self.spec.pattern, prior=self.prior(), schedule=schedule,
                                    prior_strength=cfg.mask_prior_strength, lr_mult=cfg.mask_lr_mult)
        self.learner.attach(self.model, freeze_weights=cfg.freeze_weights)
        return [LearnedMaskCallback(self.learner, cfg.log_interval, record=self._record)]

    def _record(self, row: dict[str, Any]) -> None:
        if is_main():
            append_jsonl(self.folder.learned_log, [row])

    def resume(self, checkpoint: Path | None, step: int) -> None:
        """The gates and their optimizer state come back with Trainer's checkpoint (they are
        model parameters during the phase); drop the trajectory records after ``step``."""
        if not is_main():
            return
        log = self.folder.learned_log
        kept = [r for r in read_jsonl(log) if checkpoint is not None and r["step"] <= step]
        log.unlink(missing_ok=True)
        if kept:
            append_jsonl(log, kept)

    def end(self) -> None:
        """Save the argmax masks and the prior (rank 0), then restore plain Linear layers."""
        if self.learner is None:
            return
        masks = self.learner.hard_masks()
        check_replicated({f"learned/{n}": m for n, m in masks.items()}, "learned masks")
        if is_main():
            state = {"masks": {n: m.cpu() for n, m in masks.items()},
                     "prior": {n: m.cpu() for n, m in self.learner.prior.items()},
                     "confidence": self.learner.confidence(), "prior_distance": self.learner.prior_distance()}
            self.folder.cache.mkdir(parents=True, exist_ok=True)
            atomic_write(self.folder.learned_state, lambda tmp: torch.save(state, tmp))
        self.learner.remove()

    def finish(self, final_masks, final_model, scores=None, references=None) -> dict[str, Any]:
        """``learned_prior_distance`` (final mask vs prior: fraction of kept positions that
        differ), ``learned_confidence`` (mean top candidate probability at the end of the phase)
        and ``learned_trajectory`` (the phase's records, at most 40)."""
        state = torch.load(self.folder.learned_state, weights_only=True)
        records = read_jsonl(self.folder.learned_log)
        if len(records) > LOG_STEPS_KEPT:
            keep = set(np.unique(np.linspace(0, len(records) - 1, LOG_STEPS_KEPT).round().astype(int)).tolist())
            records = [r for i, r in enumerate(records) if i in keep]
        return {"learned_prior_distance": state["prior_distance"], "learned_confidence": state["confidence"],
                "learned_trajectory": records}


def learned_masks(folder: RunFolder) -> dict[str, torch.Tensor]:
    """The argmax masks that :class:`LearnedHooks` saved at the end of the learning phase."""
    if not folder.learned_state.is_file():
        raise ValueError(f"{folder.name}: no learned masks in {folder.learned_state} (the learning phase did not run)")
    return torch.load(folder.learned_state, weights_only=True)["masks"]


def magnitude_sample(snapshots: Mapping[str, Mapping[str, torch.Tensor]], masks: Mapping[str, torch.Tensor],
                     per_group: int = MAGNITUDE_SAMPLE, seed: int = 0) -> pd.DataFrame:
    """``stage, position (kept/pruned), abs_w``: a seeded sample of |w| at the final mask's kept
    and pruned positions per snapshot (pruned positions of the final model are zero: left out)."""
    rng = np.random.default_rng(seed)
    parts = []
    for stage in STAGES:
        weights = snapshots.get(stage)
        if weights is None:
            continue
        w = np.concatenate([weights[n].detach().abs().float().flatten().numpy() for n in masks])
        m = np.concatenate([masks[n].flatten().numpy() for n in masks])
        for position, values in (("kept", w[m]), ("pruned", w[~m])):
            if stage == "final" and position == "pruned":
                continue
            if len(values) > per_group:
                values = rng.choice(values, per_group, replace=False)
            parts.append(pd.DataFrame({"stage": STAGES[stage], "position": position,
                                       "abs_w": values.astype(np.float16)}))
    return pd.concat(parts, ignore_index=True)
