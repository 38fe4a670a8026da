"""Calibration statistics of target Linear layers, collected with forward hooks.

The one-shot baselines need statistics of each target's *input* ``X`` (rows are tokens,
columns the ``in_features``), collected over a small calibration set:

* Wanda (:mod:`nxmlab.wanda`) needs the squared L2 norm of every input feature,
  ``||X_j||_2^2 = sum_t x_tj^2`` (shape ``[in]``);
* SparseGPT (:mod:`nxmlab.sparsegpt`) needs the Hessian of the layer-wise
  reconstruction loss, ``H = X^T X = sum_t x_t x_t^T`` (shape ``[in, in]``).

Both are plain **sums over real tokens**: a Linear inside an encoder sees
``[batch, seq, in]`` inputs, and the positions where the batch's ``attention_mask`` is 0
(padding) are dropped, so a padded batch gives the statistics of its unpadded sequences.
Sums rather than means: both methods are invariant to a common positive scale of the
statistics (Wanda ranks within a row, SparseGPT dampens relative to ``mean(diag H)``),
and sums add up exactly across batches.  :attr:`InputStats.tokens` holds the count.

:func:`collect_input_stats` runs the model in eval mode under ``torch.no_grad``, and
always restores every module's train/eval flag and removes its hooks, also when the
forward raises.  :func:`forward_groups` splits targets into the encoder layers a
layer-by-layer (sequential) pruner works through, and :func:`reconstruction_error`
measures ``||(W - W') X||_F / ||W X||_F`` from the Hessian alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .targets import describe_target

__all__ = ["InputStats", "collect_input_stats", "forward_groups", "reconstruction_error"]


@dataclass
class InputStats:
    """Sums over the real (non-padding) tokens a Linear layer saw as input.

    Attributes:
        tokens: Number of tokens (rows of ``X``) accumulated.
        sq_norms: ``[in]``, ``sum_t x_tj^2`` = ``||X_j||_2^2`` per input feature.
        hessian: ``[in, in]``, ``X^T X``, or ``None`` when not collected.
    """

    tokens: int
    sq_norms: torch.Tensor
    hessian: torch.Tensor | None = None

    @property
    def norms(self) -> torch.Tensor:
        """``||X_j||_2`` per input feature (the factor of Wanda's score)."""
        return self.sq_norms.sqrt()


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass once every target has seen its input."""


def _input_of(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if "input" in kwargs:
        return kwargs["input"]
    raise ValueError("a target Linear was called without an input tensor")


def _real_rows(x: torch.Tensor, attention_mask: torch.Tensor | None, name: str) -> torch.Tensor:
    """The ``[tokens, in]`` rows of ``x`` at real (mask = 1) positions."""
    if attention_mask is None:
        return x.reshape(-1, x.shape[-1])
    if tuple(x.shape[:-1]) != tuple(attention_mask.shape):
        raise ValueError(
            f"{name}: input of shape {tuple(x.shape)} does not line up with the batch's attention_mask "
            f"{tuple(attention_mask.shape)}; cannot tell real tokens from padding"
        )
    return x[attention_mask.to(device=x.device).bool()]


def _to_device(batch: Mapping, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def collect_input_stats(
    model: nn.Module,
    targets: Mapping[str, nn.Linear],
    batches: Iterable[Mapping],
    *,
    hessian: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    stop_early: bool = False,
) -> dict[str, InputStats]:
    """Run ``model(**batch)`` over ``batches`` and accumulate each target's input statistics.

    Args:
        model: The model that contains ``targets``.
        targets: ``{name: nn.Linear}`` (e.g. from :func:`nxmlab.targets.select_targets`).
        batches: Dicts of tensors for ``model(**batch)``.  If a batch holds an
            ``attention_mask`` of shape ``[batch, seq]``, only positions where it is
            non-zero count; without one every position counts.
        hessian: Also accumulate ``X^T X`` (``[in, in]`` per target, SparseGPT).
        dtype: Accumulation dtype (float32 or float64).
        device: Where the batches go (default: the device of the model's first parameter).
            The statistics live on each target's weight device.
        stop_early: End each forward pass (with an internal exception) as soon as every
            target has seen its input once.  Saves the rest of the network when the
            targets sit early in it; assumes each target is called once per forward.

    Returns:
        ``{name: InputStats}`` in the order of ``targets``.

    Raises:
        ValueError: if a target is not an ``nn.Linear``, never received an input, or
            its input does not line up with the attention mask.
    """
    if not targets:
        raise ValueError("no targets to calibrate")
    for name, module in targets.items():
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{name}: calibration needs nn.Linear targets, got {type(module).__name__}")
    if device is None:
        device = next(model.parameters()).device
    stats: dict[str, InputStats] = {}
    for name, module in targets.items():
        width, where = module.in_features, module.weight.device
        stats[name] = InputStats(
            tokens=0,
            sq_norms=torch.zeros(width, dtype=dtype, device=where),
            hessian=torch.zeros(width, width, dtype=dtype, device=where) if hessian else None,
        )
    current: dict = {"mask": None, "seen": set()}

    def hook(name: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = _input_of(args, kwargs).detach()
        rows = _real_rows(x, current["mask"], name).to(dtype=dtype, device=stats[name].sq_norms.device)
        entry = stats[name]
        entry.tokens += rows.shape[0]
        entry.sq_norms.add_(rows.square().sum(dim=0))
        if entry.hessian is not None:
            entry.hessian.addmm_(rows.T, rows)
        current["seen"].add(name)
        if stop_early and len(current["seen"]) == len(stats):
            raise _StopForward

    modes = {module: module.training for module in model.modules()}
    handles = [
        module.register_forward_pre_hook(lambda mod, a, kw, name=name: hook(name, mod, a, kw), with_kwargs=True)
        for name, module in targets.items()
    ]
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                batch = _to_device(batch, torch.device(device))
                current["mask"], current["seen"] = batch.get("attention_mask"), set()
                try:
                    model(**batch)
                except _StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    silent = [name for name, entry in stats.items() if entry.tokens == 0]
    if silent:
        raise ValueError(f"target(s) received no real token during calibration: {silent}")
    return stats


def forward_groups(targets: Mapping[str, nn.Module]) -> list[dict[str, nn.Module]]:
    """Split targets into the groups a layer-by-layer pruner processes, in forward order.

    When every target name carries an encoder layer index (see
    :func:`nxmlab.targets.describe_target`), one group per encoder layer, ordered by the
    index (targets keep their order inside a group).  Otherwise one group per target, in
    the order given, which must then be the order of the forward pass.
    """
    layers = {name: describe_target(name)[1] for name in targets}
    if any(layer is None for layer in layers.values()):
        return [{name: module} for name, module in targets.items()]
    groups: dict[int, dict[str, nn.Module]] = {}
    for name, module in targets.items():
        groups.setdefault(layers[name], {})[name] = module
    return [groups[layer] for layer in sorted(groups)]


def reconstruction_error(
    weight: torch.Tensor, new_weight: torch.Tensor, hessian: torch.Tensor, relative: bool = True
) -> float:
    """Output error of replacing ``weight`` by ``new_weight`` on the calibration inputs.

    With ``H = X^T X`` (rows of ``X`` are tokens) and ``D = W - W'``,
    ``||X D^T||_F^2 = tr(D H D^T)``, so the error needs the Hessian only (the bias cancels).

    Returns:
        ``||X (W - W')^T||_F / ||X W^T||_F`` if ``relative`` (the default), else the
        absolute ``||X (W - W')^T||_F``.
    """
    h = hessian.detach().double()
    w = weight.detach().to(device=h.device, dtype=torch.float64)
    d = w - new_weight.detach().to(device=h.device, dtype=torch.float64)
    error = float(((d @ h) * d).sum().clamp_min(0))
    if not relative:
        return math.sqrt(error)
    reference = float(((w @ h) * w).sum())
    return math.sqrt(error / reference) if reference > 0 else (0.0 if error == 0 else math.inf)
