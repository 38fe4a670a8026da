"""Fixed sparsity masks: baseline mask choices and keeping pruned weights at zero.

How masks are kept (the choice the design asks us to state): **gradient hooks plus
re-masking after every optimizer step**, not ``torch.nn.utils.parametrize``.

* A tensor hook multiplies each target's gradient by its mask, so pruned positions
  never receive gradient and AdamW's moment estimates stay zero there.
* After every ``optimizer.step()`` the weights are re-masked in place.  This makes
  exact zeros a guarantee rather than a consequence of optimizer algebra: momentum
  carried over from before pruning, or any optimizer that moves zero-gradient
  entries, cannot revive a pruned weight.  AdamW's decoupled weight decay keeps a
  zero at zero anyway.

Why not ``parametrize``: it renames parameters (``weight`` becomes
``parametrizations.weight.original``), which breaks ``save_pretrained`` /
``from_pretrained`` round trips and Trainer checkpoints of the plain model, and it
adds a mask multiply to every forward.  With hooks the saved model is an ordinary
(sparse-valued) Hugging Face checkpoint.

Re-masking is driven by :meth:`FixedMasks.enforce`; pass an optimizer to
:func:`apply_masks` to run it automatically through
``Optimizer.register_step_post_hook``, or call it from a Trainer callback.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .nxm import NxM, check_module, check_targets, check_tensor, nxm_mask

__all__ = ["magnitude_nxm_masks", "unstructured_masks", "apply_masks", "FixedMasks", "mask_distance", "mask_sparsity",
           "as_bool_mask"]


def as_bool_mask(mask: object, name: str = "mask") -> torch.Tensor:
    """``mask`` as a bool tensor (``True`` = keep): a bool tensor, or a numeric one holding only 0 and 1.

    Raises:
        TypeError: not a tensor, a ``meta`` or complex tensor.
        ValueError: a numeric mask with any value other than 0 and 1 (e.g. a float mask of
            probabilities: threshold it first); a 0.3 is never silently "keep".
    """
    check_tensor(mask, name, dtypes=None)
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise TypeError(f"{name}: unsupported dtype {mask.dtype}; a mask is bool, or holds only 0 and 1")
    binary = (mask == 0) | (mask == 1)
    if not bool(binary.all()):
        bad = mask[~binary].flatten()[0].item()
        raise ValueError(f"{name}: a mask must be bool or hold only 0 and 1, found {bad!r} "
                         "(threshold it first, e.g. mask > 0.5)")
    return mask != 0


@torch.no_grad()
def magnitude_nxm_masks(targets: Mapping[str, nn.Module], pattern: NxM | str) -> dict[str, torch.Tensor]:
    """One-shot magnitude NxM masks (the NVIDIA ASP recipe): keep the m largest of each n.

    Raises:
        TypeError: ``targets`` is not a mapping of names to modules with a weight tensor.
    """
    check_targets(targets)
    pattern = NxM.parse(pattern)
    return {name: nxm_mask(module.weight, pattern, name) for name, module in targets.items()}


@torch.no_grad()
def unstructured_masks(
    targets: Mapping[str, nn.Module], density: float, scope: str = "layer"
) -> dict[str, torch.Tensor]:
    """Unstructured magnitude masks keeping a fraction ``density`` of the weights.

    Args:
        targets: ``{name: nn.Linear}``.
        density: Fraction kept, in (0, 1]; use ``pattern.density`` for a
            same-density reference to an NxM pattern.
        scope: ``"layer"`` keeps exactly ``round(density * numel)`` per layer;
            ``"global"`` ranks all targets together.

    Ties are broken by position (stable sort), so the masks are deterministic.

    Raises:
        TypeError: ``targets`` is not a mapping of names to modules with a weight tensor.
    """
    check_targets(targets)
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")

    def keep_top(values: torch.Tensor, k: int) -> torch.Tensor:
        order = torch.sort(values, descending=True, stable=True).indices[:k]
        mask = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
        mask[order] = True
        return mask

    weights = {name: module.weight.detach() for name, module in targets.items()}
    if scope == "layer":
        return {
            name: keep_top(w.abs().reshape(-1), round(density * w.numel())).reshape(w.shape)
            for name, w in weights.items()
        }
    flat = torch.cat([w.abs().reshape(-1).float() for w in weights.values()])
    mask = keep_top(flat, round(density * flat.numel()))
    out, offset = {}, 0
    for name, w in weights.items():
        out[name] = mask[offset : offset + w.numel()].reshape(w.shape).to(w.device)
        offset += w.numel()
    return out


def mask_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised Hamming distance of two keep-masks: ``|A △ B| / (|A| + |B|)``.

    For masks of equal density this is the fraction of kept positions that differ,
    ``|A ∧ ¬B| / |A|``: 0 for identical masks, 1 for disjoint ones, ``1 − m/n`` expected
    for two independent random n:m masks.
    """
    a, b = as_bool_mask(a, "a"), as_bool_mask(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    total = int(a.sum()) + int(b.sum())
    return 0.0 if total == 0 else int((a ^ b).sum()) / total


def mask_sparsity(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of pruned (False) positions per mask."""
    return {name: 1.0 - float(m.float().mean()) for name, m in masks.items()}


class FixedMasks:
    """Keeps masked target weights exactly zero during training.

    Created by :func:`apply_masks`.  Call :meth:`enforce` after every optimizer step
    (automatic when an optimizer was given), and :meth:`remove` to detach the hooks.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        check_module(model)
        if not isinstance(masks, Mapping):
            raise TypeError(f"masks: expected a mapping {{module name: mask}}, got {type(masks).__qualname__}")
        modules = dict(model.named_modules())
        missing = [name for name in masks if name not in modules]
        if missing:
            raise ValueError(f"mask(s) for module(s) not in the model: {missing}")
        self.params: dict[str, nn.Parameter] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self._handles: list = []
        for name, mask in masks.items():
            weight = modules[name].weight
            mask = as_bool_mask(mask, name)
            if mask.shape != weight.shape:
                raise ValueError(f"{name}: mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}")
            mask = mask.to(device=weight.device, dtype=torch.bool)
            self.params[name] = weight
            self.masks[name] = mask
            self._handles.append(weight.register_hook(lambda g, m=mask: g.masked_fill(~m, 0)))
        self.enforce()

    @torch.no_grad()
    def enforce(self) -> None:
        """Zero every masked weight in place."""
        for name, weight in self.params.items():
            weight.masked_fill_(~self.masks[name], 0)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Run :meth:`enforce` after every ``optimizer.step()``."""
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self.enforce()))

    def remove(self) -> None:
        """Remove every hook (the weights stay as they are)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def apply_masks(
    model: nn.Module, masks: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None
) -> FixedMasks:
    """Zero the masked weights now and keep them zero through training.

    Args:
        model: The model whose modules the mask names refer to.
        masks: ``{module name: bool mask}`` with ``True`` = keep (a numeric mask must hold
            only 0 and 1, see :func:`as_bool_mask`).
        optimizer: If given, weights are re-masked after each of its steps.

    Returns:
        The :class:`FixedMasks` handle.
    """
    fixed = FixedMasks(model, masks)
    if optimizer is not None:
        fixed.attach(optimizer)
    return fixed
