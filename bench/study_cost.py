"""Cost of a study: seconds per epoch per task and method, and projected preset wall times.

1. **What the results store says.** Every finished run's ``metrics.json`` records the
   seconds per step and per epoch of each phase; they are collected per (model, task,
   method, phase).
2. **Measured step times.** For ``minilm-l6`` and each GLUE task in the mirror
   (``NXMLAB_GLUE_DIR``), real batches of the task's training split (tokenised, dynamic
   padding as the Trainer does; batches of typical padded length) are timed in
   alternation for the four kinds of step a study runs:
   ``dense`` (plain), ``admm`` (+ penalty gradient), ``fixed`` (fixed masks: ASP and
   ADMM's retraining) and ``fixed+kd`` (+ the teacher's forward and the distillation
   loss); ``admm+kd`` is ``admm`` plus the KD cost. Seconds per epoch = seconds per step
   x ceil(train size / 32).
3. **bert-base scale.** A random ``BertForSequenceClassification(BertConfig())`` (110M,
   no Hub) and ``minilm-l6`` take alternated steps at 32 x 128; the paper preset's step
   times are MiniLM's times the measured ratio.
4. **Projection.** :func:`~nxmlab.study.studies.cost.project_preset_seconds` (pure: no I/O,
   no torch) turns a preset and per-task step times into the wall time of every run the
   preset's notebooks train (the ``table``, ``rho`` and ``dynamics`` studies,
   deduplicated), including the evaluations and the ADMM Z/U updates.  It lives in
   :mod:`nxmlab.study.studies.cost`, with the live projection ``nxmlab reproduce --dry-run`` prints
   (:func:`~nxmlab.study.studies.cost.live_projection`), and is re-exported here.
"""

from __future__ import annotations

import copy
import math
import random
import statistics
from pathlib import Path
from typing import Any

from nxmlab.study.studies.cost import (  # the projection itself, shared with nxmlab reproduce --dry-run
    GLUE_EVAL_SIZES,
    GLUE_TRAIN_SIZES,
    KINDS,
    has_rho,
    live_projection,
    median_polish,
    phase_kinds,
    project_preset_seconds,
    step_seconds,
    store_records,
    store_step_table,
)

from .common import REPO_ROOT, alternate, machine_info, paired_ratio, summary, table

NAME = "study_cost"

#: Trainer's default evaluation batch size.
EVAL_BATCH = 8

FULL = {"model": "minilm-l6", "batch": 32, "max_seq_length": 128, "sample_rows": 2048, "rounds": 2, "warmup": 1,
        "tasks": ["cola", "sst2", "mrpc", "stsb", "qnli", "mnli", "rte"], "scale_model": "bert-base-config",
        "scale_batch": 32, "scale_seq": 128, "scale_rounds": 2, "presets": ["quick", "convergence", "cpu", "paper"],
        "pattern": "4:2", "rho": 1e-3, "lr": 5e-5, "weight_decay": 0.01}
QUICK = {"model": "tiny", "batch": 4, "max_seq_length": 32, "sample_rows": 64, "rounds": 1, "warmup": 1,
         "tasks": ["rte"], "scale_model": "small-bert-config", "scale_batch": 4, "scale_seq": 32, "scale_rounds": 1,
         "presets": ["quick", "cpu", "paper"], "pattern": "4:2", "rho": 1e-3, "lr": 5e-5, "weight_decay": 0.01}


# ========================================================================= measurement
def _glue_dir(explicit: str | None) -> Path | None:
    from nxmlab.study.data.glue import resolve_glue_dir

    path = resolve_glue_dir(explicit)
    if path is None and (REPO_ROOT.parent / "shared" / "glue").is_dir():
        path = REPO_ROOT.parent / "shared" / "glue"  # the Makefile's default
    return path if path is not None and path.is_dir() else None


def _task_batches(task: str, tokenizer, cfg: dict[str, Any], glue_dir: Path | None, count: int, seed: int = 0):
    """``count`` real collated batches of typical padded length, and how they were chosen."""
    from transformers import DataCollatorWithPadding

    from nxmlab.study.data.glue import get_task, load_glue, tokenize_glue

    spec = get_task(task)
    if glue_dir is None or not (glue_dir / task / f"{spec.train_split}.parquet").is_file():
        return None, {"source": "missing from the GLUE mirror"}
    raw = load_glue(task, spec.train_split, glue_dir, limit=cfg["sample_rows"])
    data = tokenize_glue(raw, spec, tokenizer, cfg["max_seq_length"])
    lengths = [len(x) for x in data["input_ids"]]
    rng = random.Random(seed)
    b = cfg["batch"]
    candidates = []
    for _ in range(256):
        idx = rng.sample(range(len(lengths)), min(b, len(lengths)))
        candidates.append((max(lengths[i] for i in idx), idx))
    typical = statistics.median(c[0] for c in candidates)
    chosen = sorted(candidates, key=lambda c: (abs(c[0] - typical), rng.random()))[:count]
    collator = DataCollatorWithPadding(tokenizer)
    batches = [collator([data[i] for i in idx]) for _, idx in chosen]
    return batches, {"source": "mirror", "rows_sampled": len(lengths), "mean_tokens": statistics.mean(lengths),
                     "typical_padded_length": typical, "chosen_padded_lengths": [c[0] for c in chosen]}


