"""Learned n:m masks: a categorical distribution over the candidate masks of every group (MaskLLM).

Fang, Yin, Muralidharan, Heinrich, Pool, Kautz, Molchanov, Wang (NeurIPS 2024), "MaskLLM:
Learnable Semi-Structured Sparsity for Large Language Models".  Instead of scoring weights,
the masks are chosen by the data: every group of ``n`` consecutive inputs of a target
``nn.Linear`` holds a categorical distribution over its ``C(n, m)`` candidate masks
(:func:`candidate_masks`: 6 for 4:2, keep 2 of every 4; 70 for 8:4), trained end to end
through the Gumbel-softmax relaxation.

* **Gates and logits.**  Each target has gates ``g`` of shape ``[out, in / n, C]``; the
  logits are ``kappa * g`` with a logit scale ``kappa`` that grows during the phase.
* **Training forward.**  The soft mask of a group is the convex combination
  ``sum_c p_c * candidate_c`` with ``p = softmax((kappa g + G) / tau)`` and ``G`` i.i.d.
  Gumbel(0, 1) noise, drawn anew at every forward (:func:`gumbel_soft_mask`); every
  candidate keeps ``m``, so every group's soft mask sums to exactly ``m``.  The layer
  computes ``x (W * M~)^T + b``.
* **Hard mask.**  The candidate with the largest gate: exactly n:m
  (:meth:`LearnedMasks.hard_masks`; also the eval-mode forward).
* **Schedules** (:class:`MaskSchedule`): ``tau`` and ``kappa`` move linearly with the phase's
  progress ``t`` in [0, 1] (MaskLLM: tau 4 -> 0.05, kappa 1e2 -> 5e2), so the relaxation
  hardens towards the end.
* **Prior** (:func:`prior_gates`): the gates start from a one-shot mask (the magnitude mask
  of the start weights by default; e.g. SparseGPT's): each candidate's gate is
  ``strength * 0.01 * (overlap - (m - 1))``, where ``overlap`` counts the kept positions
  it shares with the prior mask.  The prior candidate leads every neighbour (``m - 1``
  shared positions) by ``strength * 0.01`` and is the argmax, so the hard mask before any
  training is exactly the prior.  (The reference code adds this to gates drawn from
  N(0, 0.01), with ``0.01`` in place of their measured std; here the noise is optional,
  ``init_std``, and off by default, so that the start is exactly the prior.)
* **Sparse weight regulariser.**  MaskLLM minimises ``L(W * M~) - lambda(t) * sum ||W * M~||^2``
  with ``W`` detached and ``lambda(t) = lambda * (1 - t)``: the minus sign rewards masks
  that keep *large* weights, which keeps the gradients reaching the gates alive (the
  gradient of a mask entry is proportional to its weight).  It acts on the gates only.
  Here it is added inside backward: a hook on the soft mask adds
  ``-2 lambda(t) W^2 * M~ * grad_scale`` to its gradient, which is the gradient of that
  term; ``grad_scale`` is ``1 / gradient accumulation steps``, as the task loss's.
* **Weights.**  ``attach(model, freeze_weights=True)`` freezes every parameter of ``model``,
  so only the gates train (MaskLLM's "mask only"); ``freeze_weights=False`` trains the
  weights jointly.  The weights are never changed by this module.
* **Learning rate.**  MaskLLM trains the gates at 10x the weights' learning rate.  With one
  optimizer and one learning rate, ``lr_mult`` does the same: the stored parameter is
  ``g / lr_mult`` and the forward multiplies it back, so an Adam-type optimizer (whose step
  does not depend on the gradient's scale) moves ``g`` ``lr_mult`` times faster.  Exact but
  for Adam's epsilon and weight decay (the gates decay at the weights' rate).

How it is wired: :meth:`LearnedMasks.attach` registers each target's gates as its
parameter ``nxm_gate`` and gives the module an instance-level ``forward`` (as
:mod:`nxmlab.srste` does), so any optimizer built from ``model.parameters()`` after
``attach`` (e.g. ``transformers.Trainer``'s) trains them, and its checkpoints, gradient
clipping and DDP see them like any weight; :meth:`LearnedMasks.remove` restores plain
Linear layers without the gates.  ``parametrize`` is not used: it renames ``weight``.
"""

