"""Property tests for NxM patterns, masks, the projection and compression."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nxmlab.nxm import NxM, compress, decompress, is_nxm, nxm_mask, pack_mask, project, unpack_mask

PATTERNS = [NxM(4, 2), NxM(4, 1), NxM(8, 2), NxM(8, 4)]


@st.composite
def weights(draw, max_rows=6, max_groups=5, ties=False):
    """A random pattern and a 2-D float32 weight whose width it divides."""
    pattern = draw(st.sampled_from(PATTERNS))
    rows = draw(st.integers(1, max_rows))
    groups = draw(st.integers(1, max_groups))
    if ties:  # few distinct magnitudes: many exact ties, signs included
        elements = st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    else:
        elements = st.floats(-100, 100, width=32, allow_nan=False, allow_infinity=False)
    array = draw(arrays(np.float32, (rows, groups * pattern.n), elements=elements))
    return pattern, torch.from_numpy(array)


def reference_mask(w: torch.Tensor, pattern: NxM) -> torch.Tensor:
    """Pure-Python oracle: in each group keep the m largest |w|, lower index wins ties."""
    out = torch.zeros(w.shape, dtype=torch.bool)
    for r in range(w.shape[0]):
        for g in range(w.shape[1] // pattern.n):
            group = [abs(float(w[r, g * pattern.n + i])) for i in range(pattern.n)]
            order = sorted(range(pattern.n), key=lambda i: (-group[i], i))
            for i in order[: pattern.m]:
                out[r, g * pattern.n + i] = True
    return out


# ------------------------------------------------------------------ patterns
def test_pattern_repr_and_parse():
    p = NxM.parse("4:2")
    assert p == NxM(4, 2)
    assert repr(p) == "4:2 (keep 2 of every 4)"
    assert str(p) == "4:2"
    assert NxM.parse(" 8x2 ") == NxM(8, 2)
    assert NxM.parse(p) is p
    assert p.density == 0.5 and NxM(8, 2).sparsity == 0.75


@pytest.mark.parametrize(
    "spec, fragment",
    [("4:4", "1 <= m < n"), ("4:0", "1 <= m < n"), ("2:3", "1 <= m < n"), ("4-2", "malformed"), ("", "malformed"),
     ("a:b", "malformed"), ("4:2:1", "malformed")],
)
def test_bad_pattern_strings(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        NxM.parse(spec)


def test_bad_pattern_values():
    with pytest.raises(ValueError, match="1 <= m < n"):
        NxM(4, 4)
    with pytest.raises(ValueError, match="1 <= m < n"):
        NxM(4, 0)
    with pytest.raises(ValueError, match="must be an int"):
        NxM(4.0, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "weight, fragment",
    [
        (torch.randn(3, 6), r"input width .* multiple of n=4.*\(3, 6\)"),
        (torch.randn(8), r"2-D.*\(8,\)"),
        (torch.randn(2, 4, 4), r"2-D.*\(2, 4, 4\)"),
        (torch.tensor([[1.0, float("nan"), 0.0, 1.0]]), "NaN or Inf"),
        (torch.tensor([[1.0, float("inf"), 0.0, 1.0]]), "NaN or Inf"),
    ],
)
def test_bad_weights_name_the_problem_and_the_layer(weight, fragment):
    for fn in (nxm_mask, project, compress):
        with pytest.raises(ValueError, match=fragment) as info:
            fn(weight, "4:2", name="encoder.layer.0.output.dense")
        assert "encoder.layer.0.output.dense" in str(info.value)


# ------------------------------------------------------------ projection
@settings(max_examples=150, deadline=None)
@given(weights())
def test_exactly_m_kept_per_group(case):
    pattern, w = case
    mask = nxm_mask(w, pattern)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert torch.all(mask.reshape(-1, pattern.n).sum(1) == pattern.m)
    assert is_nxm(project(w, pattern), pattern)


@settings(max_examples=150, deadline=None)
@given(weights())
def test_projection_is_idempotent(case):
    pattern, w = case
    once = project(w, pattern)
    assert torch.equal(project(once, pattern), once)


@settings(max_examples=60, deadline=None)
@given(weights(max_rows=2, max_groups=2))
def test_projection_is_optimal_by_brute_force(case):
    pattern, w = case
    groups = w.numel() // pattern.n
    supports = list(itertools.combinations(range(pattern.n), pattern.m))
    if len(supports) ** groups > 5000:
        w, groups = w[:1, : pattern.n], 1  # 8:4 has 70 supports a group: one group
    best = math.inf
    flat = w.reshape(-1, pattern.n).double()
    for choice in itertools.product(supports, repeat=groups):
        keep = torch.zeros_like(flat, dtype=torch.bool)
        for g, support in enumerate(choice):
            keep[g, list(support)] = True
        best = min(best, float(flat.masked_fill(keep, 0).pow(2).sum()))
    ours = float((w.double() - project(w, pattern).double()).pow(2).sum())
    assert ours <= best * (1 + 1e-12) + 1e-12


@settings(max_examples=150, deadline=None)
@given(weights(ties=True))
def test_ties_are_broken_deterministically_lower_index_first(case):
    pattern, w = case
    mask = nxm_mask(w, pattern)
    assert torch.equal(mask, reference_mask(w, pattern))
    assert torch.equal(mask, nxm_mask(w.clone(), pattern))


def test_tie_break_example():
    w = torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    assert nxm_mask(w, "4:2").tolist() == [[True, True, False, False, True, True, False, False]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@settings(max_examples=30, deadline=None)
@given(case=weights())
def test_low_precision_matches_float32(dtype, case):
    pattern, w = case
    low = w.to(dtype)
    assert torch.equal(nxm_mask(low, pattern), nxm_mask(low.float(), pattern))
    assert project(low, pattern).dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    w = torch.randn(64, 256)
    for pattern in PATTERNS:
        assert torch.equal(nxm_mask(w.cuda(), pattern).cpu(), nxm_mask(w, pattern))


def test_is_nxm():
    p = NxM(4, 2)
    assert is_nxm(torch.tensor([[1.0, 0.0, 2.0, 0.0]]), p)
    assert is_nxm(torch.zeros(2, 8), p)
    assert not is_nxm(torch.tensor([[1.0, 1.0, 2.0, 0.0]]), p)
    assert not is_nxm(torch.ones(2, 6), p)  # width not a multiple of n
    assert not is_nxm(torch.ones(8), p)


# ------------------------------------------------------------ compression
@settings(max_examples=120, deadline=None)
@given(weights(ties=True))
def test_compress_round_trips_exactly(case):
    pattern, w = case
    sparse = project(w, pattern)
    values, indices = compress(sparse, pattern)
    rows, width = w.shape
    assert values.shape == indices.shape == (rows, width * pattern.m // pattern.n)
    assert indices.dtype == torch.uint8
    assert int(indices.max()) < pattern.n
    assert torch.equal(decompress(values, indices, pattern), sparse)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compress_low_precision(dtype):
    w = project(torch.randn(16, 32), "4:2").to(dtype)
    values, indices = compress(w, "4:2")
    assert values.dtype == dtype
    assert torch.equal(decompress(values, indices, "4:2"), w)


def test_compress_layout_matches_2_4_description():
    w = torch.tensor([[0.0, 3.0, 0.0, -1.0, 5.0, 0.0, 6.0, 0.0]])
    values, indices = compress(w, "4:2")
    assert values.tolist() == [[3.0, -1.0, 5.0, 6.0]]
    assert indices.tolist() == [[1, 3, 0, 2]]


def test_compress_rejects_dense_weight():
    with pytest.raises(ValueError, match="not 4:2"):
        compress(torch.ones(2, 8), "4:2", name="fc")
    with pytest.raises(ValueError, match="not a compressed"):
        decompress(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.uint8), "4:2")


@settings(max_examples=150, deadline=None)
@given(weights(ties=True), st.data())
def test_every_compressed_pair_round_trips_and_every_corrupted_index_array_is_refused(case, data):
    """compress -> decompress is exact, also with the (value, index) pairs of a group in any
    order; an index out of 0..n-1 or repeated inside a group is refused naming the tensor."""
    pattern, w = case
    sparse = project(w, pattern)
    values, indices = compress(sparse, pattern)
    assert torch.equal(decompress(values, indices, pattern), sparse)
    # any order of a group's (value, index) pairs is a valid encoding of the same weight
    order = torch.stack([torch.randperm(pattern.m, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
                         for _ in range(indices.numel() // pattern.m)])
    shuffled = [t.reshape(-1, pattern.m).gather(1, order.to(torch.int64)).reshape(t.shape) for t in (values, indices)]
    assert torch.equal(decompress(*shuffled, pattern), sparse)
    # corrupt one group: an index out of range, or (m > 1) one index repeated
    flat = indices.reshape(-1, pattern.m).clone()
    group = data.draw(st.integers(0, flat.shape[0] - 1))
    kinds = ["range"] + (["repeat"] if pattern.m > 1 else [])
    kind = data.draw(st.sampled_from(kinds))
    if kind == "range":
        flat[group, data.draw(st.integers(0, pattern.m - 1))] = data.draw(st.integers(pattern.n, 255))
        message = f"fc: indices must be positions 0..{pattern.n - 1}"
    else:
        i, j = data.draw(st.lists(st.integers(0, pattern.m - 1), min_size=2, max_size=2, unique=True))
        flat[group, i] = flat[group, j]
        message = "fc: the .* indices of a group must be distinct"
    with pytest.raises(ValueError, match=message):
        decompress(values, flat.reshape(indices.shape), pattern, "fc")
    negative = indices.to(torch.int16).reshape(-1, pattern.m).clone()
    negative[group, 0] = -1
    with pytest.raises(ValueError, match="fc: indices must be positions"):
        decompress(values, negative.reshape(indices.shape), pattern, "fc")


def test_decompress_checks_types_and_shapes():
    values, indices = compress(project(torch.randn(2, 8), "4:2"), "4:2")
    with pytest.raises(TypeError, match="fc: indices: unsupported dtype torch.float32"):
        decompress(values, indices.float(), "4:2", "fc")
    with pytest.raises(TypeError, match="fc: values: expected a torch.Tensor, got numpy.ndarray"):
        decompress(values.numpy(), indices, "4:2", "fc")
    with pytest.raises(ValueError, match=r"fc: values \(2, 4\) and indices \(2, 3\) are not a compressed"):
        decompress(values, indices[:, :3], "4:2", "fc")


def test_pack_mask_round_trip():
    mask = torch.rand(37, 13) > 0.5
    packed, shape = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(mask.numel() / 8)
    assert torch.equal(unpack_mask(packed, shape), mask)
