"""Padding: real tokens per padded token, and real-token training throughput, random vs length-grouped batches.

For each GLUE task among cola, sst2, mrpc, stsb and rte (the training split of the
mirror, ``NXMLAB_GLUE_DIR``, tokenised by :func:`nxmlab.study.data.glue.tokenize_glue` with
the ``minilm-l6`` tokenizer, truncated to 128 tokens, not padded):

1. **Padding efficiency** over one full epoch of batches of 32, each padded to its
   longest example (``DataCollatorWithPadding``): real tokens / padded tokens, for
   ``before`` = the Trainer's default sampler (``RandomSampler``) and ``after`` = what
   the Trainer builds for ``train_sampling_strategy="group_by_length"``
   (``transformers.trainer_pt_utils.LengthGroupedSampler``), both seeded. ``sorted``
   (the whole split sorted by length) is the upper bound of any batching.
2. **Real-token throughput** as a fraction of an fp32 matmul peak measured in the same
   process: training steps (forward, backward, AdamW) of ``minilm-l6`` on batches of
   each epoch (chosen at evenly spaced quantiles of the padded length, full batches
   only) alternate with a square fp32 ``torch.mm`` (``matmul``, the baseline):
   ``matmul before after matmul before after ...`` after warm-up. Only the real tokens'
   training FLOPs count (formula in ``notes``). The rounds time different batches (to
   span the epoch's lengths), so the headline ``value`` pools them: the timed batches'
   real FLOPs over their seconds, each step's seconds converted into matmul FLOPs at
   the rate of the same round's matmul. ``median`` is the median over rounds of the
   per-round fraction ``(real FLOPs / step seconds) / (matmul FLOPs / matmul seconds)``.

``--quick``: the random 2-layer ``tiny`` BERT, the first 96 rows of rte and stsb, batches
of 8, 64 tokens, 128 x 128 matmuls; its numbers only check the JSON's shape.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from .common import alternate, machine_info, paired_ratio, summary, table, target

NAME = "padding"

#: Trainer's default ``seed`` (``TrainingArguments.seed``).
SEED = 42
EFFICIENCY_TARGET = 0.95
FRACTION_TARGET = 0.60

FULL = {"model": "minilm-l6", "batch": 32, "max_seq_length": 128, "train_limit": None,
        "tasks": ["cola", "sst2", "mrpc", "stsb", "rte"], "throughput_tasks": ["cola", "sst2", "mrpc", "stsb", "rte"],
        "rounds": 4, "warmup": 1, "matmul_n": 2048, "seed": SEED, "lr": 5e-5, "weight_decay": 0.01}
QUICK = {"model": "tiny", "batch": 8, "max_seq_length": 64, "train_limit": 96,
         "tasks": ["rte", "stsb"], "throughput_tasks": ["rte"],
         "rounds": 2, "warmup": 1, "matmul_n": 128, "seed": SEED, "lr": 5e-5, "weight_decay": 0.01}


# ============================================================================ batching
def epoch_batches(lengths: list[int], batch: int, strategy: str, seed: int) -> list[list[int]]:
    """One epoch's batches of indices, as the Trainer's sampler orders them (``drop_last=False``).

    ``random``: ``torch.utils.data.RandomSampler`` (the Trainer's default); ``group_by_length``:
    ``transformers.trainer_pt_utils.LengthGroupedSampler(batch, lengths=lengths)`` (what
    ``Trainer._get_train_sampler`` returns for ``train_sampling_strategy="group_by_length"``);
    ``sorted``: every example sorted by length (the bound of any batching). Samplers get a
    ``torch.Generator`` seeded with ``seed``.
    """
    import torch

    if strategy == "random":
        from torch.utils.data import RandomSampler

        order = list(RandomSampler(range(len(lengths)), generator=torch.Generator().manual_seed(seed)))
    elif strategy == "group_by_length":
        from transformers.trainer_pt_utils import LengthGroupedSampler

        order = list(LengthGroupedSampler(batch, lengths=list(lengths), generator=torch.Generator().manual_seed(seed)))
    elif strategy == "sorted":
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return [order[i:i + batch] for i in range(0, len(order), batch)]


def padding_stats(lengths: list[int], batches: list[list[int]]) -> dict[str, Any]:
    """Real and padded tokens of an epoch whose batches are padded to their longest example."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    pad_len = [max(lengths[i] for i in b) for b in batches]
    return {"real_tokens": real, "padded_tokens": padded, "real_per_padded": real / padded,
            "batches": len(batches), "mean_padded_length": statistics.mean(pad_len),
            "median_padded_length": statistics.median(pad_len)}


def pick_batches(lengths: list[int], batches: list[list[int]], size: int, count: int) -> list[list[int]]:
    """``count`` full batches at evenly spaced quantiles ``(k + 0.5) / count`` of the padded length."""
    full = [b for b in batches if len(b) == size] or batches
    ranked = sorted(full, key=lambda b: max(lengths[i] for i in b))
    return [ranked[min(len(ranked) - 1, int((k + 0.5) / count * len(ranked)))] for k in range(count)]


# ============================================================================== FLOPs
def flop_model(model) -> dict[str, int]:
    """Non-embedding parameters, layers and hidden size of a BERT-like model."""
    import torch

    emb = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    total = sum(p.numel() for p in model.parameters())
    non_emb = sum(p.numel() for p in model.parameters() if id(p) not in emb)
    return {"parameters": total, "non_embedding_parameters": non_emb,
            "layers": int(model.config.num_hidden_layers), "hidden": int(model.config.hidden_size)}


def train_flops(seq_lengths: list[int], fm: dict[str, int]) -> float:
    """Training FLOPs of sequences of these lengths: per token ``6 N + 12 L H s`` (``s``: its sequence's length)."""
    n, layers, hidden = fm["non_embedding_parameters"], fm["layers"], fm["hidden"]
    return float(sum(6 * n * s + 12 * layers * hidden * s * s for s in seq_lengths))


# ============================================================================ the task
def _glue_dir(explicit: str | None):
    from .study_cost import _glue_dir as resolve

    return resolve(explicit)


def load_lengths(task: str, tokenizer, cfg: dict[str, Any], glue_dir) -> tuple[Any, list[int], dict[str, Any]]:
    """``(tokenised training split, token counts, info)``; the split is ``None`` when absent from the mirror."""
    from nxmlab.study.data.glue import get_task, load_glue, tokenize_glue

    spec = get_task(task)
    if glue_dir is None or not (glue_dir / task / f"{spec.train_split}.parquet").is_file():
        return None, [], {"measured": False, "source": "missing from the GLUE mirror"}
    raw = load_glue(task, spec.train_split, glue_dir, limit=cfg["train_limit"])
    data = tokenize_glue(raw, spec, tokenizer, cfg["max_seq_length"])
    lengths = [len(x) for x in data["input_ids"]]
    return data, lengths, {"measured": True, "source": "mirror", "rows": len(lengths),
                           "mean_tokens": statistics.mean(lengths), "max_tokens": max(lengths),
                           "truncated_rows": sum(1 for n in lengths if n >= cfg["max_seq_length"])}


def collate(data, idx: list[int], collator, regression: bool) -> dict[str, Any]:
    """A padded batch of these rows; STS-B's scores become two classes (score >= 2.5) for the 2-label head."""
    rows = []
    for i in idx:
        row = dict(data[i])
        if regression:
            row["labels"] = int(float(row["labels"]) >= 2.5)
        rows.append(row)
    return collator(rows)


def measure_throughput(task: str, data, lengths: list[int], epochs: dict[str, list[list[int]]], model, optimizer,
                       collator, fm: dict[str, int], cfg: dict[str, Any]) -> dict[str, Any]:
    """Alternated ``matmul`` / ``before`` / ``after`` calls; fractions of the matmul FLOP rate."""
    import torch

    from nxmlab.study.data.glue import get_task

    from .admm_overhead import train_step

    regression = get_task(task).is_regression
    count = cfg["rounds"]
    chosen = {case: pick_batches(lengths, epochs[strategy], cfg["batch"], count)
              for case, strategy in (("before", "random"), ("after", "group_by_length"))}
    batches = {case: [collate(data, b, collator, regression) for b in bs] for case, bs in chosen.items()}
    flops = {case: [train_flops([lengths[i] for i in b], fm) for b in bs] for case, bs in chosen.items()}
    padded_flops = {case: [train_flops([max(lengths[i] for i in b)] * len(b), fm) for b in bs]
                    for case, bs in chosen.items()}

    n = cfg["matmul_n"]
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(n, n, generator=g) for _ in range(3))
    mm_flops = 2.0 * n ** 3

    log: dict[str, list[int]] = {"before": [], "after": []}

    def stepper(case: str):
        def f():
            k = len(log[case]) % count
            log[case].append(k)
            train_step(model, optimizer, batches[case][k])
        return f

    times = alternate({"matmul": lambda: torch.mm(a, b, out=c), "before": stepper("before"),
                       "after": stepper("after")}, rounds=count, warmup=cfg["warmup"])
    mm_rate = [mm_flops / t for t in times["matmul"]]
    mm_med = statistics.median(mm_rate)
    out: dict[str, Any] = {"batches_timed": {}, "real_tokens_timed": {},
                           "seconds": {"matmul": summary(times["matmul"])}, "real_flops_per_second": {},
                           "fraction_of_matmul": {}, "padded_fraction_of_matmul": {}}
    rates: dict[str, list[float]] = {}
    for case in ("before", "after"):
        which = log[case][cfg["warmup"]:]  # the batch of each timed round
        f_real = [flops[case][k] for k in which]
        f_pad = [padded_flops[case][k] for k in which]
        secs = times[case]
        rates[case] = [f / t for f, t in zip(f_real, secs)]
        per_round = [r / m for r, m in zip(rates[case], mm_rate)]
        per_round_pad = [f / t / m for f, t, m in zip(f_pad, secs, mm_rate)]
        pooled = sum(f_real) / sum(secs)
        value = sum(f_real) / sum(t * m for t, m in zip(secs, mm_rate))  # seconds in same-round matmul FLOPs
        s = summary(per_round)
        out["batches_timed"][case] = [padding_stats(lengths, [bt]) for bt in chosen[case]]
        out["real_tokens_timed"][case] = sum(sum(lengths[i] for i in chosen[case][k]) for k in which)
        out["seconds"][case] = summary(secs)
        out["real_flops_per_second"][case] = {"median": statistics.median(rates[case]), "pooled": pooled}
        out["fraction_of_matmul"][case] = {"value": value, "median": s["median"], "q1": s["q1"], "q3": s["q3"],
                                           "pooled_vs_median_matmul": pooled / mm_med, "per_round": per_round}
        out["padded_fraction_of_matmul"][case] = {
            "value": sum(f_pad) / sum(t * m for t, m in zip(secs, mm_rate)), "median": statistics.median(per_round_pad)}
    out["matmul"] = {"n": n, "flop_per_call": mm_flops, "flops_per_second": summary(mm_rate)}
    out["after_vs_before_real_token_rate"] = paired_ratio(rates["after"], rates["before"])
    return out


