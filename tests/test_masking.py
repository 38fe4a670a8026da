import pytest
import torch

from nxmlab.masking import apply_masks, magnitude_nxm_masks, mask_sparsity, unstructured_masks
from nxmlab.nxm import is_nxm
from nxmlab.targets import select_targets

from ._tiny import toy_batch, toy_bert


def test_masks_stay_exactly_zero_through_50_adamw_steps_with_weight_decay():
    model = toy_bert()
    model.train()
    targets = select_targets(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(5):  # dense warm-up: AdamW moments are non-zero everywhere
        opt.zero_grad()
        model(**toy_batch(seed=step)).loss.backward()
        opt.step()
    masks = magnitude_nxm_masks(targets, "4:2")
    apply_masks(model, masks, optimizer=opt)
    start = {n: m.weight.detach().clone() for n, m in targets.items()}
    for step in range(50):
        opt.zero_grad()
        model(**toy_batch(seed=100 + step)).loss.backward()
        for name, module in targets.items():  # pruned positions receive no gradient
            assert not module.weight.grad[~masks[name]].any()
        opt.step()
    for name, module in targets.items():
        w = module.weight.detach()
        assert torch.all(w[~masks[name]] == 0), name
        assert is_nxm(w, "4:2")
        assert not torch.equal(w[masks[name]], start[name][masks[name]])  # kept weights trained


def test_without_reapplying_momentum_would_revive_pruned_weights():
    """The re-masking after each step is load-bearing, not decoration."""
    model = toy_bert()
    model.train()
    targets = select_targets(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(5):
        opt.zero_grad()
        model(**toy_batch(seed=step)).loss.backward()
        opt.step()
    masks = magnitude_nxm_masks(targets, "4:2")
    fixed = apply_masks(model, masks)  # hooks only, no optimizer attached
    opt.zero_grad()
    model(**toy_batch(seed=9)).loss.backward()
    opt.step()
    revived = sum(int((m.weight.detach()[~masks[n]] != 0).sum()) for n, m in targets.items())
    assert revived > 0
    fixed.enforce()
    assert all(is_nxm(m.weight, "4:2") for m in targets.values())
    fixed.remove()


def test_apply_masks_validates():
    model = toy_bert()
    with pytest.raises(ValueError, match="not in the model"):
        apply_masks(model, {"nope": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="mask shape"):
        apply_masks(model, {"bert.encoder.layer.0.attention.self.query": torch.ones(2, 2, dtype=torch.bool)})


def test_magnitude_masks_are_nxm():
    targets = select_targets(toy_bert())
    for pattern, density in (("4:2", 0.5), ("8:2", 0.25), ("4:1", 0.25)):
        masks = magnitude_nxm_masks(targets, pattern)
        for name, mask in masks.items():
            assert is_nxm(targets[name].weight.detach() * mask, pattern)
        assert all(s == pytest.approx(1 - density) for s in mask_sparsity(masks).values())


def test_unstructured_masks_same_density():
    targets = select_targets(toy_bert())
    per_layer = unstructured_masks(targets, 0.5)
    for name, mask in per_layer.items():
        assert int(mask.sum()) == mask.numel() // 2
        w = targets[name].weight.detach().abs()
        assert float(w[mask].min()) >= float(w[~mask].max())  # magnitude order
    global_ = unstructured_masks(targets, 0.25, scope="global")
    total = sum(m.numel() for m in global_.values())
    assert sum(int(m.sum()) for m in global_.values()) == round(0.25 * total)
    with pytest.raises(ValueError, match="density"):
        unstructured_masks(targets, 0.0)
    with pytest.raises(ValueError, match="scope"):
        unstructured_masks(targets, 0.5, scope="row")
