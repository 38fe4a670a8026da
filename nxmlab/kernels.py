"""Fast NxM mask + projection kernels, bit-identical to :func:`nxmlab.nxm.nxm_mask` / ``project``.

:func:`fused_nxm_mask_and_project` returns ``(mask, projected)`` for one weight in a
single compiled pass (``torch.compile``, Inductor's C++ backend on CPU). The results
are bit-identical to ``nxm_mask(w, "n:m")`` and ``w.masked_fill(~mask, 0)``: the same
tie rule (among equal ``|w|`` the lower index in the group wins), the same ``+0.0`` at
pruned positions (a kept ``-0.0`` stays ``-0.0``), and the same ``ValueError`` for a
bad shape or a NaN/Inf weight. ``tests/test_kernels.py`` checks this.

How the compiled kernel is written, and why (measured in ``bench/projection.py``):

* **One loop over groups, one read of the weight.** The weight is read once, as
  ``[G, c]`` integer chunks of up to 8 bytes (``c`` per group). Every member's
  magnitude is its sign-cleared bits, compared as integers: for IEEE floats that order
  is exactly the order of ``|w|`` (``+0.0`` and ``-0.0`` both give 0). Every
  position's keep bit is a pointwise function of the ``n`` magnitudes of its group:
  pairwise comparisons ``|w_i| >= |w_j|`` (``i < j``: the lower index wins ties) and,
  per position, a count of the members that beat it (4:2 uses the equivalent majority
  form; m = 1 an AND). Everything stays in registers; no ``[G, n]`` temporaries. GCC
  turns the stride-c chunk loads into vector loads and permutes.
* **Packed stores.** The ``n`` keep bytes of a group form one integer (``bool[G, 4]``
  is bit-for-bit ``int32[G]``, one contiguous vector store), and the projected group
  is written as the chunks ANDed with an all-ones / all-zeros mask per element (fp32
  4:x: two 8-byte stores per group, which GCC does not combine). Integer AND gives
  exactly ``+0.0`` where pruned and keeps every kept bit, with no float ops (Inductor
  compiles with ``-ffast-math``-style flags).
* **The NaN/Inf check in the same loop.** A magnitude at least the bits of ``+Inf`` is
  Inf or NaN. The loop writes each group's largest magnitude (sign-cleared bits, an
  integer of the element's width), and ``max()`` over those ``G`` values follows (for
  fp32 4:x, one byte per weight element, written once and read once: a quarter of the
  bytes the floor moves), so there is no second pass over the weight and no false alarm
  for finite values. Measured choices: a reduction to one flag inside the loop makes
  Inductor emit a serial loop (at 2 threads the kernel ran on one: issue #30's
  regression); a flag per group (the comparison, stored as bool, int16 or int32) made
  the loop 1.1-10x slower and kept it from scaling to 2 threads; the magnitude itself
  costs the loop about 3 % at 1 and 2 threads.
* **Vectorisation switched on.** Inductor's tiling heuristic refuses to vectorise a
  loop whose loads are strided (stride n), and it compiles with
  ``-fno-tree-loop-vectorize``, so by default the loop runs scalar (~3x slower).
  The kernels are compiled with ``cpp.enable_tiling_heuristics=False``, which makes
  Inductor emit AVX2/AVX-512 code with strided loads.
* **Shapes.** Compiled with ``dynamic=False`` and the group count marked dynamic,
  so ``n`` (and the strides) stay static: one compilation per ``(n, m, dtype)``,
  reused for every layer shape. A symbolic ``n`` puts a division in the loop bound
  and blocks vectorisation.
* **Per-call overhead.** After the first call per ``(n, m, dtype, check, torch
  threads, grad mode)`` the graph Inductor compiled is called directly, skipping
  Dynamo's frame evaluation and guards (about 25 us a call; BERT-base's 72 weights
  take about 17 ms at 1 thread, less at 2, so 72 x 25 us is a tenth of that or more).
  Inductor's options are applied while compiling only, through a backend, not around
  every call as ``torch.compile(options=...)`` does.

If compilation fails (no C++ compiler, an unsupported platform), the fused function
falls back, with a one-time warning, to :func:`eager_nxm_mask_and_project`, an eager
formulation that is still several times faster than ``nxm_mask``.
"""

from __future__ import annotations

import math
import threading
import types
import warnings
from collections.abc import Callable

import torch


