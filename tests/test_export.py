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
