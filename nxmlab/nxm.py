"""NxM patterns: masks, the exact projection, and a compressed deployment format.

Notation (used everywhere in nxmlab): ``NxM(n, m)``, written ``"n:m"`` as in the
NxMTransformer paper, means **keep m of every n** consecutive weights.  The paper's
``4:2`` is therefore NVIDIA's "2:4" sparsity that sparse tensor cores accelerate.

Groups run along the *input* dimension, i.e. the last dim of ``nn.Linear.weight``
(shape ``[out, in]``): row ``r`` is split into ``in / n`` groups of ``n`` contiguous
weights, and each group keeps at most ``m`` non-zeros.

Everything here is vectorised over groups and rows (the only Python loop is over the
``n`` positions of a group) and works for fp32/fp16/bf16 on CPU and CUDA.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .kernels import fused_nxm_mask_and_project, reference_mask

__all__ = [
    "NxM",
    "FLOAT_DTYPES",
    "check_tensor",
    "check_module",
    "check_targets",
    "nxm_mask",
    "nxm_mask_and_project",
    "project",
    "is_nxm",
    "compress",
    "decompress",
    "pack_mask",
    "unpack_mask",
]

_PATTERN_RE = re.compile(r"^\s*(\d+)\s*[:x]\s*(\d+)\s*$")
#: Weight dtypes the NxM functions accept.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _type_name(value: object) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def check_tensor(value: object, name: str = "weight", dtypes: tuple[torch.dtype, ...] | None = FLOAT_DTYPES) -> None:
    """Raise ``TypeError`` unless ``value`` is a tensor with data (not ``meta``) of one of ``dtypes``.

    Args:
        value: What the caller passed.
        name: Its name in the message.
        dtypes: Accepted dtypes (``None``: any).
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {_type_name(value)} (convert it with torch.as_tensor)")
    if value.device.type == "meta":
        raise TypeError(f"{name}: a meta tensor holds no values; materialise the weights first")
    if dtypes is not None and value.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name}: unsupported dtype {value.dtype}; expected one of {allowed}")


def check_module(value: object, name: str = "model") -> None:
    """Raise ``TypeError`` unless ``value`` is a ``torch.nn.Module``."""
    if not isinstance(value, torch.nn.Module):
        raise TypeError(f"{name}: expected a torch.nn.Module, got {_type_name(value)}")


def check_targets(targets: object, name: str = "targets") -> None:
    """Raise ``TypeError`` unless ``targets`` maps names to modules with a ``weight`` tensor
    (what :func:`~nxmlab.targets.select_targets` returns)."""
    if not isinstance(targets, Mapping):
        raise TypeError(f"{name}: expected a mapping {{name: nn.Linear}} (e.g. select_targets(model)), "
                        f"got {_type_name(targets)}")
    for key, module in targets.items():
        check_module(module, f"{name}[{key!r}]")
        check_tensor(getattr(module, "weight", None), f"{key}.weight", dtypes=None)


@dataclass(frozen=True)
class NxM:
    """An NxM sparsity pattern: keep ``m`` of every ``n`` consecutive weights.

    Args:
        n: Group size (consecutive weights along the input dimension).
        m: Weights kept per group, ``1 <= m < n``.

    Example:
        >>> NxM.parse("4:2")
        4:2 (keep 2 of every 4)
    """

    n: int
    m: int

    def __post_init__(self) -> None:
        for field, value in (("n", self.n), ("m", self.m)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"NxM pattern {field} must be an int, got {value!r}")
        if not 1 <= self.m < self.n:
            raise ValueError(
                f"invalid NxM pattern {self.n}:{self.m}: need 1 <= m < n "
                f"(keep m of every n), got n={self.n}, m={self.m}"
            )

    @classmethod
    def parse(cls, spec: str | NxM) -> NxM:
        """Read the paper's ``"n:m"`` notation (``"4:2"`` keeps 2 of every 4).

        An ``NxM`` instance is returned unchanged.  ``"4x2"`` is accepted too.

        Raises:
            ValueError: for a malformed string or an invalid ``n``/``m``.
        """
        if isinstance(spec, NxM):
            return spec
        if not isinstance(spec, str):
            raise ValueError(f"NxM pattern must be a string like '4:2', got {spec!r}")
        match = _PATTERN_RE.match(spec)
        if match is None:
            raise ValueError(
                f"malformed NxM pattern {spec!r}: expected 'n:m' meaning keep m of every n, e.g. '4:2'"
            )
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def density(self) -> float:
        """Fraction of weights kept, ``m / n``."""
        return self.m / self.n

    @property
    def sparsity(self) -> float:
        """Fraction of weights pruned, ``(n - m) / n``."""
        return (self.n - self.m) / self.n

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    def __repr__(self) -> str:
        return f"{self.n}:{self.m} (keep {self.m} of every {self.n})"

    def check(self, weight: torch.Tensor, name: str = "weight") -> None:
        """Validate that ``weight`` can carry this pattern.

        Args:
            weight: A 2-D ``[out, in]`` tensor.
            name: Layer name used in error messages.

        Raises:
            TypeError: if ``weight`` is not a floating-point tensor with data.
            ValueError: if ``weight`` is not 2-D, ``n`` does not divide its input
                width, or it holds NaN/Inf values.
        """
        check_tensor(weight, name)
        if weight.dim() != 2:
            raise ValueError(
                f"{name}: NxM sparsity needs a 2-D [out, in] weight, got shape {tuple(weight.shape)}"
            )
        if weight.shape[1] % self.n != 0:
            raise ValueError(
                f"{name}: pattern {self.n}:{self.m} needs the input width to be a multiple of "
                f"n={self.n}, but weight shape is {tuple(weight.shape)}"
            )
        if weight.is_floating_point() and not bool(torch.isfinite(weight).all()):
            raise ValueError(f"{name}: weight of shape {tuple(weight.shape)} holds NaN or Inf values")