__all__ = [
    "COMPILE_MIN_NUMEL",
    "compiled_available",
    "compiled_nxm_mask_and_project",
    "eager_nxm_mask_and_project",
    "fused_nxm_mask_and_project",
    "reset_compiled",
]

#: Below this many elements :func:`fused_nxm_mask_and_project` uses the eager path
#: (a compiled call costs ~20-50 us of guard and launch overhead).
COMPILE_MIN_NUMEL = 1 << 15

_COMPILE_OPTIONS = {"cpp.enable_tiling_heuristics": False}
_FLOAT_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
               torch.float64: torch.int64}
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
#: The bits of +Inf: a magnitude (sign-cleared bits) at least this is Inf or NaN.
_INF_BITS = {torch.float32: 0x7F800000, torch.float16: 0x7C00, torch.bfloat16: 0x7F80,
             torch.float64: 0x7FF0000000000000}


def _signed(value: int, bits: int) -> int:
    """``value`` as the two's-complement signed integer of ``bits`` bits."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


# ----------------------------------------------------------------------------- keep bits
def _keep_bits(cols: list[torch.Tensor], m: int) -> list[torch.Tensor]:
    """Keep flags of the n group members (each a ``[G]`` bool), ties to the lower index.

    ``cols[i]`` is ``|w_i|``. Member i *outranks* member j when ``|w_i| > |w_j|``, or
    when they are equal and ``i < j``; for ``i < j`` that is ``|w_i| >= |w_j|``. A
    member is kept when fewer than m members outrank it (as in ``nxm_mask``).
    """
    n = len(cols)
    ge = {(i, j): cols[i] >= cols[j] for i in range(n) for j in range(i + 1, n)}
    inverted: dict[tuple[int, int], torch.Tensor] = {}

    def wins(i: int, j: int) -> torch.Tensor:  # does member i outrank member j?
        if i < j:
            return ge[(i, j)]
        if (j, i) not in inverted:
            inverted[(j, i)] = ~ge[(j, i)]
        return inverted[(j, i)]

    keep = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        if m == 1:  # kept iff it outranks every other member
            k = wins(i, others[0])
            for j in others[1:]:
                k = k & wins(i, j)
        elif n == 4 and m == 2:  # kept iff it outranks at least two of the other three
            x, y, z = (wins(i, j) for j in others)
            k = (x & y) | (z & (x | y))
        elif torch.compiler.is_compiling():  # rank = number of members that outrank it (in registers)
            rank = None
            for j in others:
                b = wins(j, i).to(torch.int32)
                rank = b if rank is None else rank + b
            k = rank < m
        else:  # eager: accumulate the rank in place, one uint8 op per member
            rank = torch.zeros(cols[0].shape, dtype=torch.uint8, device=cols[0].device)
            for j in others:
                rank += wins(j, i)
            k = rank < m
        keep.append(k)
    return keep


def _pack(flags: list[torch.Tensor], dtype: torch.dtype, width: int) -> torch.Tensor:
    """One integer per group whose little-endian bytes are the given 0/1 flags."""
    out = None
    for k, f in enumerate(flags):
        term = f.to(dtype) if k == 0 else f.to(dtype) * _signed(1 << (8 * k), width)
        out = term if out is None else out + term
    return out


def _magnitudes(chunk: torch.Tensor, per_chunk: int, elem_bytes: int) -> list[torch.Tensor]:
    """The ``|w|`` bits of the ``per_chunk`` elements packed in an integer chunk (low bytes first).

    For IEEE floats the sign-cleared bits order exactly like ``|w|`` (zeros, subnormals,
    normals, Inf; ``+0.0`` and ``-0.0`` both give 0), so integer comparisons of these
    give the reference's ``|w_i| >= |w_j|``. Fp16/bf16/fp32 magnitudes become int32
    (16 lanes per AVX-512 vector), fp64 ones stay int64.
    """
    bits = 8 * elem_bytes
    out = []
    for k in range(per_chunk):
        c = chunk >> (bits * k) if k else chunk
        if elem_bytes < 8 and chunk.element_size() > 4:
            c = c.to(torch.int32)  # keeps the low 32 bits
        out.append(c & ((1 << (bits - 1)) - 1))
    return out


def _group_kernel_template(chunks: torch.Tensor, n: int, m: int, elem_bytes: int, inf_bits: int,
                           check: bool):
    """Traced by torch.compile once per ``(n, m, dtype, check)``.

    Args:
        chunks: the weight's memory as ``[G, c]`` integers of ``chunk_bytes`` each
            (``c * chunk_bytes = n * elem_bytes``: one group per row).
        inf_bits: the bits of ``+Inf`` in the weight's dtype.
    Returns:
        ``(packed mask [G] or [G, cm], projected chunks [G, c])`` and, with ``check``,
        the largest magnitude of each group (``[G]``, sign-cleared bits), written in the
        same loop; it is at least ``inf_bits`` exactly where the group holds a NaN or Inf
        (a reduction here would make the loop serial).
    """
    chunk_bytes = chunks.element_size()
    per_chunk = chunk_bytes // elem_bytes
    cols = []
    for c in range(n // per_chunk):
        cols += _magnitudes(chunks[:, c], per_chunk, elem_bytes)
    keep = _keep_bits(cols, m)
    # the mask: n bytes per group, as [G, cm] integers of up to 8 bytes
    mask_bytes = min(n, 8)
    mask_dtype = _INT_OF_SIZE[mask_bytes]
    packed = [_pack(keep[c * mask_bytes:(c + 1) * mask_bytes], mask_dtype, 8 * mask_bytes)
              for c in range(n // mask_bytes)]
    # the projection: weight bits AND (all ones where kept)
    ones = (1 << (8 * elem_bytes)) - 1
    proj = []
    for c in range(n // per_chunk):
        sel = None
        for k in range(per_chunk):
            bits = _signed(ones << (8 * elem_bytes * k), 8 * chunk_bytes)
            term = (-keep[c * per_chunk + k].to(chunks.dtype)) & bits
            sel = term if sel is None else sel | term
        proj.append(chunks[:, c] & sel)
    packed_t = packed[0] if len(packed) == 1 else torch.stack(packed, 1)
    proj_t = proj[0] if len(proj) == 1 else torch.stack(proj, 1)
    if not check:
        return packed_t, proj_t
    top = cols[0]
    for col in cols[1:]:
        top = torch.maximum(top, col)
    return packed_t, proj_t, top


_compiled: dict[tuple, Callable] = {}
_lock = threading.Lock()
_failed: list[BaseException] = []
_warned = False
#: (n, m, dtype, check, threads, grad mode) -> (Inductor's compiled graph, its argument plan)
_direct: dict[tuple, tuple[Callable, tuple[str, ...]]] = {}
_capture = threading.local()


def _direct_plan(gm: torch.fx.GraphModule) -> tuple[str, ...] | None:
    """How to call the compiled graph without Dynamo: ``"T"`` the chunks, ``"G"`` their row count.

    None (keep calling through Dynamo) unless the graph's inputs are exactly the chunks
    tensor, with a symbolic row count, and that row count.
    """
    values = [node.meta.get("example_value") for node in gm.graph.nodes if node.op == "placeholder"]
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if len(tensors) != 1 or not isinstance(tensors[0].shape[0], torch.SymInt):
        return None
    rows = str(tensors[0].shape[0])
    plan = []
    for v in values:
        if isinstance(v, torch.Tensor):
            plan.append("T")
        elif isinstance(v, torch.SymInt) and str(v) == rows:
            plan.append("G")
        else:
            return None
    return tuple(plan)


def _backend(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
    """Inductor with :data:`_COMPILE_OPTIONS`; the compiled graph is also kept for direct calls.

    The options are applied while compiling only (``torch.compile(options=...)`` would
    patch Inductor's config around every call).
    """
    from torch._inductor.compile_fx import compile_fx

    compiled = compile_fx(gm, example_inputs, config_patches=_COMPILE_OPTIONS)
    key = getattr(_capture, "key", None)
    plan = _direct_plan(gm) if len(example_inputs) == len(gm.graph.find_nodes(op="placeholder")) else None
    if key is not None and plan is not None:
        with _lock:
            _direct[key] = (compiled, plan)
    return compiled


def _kernel_for(n: int, m: int) -> Callable:
    """A torch.compile'd kernel with its own code object for (n, m).

    Dynamo caches compilations per code object, with a limit (8) on the variants it
    keeps; one code object per pattern keeps the dtype/check variants of each
    pattern well under it.
    """
    key = (n, m)
    with _lock:
        fn = _compiled.get(key)
        if fn is None:
            code = _group_kernel_template.__code__.replace(co_name=f"nxm_kernel_{n}_{m}")
            raw = types.FunctionType(code, _group_kernel_template.__globals__, f"nxm_kernel_{n}_{m}")
            fn = torch.compile(raw, dynamic=False, backend=_backend)
            _compiled[key] = fn
    return fn


def _run_kernel(chunks: torch.Tensor, n: int, m: int, dtype: torch.dtype, check: bool) -> tuple:
    """The compiled kernel on ``chunks`` (``[G, c]``, contiguous, G >= 2).

    The first call per (pattern, dtype, check, torch threads, grad mode) goes through
    torch.compile (Dynamo guards on the thread count and the grad mode, so those are
    part of the key); later calls go straight to the graph Inductor compiled for it.
    That skips Dynamo's frame evaluation and guards, about 25 us a call, which is a
    tenth of the memory floor of BERT-base's 72 weights at 1 thread and more at 2.
    Every other property the graph depends on is fixed by the key: the chunk dtype and
    width, contiguity (the caller makes it), and a symbolic row count.
    """
    key = (n, m, dtype, check, torch.get_num_threads(), torch.is_grad_enabled())
    hit = _direct.get(key)
    if hit is not None:
        fn, plan = hit
        rows = chunks.shape[0]
        return fn(*[chunks if p == "T" else rows for p in plan])
    torch._dynamo.maybe_mark_dynamic(chunks, 0)
    _capture.key = key
    try:
        return _kernel_for(n, m)(chunks, n, m, torch.finfo(dtype).bits // 8, _INF_BITS[dtype], check)
    finally:
        _capture.key = None


def reset_compiled() -> None:
    """Forget the compiled kernels and any recorded compile failure (tests)."""
    global _warned
    with _lock:
        _compiled.clear()
        _direct.clear()
        _failed.clear()
        _warned = False


def compiled_available() -> bool:
    """False once a compilation has failed in this process (the fused path then runs eagerly)."""
    return not _failed


def _validate(weight: torch.Tensor, n: int, m: int, name: str) -> None:
    """The shape checks of ``NxM.check`` (same messages); n and m as in ``NxM``."""
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int) \
            or not 1 <= m < n:
        raise ValueError(f"invalid NxM pattern {n}:{m}: need 1 <= m < n (keep m of every n), got n={n}, m={m}")
    if weight.dim() != 2:
        raise ValueError(f"{name}: NxM sparsity needs a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
    if weight.shape[1] % n != 0:
        raise ValueError(f"{name}: pattern {n}:{m} needs the input width to be a multiple of "
                         f"n={n}, but weight shape is {tuple(weight.shape)}")


def reference_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The reference NxM mask (any dtype and device): the rank-by-counting loop.

    ``rank[i]`` counts the group members that beat member ``i``: a larger magnitude, or
    an equal magnitude at a lower index.  The members ranked below ``m`` are kept.
    """
    a = weight.detach().abs().reshape(-1, n)
    rank = torch.zeros(a.shape, dtype=torch.uint8, device=a.device)
    for j in range(n):
        aj = a[:, j : j + 1]
        rank[:, : j + 1] += aj > a[:, : j + 1]
        rank[:, j + 1 :] += aj >= a[:, j + 1 :]
    return (rank < m).reshape(weight.shape)


def _all_finite(w: torch.Tensor) -> bool:
    """``torch.isfinite(w).all()``, fast: a finite float32 sum proves it (Inf/NaN propagate).

    ``isfinite(w).all()`` allocates a bool tensor and is ~10x slower than a sum; the
    exact test runs only when the sum is not finite (a non-finite value, or overflow).
    """
    if not w.is_floating_point():
        return True
    total = w.sum(dtype=torch.float64 if w.dtype == torch.float64 else torch.float32)
    return math.isfinite(float(total)) or bool(torch.isfinite(w).all())


class _NotFinite(ValueError):
    pass


def _raise_not_finite(weight: torch.Tensor, name: str) -> None:
    raise ValueError(f"{name}: weight of shape {tuple(weight.shape)} holds NaN or Inf values")


def _compilable(weight: torch.Tensor, n: int) -> bool:
    return (weight.dtype in _FLOAT_BITS and _pow2(n) and weight.numel() > 0
            and weight.numel() // n >= 2)


def compiled_nxm_mask_and_project(weight: torch.Tensor, n: int, m: int, name: str = "weight",
                                  check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled kernel, with no fallback (raises if torch.compile fails).

    Args:
        weight: 2-D ``[out, in]`` float tensor (fp32/fp16/bf16/fp64), ``n | in``.
        n, m: keep ``m`` of every ``n`` (``n`` a power of two).
        name: layer name for error messages.
        check: reject NaN/Inf like ``nxm_mask`` (fused into the kernel).
    """
    _validate(weight, n, m, name)
    w = weight.detach()
    if not _compilable(w, n):
        raise ValueError(f"compiled kernel needs a float weight with >= 2 groups and n a power of two, "
                         f"got dtype {w.dtype}, n={n}, numel={w.numel()}")
    w = w.contiguous()
    elem_bytes = w.element_size()
    chunk_bytes = min(n * elem_bytes, 8)
    chunks = w.view(_INT_OF_SIZE[chunk_bytes]).view(-1, n * elem_bytes // chunk_bytes)
    out = _run_kernel(chunks, n, m, w.dtype, check)
    if check and int(out[2].max()) >= _INF_BITS[w.dtype]:  # exact: some element's exponent bits are all set
        raise _NotFinite(f"{name}: weight of shape {tuple(weight.shape)} holds NaN or Inf values")
    mask = out[0].view(torch.bool).view(weight.shape)
    projected = out[1].view(w.dtype).view(weight.shape)
    return mask, projected


# ------------------------------------------------------------------------------- eager
def eager_nxm_mask_and_project(weight: torch.Tensor, n: int, m: int, name: str = "weight",
                               check: bool = True, block: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The fastest eager formulation found (no compiler needed); bit-identical results.

    The magnitudes are de-interleaved into ``[n, G]`` (one pass, contiguous rows), the
    keep flags come from the same pairwise comparisons as the compiled kernel, on
    blocks of ``block`` groups so that the temporaries stay in cache, and the
    projection is an integer multiply of the weight's bits by the 0/1 mask (exact:
    ``+0`` where pruned, every bit kept elsewhere).
    """
    _validate(weight, n, m, name)
    w = weight.detach()
    if check and not _all_finite(w):
        _raise_not_finite(weight, name)
    if w.dtype not in _FLOAT_BITS or w.numel() == 0:  # integer weights etc.: the reference
        mask = reference_mask(w, n, m)
        return mask, w.masked_fill(~mask, 0)
    w = w.contiguous()
    g = w.view(-1, n)
    groups = g.shape[0]
    mask = torch.empty((groups, n), dtype=torch.bool, device=w.device)
    a = torch.empty((n, min(block, groups)), dtype=w.dtype, device=w.device)
    for start in range(0, groups, block):
        stop = min(start + block, groups)
        at = a[:, : stop - start]
        torch.abs(g[start:stop].t(), out=at)
        keep = _keep_bits(list(at.unbind(0)), m)
        torch.stack(keep, dim=1, out=mask[start:stop])
    mask = mask.view(weight.shape)
    bits = w.view(_FLOAT_BITS[w.dtype])
    projected = torch.mul(bits, mask).view(w.dtype).view(weight.shape)
    return mask, projected


# ------------------------------------------------------------------------------- fused
def fused_nxm_mask_and_project(weight: torch.Tensor, n: int, m: int, name: str = "weight",
                               check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(nxm_mask(weight, "n:m"), project(weight, "n:m"))`` in one fast pass.

    Bit-identical to the reference (tie rule, ``+0.0`` where pruned, errors). Uses the
    compiled kernel for float weights with at least :data:`COMPILE_MIN_NUMEL` elements
    and ``n`` a power of two; otherwise, or if compilation fails (warned once), the
    eager formulation.

    Args:
        weight: 2-D ``[out, in]`` tensor; ``n`` must divide ``in``.
        n: group size; m: weights kept per group (``1 <= m < n``).
        name: layer name for error messages.
        check: reject NaN/Inf (as ``nxm_mask`` does).

    Returns:
        ``(bool mask, projected weight)``, both shaped like ``weight``.
    """
    global _warned
    _validate(weight, n, m, name)
    if not _failed and weight.numel() >= COMPILE_MIN_NUMEL and _compilable(weight, n):
        try:
            return compiled_nxm_mask_and_project(weight, n, m, name, check)
        except _NotFinite:
            _raise_not_finite(weight, name)
        except Exception as exc:  # compiler missing, backend error: fall back for the process
            _failed.append(exc)
            if not _warned:
                _warned = True
                warnings.warn(f"nxmlab.kernels: torch.compile failed ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}); "
                              "using the eager NxM kernel from now on", RuntimeWarning, stacklevel=2)
    return eager_nxm_mask_and_project(weight, n, m, name, check)
