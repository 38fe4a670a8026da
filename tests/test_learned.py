"""Learned n:m masks (MaskLLM, issue #29): the method layer on toy problems, the registry entry and
its identity, and end-to-end runs of ``nxmlab train --method learned`` on the `tiny` model."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from nxmlab import LearnedMasks, MaskSchedule, candidate_masks, gumbel_soft_mask, kept_weight_norm, prior_gates
from nxmlab.learned import GATE
from nxmlab.nxm import NxM, is_nxm, nxm_mask
from nxmlab.study.train.config import NxMTrainingArguments, RunConfig, RunSpec
from nxmlab.study.train.methods import LEARNED, get_method
from nxmlab.targets import select_targets

from ._tiny import toy_batch, toy_bert

PATTERNS = ["4:2", "4:1", "8:4", "8:2"]


def _linear(out_f: int = 6, in_f: int = 16, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f)


def _random_nxm(shape: tuple[int, int], pattern: str, seed: int = 0) -> torch.Tensor:
    """An exactly n:m mask that is not the magnitude mask: random kept positions in every group."""
    p = NxM.parse(pattern)
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(shape, generator=g)
    return nxm_mask(scores, p)


def _group_sums(mask: torch.Tensor, n: int) -> torch.Tensor:
    return mask.reshape(mask.shape[0], -1, n).float().sum(-1)


# ------------------------------------------------------------------------ method layer
@pytest.mark.parametrize("pattern", ["4:2", "4:1", "4:3", "2:1", "8:4", "8:2", "6:3"])
def test_candidate_table_holds_every_nxm_group_mask_once(pattern):
    p = NxM.parse(pattern)
    table = candidate_masks(p)
    assert table.dtype == torch.bool and table.shape == (math.comb(p.n, p.m), p.n)
    assert bool((table.sum(1) == p.m).all())
    assert len({tuple(row.tolist()) for row in table}) == len(table)
    assert table[0].tolist() == [True] * p.m + [False] * (p.n - p.m)  # ties keep the lower positions


@pytest.mark.parametrize("pattern", PATTERNS)
def test_sampled_soft_masks_sum_to_m_in_every_group(pattern):
    p = NxM.parse(pattern)
    layer = _linear(in_f=16)
    learner = LearnedMasks({"l": layer}, p, generator=torch.Generator().manual_seed(0))
    for progress in (0.0, 0.3, 1.0):
        learner.set_progress(progress)
        soft = learner.soft_mask("l")
        assert soft.shape == layer.weight.shape and soft.requires_grad
        assert float(soft.detach().min()) >= 0 and float(soft.detach().max()) <= 1 + 1e-6
        assert torch.allclose(_group_sums(soft.detach(), p.n), torch.full((6, 16 // p.n), float(p.m)), atol=1e-5)
    # the pure function: any logits, any temperature
    logits = torch.randn(3, 5, math.comb(p.n, p.m)) * 7
    soft = gumbel_soft_mask(logits, candidate_masks(p), tau=0.3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(soft.sum(-1), torch.full((3, 5), float(p.m)), atol=1e-5)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_argmax_mask_is_exactly_nxm_whatever_the_gates(pattern):
    p = NxM.parse(pattern)
    layer = _linear(in_f=32)
    learner = LearnedMasks({"l": layer}, p)
    with torch.no_grad():
        learner.gates["l"].normal_(0, 1)  # as if trained
    mask = learner.hard_masks()["l"]
    assert mask.dtype == torch.bool and mask.shape == layer.weight.shape
    assert bool((_group_sums(mask, p.n) == p.m).all())
    assert is_nxm(layer.weight.detach() * mask, p)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_prior_initialisation_reproduces_the_prior_as_the_argmax(pattern):
    p = NxM.parse(pattern)
    layer = _linear(in_f=32)
    default = LearnedMasks({"l": layer}, p)  # prior: magnitude of the weights
    assert torch.equal(default.hard_masks()["l"], nxm_mask(layer.weight, p))
    assert default.prior_distance() == 0.0
    prior = _random_nxm(tuple(layer.weight.shape), pattern, seed=3)
    assert not torch.equal(prior, nxm_mask(layer.weight, p))
    for strength in (0.5, 3.0):
        learner = LearnedMasks({"l": layer}, p, prior={"l": prior}, prior_strength=strength, lr_mult=10.0)
        assert torch.equal(learner.hard_masks()["l"], prior)
    gates = prior_gates(prior, p, strength=3.0)
    top = gates.max(-1).values
    runner_up = gates.topk(2, dim=-1).values[..., 1]
    assert torch.allclose(top - runner_up, torch.full_like(top, 0.03))  # the prior's lead over a neighbour


def test_a_prior_that_is_not_exactly_nxm_is_refused():
    layer = _linear(in_f=16)
    sparse = torch.zeros_like(layer.weight, dtype=torch.bool)
    sparse[:, 0] = True
    with pytest.raises(ValueError, match="exactly m=2"):
        LearnedMasks({"l": layer}, "4:2", prior={"l": sparse})
    with pytest.raises(ValueError, match="no mask for target"):
        LearnedMasks({"l": layer}, "4:2", prior={})
    with pytest.raises(ValueError, match="12870 candidate masks"):
        LearnedMasks({"l": _linear(in_f=16)}, "16:8")


def test_schedules_are_linear_and_clamped():
    schedule = MaskSchedule()
    assert schedule.at(0.0) == (4.0, 100.0, 1e-5)
    assert schedule.at(1.0) == pytest.approx((0.05, 500.0, 0.0))
    assert schedule.at(0.5) == pytest.approx((2.025, 300.0, 5e-6))
    assert schedule.at(2.0) == schedule.at(1.0) and schedule.at(-1.0) == schedule.at(0.0)
    for bad in ({"tau": (4.0, 0.0)}, {"scale": (1.0,)}, {"reg": -1.0}, {"tau": (float("nan"), 1.0)}):
        with pytest.raises(ValueError):
            MaskSchedule(**bad)


@pytest.mark.parametrize("grad_scale", [1.0, 0.5])
def test_regulariser_gradient_is_that_of_minus_lambda_times_the_kept_weight_norm(grad_scale):
    """The hook's gradient equals autograd's for L - lambda(t) * ||W * M~||^2 (W detached),
    with the same Gumbel sample; ``grad_scale`` weights it (gradient accumulation)."""
    lam, progress = 0.5, 0.25
    layer = _linear(out_f=4, in_f=8)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    hooked = LearnedMasks({"l": layer}, "4:2", schedule=MaskSchedule(reg=lam), generator=torch.Generator().manual_seed(7))
    hooked.set_progress(progress)
    hooked.grad_scale = grad_scale
    hooked.attach()
    layer.train()
    layer(x).pow(2).sum().backward()
    hooked.remove()
    plain = LearnedMasks({"l": layer}, "4:2", schedule=MaskSchedule(reg=0.0), generator=torch.Generator().manual_seed(7))
    plain.set_progress(progress)
    soft = plain.soft_mask("l")
    loss = F.linear(x, layer.weight * soft, layer.bias).pow(2).sum()
    loss = loss - grad_scale * lam * (1 - progress) * kept_weight_norm(layer.weight, soft)
    loss.backward()
    assert plain.gates["l"].grad.abs().max() > 0
    assert torch.allclose(hooked.gates["l"].grad, plain.gates["l"].grad, rtol=1e-4, atol=1e-9)
    # the sign: a descent step on the regulariser alone (a zero task loss) keeps more weight norm
    alone = LearnedMasks({"l": layer}, "4:2", schedule=MaskSchedule(reg=1.0), prior={"l": _random_nxm((4, 8), "4:2")},
                         generator=torch.Generator().manual_seed(5))
    alone.attach()
    (layer(x) * 0).sum().backward()
    alone.remove()

    @torch.no_grad()
    def kept_norm() -> float:
        alone.generator.manual_seed(11)
        return float(kept_weight_norm(layer.weight, alone.soft_mask("l")))

    before = kept_norm()
    with torch.no_grad():
        alone.gates["l"] -= 1e-3 * alone.gates["l"].grad
    assert kept_norm() > before


def test_attach_freeze_eval_and_remove_restore_the_model():
    model = toy_bert()
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # frozen before: stays frozen after
    keys = list(model.state_dict())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    targets = select_targets(model, pattern="4:2")
    batch = toy_batch()
    with torch.no_grad():
        reference = model(**batch).logits
    learner = LearnedMasks(targets, "4:2", lr_mult=10.0)
    learner.attach(model, freeze_weights=True)
    assert learner.attached
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"{n}.{GATE}" for n in targets]
    with pytest.raises(ValueError, match="already replaced"):
        learner.attach(model)
    # eval mode: the forward uses the hard (prior) masks
    masked = toy_bert()
    with torch.no_grad():
        for name, module in select_targets(masked).items():
            module.weight.mul_(learner.hard_masks()[name])
        assert torch.allclose(model.eval()(**batch).logits, masked(**batch).logits, atol=1e-6)
    # training mode: gradients reach the gates only
    model.train()
    model(**batch).loss.backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in learner.parameters())
    assert all(p.grad is None for n, p in model.named_parameters() if GATE not in n)
    learner.remove()
    assert not learner.attached
    assert list(model.state_dict()) == keys
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    with torch.no_grad():
        assert torch.equal(model.eval()(**batch).logits, reference)  # the weights were never changed
    learner.remove()  # idempotent


def test_lr_mult_moves_the_gates_that_much_faster_under_adam():
    layer = _linear(out_f=4, in_f=8)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    moved = {}
    for mult in (1.0, 10.0):
        learner = LearnedMasks({"l": layer}, "4:2", lr_mult=mult, generator=torch.Generator().manual_seed(3))
        start = learner.gates["l"].detach() * mult
        learner.attach(freeze_weights=True)
        layer.train()
        optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
        (layer(x) - x.sum(1, keepdim=True)).pow(2).mean().backward()
        optimizer.step()
        learner.remove()
        moved[mult] = learner.gates["l"].detach() * mult - start
    assert moved[1.0].abs().max() > 0
    assert torch.allclose(moved[10.0], 10 * moved[1.0], rtol=1e-3, atol=1e-9)


def test_learned_mask_beats_the_magnitude_prior_when_the_loss_says_so():
    """A Linear layer whose large weights sit on inputs that are almost always zero: the magnitude
    mask (the prior) keeps them and loses the output; the learned mask (weights frozen) keeps
    the small weights of the live inputs and reaches a far lower loss."""
    torch.manual_seed(0)
    out_f, in_f = 8, 32
    layer = nn.Linear(in_f, out_f, bias=False)
    big = torch.zeros(in_f, dtype=torch.bool)
    big[0::4] = big[1::4] = True
    with torch.no_grad():
        sign = torch.randint(0, 2, (out_f, in_f)).float() * 2 - 1
        layer.weight.copy_(torch.where(big, 1.0, 0.1) * sign)
    target = layer.weight.detach().clone()
    data = torch.Generator().manual_seed(0)
    scale = torch.where(big, 1e-3, 1.0)

    def loss_of(mask: torch.Tensor) -> float:
        x = torch.randn(4096, in_f, generator=torch.Generator().manual_seed(99)) * scale
        return float(((x @ (target * mask).T - x @ target.T) ** 2).mean())

    prior = nxm_mask(layer.weight, "4:2")
    assert torch.equal(prior, big.expand_as(prior))
    learner = LearnedMasks({"l": layer}, "4:2", generator=torch.Generator().manual_seed(1))
    learner.attach(freeze_weights=True)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-2)
    layer.train()
    steps = 60
    for step in range(steps):
        learner.set_progress(step / steps)
        x = torch.randn(64, in_f, generator=data) * scale
        loss = (layer(x) - x @ target.T).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    learned = learner.hard_masks()["l"]
    learner.remove()
    assert torch.equal(layer.weight, target)  # frozen
    assert torch.equal(learned, ~prior)  # keeps exactly the small, live weights
    assert learner.prior_distance() == 1.0
    assert loss_of(learned.float()) < 1e-3 * loss_of(prior.float())


# --------------------------------------------------------------------------- registry
def _spec(**overrides) -> RunSpec:
    return RunSpec.parse(RunConfig(method="learned", results_dir="r", **overrides), NxMTrainingArguments())


LEARNED_OPTIONS = {"learn_epochs": 0.5, "mask_prior": "magnitude", "mask_prior_strength": 3.0, "mask_tau_start": 4.0,
                   "mask_tau_end": 0.05, "mask_scale_start": 100.0, "mask_scale_end": 500.0, "mask_lr_mult": 10.0,
                   "mask_reg": 1e-5, "freeze_weights": True}


def test_registry_entry_and_its_identity():
    method = get_method("learned")
    spec = _spec()
    assert method.start(spec) == "dense" and method.kd and method.rule is LEARNED and LEARNED.structured
    assert [p.name for p in method.phases] == ["learn", "finetune"]
    assert [p.epochs for p in method.phases] == ["learn_epochs", "num_train_epochs"]
    canonical = spec.canonical()
    assert {k: canonical[k] for k in LEARNED_OPTIONS} == LEARNED_OPTIONS
    assert "calibration_examples" not in canonical
    assert _spec(mask_prior="sparsegpt", calibration_examples=64).canonical()["calibration_examples"] == 64
    assert _spec(learn_epochs=1).canonical()["learn_epochs"] == 1.0  # 1 and 1.0 are one run
    for option, value in (("mask_prior", "sparsegpt"), ("freeze_weights", False), ("mask_lr_mult", 1.0)):
        assert _spec(**{option: value}).folder().name != spec.folder().name
    for method_name in ("dense", "magnitude", "admm", "sr-ste", "wanda", "sparsegpt", "unstructured"):
        other = RunSpec.parse(RunConfig(method=method_name, mask_prior="sparsegpt", learn_epochs=2.0,
                                        freeze_weights=False, mask_reg=0.0), NxMTrainingArguments()).canonical()
        assert not set(other) & set(LEARNED_OPTIONS), method_name  # not their options


@pytest.mark.parametrize("overrides, fragment", [
    ({"mask_prior": "wanda"}, "mask_prior must be one of magnitude, sparsegpt"),
    ({"learn_epochs": 0.0}, "learn_epochs must be > 0"),
    ({"mask_tau_end": 0.0}, "mask_tau_end must be > 0"),
    ({"mask_scale_start": float("inf")}, "mask_scale_start must be a finite number"),
    ({"mask_lr_mult": -1.0}, "mask_lr_mult must be > 0"),
    ({"mask_reg": -1e-5}, "mask_reg must be a finite number >= 0"),
    ({"mask_prior_strength": float("nan")}, "mask_prior_strength must be a finite number"),
    ({"mask_prior_strength": -1.0}, "mask_prior_strength must be a finite number >= 0"),
    ({"freeze_weights": "maybe"}, "freeze_weights must be true or false"),
])
def test_bad_learned_options_are_refused(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        _spec(**overrides)


def test_fp16_is_refused_with_the_regulariser_only():
    with pytest.raises(ValueError, match="fp16"):
        RunSpec.parse(RunConfig(method="learned"), NxMTrainingArguments(fp16=True, use_cpu=True))
    RunSpec.parse(RunConfig(method="learned", mask_reg=0.0), NxMTrainingArguments(fp16=True, use_cpu=True))
    RunSpec.parse(RunConfig(method="magnitude"), NxMTrainingArguments(fp16=True, use_cpu=True))


@pytest.mark.parametrize("label", ["learned", "learned+kd"])
def test_matched_budget_of_the_cpu_preset(label):
    """Budget 3 passes: dense 2 epochs + learning 0.5 + masked fine-tuning 0.5."""
    from nxmlab.study.studies.presets import get_preset
    from nxmlab.study.studies.runs import make_run

    spec = make_run(get_preset("cpu"), "mrpc", label, 42)
    assert spec.method.budget_passes(spec) == 3.0
    assert (spec.dense_epochs, spec.cfg.learn_epochs, spec.args.num_train_epochs) == (2.0, 0.5, 0.5)
    assert spec.kd == label.endswith("+kd")
    longer = make_run(get_preset("cpu").replace(options=(("learn_epochs", 0.75),)), "mrpc", label, 42)
    assert (longer.cfg.learn_epochs, longer.args.num_train_epochs) == (0.75, 0.25)
    with pytest.raises(ValueError, match="leaves no epochs for its 'finetune' phase"):
        make_run(get_preset("cpu").replace(options=(("learn_epochs", 1.0),)), "mrpc", label, 42)


def test_every_committed_run_still_maps_to_its_folder():
    """The new options never enter another method's identity: every committed config.json
    round-trips through RunConfig and names its own folder."""
    from nxmlab.study.cli.exporting import run_arguments
    from nxmlab.study.results.store import iter_runs

    results = Path(__file__).resolve().parents[1] / "results"
    runs = list(iter_runs(results))
    assert len(runs) >= 190
    for run in runs:
        cfg, args = run_arguments(run.config(), run.results_dir)
        assert RunSpec.parse(cfg, args).folder().name == run.name, run.rel


# ------------------------------------------------------------------ end to end (tiny)
TINY = ["--task", "rte", "--model", "tiny", "--train_limit", "24", "--eval_limit", "8",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--num_train_epochs", "1",
        "--learn_epochs", "2", "--logging_steps", "1", "--log_interval", "1", "--learning_rate", "1e-3",
        "--disable_tqdm", "true", "--report_to", "none"]


def _argv(store: Path, glue_dir: Path, *extra) -> list[str]:
    return [*TINY, "--results_dir", str(store / "results"), "--glue_dir", str(glue_dir), *map(str, extra)]


def _parse(argv: list[str]):
    from transformers import HfArgumentParser

    return HfArgumentParser((RunConfig, NxMTrainingArguments)).parse_args_into_dataclasses(args=argv)


@pytest.fixture(scope="module")
def store(tmp_path_factory, glue_dir):
    """``nxmlab train --method learned`` with and without ``--kd`` (the dense run trained once)."""
    from nxmlab.study.cli import main

    root = tmp_path_factory.mktemp("learned") / "store"
    for extra in ((), ("--kd",)):
        assert main(["train", *_argv(root, glue_dir, "--method", "learned", *extra)]) == 0
    assert main(["verify", str(root / "results")]) == 0
    return root


def _run(store: Path, label: str):
    from nxmlab.study.results.store import RunFolder

    (path,) = [p for p in (store / "results" / "rte").iterdir() if p.name.startswith(f"{label}-4x2")]
    return RunFolder.at(path)


@pytest.mark.slow
@pytest.mark.parametrize("label", ["learned", "learned+kd"])
def test_cli_trains_learned_with_and_without_kd(store, label):
    from nxmlab.study.results.store import RunFolder, load_masks

    run, dense = _run(store, label), _run_dense(store)
    metrics = run.metrics()
    assert metrics["status"] == "finished" and metrics["kd"] == label.endswith("+kd") and metrics["is_nxm"] is True
    assert list(metrics["phases"]) == ["learn", "finetune"]
    assert metrics["phases"]["learn"]["steps"] == 6 and metrics["phases"]["finetune"]["steps"] == 3
    assert metrics["dense_run"] == dense.rel
    # weights frozen while the masks learn: the model before the prune is the dense model
    assert metrics["eval"]["before_prune"] == dense.metrics()["eval"]["final"]
    learned = torch.load(run.learned_state, weights_only=True)
    final = load_masks(run.masks_file, "final")["final"]
    assert set(final) == set(learned["masks"]) and len(final) == 12
    weights = load_file(run.model_dir / "model.safetensors")
    for name, mask in final.items():
        assert torch.equal(mask, learned["masks"][name])
        assert is_nxm(weights[f"{name}.weight"], "4:2") and not weights[f"{name}.weight"][~mask].any()
        assert bool((_group_sums(mask, 4) == 2).all())
    assert not any(GATE in key for key in weights)  # the gates never reach a saved model
    diagnostics = metrics["diagnostics"]
    assert diagnostics["learned_prior_distance"] == pytest.approx(metrics["mask_distance"]["dense_magnitude"])
    assert 0 < diagnostics["learned_prior_distance"] < 1  # the masks moved, not all the way
    assert 0 < diagnostics["learned_confidence"] <= 1
    trajectory = diagnostics["learned_trajectory"]
    assert [r["step"] for r in trajectory] == [1, 2, 3, 4, 5, 6]
    assert trajectory[0]["tau"] == 4.0 and trajectory[-1]["tau"] < trajectory[0]["tau"]
    assert trajectory[-1]["scale"] > trajectory[0]["scale"] and trajectory[-1]["reg"] < trajectory[0]["reg"]
    assert set(run.read_frame(RunFolder.MASK_DISTANCES)["reference"]) == {"pretrained_magnitude", "dense_magnitude"}
    from nxmlab.study.cli.exporting import run_arguments

    cfg, args = run_arguments(run.config(), run.results_dir)  # the stored identity round-trips (export --rebuild)
    assert RunSpec.parse(cfg, args).folder().name == run.name


def _run_dense(store: Path):
    from nxmlab.study.results.store import RunFolder

    (path,) = [p for p in (store / "results" / "rte").iterdir() if p.name.startswith("dense-")]
    return RunFolder.at(path)


@pytest.mark.slow
def test_kd_changes_the_learned_run(store):
    plain = load_file(_run(store, "learned").model_dir / "model.safetensors")
    kd = load_file(_run(store, "learned+kd").model_dir / "model.safetensors")
    assert not torch.equal(plain["classifier.weight"], kd["classifier.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("phase, step", [("learn", 3), ("finetune", 1)], ids=["during-learning", "during-finetune"])
def test_resume_after_interrupt_matches_uninterrupted(store, tmp_path, glue_dir, phase, step):
    """Killed during the learning phase (the gates and their Adam state come back from Trainer's
    checkpoint) or after it (the prune reads the saved argmax masks): bit-identical to the run
    that was never interrupted."""
    from nxmlab.study.train.recipe import run_experiment

    from .test_recipes import Interrupt, Interrupted

    from nxmlab.study.results.store import CACHE_ENV

    if os.environ.get(CACHE_ENV):
        pytest.skip(f"{CACHE_ENV} is set: the copied store would share its cache with the original")
    reference = _run(store, "learned")
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    cfg, args = _parse(_argv(copy, glue_dir, "--method", "learned", "--save_steps", "1"))
    ours = RunSpec.parse(cfg, args).folder()
    assert ours.name == reference.name
    ours.discard()
    with pytest.raises(Interrupted):
        run_experiment(cfg, args, callbacks=[Interrupt(phase, step)])
    assert not ours.file("metrics.json").exists()
    metrics = run_experiment(cfg, args)
    assert metrics["phases"][phase]["resumed_from_step"] == step
    assert metrics["eval"] == reference.metrics()["eval"]
    assert metrics["diagnostics"] == reference.metrics()["diagnostics"]
    a, b = (load_file(r.model_dir / "model.safetensors") for r in (ours, reference))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sparsegpt_prior_is_the_sparsegpt_mask_and_joint_training_moves_the_weights(store, glue_dir):
    from nxmlab.study.cli import main
    from nxmlab.study.results.store import load_masks

    assert main(["train", *_argv(store, glue_dir, "--method", "sparsegpt", "--calibration_examples", "16")]) == 0
    assert main(["train", *_argv(store, glue_dir, "--method", "learned", "--mask_prior", "sparsegpt",
                                 "--calibration_examples", "16", "--freeze_weights", "false")]) == 0
    sparsegpt = load_masks(_run(store, "sparsegpt").masks_file, "final")["final"]
    runs = [r for r in (store / "results" / "rte").iterdir() if r.name.startswith("learned-4x2")]
    (joint,) = [r for r in runs if '"mask_prior": "sparsegpt"' in (r / "config.json").read_text()]
    from nxmlab.study.results.store import RunFolder

    joint = RunFolder.at(joint)
    prior = torch.load(joint.learned_state, weights_only=True)["prior"]
    assert set(prior) == set(sparsegpt) and all(torch.equal(prior[n], sparsegpt[n]) for n in prior)
    metrics = joint.metrics()
    assert metrics["is_nxm"] is True
    assert metrics["eval"]["before_prune"] != _run_dense(store).metrics()["eval"]["final"]  # weights trained too
