"""SR-STE: train n:m-sparse Linear layers with a sparse-refined straight-through estimator.

Zhou, Ma, Zhu, Liu, Zhang, Yuan, Sun, Li (ICLR 2021), "Learning N:M Fine-grained
Structured Sparse Neural Networks From Scratch".  The model keeps *dense* weights
``W``; at every step

* the forward pass uses the n:m projection ``W~ = E ⊙ W``, with the mask
  ``E = nxm_mask(W)`` recomputed from the current dense weights (the m largest ``|w|``
  of every n inputs);
* the backward pass is straight-through: ``dL/dW := dL/dW~``, so the pruned weights
  get the gradient they would get if they were present, and can grow back;
* the sparse-refined term pulls the currently pruned weights towards zero:
  ``grad += lambda_w * (1 - E) ⊙ W``, i.e. the update ``W ← W − γ (g(W~) + λ_W (1−E) ⊙ W)``
  of the paper (Eq. 4; ``lambda_w = 2e-4`` is the paper's default).

How it is wired (:class:`SRSTE`): each target ``nn.Linear`` gets an instance-level
``forward`` (a bound method, so ``copy.deepcopy`` of the model rebinds it) computing
``F.linear(x, W~, b)``, where ``W~`` comes from a custom autograd function whose backward
is the identity.  ``parametrize`` is not used: it renames ``weight`` to
``parametrizations.weight.original``, which breaks Trainer checkpoints and
``save_pretrained``; here ``state_dict`` holds the dense weights under their own names,
and a resumed run recomputes the masks from them.  :meth:`SRSTE.remove` restores plain
Linear layers holding the dense weights; :meth:`SRSTE.hard_prune` removes and zeroes the
pruned weights.

The refined term is added to ``.grad`` by :meth:`SRSTE.add_refined_grad`, once per
optimizer step after backward (never inside autograd): that keeps it right under
gradient accumulation (one term per step, not per micro-batch), fp16 loss scaling and
DDP (the dense weights and so the term are the same on every rank).  The authors' code
adds the term inside the backward of the masking function, i.e. once per backward
pass; with one micro-batch per optimizer step and no loss scaling the two agree.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback

from .nxm import NxM, nxm_mask

__all__ = ["SRSTE", "SRSTECallback", "sparse_weight"]

_PATTERN_ATTR = "_nxmlab_srste_pattern"


class _StraightThroughMask(torch.autograd.Function):
    """``weight ⊙ mask`` forward; the identity backward (the gradient passes to every weight)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return weight.masked_fill(~mask, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def sparse_weight(weight: torch.Tensor, pattern: NxM | str, name: str = "weight") -> torch.Tensor:
    """``nxm_mask(weight) ⊙ weight``, differentiable straight through to ``weight``."""
    mask = nxm_mask(weight.detach(), pattern, name)
    return _StraightThroughMask.apply(weight, mask)


def _srste_forward(self: nn.Linear, input: torch.Tensor) -> torch.Tensor:
    return F.linear(input, sparse_weight(self.weight, getattr(self, _PATTERN_ATTR)), self.bias)


class SRSTE:
    """Sparse-refined straight-through training of ``targets`` onto an n:m pattern.

    Args:
        targets: ``{name: nn.Linear}`` (plain ``nn.Linear``: its forward is replaced).
        pattern: An :class:`NxM` or its ``"n:m"`` string.
        lambda_w: Weight of the sparse-refined term (paper: 2e-4; 0 gives plain STE).

    Example::

        srste = SRSTE(select_targets(model), "4:2")
        for batch in loader:
            model(**batch).loss.backward()       # forward with n:m weights, STE backward
            srste.add_refined_grad()             # grad += lambda_w * (1 - E) * W
            optimizer.step(); optimizer.zero_grad()
        masks = srste.hard_prune()               # plain Linear layers, pruned weights zero
    """

    def __init__(self, targets: Mapping[str, nn.Module], pattern: NxM | str, lambda_w: float = 2e-4) -> None:
        self.pattern = NxM.parse(pattern)
        if not lambda_w >= 0:
            raise ValueError(f"lambda_w must be >= 0, got {lambda_w}")
        self.lambda_w = float(lambda_w)
        for name, module in targets.items():
            if type(module).forward is not nn.Linear.forward:
                raise ValueError(f"{name}: SR-STE needs an nn.Linear forward, got {type(module).__name__}")
            if "forward" in vars(module):
                raise ValueError(f"{name}: its forward is already replaced (SR-STE applied twice, or another wrapper)")
            self.pattern.check(module.weight, name)
        self.targets: dict[str, nn.Linear] = dict(targets)
        for module in self.targets.values():
            setattr(module, _PATTERN_ATTR, self.pattern)
            module.forward = types.MethodType(_srste_forward, module)

    @property
    def active(self) -> bool:
        """True until :meth:`remove`."""
        return bool(self.targets) and all("forward" in vars(m) for m in self.targets.values())

    @torch.no_grad()
    def masks(self) -> dict[str, torch.Tensor]:
        """The current masks ``E = nxm_mask(W)`` of the dense weights (True = keep)."""
        return {name: nxm_mask(module.weight, self.pattern, name) for name, module in self.targets.items()}

    @torch.no_grad()
    def add_refined_grad(self) -> None:
        """``grad += lambda_w * (1 - E) ⊙ W`` for every target weight that has a gradient.

        Call once per optimizer step, after backward (and after any gradient
        accumulation), with the weights of the forward passes (so ``E`` is their mask).
        """
        if self.lambda_w == 0:
            return
        for name, module in self.targets.items():
            weight = module.weight
            if weight.grad is None:
                continue
            mask = nxm_mask(weight, self.pattern, name)
            weight.grad.add_(weight.detach().masked_fill(mask, 0), alpha=self.lambda_w)

    def remove(self) -> None:
        """Restore plain ``nn.Linear`` layers; they keep the dense weights (idempotent)."""
        for module in self.targets.values():
            if "forward" in vars(module):
                del module.forward
            if hasattr(module, _PATTERN_ATTR):
                delattr(module, _PATTERN_ATTR)

    @torch.no_grad()
    def hard_prune(self) -> dict[str, torch.Tensor]:
        """:meth:`remove`, then zero the pruned weights of the final masks; returns the masks."""
        self.remove()
        masks = self.masks()
        for name, module in self.targets.items():
            module.weight.masked_fill_(~masks[name], 0)
        return masks


class SRSTECallback(TrainerCallback):
    """Adds SR-STE's sparse-refined term to the gradients inside ``transformers.Trainer``.

    ``on_pre_optimizer_step`` calls :meth:`SRSTE.add_refined_grad` once per optimizer
    step.  ``Trainer`` runs it after backward, gradient accumulation, any all-reduce
    and **after gradient clipping**, right before ``optimizer.step()``: clipping bounds
    the loss gradient only, and the refined term enters at its full size, as in the
    paper's update rule.  (In transformers 5 the Trainer measures the gradient norm
    through accelerate's ``clip_grad_norm_`` before this hook even when it does not
    clip, which unscales fp16 gradients, so the term is never multiplied by a loss
    scale.)  With Adam the term passes through Adam's normalisation, as in the
    reference code, where it is part of the gradient.

    The callback leaves the SR-STE forward in place at the end of training; call
    :meth:`SRSTE.hard_prune` (or :meth:`SRSTE.remove`) afterwards.
    """

    def __init__(self, srste: SRSTE) -> None:
        self.srste = srste

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.srste.add_refined_grad()
