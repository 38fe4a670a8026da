"""Scaled-form ADMM that pulls a model's target weights onto the NxM set.

NxMTransformer solves ``min_W f(W)  s.t.  W in S_NxM`` by alternating

* **W-step** -- ordinary optimizer steps on ``f(W) + rho/2 * ||W - Z + U||^2``;
* **Z-step** -- ``Z = Proj_S(W + U)`` (keep the m largest ``|.|`` in each group of n);
* **U-step** -- ``U = U + W - Z``.

The penalty gradient ``rho * (W - Z + U)`` is added straight into ``.grad`` by one
fused call, :meth:`ADMM.add_penalty_grad`, made once per optimizer step *after*
backward has finished.  No autograd graph is built for it.  Calling it once per
optimizer step (not once per micro-batch) keeps it right under gradient
accumulation; calling it after backward means DDP has already all-reduced the loss
gradients, and since W, Z and U are replicated on every rank the penalty is the
same everywhere.  With :class:`transformers.Trainer` the recipes call it from
``on_pre_optimizer_step``, i.e. after gradient clipping: clipping bounds the
stochastic loss gradient only, never the deterministic pull towards Z.

Typical loop::

    admm = ADMM(model, select_targets(model), "4:2", rho=1e-3)
    for step, batch in enumerate(loader, 1):
        model(**batch).loss.backward()
        admm.add_penalty_grad()
        optimizer.step(); optimizer.zero_grad()
        if step % interval == 0:
            diagnostics = admm.update()
    masks = admm.hard_prune()
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .nxm import NxM, check_module, check_targets, nxm_mask, nxm_mask_and_project
from .targets import select_targets

__all__ = ["ADMM", "ADMMDiagnostics", "U_INITS", "DECOUPLED_SCOPES", "validate_rho", "loss_free_run"]

#: How U starts: ``zero`` (nxmlab's default) or ``residual`` (``W - Proj(W)``, the authors' code).
U_INITS = ("zero", "residual")
#: Which positions the decoupled penalty pulls (:meth:`ADMM.decoupled_step`).
DECOUPLED_SCOPES = ("all", "pruned")


def validate_rho(rho: float, name: str = "rho") -> float:
    """Return ``rho`` as a float, or raise ``ValueError`` unless it is finite and > 0."""
    try:
        value = float(rho)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {rho!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {rho!r}")
    return value


@dataclass(frozen=True)
class ADMMDiagnostics:
    """Per-target diagnostics returned by :meth:`ADMM.update`.

    Attributes:
        primal: Primal residual ``||W - Z||`` after the update.
        dual: Dual residual ``rho * ||Z - Z_prev||`` (rho before any schedule step).
        flips: Positions whose kept/pruned status changed since the last update.
        rel_dist: Relative distance of W to the NxM set, ``||W - Proj(W)|| / ||W||``.
        near_zero: Fraction of ``|W| <= near_zero_rtol * rms(W)``.
        penalty: ``rho/2 * ||W - Z + U||^2`` with the new Z and U.
    """

    primal: float
    dual: float
    flips: int
    rel_dist: float
    near_zero: float
    penalty: float

    def to_dict(self) -> dict[str, float]:
        """The fields as a plain dict (for logging)."""
        return asdict(self)


class ADMM:
    """ADMM state (Z, U, rho) for the NxM-constrained fine-tuning of a model.

    Args:
        model: The model being trained (may be ``None`` when ``targets`` is a mapping).
        targets: ``{name: nn.Linear}`` from :func:`~nxmlab.targets.select_targets`,
            an iterable of module names, or ``None`` for the default selection.
        pattern: :class:`~nxmlab.nxm.NxM` or ``"n:m"`` (keep m of every n).
        rho: Penalty weight, finite and > 0 (paper: 1e-3).
        rho_factor: Multiply rho by this after every :meth:`update` (1 = constant).
        rho_max: Cap for the schedule (default: no cap).
        near_zero_rtol: Threshold, relative to each layer's RMS, for the
            ``near_zero`` diagnostic.
        u_init: ``"zero"`` (U starts at 0) or ``"residual"`` (U starts at
            ``W - Proj(W)``, as in the authors' code).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``targets`` is neither a mapping
            of names to modules, module names nor ``None``.
        ValueError: bad settings (rho, u_init, an unknown target name, an empty selection).

    Z starts at ``Proj(W)`` and U at zero (or at ``W - Proj(W)``).  When the schedule changes rho, U is
    rescaled by ``rho_old / rho_new`` so that the unscaled dual ``rho * U`` is
    unchanged (Boyd et al., 2011, sec. 3.4.1).
    """

    def __init__(
        self,
        model: nn.Module,
        targets: Mapping[str, nn.Module] | Iterable[str] | None,
        pattern: NxM | str,
        rho: float = 1e-3,
        rho_factor: float = 1.0,
        rho_max: float | None = None,
        near_zero_rtol: float = 1e-2,
        u_init: str = "zero",
    ) -> None:
        if model is not None or not isinstance(targets, Mapping):  # with {name: module}, model may be None
            check_module(model)
        if isinstance(targets, Mapping):
            check_targets(targets)
        elif targets is not None and (isinstance(targets, (str, bytes)) or not isinstance(targets, Iterable)):
            raise TypeError(f"targets: expected {{name: module}}, module names or None, got {type(targets).__qualname__}")
        if u_init not in U_INITS:
            raise ValueError(f"u_init must be one of {', '.join(U_INITS)}, got {u_init!r}")
        self.pattern = NxM.parse(pattern)
        self.rho = validate_rho(rho)
        self.rho_factor = validate_rho(rho_factor, "rho_factor")
        self.rho_max = None if rho_max is None else validate_rho(rho_max, "rho_max")
        if self.rho_max is not None and self.rho_max < self.rho:
            raise ValueError(f"rho_max ({rho_max}) must be >= rho ({rho})")
        self.near_zero_rtol = float(near_zero_rtol)
        if targets is None:
            targets = select_targets(model)
        elif not isinstance(targets, Mapping):
            modules = dict(model.named_modules())
            names = list(targets)
            missing = [n for n in names if n not in modules]
            if missing:
                raise ValueError(f"target module(s) not found in model: {missing}")
            targets = {n: modules[n] for n in names}
        if not targets:
            raise ValueError("ADMM needs at least one target layer; the selection is empty")
        self.params: dict[str, nn.Parameter] = {name: module.weight for name, module in targets.items()}
        self.num_updates = 0
        self.Z: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, w in self.params.items():
                mask = nxm_mask(w, self.pattern, name)  # validates shape and finiteness
                self.masks[name] = mask
                self.Z[name] = w.detach().masked_fill(~mask, 0)
                if u_init == "residual":  # W - Proj(W): exactly the pruned part of W
                    self.U[name] = w.detach().masked_fill(mask, 0).contiguous()
                else:
                    self.U[name] = torch.zeros_like(w, memory_format=torch.contiguous_format)

    # ------------------------------------------------------------------ W-step
    def penalty(self) -> float:
        """Current value of ``rho/2 * sum ||W - Z + U||^2`` (for logging)."""
        with torch.no_grad():
            total = sum(
                float((w.detach() - self.Z[n] + self.U[n]).float().pow(2).sum()) for n, w in self.params.items()
            )
        return 0.5 * self.rho * total

    def penalty_loss(self) -> torch.Tensor:
        """Differentiable penalty, for users who prefer adding it to the loss.

        ``loss + admm.penalty_loss()`` then ``backward()`` gives the same gradient as
        :meth:`add_penalty_grad`, but builds an autograd graph over every target.
        """
        terms = [(w - self.Z[n] + self.U[n]).pow(2).sum() for n, w in self.params.items()]
        return 0.5 * self.rho * torch.stack(terms).sum()

    @torch.no_grad()
    def add_penalty_grad(self) -> None:
        """Add ``rho * (W - Z + U)`` to every target's ``.grad`` (fused, no graph).

        Call exactly once per optimizer step, after backward (and after any
        gradient all-reduce), before ``optimizer.step()``.
        """
        weights, zs, us, grads = [], [], [], []
        for name, w in self.params.items():
            if w.grad is None:
                w.grad = torch.zeros_like(w)
            weights.append(w.detach())
            zs.append(self.Z[name])
            us.append(self.U[name])
            grads.append(w.grad)
        # three in-place passes, no temporaries
        torch._foreach_add_(grads, weights, alpha=self.rho)
        torch._foreach_add_(grads, zs, alpha=-self.rho)
        torch._foreach_add_(grads, us, alpha=self.rho)

    @torch.no_grad()
    def decoupled_step(self, eta: float, scope: str = "all") -> None:
        """``W -= eta * rho * (W - Z + U)`` for every target (beyond the paper).

        The decoupled penalty: called after each optimizer step instead of
        :meth:`add_penalty_grad`, it pulls W towards ``Z - U`` outside the optimizer's
        normalisation, the way AdamW decouples weight decay.  ``eta`` is the learning
        rate of the step just taken.  The factor ``eta * rho`` is capped at 1 (W lands on
        ``Z - U``): beyond that the step would overshoot, and for ``eta * rho > 2`` diverge.

        ``scope="pruned"`` pulls only the positions the current Z prunes (towards ``-U``)
        and leaves the kept ones to the optimizer: with ``scope="all"`` a strong pull also
        anchors every kept weight to its value at the last Z/U update, and the task barely
        trains.  Both are beyond the paper.
        """
        if scope not in DECOUPLED_SCOPES:
            raise ValueError(f"scope must be one of {', '.join(DECOUPLED_SCOPES)}, got {scope!r}")
        step = min(float(eta) * self.rho, 1.0)
        if scope == "pruned":
            for name, w in self.params.items():
                delta = (w.detach() - self.Z[name] + self.U[name]).masked_fill_(self.masks[name], 0)
                w.detach().sub_(delta, alpha=step)
            return
        weights = [w.detach() for w in self.params.values()]
        torch._foreach_mul_(weights, 1.0 - step)
        torch._foreach_add_(weights, [self.Z[n] for n in self.params], alpha=step)
        torch._foreach_add_(weights, [self.U[n] for n in self.params], alpha=-step)

    @torch.no_grad()
    def pruned_mean_abs(self) -> float:
        """Mean ``|W|`` over the positions a hard prune would remove now (all targets)."""
        total, count = 0.0, 0
        for name, w in self.params.items():
            pruned = ~nxm_mask(w, self.pattern, name)
            total += float(w.detach().abs()[pruned].double().sum())
            count += int(pruned.sum())
        return total / count if count else 0.0

    # ------------------------------------------------------------- Z/U-steps
    @torch.no_grad()
    def update(self) -> dict[str, ADMMDiagnostics]:
        """Z-step and U-step for every target, then one rho-schedule step.

        Returns:
            ``{target name: ADMMDiagnostics}``.

        Raises:
            ValueError: if a weight (or W + U) holds NaN/Inf.
        """
        rho = self.rho
        diagnostics: dict[str, ADMMDiagnostics] = {}
        for name, param in self.params.items():
            w = param.detach()
            v = w + self.U[name]
            mask, z_new = nxm_mask_and_project(v, self.pattern, name)
            dual = rho * float((z_new - self.Z[name]).float().norm())
            flips = int((mask != self.masks[name]).sum())
            # U + W - Z_new == V - Z_new: exactly the pruned part of V
            u_new = v.masked_fill(mask, 0)
            w_mask = nxm_mask(w, self.pattern, name)
            w_norm = float(w.float().norm())
            rel_dist = float(w.masked_fill(w_mask, 0).float().norm()) / w_norm if w_norm > 0 else 0.0
            rms = w_norm / math.sqrt(w.numel())
            near_zero = float((w.abs() <= self.near_zero_rtol * rms).float().mean())
            primal = float((w - z_new).float().norm())
            penalty = 0.5 * rho * float((w - z_new + u_new).float().pow(2).sum())
            self.Z[name], self.U[name], self.masks[name] = z_new, u_new, mask
            diagnostics[name] = ADMMDiagnostics(primal, dual, flips, rel_dist, near_zero, penalty)
        self.num_updates += 1
        self._step_rho()
        return diagnostics

    @torch.no_grad()
    def measure(self) -> dict[str, dict[str, float]]:
        """Diagnostics of the current W against the current Z and U, changing nothing.

        Returns ``{target: {"primal", "rel_dist", "near_zero", "penalty"}}`` (as in
        :class:`ADMMDiagnostics`, without the update-only ``dual`` and ``flips``).
        """
        out = {}
        for name, param in self.params.items():
            w = param.detach()
            w_norm = float(w.float().norm())
            pruned = w.masked_fill(nxm_mask(w, self.pattern, name), 0)
            rms = w_norm / math.sqrt(w.numel())
            out[name] = {
                "primal": float((w - self.Z[name]).float().norm()),
                "rel_dist": float(pruned.float().norm()) / w_norm if w_norm > 0 else 0.0,
                "near_zero": float((w.abs() <= self.near_zero_rtol * rms).float().mean()),
                "penalty": 0.5 * self.rho * float((w - self.Z[name] + self.U[name]).float().pow(2).sum()),
            }
        return out

    def _step_rho(self) -> None:
        new_rho = self.rho * self.rho_factor
        if self.rho_max is not None:
            new_rho = min(new_rho, self.rho_max)
        if new_rho != self.rho:
            scale = self.rho / new_rho
            for u in self.U.values():
                u.mul_(scale)
            self.rho = new_rho

    # ------------------------------------------------------------------ finish
    @torch.no_grad()
    def hard_prune(self) -> dict[str, torch.Tensor]:
        """Set every target weight to its NxM projection; return the bool masks."""
        masks = {}
        for name, w in self.params.items():
            mask = nxm_mask(w, self.pattern, name)
            w.masked_fill_(~mask, 0)
            masks[name] = mask
        return masks

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (tensors are cloned)."""
        return {
            "pattern": str(self.pattern),
            "rho": self.rho,
            "rho_factor": self.rho_factor,
            "rho_max": self.rho_max,
            "near_zero_rtol": self.near_zero_rtol,
            "num_updates": self.num_updates,
            "Z": {n: t.clone() for n, t in self.Z.items()},
            "U": {n: t.clone() for n, t in self.U.items()},
            "masks": {n: t.clone() for n, t in self.masks.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` bit-exactly.

        Raises:
            ValueError: if the pattern or the target names/shapes differ.
        """
        if NxM.parse(state["pattern"]) != self.pattern:
            raise ValueError(f"ADMM state is for pattern {state['pattern']}, this ADMM uses {self.pattern}")
        names = set(self.params)
        for key in ("Z", "U", "masks"):
            if set(state[key]) != names:
                raise ValueError(f"ADMM state targets differ from this model's: {sorted(set(state[key]) ^ names)}")
        for key, store in (("Z", self.Z), ("U", self.U), ("masks", self.masks)):
            for name, tensor in state[key].items():
                if tensor.shape != store[name].shape:
                    raise ValueError(f"ADMM state {key}[{name}] has shape {tuple(tensor.shape)}, expected {tuple(store[name].shape)}")
                store[name] = tensor.detach().to(device=store[name].device, dtype=store[name].dtype).clone()
        self.rho = float(state["rho"])
        self.rho_factor = float(state["rho_factor"])
        self.rho_max = state["rho_max"]
        self.near_zero_rtol = float(state["near_zero_rtol"])
        self.num_updates = int(state["num_updates"])

    def __repr__(self) -> str:
        return (
            f"ADMM({len(self.params)} targets, pattern={self.pattern!r}, rho={self.rho:g}, "
            f"updates={self.num_updates})"
        )


class _Holder(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float())


def loss_free_run(
    weights: Mapping[str, torch.Tensor],
    pattern: NxM | str,
    lrs: Iterable[float],
    interval: int,
    *,
    rho: float,
    rho_factor: float = 1.0,
    rho_max: float | None = None,
    u_init: str = "zero",
    decoupled: bool = False,
    decoupled_scope: str = "all",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = None,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> list[dict[str, float]]:
    """The ADMM schedule with no task loss: the control run of the convergence study.

    Starts from copies of ``weights`` and runs one step per learning rate in ``lrs``:
    AdamW on the penalty gradient alone (clipped to ``max_grad_norm`` when given, as with
    the penalty before clipping), or with ``decoupled`` the decoupled step
    ``W -= lr rho (W - Z + U)`` (on ``decoupled_scope``) and no optimizer.  A Z/U update follows every
    ``interval`` steps.  Mask changes in this run come from the dynamics alone; a
    training run's extra changes come from the data.

    Returns:
        One dict per Z/U update over all targets: ``step``, ``rho_used``, ``rel_dist``
        (``||W - Proj(W)|| / ||W||``, root mean square over targets), ``primal`` and
        ``dual`` (residual norms over all targets),
        ``flips`` (fraction of positions), ``start_distance`` (mask distance of Z to the
        magnitude mask of the start weights) and, on the last record only,
        ``final_distance`` (of the last Z mask to the magnitude mask of the final W) and,
        given ``reference`` masks (e.g. a training run's final masks),
        ``reference_distance``: the mask distance of the control's own hard prune
        (Proj of its final W) to ``reference``.
    """
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    holders = {name: _Holder(w) for name, w in weights.items()}
    admm = ADMM(None, holders, pattern, rho=rho, rho_factor=rho_factor, rho_max=rho_max, u_init=u_init)
    start = {name: m.clone() for name, m in admm.masks.items()}
    params = list(admm.params.values())
    numel = sum(p.numel() for p in params)
    kept = sum(int(m.sum()) for m in start.values())
    optimizer = None if decoupled else torch.optim.AdamW(params, lr=0.0, betas=betas, eps=eps, weight_decay=weight_decay)
    records: list[dict[str, float]] = []
    for step, lr in enumerate(lrs, 1):
        if decoupled:
            admm.decoupled_step(lr, decoupled_scope)
        else:
            for p in params:
                p.grad = torch.zeros_like(p)
            admm.add_penalty_grad()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.param_groups[0]["lr"] = lr
            optimizer.step()
        if step % interval == 0:
            rho_used = admm.rho
            diagnostics = admm.update()
            records.append({
                "step": step, "rho_used": rho_used,
                "rel_dist": math.sqrt(sum(d.rel_dist ** 2 for d in diagnostics.values()) / len(diagnostics)),
                "primal": math.sqrt(sum(d.primal ** 2 for d in diagnostics.values())),
                "dual": math.sqrt(sum(d.dual ** 2 for d in diagnostics.values())),
                "flips": sum(d.flips for d in diagnostics.values()) / numel,
                "start_distance": sum(int((admm.masks[n] ^ start[n]).sum()) for n in start) / (2 * kept),
            })
    if records:
        final = {n: nxm_mask(p.detach(), admm.pattern, n) for n, p in admm.params.items()}
        records[-1]["final_distance"] = sum(int((admm.masks[n] ^ final[n]).sum()) for n in final) / (2 * kept)
        if reference is not None:
            records[-1]["reference_distance"] = (sum(int((final[n] ^ reference[n].bool()).sum()) for n in final)
                                                 / (2 * kept))
    return records
