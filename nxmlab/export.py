"""Deployment: compressed NxM checkpoints and 2:4 sparse-tensor-core layers.

* :func:`compressed_state_dict` / :func:`decompress_state_dict` store every NxM
  target as ``(values, indices)`` (see :func:`nxmlab.nxm.compress`): for 4:2 in fp32
  that is half the values plus one byte of index per kept value.
* :func:`to_semi_structured` swaps the weights of 4:2 ("2:4" in NVIDIA's notation)
  ``nn.Linear`` layers for ``torch.sparse.SparseSemiStructuredTensor`` so that
  matmuls run on sparse tensor cores (CUDA, compute capability >= 8.0, fp16/bf16).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .nxm import NxM, compress, decompress, is_nxm

__all__ = ["compressed_state_dict", "decompress_state_dict", "to_semi_structured", "semi_structured_supported"]


def compressed_state_dict(
    model: nn.Module, targets: Mapping[str, nn.Module], pattern: NxM | str
) -> dict[str, torch.Tensor]:
    """The model's state dict with each target weight replaced by compressed parts.

    ``{name}.weight`` becomes ``{name}.weight_values`` and ``{name}.weight_indices``.
    """
    pattern = NxM.parse(pattern)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, module in targets.items():
        values, indices = compress(module.weight, pattern, name)
        del state[f"{name}.weight"]
        state[f"{name}.weight_values"] = values.clone()
        state[f"{name}.weight_indices"] = indices.clone()
    return state


def decompress_state_dict(state: Mapping[str, torch.Tensor], pattern: NxM | str) -> dict[str, torch.Tensor]:
    """Inverse of :func:`compressed_state_dict`: a plain, loadable state dict."""
    pattern = NxM.parse(pattern)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".weight_values"):
            base = key[: -len("_values")]
            out[base] = decompress(value, state[base + "_indices"], pattern)
        elif not key.endswith(".weight_indices"):
            out[key] = value
    return out


def semi_structured_supported() -> bool:
    """True when CUDA sparse semi-structured (2:4) kernels can run here."""
    if not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability()
    return major >= 8


def to_semi_structured(model: nn.Module, targets: Mapping[str, nn.Linear]) -> dict[str, nn.Linear]:
    """Convert 4:2 target layers in place to sparse semi-structured weights.

    The model must already be on a CUDA device in fp16 or bf16, and every target
    must be exactly 4:2 (keep 2 of every 4).  Layers whose shapes the kernels do not
    support are left dense and omitted from the returned dict.

    Returns:
        ``{name: module}`` of the converted layers.

    Raises:
        RuntimeError: without a CUDA device of compute capability >= 8.0.
        ValueError: if a target is not 4:2 or not fp16/bf16 on CUDA.
    """
    if not semi_structured_supported():
        raise RuntimeError("sparse semi-structured (2:4) kernels need a CUDA GPU with compute capability >= 8.0")
    from torch.sparse import to_sparse_semi_structured

    converted = {}
    for name, module in targets.items():
        weight = module.weight
        if weight.device.type != "cuda" or weight.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"{name}: needs an fp16/bf16 weight on CUDA, got {weight.dtype} on {weight.device}")
        if not is_nxm(weight, NxM(4, 2)):
            raise ValueError(f"{name}: weight is not 4:2 (keep 2 of every 4); prune it first")
        try:
            sparse = to_sparse_semi_structured(weight.detach())
        except (RuntimeError, ValueError):
            continue  # shape not supported by the kernels: stay dense
        module.weight = nn.Parameter(sparse, requires_grad=False)
        converted[name] = module
    return converted
