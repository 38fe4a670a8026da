"""Learned-mask step overhead: a MaskLLM learning step against magnitude's masked step.

``minilm-l6`` (``--quick``: the random 2-layer ``tiny`` BERT) in train mode, batches of
32 x 128 random token ids (attention mask all ones, random labels), 4:2 (keep 2 of every 4).
Three copies of the model take steps in alternation after one warm-up step each:

``fixed``     the baseline: magnitude's masked fine-tuning step, ``apply_masks(model, masks,
              optimizer)`` (gradient hooks + re-masking after every optimizer step, what
              ``FixedMaskCallback`` does in Trainer); AdamW over every parameter
``learned``   the learned method's learning step as it runs by default: ``LearnedMasks``
              attached with ``freeze_weights=True`` (only the gates train: AdamW over the gates),
              a fresh Gumbel-softmax soft mask per target per forward, the regulariser's
              gradient hook, ``set_progress`` every step
``joint``     the same with ``freeze_weights=False``: AdamW over every parameter and the gates

Reported as ratios to the ``fixed`` step of the same round (median over rounds).  The
soft-mask sampling alone (all targets, forward only, no grad) is timed in alternation with
the ``fixed`` step too.  Memory: the gates' bytes against the target weights' (Adam keeps
two more copies, and the gradient a third).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from .admm_overhead import build_model, make_batches, make_optimizer, train_step
from .common import alternate, fmt_pct, machine_info, paired_ratio, summary, table, target

NAME = "learned_overhead"

FULL = {"model": "minilm-l6", "batch": 32, "seq": 128, "steps": 6, "warmup": 1, "pattern": "4:2", "lr": 5e-5,
        "weight_decay": 0.01, "mask_lr_mult": 10.0, "sample_rounds": 5}
QUICK = {"model": "tiny", "batch": 4, "seq": 32, "steps": 2, "warmup": 1, "pattern": "4:2", "lr": 5e-5,
         "weight_decay": 0.01, "mask_lr_mult": 10.0, "sample_rounds": 2}


def run(quick: bool = False, **_: Any) -> dict[str, Any]:
    from nxmlab.learned import LearnedMasks
    from nxmlab.masking import apply_masks, magnitude_nxm_masks
    from nxmlab.targets import select_targets

    cfg = dict(QUICK if quick else FULL)
    machine = machine_info()  # the load average before the run
    base, vocab = build_model(cfg["model"])
    models = {name: copy.deepcopy(base).train() for name in ("fixed", "learned", "joint")}
    del base
    masks = magnitude_nxm_masks(select_targets(models["fixed"]), cfg["pattern"])
    optims = {}
    optims["fixed"], opt_name = make_optimizer(models["fixed"], cfg["lr"], cfg["weight_decay"])
    apply_masks(models["fixed"], masks, optims["fixed"])
    learners = {}
    for name, freeze in (("learned", True), ("joint", False)):
        learners[name] = LearnedMasks(select_targets(models[name]), cfg["pattern"], lr_mult=cfg["mask_lr_mult"])
        learners[name].attach(models[name], freeze_weights=freeze)
        optims[name], _ = make_optimizer(models[name], cfg["lr"], cfg["weight_decay"])  # what requires grad
    trainable = {name: sum(p.numel() for p in m.parameters() if p.requires_grad) for name, m in models.items()}

    batches = make_batches(vocab, cfg["batch"], cfg["seq"], 4)
    counter = {name: 0 for name in models}
    total = cfg["warmup"] + cfg["steps"]

    def stepper(name):
        def f():
            batch = batches[counter[name] % len(batches)]  # the same batch sequence for every variant
            if name in learners:
                learners[name].set_progress(counter[name] / total)
            counter[name] += 1
            train_step(models[name], optims[name], batch)
        return f

    times = alternate({name: stepper(name) for name in models}, rounds=cfg["steps"], warmup=cfg["warmup"])

    learner = learners["learned"]

    @torch.no_grad()
    def sample():
        for name in learner.targets:
            learner.soft_mask(name)

    sampled = alternate({"fixed": stepper("fixed"), "sample": sample}, rounds=cfg["sample_rounds"], warmup=1)

    fixed = summary(times["fixed"])
    learned_r = paired_ratio(times["learned"], times["fixed"])
    joint_r = paired_ratio(times["joint"], times["fixed"])
    sample_r = paired_ratio(sampled["sample"], sampled["fixed"])
    spread_pct = (fixed["q3"] - fixed["q1"]) / fixed["median"] * 100
    target_bytes = sum(m.weight.numel() * m.weight.element_size() for m in learner.targets.values())
    gate_bytes = sum(g.numel() * g.element_size() for g in learner.parameters())
    candidates = math.comb(learner.pattern.n, learner.pattern.m)

    targets = {
        "learned (frozen weights) step / masked step (paired median)": target(1.5, learned_r["median"]),
        "joint step / masked step (paired median)": target(1.5, joint_r["median"]),
    }
    notes = [
        f"threads: {torch.get_num_threads()}; optimizer {opt_name}, lr {cfg['lr']} (gates: stored / mask_lr_mult "
        f"{cfg['mask_lr_mult']:g}), weight decay {cfg['weight_decay']}; no gradient clipping, as in "
        "admm_overhead.json.",
        f"Noise: the masked step's interquartile range is {spread_pct:.1f}% of its median.",
        "learned: the weights are frozen, but backward still computes the gradient of every masked weight "
        "product (it is what reaches the gates) and of the activations; it skips the weights' own gradients "
        "and AdamW over the weights, and adds the Gumbel-softmax sampling (softmax over "
        f"{candidates} candidates per group, a [groups, {candidates}] x [{candidates}, n] product) and its "
        "backward per target.",
        "joint: the learned step plus the weights' gradients and AdamW over all weights.",
        "sample: the soft masks of all targets once (forward only, no grad), as a ratio to the masked step.",
        f"Memory: the gates hold C(n, m) / n = {candidates / learner.pattern.n:g} values per target weight "
        "(fp32); their gradient and AdamW's two moments triple that during the learning phase.",
    ]
    if not quick:
        notes.append(f"The machine was busy with a long training job while this ran (load average "
                     f"{machine['load_average_1_5_15']} on {machine['cpu_count']} cores at the start, "
                     f"{machine_info()['load_average_1_5_15']} at the end): the ratios are paired per round, but "
                     "the absolute seconds are slower than on an idle machine.")
    return {
        "name": NAME,
        "machine": machine,
        "config": {**cfg, "quick": quick, "optimizer": opt_name, "targets": len(learner.targets),
                   "candidates": candidates, "trainable_parameters": trainable},
        "seconds": {name: summary(t) for name, t in times.items()} | {"sample": summary(sampled["sample"])},
        "ratios": {"learned_vs_fixed": learned_r, "joint_vs_fixed": joint_r, "sample_vs_fixed": sample_r},
        "overhead_pct": {"learned": (learned_r["median"] - 1) * 100, "joint": (joint_r["median"] - 1) * 100,
                         "sample": sample_r["median"] * 100, "fixed_step_iqr": spread_pct},
        "memory": {"target_weight_bytes": target_bytes, "gate_bytes": gate_bytes,
                   "gates_vs_targets": gate_bytes / target_bytes},
        "targets": targets,
        "notes": notes,
    }


def summarize(payload: dict[str, Any]) -> str:
    o, r, mem = payload["overhead_pct"], payload["ratios"], payload["memory"]
    rows = [
        ["masked step (magnitude)", f"{payload['seconds']['fixed']['median']:.3f} s", f"IQR {o['fixed_step_iqr']:.1f}%"],
        ["learned, frozen weights", f"{r['learned_vs_fixed']['median']:.2f}x", fmt_pct(o["learned"])],
        ["learned, joint", f"{r['joint_vs_fixed']['median']:.2f}x", fmt_pct(o["joint"])],
        ["soft-mask sampling alone", f"{o['sample']:.1f}% of a step", "forward, all targets"],
        ["gates", f"{mem['gate_bytes'] / 2**20:.0f} MiB", f"{mem['gates_vs_targets']:.2f}x the target weights"],
    ]
    return f"learned_overhead ({payload['config']['model']}, batch {payload['config']['batch']} x " \
           f"{payload['config']['seq']})\n" + table(rows, ["what", "vs masked step", "detail"])