def _load(model_name: str, num_labels: int, is_regression: bool):
    if model_name == "tiny":
        from nxmlab.study.data.models import build_tiny_model, load_tokenizer

        try:
            tok = load_tokenizer("tiny")
        except ImportError:
            tok = None
        vocab = len(tok) if tok is not None else 30522
        return build_tiny_model(vocab, num_labels, is_regression), tok
    from nxmlab.study.data.models import load_model_and_tokenizer

    return load_model_and_tokenizer(model_name, num_labels, is_regression=is_regression)


def measure_task(task: str, cfg: dict[str, Any], glue_dir: Path | None) -> dict[str, Any]:
    """Alternated dense / admm / fixed / fixed+kd steps on real batches of one task."""
    import torch

    from nxmlab.admm import ADMM
    from nxmlab.distill import distillation_loss
    from nxmlab.study.data.glue import get_task
    from nxmlab.masking import apply_masks, magnitude_nxm_masks
    from nxmlab.targets import select_targets

    from .admm_overhead import make_optimizer

    spec = get_task(task)
    base, tok = _load(cfg["model"], spec.num_labels, spec.is_regression)
    count = cfg["rounds"] + cfg["warmup"]
    batches, info = (None, {"source": "no tokenizer"}) if tok is None else _task_batches(task, tok, cfg, glue_dir, count)
    if batches is None:
        return {"task": task, "measured": False, **info}
    models = {k: copy.deepcopy(base).train() for k in ("dense", "admm", "fixed", "fixed+kd")}
    teacher = copy.deepcopy(base).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    opts = {k: make_optimizer(m, cfg["lr"], cfg["weight_decay"])[0] for k, m in models.items()}
    admm = ADMM(models["admm"], select_targets(models["admm"]), cfg["pattern"], rho=cfg["rho"])
    for k in ("fixed", "fixed+kd"):
        apply_masks(models[k], magnitude_nxm_masks(select_targets(models[k]), cfg["pattern"]), opts[k])
    position = {k: 0 for k in models}

    def step(kind: str):
        def f():
            batch = batches[position[kind] % len(batches)]
            position[kind] += 1
            model, opt = models[kind], opts[kind]
            out = model(**batch)
            loss = out.loss
            if kind == "fixed+kd":
                with torch.no_grad():
                    t_logits = teacher(**batch).logits
                loss = distillation_loss(out.logits, t_logits, batch.get("labels"))
            loss.backward()
            if kind == "admm":
                admm.add_penalty_grad()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return f

    times = alternate({k: step(k) for k in models}, rounds=cfg["rounds"], warmup=cfg["warmup"])
    med = {k: summary(v)["median"] for k, v in times.items()}
    kd_extra = med["fixed+kd"] - med["fixed"]
    upd = alternate({"update": admm.update}, rounds=1, warmup=0)["update"][0]
    return {"task": task, "measured": True, **info, "seconds": {k: summary(v) for k, v in times.items()},
            "seconds_per_step": {**med, "admm+kd": med["admm"] + kd_extra, "kd_extra": kd_extra},
            "ratios_vs_dense": {k: paired_ratio(v, times["dense"])["median"] for k, v in times.items() if k != "dense"},
            "admm_update_seconds": upd}


