"""ADMM: convergence on a toy NxM least-squares problem, gradients, schedule, resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from nxmlab.admm import ADMM
from nxmlab.nxm import is_nxm, nxm_mask, project
from nxmlab.targets import select_targets

from ._tiny import toy_batch, toy_bert


def least_squares(seed: int, out: int = 4, inp: int = 16, n: int = 256):
    """Correlated features, so that magnitude pruning of the LS optimum is suboptimal."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(inp) + 0.6 * torch.randn(inp, inp, generator=g) / inp**0.5
    x = torch.randn(n, inp, generator=g) @ mix
    w_true = torch.randn(out, inp, generator=g)
    y = x @ w_true.T + 0.1 * torch.randn(n, out, generator=g)
    return x, y


def ls_loss(w, x, y):
    return 0.5 * ((x @ w.T - y) ** 2).mean()


@pytest.mark.parametrize("seed", range(4))
def test_admm_converges_on_toy_least_squares(seed):
    x, y = least_squares(seed)
    w_ls = torch.linalg.lstsq(x, y).solution.T
    magnitude_loss = float(ls_loss(project(w_ls, "4:2"), x, y))

    layer = nn.Linear(16, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w_ls)
    admm = ADMM(layer, {"fc": layer}, "4:2", rho=0.05, rho_factor=1.3, rho_max=50.0)
    opt = torch.optim.SGD(layer.parameters(), lr=0.02)
    residuals = []
    for _ in range(40):
        for _ in range(25):
            opt.zero_grad()
            ls_loss(layer.weight, x, y).backward()
            admm.add_penalty_grad()
            opt.step()
        residuals.append(admm.update()["fc"].primal)
    admm.hard_prune()

    assert residuals[-1] < 1e-3 * float(w_ls.norm())
    assert residuals[-1] < residuals[0]
    assert is_nxm(layer.weight, "4:2")
    # no retraining: ADMM's pruned weights beat magnitude-projecting the optimum
    assert float(ls_loss(layer.weight.detach(), x, y)) <= magnitude_loss


def test_fused_penalty_grad_equals_autograd():
    model = toy_bert()
    admm = ADMM(model, select_targets(model), "4:2", rho=0.3)
    for p in admm.params.values():  # move W away from Z, and make U non-zero
        with torch.no_grad():
            p.add_(0.05 * torch.randn_like(p))
    admm.update()

    model.zero_grad()
    loss = model(**toy_batch()).loss
    (loss + admm.penalty_loss()).backward()
    expected = {n: p.grad.clone() for n, p in admm.params.items()}
    assert math.isclose(float(admm.penalty_loss().detach()), admm.penalty(), rel_tol=1e-5)

    model.zero_grad()
    model(**toy_batch()).loss.backward()
    admm.add_penalty_grad()
    for name, p in admm.params.items():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-7)


def test_penalty_grad_is_added_once_per_step_under_accumulation():
    model = toy_bert()
    admm = ADMM(model, select_targets(model), "4:2", rho=0.5)
    with torch.no_grad():
        for p in admm.params.values():
            p.mul_(1.1)
    batch = toy_batch(batch=8)

    model.zero_grad()
    model(**batch).loss.backward()
    admm.add_penalty_grad()
    full = {n: p.grad.clone() for n, p in admm.params.items()}

    model.zero_grad()
    for half in (slice(0, 4), slice(4, 8)):  # two micro-batches, loss scaled by 1/2
        (model(**{k: v[half] for k, v in batch.items()}).loss / 2).backward()
    admm.add_penalty_grad()
    for name, p in admm.params.items():
        torch.testing.assert_close(p.grad, full[name], rtol=1e-4, atol=1e-6)


def test_update_diagnostics_on_a_known_case():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    admm = ADMM(layer, {"fc": layer}, "4:2", rho=0.5)
    assert admm.Z["fc"].tolist() == [[4.0, 3.0, 0.0, 0.0]]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 1.0, 2.0, 0.0]]))  # mask moves from pos 1 to pos 2
    d = admm.update()["fc"]
    assert admm.Z["fc"].tolist() == [[4.0, 0.0, 2.0, 0.0]]
    assert admm.U["fc"].tolist() == [[0.0, 1.0, 0.0, 0.0]]
    assert d.flips == 2
    assert d.primal == pytest.approx(1.0)
    assert d.dual == pytest.approx(0.5 * math.sqrt(9 + 4))
    assert d.rel_dist == pytest.approx(1.0 / math.sqrt(21))
    assert d.near_zero == pytest.approx(0.25)
    assert d.penalty == pytest.approx(0.5 * 0.5 * 4.0)  # W - Z + U = [0, 2, 0, 0]
    measured = admm.measure()["fc"]  # same numbers, nothing changed
    for key in ("primal", "rel_dist", "near_zero", "penalty"):
        assert measured[key] == pytest.approx(getattr(d, key))
    assert admm.num_updates == 1


