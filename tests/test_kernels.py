"""nxmlab.kernels: the fast mask + projection is bit-identical to the reference implementation.

``nxm_mask`` / ``project`` dispatch to these kernels on CPU, so the reference here is
``nxmlab.nxm._reference_mask`` (the rank-by-counting loop, also what CUDA runs).
"""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from nxmlab import kernels
from nxmlab.nxm import NxM, _reference_mask, nxm_mask

# torch.compile imports torch.jit internals that warn on import; not ours
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

PATTERNS = [(4, 2), (4, 1), (8, 2), (8, 4)]
DTYPES = [torch.float32, torch.bfloat16]
_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(_INT[t.element_size()])


def _assert_identical(got, weight, n, m):
    mask, projected = got
    ref_mask = _reference_mask(weight, NxM(n, m))
    ref_proj = weight.masked_fill(~ref_mask, 0)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert torch.equal(mask, ref_mask)
    assert projected.dtype == weight.dtype and projected.shape == weight.shape
    assert torch.equal(_bits(projected), _bits(ref_proj)), "projection differs bitwise (+0.0/-0.0?)"


def _weights(dtype, seed=0):
    """A random weight and a tie-heavy one (many equal magnitudes, +0.0 and -0.0)."""
    g = torch.Generator().manual_seed(seed)
    rand = torch.randn(48, 64, generator=g).to(dtype)
    ties = (torch.randint(-2, 3, (48, 64), generator=g).float() * 0.5).to(dtype)
    ties[0, :8] = -0.0
    ties[1, :8] = 0.0
    ties[2, :8] = torch.tensor([0.0, -0.0, -0.0, 0.0, -1.0, 1.0, 1.0, -1.0])
    ties[3, :] = 1.0
    return {"random": rand, "ties": ties}


@pytest.fixture(scope="module")
def compiled():
    """Skip the compiled tests where torch.compile cannot build a C++ kernel."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler for torch.compile")
    try:
        kernels.compiled_nxm_mask_and_project(torch.randn(8, 8), 4, 2)
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"torch.compile unavailable: {exc!r}")
    return kernels.compiled_nxm_mask_and_project


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,m", PATTERNS, ids=lambda v: str(v))
def test_eager_bit_identical(n, m, dtype):
    for weight in _weights(dtype).values():
        _assert_identical(kernels.eager_nxm_mask_and_project(weight, n, m), weight, n, m)


def test_eager_small_blocks_and_fp16():
    weight = _weights(torch.float16)["ties"]
    _assert_identical(kernels.eager_nxm_mask_and_project(weight, 4, 2, block=7), weight, 4, 2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,m", PATTERNS, ids=lambda v: str(v))
def test_compiled_bit_identical(compiled, n, m, dtype):
    for weight in _weights(dtype).values():
        _assert_identical(compiled(weight, n, m), weight, n, m)


@pytest.mark.parametrize("dtype,n,m", [(torch.float16, 4, 2), (torch.float64, 4, 2), (torch.float32, 2, 1)],
                         ids=str)
def test_compiled_other_chunk_layouts(compiled, dtype, n, m):
    """fp16 (4 elements per 64-bit chunk), fp64 (one), fp32 2:1 (a group is one chunk)."""
    for weight in _weights(dtype).values():
        _assert_identical(compiled(weight, n, m), weight, n, m)
    weight = _weights(dtype)["random"]
    weight[7, 9] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        compiled(weight, n, m)


def test_compiled_direct_calls_match_and_follow_the_thread_count(compiled):
    """After the first call the compiled graph is called directly, per thread count."""
    weight = _weights(torch.float32)["ties"]
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for _ in range(2):  # the second call is a direct one
                _assert_identical(compiled(weight, 4, 2), weight, 4, 2)
            assert any(key[:5] == (4, 2, torch.float32, True, threads) for key in kernels._direct)
    finally:
        torch.set_num_threads(before)
    bad = weight.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        compiled(bad, 4, 2)


def test_compiled_other_shape_and_non_contiguous(compiled):
    weight = torch.randn(64, 40).t()  # [40, 64], not contiguous: reshaped like nxm_mask does
    _assert_identical(compiled(weight, 4, 2), weight, 4, 2)
    weight = torch.randn(3, 8)
    _assert_identical(compiled(weight, 4, 2), weight, 4, 2)


def test_compiled_overflowing_sum_is_not_an_error(compiled):
    weight = torch.full((4, 8), 3e38)  # finite, but a group's |w| sum overflows
    weight[0, 1] = -3e38
    _assert_identical(compiled(weight, 4, 2), weight, 4, 2)


@pytest.mark.parametrize("fn", ["compiled_nxm_mask_and_project", "eager_nxm_mask_and_project",
                                "fused_nxm_mask_and_project"])
def test_errors_match_nxm_mask(fn, request, monkeypatch):
    monkeypatch.setenv("NXMLAB_KERNELS", "0")  # nxm_mask below: the reference path
    if fn == "compiled_nxm_mask_and_project":
        request.getfixturevalue("compiled")
    f = getattr(kernels, fn)
    for bad in (float("nan"), float("inf")):
        weight = torch.randn(8, 8)
        weight[5, 6] = bad
        with pytest.raises(ValueError) as ours:
            f(weight, 4, 2, name="layer")
        with pytest.raises(ValueError) as ref:
            nxm_mask(weight, "4:2", name="layer")
        assert str(ours.value) == str(ref.value)
    for weight, n, m in ((torch.randn(8, 6), 4, 2), (torch.randn(8), 4, 2), (torch.randn(8, 8), 4, 4)):
        with pytest.raises(ValueError) as ours:
            f(weight, n, m)
        with pytest.raises(ValueError) as ref:
            nxm_mask(weight, f"{n}:{m}")
        assert str(ours.value) == str(ref.value)


def test_check_false_skips_the_finite_test():
    weight = torch.randn(8, 8)
    weight[0, 0] = float("nan")
    mask, _ = kernels.eager_nxm_mask_and_project(weight, 4, 2, check=False)
    assert mask.shape == weight.shape


def test_fused_dispatch_and_fallback(monkeypatch):
    weight = _weights(torch.float32)["ties"]
    _assert_identical(kernels.fused_nxm_mask_and_project(weight, 4, 2), weight, 4, 2)  # small: eager

    def broken(n, m):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(kernels, "COMPILE_MIN_NUMEL", 1)
    monkeypatch.setattr(kernels, "_kernel_for", broken)
    kernels.reset_compiled()
    try:
        with pytest.warns(RuntimeWarning, match="torch.compile failed"):
            got = kernels.fused_nxm_mask_and_project(weight, 4, 2)
        _assert_identical(got, weight, 4, 2)
        assert not kernels.compiled_available()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once only
            _assert_identical(kernels.fused_nxm_mask_and_project(weight, 8, 2), weight, 8, 2)
    finally:
        kernels.reset_compiled()
    assert kernels.compiled_available()


def test_integer_and_autograd_inputs():
    weight = torch.randint(-5, 6, (4, 8))
    _assert_identical(kernels.fused_nxm_mask_and_project(weight, 4, 2), weight, 4, 2)
    param = torch.nn.Parameter(torch.randn(4, 8))
    mask, projected = kernels.fused_nxm_mask_and_project(param, 4, 2)
    assert not projected.requires_grad
    _assert_identical((mask, projected), param.detach(), 4, 2)
