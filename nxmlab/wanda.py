"""Wanda n:m masks: prune by weight magnitude times input-feature norm.

Sun, Liu, Bair, Kolter (2023), "A Simple and Effective Pruning Approach for Large
Language Models" (Wanda, ICLR 2024).  A weight's score is

    S_ij = |W_ij| * ||X_j||_2,

where ``X_j`` is input feature ``j`` of the layer over all calibration tokens
(:func:`nxmlab.calibration.collect_input_stats`).  For n:m sparsity Wanda keeps the m
highest-scoring weights in every group of n consecutive inputs of a row, which is
:func:`nxmlab.nxm.nxm_mask` applied to the (non-negative) score, with its tie rule: among
equal scores the lower index in the group is kept.  The weights are not updated.

Why the score: pruning ``W_ij`` alone changes the output of row ``i`` by ``W_ij X_j``, of
squared norm ``W_ij^2 ||X_j||^2 = S_ij^2``; when the input features are orthogonal
(diagonal ``X^T X``) the errors add up, and the Wanda mask minimises the layer's output
error ``||X (W - W')^T||_F`` among n:m masks without weight update.  Magnitude pruning is
the special case of equal feature norms.

As in the paper's code, :func:`wanda_model` works through the encoder layer by layer:
the statistics of layer k are collected on the model whose earlier layers are already
pruned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .calibration import InputStats, collect_input_stats, forward_groups
from .nxm import NxM, nxm_mask

__all__ = ["wanda_scores", "wanda_masks", "wanda_model"]


def wanda_scores(weight: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
    """Wanda's score ``|W_ij| * ||X_j||_2`` (float32, the shape of ``weight``).

    Args:
        weight: ``[out, in]``.
        input_sq_norms: ``[in]``, the squared feature norms ``||X_j||_2^2``
            (:attr:`InputStats.sq_norms`).
    """
    if input_sq_norms.shape != (weight.shape[-1],):
        raise ValueError(
            f"input norms of shape {tuple(input_sq_norms.shape)} do not match a weight of shape {tuple(weight.shape)}"
        )
    if bool((input_sq_norms < 0).any()):
        raise ValueError("squared input norms must be >= 0")
    norms = input_sq_norms.detach().to(device=weight.device, dtype=torch.float32).sqrt()
    return weight.detach().float().abs() * norms


@torch.no_grad()
def wanda_masks(
    targets: Mapping[str, nn.Module],
    input_sq_norms: Mapping[str, torch.Tensor | InputStats],
    pattern: NxM | str,
) -> dict[str, torch.Tensor]:
    """Wanda n:m masks: keep the m largest ``|W_ij| * ||X_j||_2`` of every n inputs in a row.

    Args:
        targets: ``{name: nn.Linear}``.
        input_sq_norms: ``{name: squared feature norms [in]}`` (``sq_norms``, not their
            square roots), or ``{name: InputStats}`` as returned by
            :func:`nxmlab.calibration.collect_input_stats`.
        pattern: An :class:`NxM` or its ``"n:m"`` string.

    Returns:
        ``{name: bool mask}`` (True = keep), exactly m kept per group.  The weights are
        not changed.
    """
    pattern = NxM.parse(pattern)
    missing = [name for name in targets if name not in input_sq_norms]
    if missing:
        raise KeyError(f"no input statistics for target(s) {missing}")
    masks = {}
    for name, module in targets.items():
        stats = input_sq_norms[name]
        sq = stats.sq_norms if isinstance(stats, InputStats) else stats
        masks[name] = nxm_mask(wanda_scores(module.weight, sq), pattern, name)
    return masks


@torch.no_grad()
def wanda_model(
    model: nn.Module,
    targets: Mapping[str, nn.Linear],
    batches: Sequence[Mapping],
    pattern: NxM | str,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Prune ``targets`` with Wanda, one encoder layer at a time, and return the masks.

    For each group of :func:`nxmlab.calibration.forward_groups` (one encoder layer), the
    feature norms are collected over ``batches`` on the model as pruned so far, the masks
    are chosen and the pruned weights are set to zero in place.

    Args:
        model: The model holding ``targets`` (changed in place).
        targets: ``{name: nn.Linear}``.
        batches: Calibration batches for ``model(**batch)``; iterated once per layer, so
            a sequence (e.g. a list), not a one-shot iterator.
        pattern: An :class:`NxM` or its ``"n:m"`` string.
        device: Where the batches go (default: the model's device).

    Returns:
        ``{name: bool mask}`` for every target.
    """
    masks: dict[str, torch.Tensor] = {}
    for group in forward_groups(targets):
        stats = collect_input_stats(model, group, batches, device=device, stop_early=True)
        for name, mask in wanda_masks(group, stats, pattern).items():
            group[name].weight.masked_fill_(~mask, 0)
            masks[name] = mask
    return {name: masks[name] for name in targets}