def _groups(weight: torch.Tensor, pattern: NxM) -> torch.Tensor:
    return weight.reshape(-1, pattern.n)


def _reference_mask(weight: torch.Tensor, pattern: NxM) -> torch.Tensor:
    return reference_mask(weight, pattern.n, pattern.m)


def _use_kernels(weight: torch.Tensor) -> bool:
    return (
        weight.device.type == "cpu"
        and weight.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and os.environ.get("NXMLAB_KERNELS", "1") != "0"
    )


def nxm_mask_and_project(
    weight: torch.Tensor, pattern: NxM | str, name: str = "weight"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(nxm_mask(weight), project(weight))`` in one pass.

    On CPU this runs the fused kernel of :mod:`nxmlab.kernels` (compiled with
    ``torch.compile`` for large weights, eager otherwise), which is bit-identical to
    the reference implementation used on other devices; set ``NXMLAB_KERNELS=0`` to
    force the reference.
    """
    pattern = NxM.parse(pattern)
    check_tensor(weight, name)
    if _use_kernels(weight):
        with torch.no_grad():
            return fused_nxm_mask_and_project(weight.detach(), pattern.n, pattern.m, name)
    pattern.check(weight, name)
    mask = _reference_mask(weight, pattern)
    return mask, weight.detach().masked_fill(~mask, 0)


def nxm_mask(weight: torch.Tensor, pattern: NxM | str, name: str = "weight") -> torch.Tensor:
    """Boolean mask keeping the ``m`` largest ``|w|`` in every group of ``n``.

    Ties are broken deterministically: among equal magnitudes the lower index in the
    group wins.  Exactly ``m`` positions are kept per group (also in all-zero groups).

    Args:
        weight: 2-D ``[out, in]`` tensor; ``n`` must divide ``in``.
        pattern: An :class:`NxM` or its ``"n:m"`` string.
        name: Layer name for error messages.

    Returns:
        A bool tensor with the shape and device of ``weight``.
    """
    return nxm_mask_and_project(weight, pattern, name)[0]


def project(weight: torch.Tensor, pattern: NxM | str, name: str = "weight") -> torch.Tensor:
    """Euclidean projection of ``weight`` onto the NxM set (a new tensor).

    Keeping the ``m`` largest magnitudes of each group and zeroing the rest minimises
    ``||weight - Z||_F`` over all ``Z`` with at most ``m`` non-zeros per group.
    """
    return nxm_mask_and_project(weight, pattern, name)[1]


def is_nxm(weight: torch.Tensor, pattern: NxM | str) -> bool:
    """True if every group of ``n`` in ``weight`` has at most ``m`` non-zeros (``TypeError`` for a
    non-tensor, a ``meta`` tensor or a bool tensor)."""
    pattern = NxM.parse(pattern)
    check_tensor(weight, "weight", dtypes=None)
    if weight.dtype == torch.bool:
        raise TypeError("weight: unsupported dtype torch.bool; is_nxm checks weights, not masks")
    if weight.dim() != 2 or weight.shape[1] % pattern.n != 0:
        return False
    nonzero = (_groups(weight.detach(), pattern) != 0).sum(dim=1)
    return bool((nonzero <= pattern.m).all())


def _index_dtype(n: int) -> torch.dtype:
    return torch.uint8 if n <= 256 else torch.int16 if n <= 32768 else torch.int32


def compress(weight: torch.Tensor, pattern: NxM | str, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """Compress an NxM-sparse weight to ``(values, indices)``.

    Both outputs have shape ``[out, in * m / n]``.  For group ``g`` of row ``r``,
    ``values[r, g*m:(g+1)*m]`` are the kept weights in ascending position order and
    ``indices[r, g*m:(g+1)*m]`` their positions inside the group (``0..n-1``), stored
    as ``uint8`` (for ``n <= 256``).

    Mapping to NVIDIA's 2:4 sparse tensor cores (our ``4:2``): ``values`` is exactly
    the compressed ``[out, in/2]`` operand cuSPARSELt/CUTLASS consume, and
    ``indices`` is the per-element 2-bit metadata before packing (hardware packs the
    two 2-bit indices of a group into 4 bits, i.e. 8 groups per int32, in an
    interleaved, arch-specific order).  :mod:`nxmlab.export` uses
    ``torch.sparse.to_sparse_semi_structured`` for the packed, runnable form.

    Groups with fewer than ``m`` non-zeros store explicit zeros, so
    :func:`decompress` is exact.

    Raises:
        ValueError: if ``weight`` is not NxM (prune it first) or has a bad shape.
    """
    pattern = NxM.parse(pattern)
    pattern.check(weight, name)
    if not is_nxm(weight, pattern):
        raise ValueError(f"{name}: weight is not {pattern!r}; project or prune it before compressing")
    w = weight.detach()
    mask = _groups(nxm_mask(w, pattern, name), pattern)
    positions = torch.arange(pattern.n, device=w.device).expand_as(mask)
    # positions of kept entries, ascending, m per group
    idx = positions[mask].reshape(-1, pattern.m)
    values = _groups(w, pattern).gather(1, idx)
    out = w.shape[0]
    return values.reshape(out, -1), idx.to(_index_dtype(pattern.n)).reshape(out, -1)


def decompress(values: torch.Tensor, indices: torch.Tensor, pattern: NxM | str, name: str = "weight") -> torch.Tensor:
    """Inverse of :func:`compress`: rebuild the dense ``[out, in]`` weight exactly.

    The pair is checked first: ``values`` a floating-point and ``indices`` an integer tensor
    of the same 2-D shape ``[out, groups * m]``, every index a position ``0..n-1`` inside its
    group and the ``m`` indices of a group distinct (in any order).  Corrupted indices are
    never scattered into a wrong (or silently overwritten) position.

    Args:
        values: The kept weights, ``m`` per group.
        indices: Their positions inside each group of ``n``.
        pattern: The :class:`NxM` (or ``"n:m"``) they were compressed with.
        name: The tensor's name in error messages (e.g. the layer's).

    Raises:
        TypeError: a non-tensor, or a wrong dtype.
        ValueError: shapes that do not form a compressed pair, an index out of range or
            repeated within a group; the message names the tensor and the first bad group.
    """
    pattern = NxM.parse(pattern)
    check_tensor(values, f"{name}: values")
    check_tensor(indices, f"{name}: indices", (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64))
    if values.shape != indices.shape or values.dim() != 2 or values.shape[1] % pattern.m != 0:
        raise ValueError(
            f"{name}: values {tuple(values.shape)} and indices {tuple(indices.shape)} are not a "
            f"compressed {pattern!r} pair (both [out, groups * {pattern.m}])"
        )
    out, kept = values.shape
    groups = kept // pattern.m
    idx = indices.reshape(-1, pattern.m).long()
    bad = ((idx < 0) | (idx >= pattern.n)).any(dim=1)
    if bool(bad.any()):
        g = int(bad.nonzero()[0])
        raise ValueError(f"{name}: indices must be positions 0..{pattern.n - 1} inside a group of {pattern.n}, "
                         f"found {idx[g].tolist()} in group {g % groups} of row {g // groups}")
    if pattern.m > 1:
        ordered = idx.sort(dim=1).values
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
        if bool(repeated.any()):
            g = int(repeated.nonzero()[0])
            raise ValueError(f"{name}: the {pattern.m} indices of a group must be distinct, found {idx[g].tolist()} "
                             f"in group {g % groups} of row {g // groups}")
    dense = torch.zeros(out * groups, pattern.n, dtype=values.dtype, device=values.device)
    dense.scatter_(1, idx, values.reshape(-1, pattern.m))
    return dense.reshape(out, groups * pattern.n)


def pack_mask(mask: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Bit-pack a bool mask (8 positions per byte) for compact storage.

    Returns:
        ``(packed uint8 tensor, original shape)``.
    """
    import numpy as np

    check_tensor(mask, "mask", dtypes=None)
    flat = mask.detach().to("cpu", torch.bool).reshape(-1).numpy()
    return torch.from_numpy(np.packbits(flat)), tuple(mask.shape)


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_mask`."""
    import numpy as np

    numel = 1
    for s in shape:
        numel *= int(s)
    bits = np.unpackbits(packed.cpu().numpy(), count=numel)
    return torch.from_numpy(bits.astype(bool)).reshape(shape)