from __future__ import annotations

import itertools
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .masking import as_bool_mask
from .nxm import NxM, check_targets, check_tensor, nxm_mask

__all__ = ["GATE", "GATE_UNIT", "MAX_CANDIDATES", "LearnedMasks", "MaskSchedule", "candidate_masks",
           "gumbel_soft_mask", "kept_weight_norm", "prior_gates"]

#: Name of the gates' parameter on each target while the masks are attached.
GATE = "nxm_gate"
#: Gate unit of the prior (the std of MaskLLM's gate initialisation).
GATE_UNIT = 0.01
#: Most candidates per group :class:`LearnedMasks` accepts by default (C(12, 6) = 924; C(16, 8) is 12870).
MAX_CANDIDATES = 1024
_LEARNER = "_nxmlab_learned_masks"


def candidate_masks(pattern: NxM | str) -> torch.Tensor:
    """Every n:m mask of one group: a bool ``[C(n, m), n]`` table, one candidate per row.

    The rows are the kept positions in lexicographic order (``itertools.combinations``): for
    4:2 (keep 2 of every 4) ``{0,1}, {0,2}, {0,3}, {1,2}, {1,3}, {2,3}``.  Among equal gates the
    first row wins, i.e. the lower positions are kept, as in :func:`nxmlab.nxm.nxm_mask`.
    """
    pattern = NxM.parse(pattern)
    rows = list(itertools.combinations(range(pattern.n), pattern.m))
    table = torch.zeros(len(rows), pattern.n, dtype=torch.bool)
    for i, kept in enumerate(rows):
        table[i, list(kept)] = True
    return table


