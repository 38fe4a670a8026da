"""nxmlab: reproduce and extend NxMTransformer (NeurIPS 2021).

Pattern notation: ``NxM(n, m)`` / ``"n:m"`` means **keep m of every n** consecutive
weights along a Linear layer's input dimension; the paper's ``4:2`` is NVIDIA's 2:4.

Two layers in one package:

* **the method** (this package's modules): :mod:`nxmlab.nxm` (patterns, masks,
  projection, compression, with its :mod:`nxmlab.kernels`) <- :mod:`nxmlab.targets`,
  :mod:`nxmlab.admm`, :mod:`nxmlab.masking`, :mod:`nxmlab.distill`, :mod:`nxmlab.export`,
  :mod:`nxmlab.learned` (MaskLLM's learned n:m masks) <- :mod:`nxmlab.callbacks` (``transformers.Trainer`` callbacks).  Small, exact, and
  independent of the study;
* **the study** (:mod:`nxmlab.study`), one folder per part: ``data/`` (GLUE data, metrics,
  models), ``train/`` (run configs, the method registry, the recipe), ``results/`` (the
  results store and its frames), ``studies/`` (presets and the notebooks' studies),
  ``plots/`` and ``cli/`` (the ``nxmlab`` command).  It uses the method layer and is never
  imported by it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = [
    "ADMM",
    "ADMMDiagnostics",
    "COMPONENTS",
    "FixedMasks",
    "LearnedMasks",
    "MaskSchedule",
    "NxM",
    "apply_masks",
    "candidate_masks",
    "compress",
    "decompress",
    "describe_target",
    "distillation_loss",
    "gumbel_soft_mask",
    "is_nxm",
    "kept_weight_norm",
    "magnitude_nxm_masks",
    "nxm_mask",
    "prior_gates",
    "project",
    "select_targets",
    "unstructured_masks",
]

#: The module of each public name.  They are imported on first use (PEP 562), so that
#: ``import nxmlab`` (and the ``nxmlab`` command's ``--help``) does not load torch.
_SOURCES = {
    "ADMM": "admm", "ADMMDiagnostics": "admm", "distillation_loss": "distill", "FixedMasks": "masking",
    "apply_masks": "masking", "magnitude_nxm_masks": "masking", "unstructured_masks": "masking", "NxM": "nxm",
    "compress": "nxm", "decompress": "nxm", "is_nxm": "nxm", "nxm_mask": "nxm", "project": "nxm",
    "COMPONENTS": "targets", "describe_target": "targets", "select_targets": "targets",
    "LearnedMasks": "learned", "MaskSchedule": "learned", "candidate_masks": "learned", "gumbel_soft_mask": "learned",
    "kept_weight_norm": "learned", "prior_gates": "learned",
}
_SUBMODULES = ("admm", "calibration", "callbacks", "distill", "export", "kernels", "learned", "masking", "nxm",
               "sparsegpt", "srste", "study", "targets", "wanda")

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from .admm import ADMM, ADMMDiagnostics
    from .distill import distillation_loss
    from .learned import LearnedMasks, MaskSchedule, candidate_masks, gumbel_soft_mask, kept_weight_norm, prior_gates
    from .masking import FixedMasks, apply_masks, magnitude_nxm_masks, unstructured_masks
    from .nxm import NxM, compress, decompress, is_nxm, nxm_mask, project
    from .targets import COMPONENTS, describe_target, select_targets


def __getattr__(name: str) -> Any:
    """A public name (from its module) or a submodule, imported on first use."""
    if name in _SOURCES:
        value = getattr(importlib.import_module(f".{_SOURCES[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SOURCES, *_SUBMODULES})
