"""SparseGPT for n:m patterns: one-shot pruning with optimal-brain-surgeon weight updates.

Frantar, Alistarh (2023), "SparseGPT: Massive Language Models Can Be Accurately Pruned
in One-Shot" (ICML 2023).  For one Linear layer with weight ``W`` ``[out, in]`` and
calibration inputs ``X`` (rows = tokens) it approximately solves

    min_{W'} ||X (W - W')^T||_F^2   s.t.  W' is n:m,

whose Hessian (per output row) is ``H = X^T X``.  :func:`sparsegpt_prune`:

1. dead inputs (``H_jj = 0``, the feature is always zero) get ``H_jj = 1`` and
   ``W[:, j] = 0``; then ``H += damp * mean(diag H) * I`` (dampening);
2. ``U`` = the upper Cholesky factor of ``H^-1``: row ``j`` of ``U``, from the diagonal on,
   is the OBS update direction for pruning input ``j`` once inputs ``< j`` are fixed;
3. the inputs are processed left to right, in blocks of ``blocksize`` columns (a
   multiple of n).  At the first column ``j`` of each group (``j % n == 0``) the group's
   mask is chosen on the *current* (already updated) weights by the OBS saliency
   ``w^2 / U_jj^2``: per row, the ``n - m`` lowest of the group are pruned
   (:func:`nxmlab.nxm.nxm_mask` of the saliency, so ties keep the lower index).  Then
   for every column ``j``: ``q`` = ``w`` with the pruned entries zeroed,
   ``err = (w - q) / U_jj``, and the later columns of the block move by
   ``-err U_{j, j+1:}``.  After a block the accumulated errors move all later columns:
   ``W[:, end:] -= Err @ U[block, end:]`` (the "lazy batch" update, exact).

The mask's zeros are exact: a processed column is set to ``q``, not to ``w - err U_jj``.
:func:`sparsegpt_model` prunes a model's targets layer by layer, as the paper does: the
Hessians of encoder layer k are collected on the model whose earlier layers are
already pruned (and updated).  SparseGPT changes the kept weights, not only the mask.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .calibration import collect_input_stats, forward_groups, reconstruction_error
from .nxm import NxM, nxm_mask

__all__ = ["sparsegpt_prune", "sparsegpt_model"]

logger = logging.getLogger(__name__)


def _inverse_cholesky(h: torch.Tensor, name: str) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``h^-1`` (``h^-1 = U^T U``)."""
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise ValueError(
            f"{name}: the dampened Hessian is not positive definite (Cholesky failed at minor {int(info)}); "
            "raise damp or use more calibration tokens / dtype=torch.float64"
        )
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    pattern: NxM | str,
    damp: float = 0.01,
    blocksize: int = 128,
    dtype: torch.dtype = torch.float32,
    name: str = "weight",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one Linear weight to n:m with SparseGPT.

    Args:
        weight: ``[out, in]`` (not changed).
        hessian: ``[in, in]``, ``X^T X`` of the layer's calibration inputs (any positive
            scale: sums and means give the same result).
        pattern: An :class:`NxM` or its ``"n:m"`` string.
        damp: Dampening, as a fraction of ``mean(diag H)`` added to the diagonal.
        blocksize: Columns per lazy-update block; rounded up to a multiple of n so that
            no group straddles two blocks.  The result does not depend on it (up to
            rounding).
        dtype: Working precision (float32 as in the paper; float64 for tests or
            ill-conditioned small layers).
        name: Layer name for error messages.

    Returns:
        ``(new_weight, mask)``: the pruned and updated weight in ``weight``'s dtype and
        device, zero exactly where ``mask`` (bool, True = keep, m per group) is False.

    Raises:
        ValueError: for a bad shape, a non-finite weight, ``damp < 0``, or a Hessian
            that is not positive definite after dampening.
    """
    pattern = NxM.parse(pattern)
    pattern.check(weight, name)
    rows, cols = weight.shape
    if tuple(hessian.shape) != (cols, cols):
        raise ValueError(f"{name}: Hessian of shape {tuple(hessian.shape)} does not match weight {tuple(weight.shape)}")
    if not damp >= 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    if blocksize < 1:
        raise ValueError(f"blocksize must be >= 1, got {blocksize}")
    n = pattern.n
    block = -(-blocksize // n) * n

    # work on the transpose: column j of W is the contiguous row wt[j]
    wt = weight.detach().T.to(dtype=dtype).contiguous()
    h = hessian.detach().to(device=wt.device, dtype=dtype).clone()
    diag = h.diagonal()
    dead = diag == 0
    diag[dead] = 1
    wt[dead] = 0
    diag.add_(damp * diag.mean())
    u = _inverse_cholesky(h, name)

    keep = torch.zeros(cols, rows, dtype=torch.bool, device=wt.device)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1 = wt[start:end]  # a view: processed columns are overwritten with their q
        u1 = u[start:end, start:end]
        d1 = u1.diagonal()
        err1 = torch.zeros_like(w1)
        for i in range(end - start):
            if i % n == 0:  # start is a multiple of n: this is the group's first column
                saliency = (w1[i : i + n].square() / d1[i : i + n, None].square()).T
                keep[start + i : start + i + n] = nxm_mask(saliency, pattern, name).T
            err = w1[i].masked_fill(keep[start + i], 0) / d1[i]  # (w - q) / d
            w1[i + 1 :].addr_(u1[i, i + 1 :], err, alpha=-1)
            w1[i].masked_fill_(~keep[start + i], 0)  # q: exact zeros
            err1[i] = err
        wt[end:].addmm_(u[start:end, end:].T, err1, alpha=-1)
    return wt.T.to(dtype=weight.dtype).contiguous(), keep.T.contiguous()


@torch.no_grad()
def sparsegpt_model(
    model: nn.Module,
    targets: Mapping[str, nn.Linear],
    batches: Sequence[Mapping],
    pattern: NxM | str,
    damp: float = 0.01,
    blocksize: int = 128,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Prune ``targets`` in place with SparseGPT, one encoder layer at a time.

    For each group of :func:`nxmlab.calibration.forward_groups` (one encoder layer, in
    forward order): the Hessians of the group's targets are collected over ``batches``
    on the model as pruned so far (earlier layers pruned and updated, this layer still
    dense, as in the paper), every target is pruned by :func:`sparsegpt_prune`, and its
    weight is overwritten.  The relative reconstruction error on the calibration inputs
    is logged per target.

    Args:
        model: The model holding ``targets`` (changed in place).
        targets: ``{name: nn.Linear}``.
        batches: Calibration batches for ``model(**batch)``; iterated once per layer, so
            a sequence (e.g. a list), not a one-shot iterator.  Padding positions are
            excluded through their ``attention_mask``.
        pattern, damp, blocksize, dtype: As in :func:`sparsegpt_prune` (``dtype`` is also
            the Hessian's accumulation dtype).
        device: Where the batches go (default: the model's device).

    Returns:
        ``{name: bool mask}`` for every target, in the order of ``targets``.
    """
    pattern = NxM.parse(pattern)
    masks: dict[str, torch.Tensor] = {}
    for group in forward_groups(targets):
        stats = collect_input_stats(model, group, batches, hessian=True, dtype=dtype, device=device, stop_early=True)
        for name, module in group.items():
            hessian = stats[name].hessian
            new_weight, masks[name] = sparsegpt_prune(module.weight, hessian, pattern, damp, blocksize, dtype, name)
            error = reconstruction_error(module.weight, new_weight, hessian)
            logger.info("sparsegpt %s %s: relative reconstruction error %.4f on %d tokens",
                        pattern, name, error, stats[name].tokens)
            module.weight.copy_(new_weight)
            stats[name].hessian = None  # free [in, in] early
    return {name: masks[name] for name in targets}