def gumbel_soft_mask(logits: torch.Tensor, table: torch.Tensor, tau: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """One Gumbel-softmax sample of soft group masks.

    Args:
        logits: ``[..., C]`` candidate logits (``kappa * g``).
        table: The ``[C, n]`` candidates (:func:`candidate_masks`).
        tau: Temperature (> 0).
        generator: Random generator of the noise (default: torch's global one).

    Returns:
        ``[..., n]``: ``softmax((logits + G) / tau) @ table`` with ``G`` i.i.d. Gumbel(0, 1), a
        convex combination of candidates, so each group sums to ``m``.
    """
    check_tensor(logits, "logits")
    check_tensor(table, "table", dtypes=None)
    noise = -torch.empty_like(logits).exponential_(generator=generator).log()
    probs = torch.softmax((logits + noise) / tau, dim=-1)
    return probs @ table.to(device=probs.device, dtype=probs.dtype)


def _groups(mask: torch.Tensor, pattern: NxM) -> torch.Tensor:
    return mask.reshape(mask.shape[0], -1, pattern.n)


def prior_gates(prior: torch.Tensor, pattern: NxM | str, strength: float = 3.0,
                unit: float = GATE_UNIT) -> torch.Tensor:
    """Gates ``[out, in / n, C]`` whose argmax is the exactly n:m bool mask ``prior`` ``[out, in]``.

    ``gate_c = strength * unit * (overlap_c - (m - 1))``, ``overlap_c`` the kept positions
    candidate ``c`` shares with the prior's group: the prior candidate leads each candidate
    that shares ``m - 1`` of them by ``strength * unit`` (``strength = 0``: all gates equal).
    """
    pattern = NxM.parse(pattern)
    prior = as_bool_mask(prior, "prior")
    pattern.check(prior.float(), "prior")
    groups = _groups(prior, pattern).float()
    if not bool((groups.sum(-1) == pattern.m).all()):
        raise ValueError(f"prior: every group must keep exactly m={pattern.m} of n={pattern.n} positions "
                         f"(an exactly {pattern!r} mask)")
    overlap = groups @ candidate_masks(pattern).to(groups.device).float().T
    return float(strength) * float(unit) * (overlap - (pattern.m - 1))


def kept_weight_norm(weight: torch.Tensor, soft_mask: torch.Tensor) -> torch.Tensor:
    """``||W * M~||^2`` with ``W`` detached: MaskLLM's sparse weight regulariser is ``-lambda`` times
    its sum over the targets (it rewards masks that keep large weights)."""
    check_tensor(weight, "weight")
    check_tensor(soft_mask, "soft_mask")
    return (weight.detach() * soft_mask).pow(2).sum()


@dataclass(frozen=True)
class MaskSchedule:
    """Temperature, logit scale and regulariser weight over a phase (linear in progress ``t``).

    Attributes:
        tau: ``(start, end)`` Gumbel-softmax temperature (MaskLLM: 4 -> 0.05).
        scale: ``(start, end)`` logit scale kappa (MaskLLM: 1e2 -> 5e2).
        reg: Weight lambda of the sparse weight regulariser at ``t = 0``; ``lambda (1 - t)``
            after (MaskLLM: 1e-5; 0 turns it off).
    """

    tau: tuple[float, float] = (4.0, 0.05)
    scale: tuple[float, float] = (1e2, 5e2)
    reg: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("tau", "scale"):
            pair = getattr(self, name)
            if len(pair) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in pair):
                raise ValueError(f"{name} must be a (start, end) pair of numbers > 0, got {pair!r}")
        if not (isinstance(self.reg, (int, float)) and math.isfinite(self.reg) and self.reg >= 0):
            raise ValueError(f"reg must be a finite number >= 0, got {self.reg!r}")

    def at(self, progress: float) -> tuple[float, float, float]:
        """``(tau, scale, reg)`` at ``progress`` in [0, 1] (clamped)."""
        t = min(max(float(progress), 0.0), 1.0)
        return (self.tau[0] + (self.tau[1] - self.tau[0]) * t, self.scale[0] + (self.scale[1] - self.scale[0]) * t,
                self.reg * (1.0 - t))


def _learned_forward(self: nn.Linear, input: torch.Tensor) -> torch.Tensor:
    mask = getattr(self, _LEARNER).mask_of(self)
    return F.linear(input, self.weight * mask.to(self.weight.dtype), self.bias)