def test_rho_schedule_multiplies_up_to_cap_and_rescales_u():
    layer = nn.Linear(8, 2, bias=False)
    admm = ADMM(layer, {"fc": layer}, "4:2", rho=1e-3, rho_factor=2.0, rho_max=4e-3)
    rhos = []
    for _ in range(4):
        with torch.no_grad():
            layer.weight.add_(0.1 * torch.randn_like(layer.weight))
        v = layer.weight.detach() + admm.U["fc"]
        unscaled_dual = admm.rho * (v - project(v, "4:2"))  # rho * U_new before any rescale
        admm.update()
        rhos.append(admm.rho)
        torch.testing.assert_close(admm.rho * admm.U["fc"], unscaled_dual)
    assert rhos == pytest.approx([2e-3, 4e-3, 4e-3, 4e-3])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"rho": 0.0}, "rho must be a finite number > 0"), ({"rho": -1.0}, "rho must"),
     ({"rho": float("nan")}, "rho must"), ({"rho": float("inf")}, "rho must"),
     ({"rho": "abc"}, "rho must be a positive number"), ({"rho_factor": 0.0}, "rho_factor"),
     ({"rho": 1e-2, "rho_max": 1e-3}, "rho_max")],
)
def test_bad_rho(kwargs, fragment):
    layer = nn.Linear(8, 2)
    with pytest.raises(ValueError, match=fragment):
        ADMM(layer, {"fc": layer}, "4:2", **kwargs)


def test_bad_targets_and_weights():
    model = toy_bert(hidden=12)
    with pytest.raises(ValueError, match="empty"):
        ADMM(model, {}, "4:2")
    with pytest.raises(ValueError, match="not found"):
        ADMM(model, ["no.such.layer"], "4:2")
    with pytest.raises(ValueError, match=r"query.*multiple of n=8.*\(12, 12\)"):
        ADMM(model, None, "8:2")
    layer = nn.Linear(8, 2)
    admm = ADMM(layer, {"fc": layer}, "4:2")
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="fc.*NaN"):
        admm.update()


def _train(model, admm, opt, steps, start=0):
    for step in range(start, steps):
        opt.zero_grad()
        model(**toy_batch(seed=step)).loss.backward()
        admm.add_penalty_grad()
        opt.step()
        if (step + 1) % 3 == 0:
            admm.update()


def test_state_dict_round_trips_bit_exactly_and_resume_matches():
    torch.use_deterministic_algorithms(True)
    try:
        model = toy_bert()
        model.train()
        admm = ADMM(model, select_targets(model), "4:2", rho=0.05, rho_factor=1.5, rho_max=0.2)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
        _train(model, admm, opt, 7)

        # snapshot mid-run (between two Z/U updates), as a checkpoint would
        snap = copy.deepcopy((model.state_dict(), opt.state_dict(), admm.state_dict(), torch.get_rng_state()))
        _train(model, admm, opt, 14, start=7)

        resumed = toy_bert(seed=123)  # different init: everything must come from the snapshot
        resumed.train()
        resumed.load_state_dict(snap[0])
        admm2 = ADMM(resumed, select_targets(resumed), "4:2", rho=1.0)
        admm2.load_state_dict(snap[2])
        state = admm2.state_dict()
        for key in ("Z", "U", "masks"):
            for name, tensor in snap[2][key].items():
                assert torch.equal(state[key][name], tensor)
        assert admm2.rho == snap[2]["rho"] and admm2.num_updates == snap[2]["num_updates"]
        opt2 = torch.optim.AdamW(resumed.parameters(), lr=1e-2, weight_decay=0.01)
        opt2.load_state_dict(snap[1])
        torch.set_rng_state(snap[3])  # dropout draws continue where they were
        _train(resumed, admm2, opt2, 14, start=7)

        for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
            assert torch.equal(a, b), name
        for name in admm.Z:
            assert torch.equal(admm.Z[name], admm2.Z[name])
            assert torch.equal(admm.U[name], admm2.U[name])
        assert admm.rho == admm2.rho
    finally:
        torch.use_deterministic_algorithms(False)


def test_load_state_dict_rejects_other_pattern_or_targets():
    model = toy_bert()
    admm = ADMM(model, select_targets(model), "4:2")
    other = ADMM(model, select_targets(model, components=["query"]), "4:2")
    with pytest.raises(ValueError, match="targets differ"):
        other.load_state_dict(admm.state_dict())
    with pytest.raises(ValueError, match="pattern"):
        ADMM(model, select_targets(model), "8:2").load_state_dict(admm.state_dict())


def test_hard_prune_projects_every_target_and_returns_masks():
    model = toy_bert()
    targets = select_targets(model)
    admm = ADMM(model, targets, "8:2")
    before = {n: m.weight.detach().clone() for n, m in targets.items()}
    masks = admm.hard_prune()
    for name, module in targets.items():
        assert is_nxm(module.weight, "8:2")
        assert torch.equal(masks[name], nxm_mask(before[name], "8:2"))
        assert torch.equal(module.weight, project(before[name], "8:2"))
    assert torch.equal(model.classifier.weight, toy_bert().classifier.weight)  # non-targets untouched
