"""nxmlab: reproduce and extend NxMTransformer (NeurIPS 2021).

Pattern notation: ``NxM(n, m)`` / ``"n:m"`` means **keep m of every n** consecutive
weights along a Linear layer's input dimension; the paper's ``4:2`` is NVIDIA's 2:4.

Two layers in one package:

* **the method** (this package's modules): :mod:`nxmlab.nxm` (patterns, masks,
  projection, compression, with its :mod:`nxmlab.kernels`) <- :mod:`nxmlab.targets`,
  :mod:`nxmlab.admm`, :mod:`nxmlab.masking`, :mod:`nxmlab.distill`, :mod:`nxmlab.export`,
  :mod:`nxmlab.learned` (MaskLLM's learned n:m masks) <- :mod:`nxmlab.callbacks` (``transformers.Trainer`` callbacks).  Small, exact, and
  independent of the study;
* **the study** (:mod:`nxmlab.study`): GLUE data, the results store, the method registry
  and recipe, presets, result frames, plots, notebooks and the ``nxmlab`` CLI.  It uses
  the method layer and is never imported by it.
"""

from .admm import ADMM, ADMMDiagnostics
from .distill import distillation_loss
from .learned import LearnedMasks, MaskSchedule, candidate_masks, gumbel_soft_mask, kept_weight_norm, prior_gates
from .masking import FixedMasks, apply_masks, magnitude_nxm_masks, unstructured_masks
from .nxm import NxM, compress, decompress, is_nxm, nxm_mask, project
from .targets import COMPONENTS, describe_target, select_targets

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