class LearnedMasks:
    """Learnable n:m masks of ``targets`` (MaskLLM; see the module docstring).

    Args:
        targets: ``{name: nn.Linear}`` (plain ``nn.Linear``: its forward is replaced).
        pattern: An :class:`NxM` or its ``"n:m"`` string.
        prior: ``{name: bool mask}``, exactly n:m, that the gates start from (default: the
            magnitude n:m mask of the targets' current weights).
        schedule: Temperature, logit scale and regulariser (:class:`MaskSchedule`).
        prior_strength: How far the prior candidate leads (:func:`prior_gates`; MaskLLM: 3).
        lr_mult: Learning-rate multiplier of the gates under Adam-type optimizers (the stored
            parameter is ``g / lr_mult``; MaskLLM: 10).
        init_std: Std of Gaussian noise added to the initial gates (MaskLLM: 0.01; default 0,
            so that the start is exactly the prior).
        generator: Random generator of the Gumbel noise and ``init_std`` (default: global).
        max_candidates: Refuse patterns with more candidates per group (memory: ``C / n``
            gate values per weight).

    Example::

        learner = LearnedMasks(select_targets(model), "4:2")   # prior: magnitude of W
        learner.attach(model, freeze_weights=True)              # only the gates train
        optimizer = torch.optim.AdamW(learner.parameters(), lr=5e-4)
        for step, batch in enumerate(loader):
            learner.set_progress(step / len(loader))            # tau, kappa, lambda
            model(**batch).loss.backward()                      # soft masks, regulariser
            optimizer.step(); optimizer.zero_grad()
        masks = learner.hard_masks()                            # exactly n:m
        learner.remove()                                        # plain Linear layers again
    """

    def __init__(self, targets: Mapping[str, nn.Module], pattern: NxM | str,
                 prior: Mapping[str, torch.Tensor] | None = None, schedule: MaskSchedule | None = None,
                 prior_strength: float = 3.0, lr_mult: float = 1.0, init_std: float = 0.0,
                 generator: torch.Generator | None = None, max_candidates: int = MAX_CANDIDATES) -> None:
        check_targets(targets)
        self.pattern = NxM.parse(pattern)
        count = math.comb(self.pattern.n, self.pattern.m)
        if count > max_candidates:
            raise ValueError(f"{self.pattern!r} has {count} candidate masks per group (more than {max_candidates}); "
                             f"the gates would take {count / self.pattern.n:.0f} values per weight")
        for name, value in (("prior_strength", prior_strength), ("init_std", init_std)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(lr_mult, (int, float)) and math.isfinite(lr_mult) and lr_mult > 0):
            raise ValueError(f"lr_mult must be a finite number > 0, got {lr_mult!r}")
        self.schedule = schedule if schedule is not None else MaskSchedule()
        self.lr_mult, self.generator = float(lr_mult), generator
        self.table = candidate_masks(self.pattern)
        self._float_tables: dict[torch.device, torch.Tensor] = {}
        self.targets: dict[str, nn.Linear] = {}
        for name, module in targets.items():
            if type(module).forward is not nn.Linear.forward:
                raise ValueError(f"{name}: learned masks need an nn.Linear forward, got {type(module).__name__}")
            self.pattern.check(module.weight, name)
            self.targets[name] = module
        if prior is None:
            prior = {name: nxm_mask(module.weight, self.pattern, name) for name, module in self.targets.items()}
        missing = sorted(set(self.targets) - set(prior))
        if missing:
            raise ValueError(f"prior: no mask for target(s) {missing}")
        self.prior: dict[str, torch.Tensor] = {}
        self.gates: dict[str, nn.Parameter] = {}
        for name, module in self.targets.items():
            mask = as_bool_mask(prior[name], f"prior[{name}]")
            if mask.shape != module.weight.shape:
                raise ValueError(f"prior[{name}]: shape {tuple(mask.shape)} != weight shape {tuple(module.weight.shape)}")
            gates = prior_gates(mask.to(module.weight.device), self.pattern, prior_strength)
            if init_std > 0:
                gates += init_std * torch.randn(gates.shape, generator=generator).to(gates.device)
            self.prior[name] = mask.detach().clone()
            self.gates[name] = nn.Parameter(gates / self.lr_mult)
        self.grad_scale = 1.0
        self._frozen: list[tuple[nn.Parameter, bool]] = []
        self.set_progress(0.0)

    # --- schedule ---------------------------------------------------------------------
    def set_progress(self, progress: float) -> None:
        """Set ``tau``, ``scale`` and ``reg`` to their values at ``progress`` in [0, 1]."""
        self.progress = min(max(float(progress), 0.0), 1.0)
        self.tau, self.scale, self.reg = self.schedule.at(self.progress)

    # --- masks ------------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        """The stored gate parameters (``g / lr_mult``), one per target."""
        return list(self.gates.values())

    def logits(self, name: str) -> torch.Tensor:
        """``kappa * g`` of target ``name`` at the current scale, ``[out, in / n, C]``."""
        return self.gates[name] * (self.scale * self.lr_mult)

    def _table(self, device: torch.device) -> torch.Tensor:
        if device not in self._float_tables:
            self._float_tables[device] = self.table.to(device=device, dtype=torch.float32)
        return self._float_tables[device]

    def soft_mask(self, name: str) -> torch.Tensor:
        """A fresh Gumbel-softmax soft mask ``[out, in]`` of target ``name`` (differentiable in the gates)."""
        weight = self.targets[name].weight
        soft = gumbel_soft_mask(self.logits(name), self._table(weight.device), self.tau, self.generator)
        return soft.reshape(weight.shape)

    @torch.no_grad()
    def hard_masks(self) -> dict[str, torch.Tensor]:
        """The argmax candidate of every group: ``{name: bool [out, in]}``, exactly n:m."""
        return {name: self.table.to(g.device)[g.argmax(-1)].reshape(self.targets[name].weight.shape)
                for name, g in self.gates.items()}

    @torch.no_grad()
    def confidence(self) -> float:
        """Mean over all groups of the largest candidate probability of ``softmax(kappa * g)``."""
        total = count = 0.0
        for name in self.gates:
            top = torch.softmax(self.logits(name).float(), dim=-1).amax(-1)
            total, count = total + float(top.sum()), count + top.numel()
        return total / count if count else 0.0

    @torch.no_grad()
    def prior_distance(self) -> float:
        """Mask distance of the hard masks to the prior over all targets: the fraction of kept
        positions that differ (:func:`nxmlab.masking.mask_distance`; 0 at the start)."""
        differ = total = 0
        for name, mask in self.hard_masks().items():
            prior = self.prior[name].to(mask.device)
            differ, total = differ + int((mask ^ prior).sum()), total + int(mask.sum()) + int(prior.sum())
        return differ / total if total else 0.0

    def mask_of(self, module: nn.Linear) -> torch.Tensor:
        """The mask a target's forward uses: a Gumbel-softmax sample in training mode (with the
        regulariser's gradient hook), the hard argmax mask in eval mode."""
        name = module.__dict__["_nxmlab_learned_name"]
        if not module.training:
            gate = self.gates[name]
            return self.table.to(gate.device)[gate.argmax(-1)].reshape(module.weight.shape)
        soft = self.soft_mask(name)
        if self.reg > 0 and soft.requires_grad:
            coef, kept, weight = 2.0 * self.reg * self.grad_scale, soft.detach(), module.weight
            soft.register_hook(lambda grad: grad - coef * weight.detach().to(grad.dtype).square() * kept)
        return soft

    # --- wiring -----------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        """True between :meth:`attach` and :meth:`remove`."""
        return any("forward" in vars(m) for m in self.targets.values())

    def attach(self, model: nn.Module | None = None, freeze_weights: bool = False) -> None:
        """Put the masks into the targets' forward and register each target's gates as its
        parameter ``nxm_gate``.

        Args:
            model: The model holding the targets (needed only to freeze all its parameters).
            freeze_weights: Freeze every parameter of ``model`` (or, without a model, the
                targets' weights and biases) until :meth:`remove`: only the gates train.
        """
        for name, module in self.targets.items():
            if "forward" in vars(module) or GATE in module._parameters:
                raise ValueError(f"{name}: its forward is already replaced (masks attached twice, or another wrapper)")
        for name, module in self.targets.items():
            module.register_parameter(GATE, self.gates[name])
            module.__dict__[_LEARNER] = self
            module.__dict__["_nxmlab_learned_name"] = name
            module.forward = types.MethodType(_learned_forward, module)
        if freeze_weights:
            gates = {id(g) for g in self.gates.values()}
            params = (model.parameters() if model is not None else
                      (p for m in self.targets.values() for p in (m.weight, m.bias) if p is not None))
            for param in params:
                if id(param) not in gates:
                    self._frozen.append((param, param.requires_grad))
                    param.requires_grad_(False)

    def remove(self) -> None:
        """Restore plain ``nn.Linear`` layers without the gates, and the frozen parameters'
        ``requires_grad`` (idempotent).  The weights are unchanged."""
        for module in self.targets.values():
            vars(module).pop("forward", None)
            module._parameters.pop(GATE, None)
            vars(module).pop(_LEARNER, None)
            vars(module).pop("_nxmlab_learned_name", None)
        for param, flag in reversed(self._frozen):
            param.requires_grad_(flag)
        self._frozen.clear()
