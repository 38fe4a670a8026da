"""KD step cost: a distillation step with the teacher run live against one with its logits kept.

``minilm-l6`` (``--quick``: the random 2-layer ``tiny`` BERT) as student and teacher (a
copy in eval mode), batches of 16 random token ids padded to 64 with random lengths
(8 to 64, attention mask to match; ``protocol`` trains at batch 16), random labels. Three
copies of the student take steps in alternation after one warm-up step each:

``plain``  the baseline: a training step without KD (the student's own loss)
``live``   a KD step that runs the teacher's forward pass on every batch, as
           ``DistillationTrainer`` did before 2026-12-05 (and as the `cpu` KD runs trained)
``kept``   a KD step through ``DistillationTrainer.teach`` once every example is kept: the
           batch's example keys, a dictionary lookup and a stack instead of the teacher,
           what every epoch after the first costs

Reported as ratios to the ``plain`` step of the same round (median over rounds).
"""

from __future__ import annotations

import copy
import types
from typing import Any

import torch

from .admm_overhead import build_model, make_optimizer
from .common import alternate, fmt_pct, machine_info, paired_ratio, summary, table, target

NAME = "kd_teacher"

FULL = {"model": "minilm-l6", "batch": 16, "seq": 64, "steps": 12, "warmup": 1, "lr": 5e-5, "weight_decay": 0.0,
        "temperature": 2.0, "alpha": 0.5, "batches": 4}
QUICK = {"model": "tiny", "batch": 4, "seq": 16, "steps": 2, "warmup": 1, "lr": 5e-5, "weight_decay": 0.0,
         "temperature": 2.0, "alpha": 0.5, "batches": 2}


def _batches(vocab: int, cfg: dict[str, Any], seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(cfg["batches"]):
        lengths = torch.randint(cfg["seq"] // 8, cfg["seq"] + 1, (cfg["batch"],), generator=g)
        mask = (torch.arange(cfg["seq"])[None, :] < lengths[:, None]).long()
        ids = torch.randint(1000, vocab, (cfg["batch"], cfg["seq"]), generator=g) * mask
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                    "labels": torch.randint(0, 2, (cfg["batch"],), generator=g)})
    return out


def run(quick: bool = False, **_: Any) -> dict[str, Any]:
    from nxmlab.callbacks import DistillationTrainer
    from nxmlab.distill import distillation_loss

    cfg = dict(QUICK if quick else FULL)
    machine = machine_info()  # the load average before the run
    base, vocab = build_model(cfg["model"])
    teacher = copy.deepcopy(base).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    models = {name: copy.deepcopy(base).train() for name in ("plain", "live", "kept")}
    del base
    optims = {name: make_optimizer(m, cfg["lr"], cfg["weight_decay"])[0] for name, m in models.items()}
    opt_name = make_optimizer(models["plain"], cfg["lr"], cfg["weight_decay"])[1]
    batches = _batches(vocab, cfg)
    # DistillationTrainer.teach on a stand-in holding only what it reads: the real code path
    keeper = types.SimpleNamespace(teacher=teacher, teacher_logits={}, teacher_batches=0)
    for batch in batches:  # the first epoch: every example seen once
        DistillationTrainer.teach(keeper, {k: v for k, v in batch.items() if k != "labels"})
    counter = {name: 0 for name in models}

    def stepper(name):
        def f():
            batch = batches[counter[name] % len(batches)]  # the same batch sequence for every variant
            counter[name] += 1
            out = models[name](**batch)
            if name == "plain":
                loss = out.loss
            else:
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                if name == "live":
                    with torch.no_grad():
                        logits = teacher(**inputs).logits
                else:
                    logits = DistillationTrainer.teach(keeper, inputs)
                loss = distillation_loss(out.logits, logits, batch["labels"], cfg["temperature"], cfg["alpha"])
            loss.backward()
            optims[name].step()
            optims[name].zero_grad(set_to_none=True)
        return f

    times = alternate({name: stepper(name) for name in models}, rounds=cfg["steps"], warmup=cfg["warmup"])
    live_r = paired_ratio(times["live"], times["plain"])
    kept_r = paired_ratio(times["kept"], times["plain"])
    plain = summary(times["plain"])
    spread_pct = (plain["q3"] - plain["q1"]) / plain["median"] * 100
    notes = [
        f"threads: {torch.get_num_threads()}; optimizer {opt_name}, lr {cfg['lr']}, every parameter trains "
        "(protocol trains only the target Linears, so its plain step is cheaper and the teacher's share of a "
        "live step larger).",
        f"Noise: the plain step's interquartile range is {spread_pct:.1f}% of its median.",
        f"The kept step did not run the teacher: {keeper.teacher_batches} teacher batches, all before the timed "
        f"rounds ({cfg['batches']} batches, {len(keeper.teacher_logits)} examples kept).",
    ]
    if not quick:
        notes.append(f"Load average {machine['load_average_1_5_15']} on {machine['cpu_count']} cores at the start "
                     f"(a training job may have been paused, not stopped), {machine_info()['load_average_1_5_15']} "
                     "at the end.")
    return {
        "name": NAME,
        "machine": machine,
        "config": {**cfg, "quick": quick, "optimizer": opt_name},
        "seconds": {name: summary(t) for name, t in times.items()},
        "ratios": {"live_vs_plain": live_r, "kept_vs_plain": kept_r},
        "overhead_pct": {"live": (live_r["median"] - 1) * 100, "kept": (kept_r["median"] - 1) * 100,
                         "plain_step_iqr": spread_pct},
        "teacher_batches_in_rounds": keeper.teacher_batches - cfg["batches"],
        "targets": {"kept KD step / plain step (paired median)": target(1.05, kept_r["median"])},
        "notes": notes,
    }


def summarize(payload: dict[str, Any]) -> str:
    o, r = payload["overhead_pct"], payload["ratios"]
    rows = [
        ["plain step (no KD)", f"{payload['seconds']['plain']['median']:.3f} s", f"IQR {o['plain_step_iqr']:.1f}%"],
        ["KD, teacher run live", f"{r['live_vs_plain']['median']:.2f}x", fmt_pct(o["live"])],
        ["KD, teacher logits kept", f"{r['kept_vs_plain']['median']:.2f}x", fmt_pct(o["kept"])],
    ]
    return f"kd_teacher ({payload['config']['model']}, batch {payload['config']['batch']} x " \
           f"{payload['config']['seq']})\n" + table(rows, ["what", "vs plain step", "detail"])
