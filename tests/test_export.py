import json

import pytest
import torch

from nxmlab.admm import ADMM
from nxmlab.export import compressed_state_dict, decompress_state_dict, semi_structured_supported, to_semi_structured
from nxmlab.targets import select_targets

from ._tiny import toy_batch, toy_bert


def test_compressed_checkpoint_round_trips_and_loads():
    model = toy_bert(hidden=64)
    targets = select_targets(model)
    ADMM(model, targets, "4:2").hard_prune()
    state = compressed_state_dict(model, targets, "4:2")
    name = "bert.encoder.layer.0.intermediate.dense"
    assert f"{name}.weight" not in state
    assert state[f"{name}.weight_values"].shape == (256, 32)
    restored = decompress_state_dict(state, "4:2")
    for key, value in model.state_dict().items():
        assert torch.equal(restored[key], value), key
    fresh = toy_bert(hidden=64, seed=7)
    fresh.load_state_dict(restored)
    batch = toy_batch()
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, model(**batch).logits)


def test_semi_structured_needs_cuda():
    if semi_structured_supported():
        pytest.skip("CUDA present: covered by the GPU test")
    model = toy_bert(hidden=64)
    with pytest.raises(RuntimeError, match="compute capability"):
        to_semi_structured(model, select_targets(model))


@pytest.mark.gpu
@pytest.mark.skipif(not semi_structured_supported(), reason="needs a CUDA GPU with compute capability >= 8.0")
def test_semi_structured_matches_dense_on_gpu():
    model = toy_bert(hidden=128).cuda().half()
    targets = select_targets(model)
    ADMM(model, targets, "4:2").hard_prune()
    x = torch.randn(128, 128, device="cuda", dtype=torch.half)
    layer = targets["bert.encoder.layer.0.attention.self.query"]
    dense = layer(x)
    converted = to_semi_structured(model, targets)
    assert converted
    torch.testing.assert_close(layer(x), dense, rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------ Hugging Face folders
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

from nxmlab.export import (  # noqa: E402
    COMPRESSED_WEIGHTS,
    METADATA_KEY,
    bitmask_compress,
    bitmask_decompress,
    load_sparse,
    save_sparse,
    verify_sparse,
)
from nxmlab.nxm import is_nxm  # noqa: E402


def _ct_decompress(parts):
    """compressed-tensors 0.14.0.1's bitmask decompression, written out (numpy, little bit order)."""
    shape = [int(s) for s in parts["shape"].flatten()]
    mask = np.unpackbits(parts["bitmask"].numpy(), axis=-1, count=shape[-1], bitorder="little").reshape(shape)
    dense = torch.zeros(shape, dtype=parts["compressed"].dtype)
    dense[torch.from_numpy(mask.astype(bool))] = parts["compressed"].flatten()
    return dense


@pytest.mark.parametrize("pattern, dtype", [("4:2", torch.float16), ("4:2", torch.float32), ("8:2", torch.bfloat16)])
def test_bitmask_layout_is_compressed_tensors_and_exact(pattern, dtype):
    model = toy_bert(hidden=64)
    targets = select_targets(model)
    ADMM(model, targets, pattern).hard_prune()
    weight = targets["bert.encoder.layer.0.intermediate.dense"].weight.detach().to(dtype)  # [256, 64]
    weight[0, :4] = torch.tensor([0.0, 0.5, 0.0, 0.0])  # a group that keeps fewer than m
    parts = bitmask_compress(weight, pattern)
    if pattern == "4:2":  # sparse-24-bitmask: two values per group of four, shape as a column
        assert set(parts) == {"shape", "compressed", "bitmask"}
        assert parts["compressed"].shape == (256, 32) and parts["shape"].tolist() == [[256], [64]]
        assert int(parts["bitmask"][0, 0]) & 0xF == 0b0011  # positions 0 and 1 (bit 0 first): the zero at 0 is kept
    else:  # sparse-bitmask: the non-zeros and where each row starts
        assert set(parts) == {"shape", "compressed", "bitmask", "row_offsets"}
        assert parts["compressed"].numel() == int((weight != 0).sum())
        assert parts["row_offsets"][1] == int((weight[0] != 0).sum())
    assert parts["bitmask"].shape == (256, 8) and parts["bitmask"].dtype == torch.uint8
    assert parts["compressed"].dtype == dtype
    assert torch.equal(bitmask_decompress(parts), weight)
    assert torch.equal(_ct_decompress(parts), weight)
    with pytest.raises(ValueError, match="not 4:2"):
        bitmask_compress(torch.ones(4, 8), "4:2")


def test_sparse_folder_round_trips_and_a_plain_load_fails(tmp_path):
    model = toy_bert(hidden=64).half()
    targets = select_targets(model)
    ADMM(model, targets, "4:2").hard_prune()
    dense_dir, packed_dir = tmp_path / "dense", tmp_path / "packed"
    dense = save_sparse(model, targets, "4:2", dense_dir, metadata={"method": "admm"})
    packed = save_sparse(model, targets, "4:2", packed_dir, compressed=True, metadata={"method": "admm"})
    assert dense["targets_stored"] == dense["targets_dense"]
    assert packed["targets_stored"] <= 0.6 * packed["targets_dense"]  # fp16: 1/2 values + 1/16 bitmask
    for folder in (dense_dir, packed_dir):
        loaded = load_sparse(folder)
        state = model.state_dict()
        assert set(loaded.state_dict()) == set(state)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
        assert verify_sparse(folder) == []
    config = json.loads((packed_dir / "config.json").read_text())
    assert config[METADATA_KEY]["pattern"] == "4:2 (keep 2 of every 4)" and config[METADATA_KEY]["nvidia"] == "2:4"
    sparsity = config["quantization_config"]["sparsity_config"]
    assert sparsity["format"] == "sparse-24-bitmask" and sparsity["targets"] == sorted(targets)
    assert is_nxm(AutoModelForSequenceClassification.from_pretrained(dense_dir).bert.encoder.layer[1].output.dense.weight,
                  "4:2")
    assert (packed_dir / COMPRESSED_WEIGHTS).is_file()
    with pytest.raises((OSError, ImportError)):  # never random target weights
        AutoModelForSequenceClassification.from_pretrained(packed_dir)
    try:  # the configuration is compressed-tensors' own schema
        from compressed_tensors.config import SparsityCompressionConfig
    except ImportError:
        return
    parsed = SparsityCompressionConfig.load_from_registry(sparsity["format"], **sparsity)
    assert parsed.model_dump() == sparsity


def test_verify_sparse_finds_a_broken_target(tmp_path):
    from safetensors.torch import load_file, save_file

    model = toy_bert(hidden=64)
    targets = select_targets(model)
    ADMM(model, targets, "4:2").hard_prune()
    save_sparse(model, targets, "4:2", tmp_path, metadata={"components": ["query", "key", "value", "attn_out",
                                                                          "ffn1", "ffn2"]})
    state = load_file(tmp_path / "model.safetensors")
    state["bert.encoder.layer.1.attention.self.key.weight"] = torch.ones_like(state["bert.encoder.layer.1.attention.self.key.weight"])
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "config.json").read_text())
    config[METADATA_KEY]["targets"].remove("bert.encoder.layer.0.output.dense")
    (tmp_path / "config.json").write_text(json.dumps(config))
    problems = verify_sparse(tmp_path)
    assert len(problems) == 2
    assert "layer.1.attention.self.key: weight is not 4:2" in problems[0]
    assert "1 target(s)" in problems[1] and "layer.0.output.dense" in problems[1]