def measure_scale(cfg: dict[str, Any]) -> dict[str, Any]:
    """Alternated train steps of a BERT-base-sized model and of ``cfg['model']`` at the same batch."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from .admm_overhead import build_model, make_batches, make_optimizer, train_step

    if cfg["scale_model"] == "bert-base-config":
        big_cfg = BertConfig(num_labels=2)  # bert-base-uncased's architecture, random weights
    else:
        big_cfg = BertConfig(num_labels=2, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        big = BertForSequenceClassification(big_cfg).train()
    small, vocab = build_model(cfg["model"])
    small.train()
    params = {"big": sum(p.numel() for p in big.parameters()), "small": sum(p.numel() for p in small.parameters())}
    batches = make_batches(min(vocab, big_cfg.vocab_size), cfg["scale_batch"], cfg["scale_seq"], 2)
    opts = {"big": make_optimizer(big, cfg["lr"], cfg["weight_decay"])[0],
            "small": make_optimizer(small, cfg["lr"], cfg["weight_decay"])[0]}
    models = {"big": big, "small": small}
    pos = {"big": 0, "small": 0}

    def step(k):
        def f():
            train_step(models[k], opts[k], batches[pos[k] % 2])
            pos[k] += 1
        return f

    times = alternate({"small": step("small"), "big": step("big")}, rounds=cfg["scale_rounds"], warmup=1)
    return {"big_model": cfg["scale_model"], "params": params, "batch": cfg["scale_batch"], "seq": cfg["scale_seq"],
            "seconds": {k: summary(v) for k, v in times.items()},
            "big_vs_small": paired_ratio(times["big"], times["small"])}


# ================================================================================= run
def run(quick: bool = False, results_dir: str = "results", glue_dir: str | None = None, **_: Any) -> dict[str, Any]:
    import torch

    from nxmlab.study.train.methods import LABELS
    from nxmlab.study.studies.presets import get_preset

    cfg = dict(QUICK if quick else FULL)
    gdir = _glue_dir(glue_dir)
    store = store_records(results_dir)

    per_task = {task: measure_task(task, cfg, gdir) for task in cfg["tasks"]}
    scale = measure_scale(cfg)
    ratio = scale["big_vs_small"]["median"]
    small_128 = scale["seconds"]["small"]["median"]

    measured = {t: r["seconds_per_step"] for t, r in per_task.items() if r.get("measured")}
    # tasks not measured (e.g. qqp, absent from the mirror): the padded-128 step, with the mean kind ratios
    kind_ratios = {}
    for kind in ("admm", "fixed", "fixed+kd", "admm+kd"):
        rs = [m[kind] / m["dense"] for m in measured.values()]
        kind_ratios[kind] = statistics.mean(rs) if rs else 1.0
    assumed = {}
    all_tasks = sorted({t for name in cfg["presets"] for t in get_preset(name).tasks} | set(cfg["tasks"]))
    small_tables: dict[str, dict[str, float]] = {}
    for task in all_tasks:
        if task in measured:
            small_tables[task] = {k: measured[task][k] for k in KINDS}
        else:
            small_tables[task] = {"dense": small_128, **{k: small_128 * r for k, r in kind_ratios.items()}}
            assumed[task] = "not measured: the 32 x 128 step of the scale measurement, kind ratios averaged " \
                            "over the measured tasks (an upper bound for short-sentence tasks)"
    big_tables = {t: {k: v * ratio for k, v in tab.items()} for t, tab in small_tables.items()}
    updates = {t: r.get("admm_update_seconds", 0.0) for t, r in per_task.items() if r.get("measured")}

    # seconds per epoch per task x method for the measured model: store first, else the estimate
    per_epoch = {}
    calibration = []
    batch = cfg["batch"]
    for task in cfg["tasks"]:
        spe = math.ceil(GLUE_TRAIN_SIZES[task] / 32)  # the study's batch size
        tab = small_tables[task]
        for label in LABELS():
            for phase, kind in phase_kinds(label):
                est = tab[kind] * spe if tab.get(kind) is not None else None
                recs = [r for r in store if r["task"] == task and r["label"] == label and r["phase"] == phase
                        and r["model"] == cfg["model"] and r["seconds_per_epoch"]]
                stored = statistics.median(r["seconds_per_epoch"] for r in recs) if recs else None
                per_epoch[f"{task} {label} {phase}"] = {
                    "task": task, "label": label, "phase": phase, "kind": kind,
                    "seconds_per_epoch": stored if stored is not None else est,
                    "source": "store" if stored is not None else ("estimate" if batch == 32 else "estimate (batch "
                                                                                             f"{batch}, quick)"),
                    "store": stored, "estimate": est, "store_runs": len(recs)}
                if stored is not None and est:
                    calibration.append(stored / est)
    calib = statistics.median(calibration) if calibration else None

    # projections
    finished_keys = [(r["task"], r["label"], r["seed"], float(r["rho"]) if has_rho(r["label"]) and
                      r["rho"] is not None else None) for r in store]
    projections = {}
    for name in cfg["presets"]:
        preset = get_preset(name)
        big = preset.model == "bert-base"
        tables = big_tables if big else small_tables
        model_ok = big or preset.model == cfg["model"]
        upd = {t: u * (ratio if big else 1.0) for t, u in updates.items()}
        proj = project_preset_seconds(preset, tables, update_seconds=upd,
                                      finished=[k for k, r in zip(finished_keys, store) if r["model"] == preset.model])
        projections[name] = {
            "model": preset.model, "basis": ("bert-base-sized step = measured minilm step x "
                                             f"{ratio:.2f}" if big else f"measured {cfg['model']} steps")
            + ("" if model_ok else f" (preset model {preset.model} != measured {cfg['model']}: quick mode)"),
            "runs": len(proj["runs"]), "total_hours": proj["total_seconds"] / 3600,
            "remaining_hours": proj["remaining_seconds"] / 3600,
            "total_hours_at_store_speed": proj["total_seconds"] * calib / 3600 if calib and not big else None,
            "by_task_hours": {k: v / 3600 for k, v in proj["by_task"].items()},
            "by_label_hours": {k: v / 3600 for k, v in proj["by_label"].items()},
            "missing": proj["missing"],
        }

    notes = [
        f"threads: {torch.get_num_threads()}. Step times are medians of {cfg['rounds']} alternated rounds "
        f"(after {cfg['warmup']} warm-up) on real batches chosen to have the task's typical padded length "
        f"(median over 256 random batches of {cfg['batch']} from the first {cfg['sample_rows']} training rows).",
        "Ratios: every kind of step is reported against the dense step of the same round (ratios_vs_dense); "
        f"the bert-base-sized step against {cfg['model']} at the same batch (big_vs_small = {ratio:.2f}).",
        "Projections count every run of the table, rho and dynamics studies (nxmlab reproduce), each phase "
        "as epochs x ceil(train/32) steps, + one Z/U update per ADMM epoch, + evaluations (1 pass for dense, "
        "3 for sparse runs, each example at 1/3 of a dense step's per-example cost). Checkpoint saving and "
        "model loading are not counted.",
        "remaining_hours subtracts the runs already finished in the results store (same model).",
        (f"Calibration: the store's recorded seconds per epoch are {calib:.2f}x this benchmark's estimate for "
         "the same task and method (median over matches): the store's runs ran under other load / thread "
         "settings. total_hours_at_store_speed scales the projection by it.") if calib else
        "Calibration: no finished run in the store matches a measured task and method.",
        "paper: bert-base on 8 tasks; this CPU figure is only an order of magnitude (the preset is meant for "
        "GPUs).",
        (f"Not measured ({', '.join(sorted(assumed))}: no training split in the GLUE mirror, or not in "
         "config.tasks): their step times are the 32 x 128 step of the scale measurement with the kind ratios "
         "averaged over the measured tasks; see seconds_per_step.assumed.") if assumed else
        "Every task of the presets was measured.",
    ]
    return {
        "name": NAME,
        "machine": machine_info(),
        "config": {**cfg, "quick": quick, "glue_dir": str(gdir) if gdir else None, "results_dir": str(results_dir),
                   "train_sizes": GLUE_TRAIN_SIZES, "eval_sizes": GLUE_EVAL_SIZES},
        "store": store,
        "measured": per_task,
        "scale": scale,
        "seconds_per_step": {"small": small_tables, "bert_base": big_tables, "assumed": assumed},
        "seconds_per_epoch": per_epoch,
        "calibration_store_vs_estimate": calib,
        "projections": projections,
        "targets": {},
        "notes": notes,
    }


def summarize(payload: dict[str, Any]) -> str:
    rows = []
    for task, tab in payload["seconds_per_step"]["small"].items():
        m = payload["measured"].get(task, {})
        rows.append([task, f"{tab['dense']:.3f}", f"{tab['admm'] / tab['dense']:.3f}x",
                     f"{tab['fixed'] / tab['dense']:.3f}x", f"{tab['fixed+kd'] / tab['dense']:.3f}x",
                     "measured" if m.get("measured") else "assumed",
                     f"{payload['seconds_per_step']['bert_base'][task]['dense']:.2f}"])
    out = [f"study_cost ({payload['config']['model']}, batch {payload['config']['batch']}; bert-base-sized step = "
           f"{payload['scale']['big_vs_small']['median']:.2f}x)",
           table(rows, ["task", "dense s/step", "admm", "fixed", "fixed+kd", "source", "bert-base s/step"])]
    prow = [[name, p["model"], p["runs"], f"{p['total_hours']:.2f}", f"{p['remaining_hours']:.2f}",
             "-" if p["total_hours_at_store_speed"] is None else f"{p['total_hours_at_store_speed']:.2f}"]
            for name, p in payload["projections"].items()]
    out.append(table(prow, ["preset", "model", "runs", "total h", "remaining h", "h at store speed"]))
    return "\n".join(out)