# ================================================================================= run
def _load_model(name: str):
    from nxmlab.study.data.models import load_model_and_tokenizer

    return load_model_and_tokenizer(name, num_labels=2, seed=0)


def run(quick: bool = False, glue_dir: str | None = None, **_: Any) -> dict[str, Any]:
    import torch
    from transformers import DataCollatorWithPadding

    from .admm_overhead import make_optimizer

    cfg = dict(QUICK if quick else FULL)
    gdir = _glue_dir(glue_dir)
    tic = time.perf_counter()
    model, tokenizer = _load_model(cfg["model"])
    model.train()
    optimizer, opt_name = make_optimizer(model, cfg["lr"], cfg["weight_decay"])
    collator = DataCollatorWithPadding(tokenizer)
    fm = flop_model(model)

    tasks: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for task in cfg["tasks"]:
        data, lengths, info = load_lengths(task, tokenizer, cfg, gdir)
        entry: dict[str, Any] = dict(info)
        tasks[task] = entry
        if data is None:
            continue
        epochs = {s: epoch_batches(lengths, cfg["batch"], s, cfg["seed"])
                  for s in ("random", "group_by_length", "sorted")}
        stats = {s: padding_stats(lengths, b) for s, b in epochs.items()}
        entry["real_tokens"] = stats["random"]["real_tokens"]
        entry["real_per_padded"] = {"before": stats["random"]["real_per_padded"],
                                    "after": stats["group_by_length"]["real_per_padded"],
                                    "sorted": stats["sorted"]["real_per_padded"]}
        entry["padding"] = {"before": stats["random"], "after": stats["group_by_length"], "sorted": stats["sorted"]}
        entry["padded_tokens_after_vs_before"] = (stats["group_by_length"]["padded_tokens"]
                                                  / stats["random"]["padded_tokens"])
        targets[f"{task} real tokens per padded token (group_by_length)"] = target(
            EFFICIENCY_TARGET, entry["real_per_padded"]["after"], ">=")
        if task in cfg["throughput_tasks"]:
            entry["throughput"] = measure_throughput(task, data, lengths, epochs, model, optimizer, collator, fm, cfg)
            targets[f"{task} real-token FLOP/s / fp32 matmul FLOP/s (group_by_length)"] = target(
                FRACTION_TARGET, entry["throughput"]["fraction_of_matmul"]["after"]["value"], ">=")

    measured = {t: e for t, e in tasks.items() if e.get("measured")}
    timed = {t: e["throughput"] for t, e in measured.items() if "throughput" in e}
    overall = {
        "real_per_padded": {case: {"min": min(e["real_per_padded"][case] for e in measured.values()),
                                   "pooled": sum(e["real_tokens"] for e in measured.values())
                                   / sum(e["padding"][case]["padded_tokens"] for e in measured.values())}
                            for case in ("before", "after", "sorted")} if measured else {},
        "fraction_of_matmul": {case: {"min": min(t["fraction_of_matmul"][case]["value"] for t in timed.values()),
                                      "median": statistics.median(t["fraction_of_matmul"][case]["value"]
                                                                  for t in timed.values())}
                               for case in ("before", "after")} if timed else {},
    }
    mm_all = [r for t in timed.values() for r in t["matmul"]["flops_per_second"]["samples"]]
    notes = [
        f"threads: {torch.get_num_threads()}; model {cfg['model']} ({fm['parameters']:,} parameters, "
        f"{fm['non_embedding_parameters']:,} outside the embedding tables), train mode (dropout on), "
        f"{opt_name}, lr {cfg['lr']}; batches of {cfg['batch']}, max length {cfg['max_seq_length']}, dynamic "
        "padding to each batch's longest example (DataCollatorWithPadding, as nxmlab's recipe).",
        f"before = RandomSampler (the Trainer's default, train_sampling_strategy='random'); after = "
        "transformers.trainer_pt_utils.LengthGroupedSampler(batch, lengths) as Trainer._get_train_sampler "
        "builds it for 'group_by_length' (random megabatches of min(N // (4 batch), 50) batches, each sorted by "
        f"length, the longest example first). Both seeded with torch.Generator().manual_seed({cfg['seed']}) (the "
        "Trainer instead seeds the global RNG with args.seed). One full epoch, the last partial batch "
        "included. sorted = the whole split sorted by length: the best any batching of the split can do.",
        "real_per_padded = real tokens / (sum over batches of batch size x longest example): 1.0 means no "
        "padding at all.",
        "Training FLOPs of the real tokens only: a sequence of s real tokens costs s x (6 N + 12 L H s), N = "
        f"non-embedding parameters ({fm['non_embedding_parameters']:,}), L = layers ({fm['layers']}), H = hidden "
        f"({fm['hidden']}); i.e. 6 N per token for the weights (forward 2 N, backward 4 N) plus 12 L H s per token "
        "for the attention scores and the weighted sum over the sequence's own s tokens. Pooler and "
        "classifier are counted per token (they run once per sequence: a small overcount). "
        "padded_fraction_of_matmul uses the same formula on the padded length (the work the CPU actually does).",
        f"Peak: torch.mm of two {cfg['matmul_n']} x {cfg['matmul_n']} fp32 matrices (2 n^3 FLOPs) timed in "
        "alternation with the steps (matmul, before, after, matmul, ...) after "
        f"{cfg['warmup']} warm-up call(s) each. fraction_of_matmul.value (the figure and the target) = sum of the "
        "timed steps' real FLOPs / sum of (step seconds x the same round's matmul FLOP/s): a pooled ratio, "
        "since the rounds deliberately time different batches; .median is the median over rounds of the "
        "per-round (real FLOPs / step seconds) / (matmul FLOPs / matmul seconds). "
        + (f"Measured matmul rate: {statistics.median(mm_all) / 1e9:.1f} GFLOP/s (median of all rounds)."
           if mm_all else ""),
        f"Timed batches: {cfg['rounds']} full batches per case per task, at the padded-length quantiles "
        f"(k + 0.5) / {cfg['rounds']} of that sampler's epoch, one per round, so the rounds span short and long "
        "batches, and the pooled value approximates the epoch's average. The "
        "step is forward + backward + AdamW step + zero_grad (no gradient clipping, no scheduler).",
        "Where the time goes: fraction_of_matmul is about the timed batches' real_per_padded (padding) x "
        "padded_fraction_of_matmul (how well the padded work runs; attention FLOPs weigh long sequences a bit "
        "more): short sequences mean small matrices, softmax/LayerNorm/GELU/dropout "
        "and the optimizer step, none of which run at matmul speed.",
        "STS-B's scores are turned into two classes (score >= 2.5) so that one 2-label model serves every "
        "task; the head's size does not change the step time.",
    ]
    if quick:
        notes.append("quick mode: tiny model, a few rows, tiny matmuls: the numbers mean nothing, only the shape.")
    return {
        "name": NAME,
        "machine": machine_info(),
        "config": {**cfg, "quick": quick, "glue_dir": str(gdir) if gdir else None, "optimizer": opt_name,
                   "flop_model": fm, "setup_seconds": time.perf_counter() - tic},
        "tasks": tasks,
        "overall": overall,
        "targets": targets,
        "notes": [n for n in notes if n],
    }


def summarize(payload: dict[str, Any]) -> str:
    rows = []
    for task, e in payload["tasks"].items():
        if not e.get("measured"):
            rows.append([task, "-", "-", "-", "-", "-", "-", "-", e.get("source", "")])
            continue
        r = e["real_per_padded"]
        t = e.get("throughput")
        frac = (lambda c: f"{t['fraction_of_matmul'][c]['value']:.3f}") if t else (lambda c: "-")
        rows.append([task, e["rows"], f"{r['before']:.3f}", f"{r['after']:.3f}", f"{r['sorted']:.3f}",
                     frac("before"), frac("after"),
                     f"{t['after_vs_before_real_token_rate']['median']:.2f}x" if t else "-", ""])
    c = payload["config"]
    return f"padding ({c['model']}, batch {c['batch']}, max {c['max_seq_length']}; real tokens per padded token, " \
           f"real-token FLOP/s / fp32 {c['matmul_n']}^2 matmul FLOP/s)\n" + \
        table(rows, ["task", "rows", "real/padded before", "after", "sorted", "FLOP frac before", "after",
                     "after/before rate", "note"])
