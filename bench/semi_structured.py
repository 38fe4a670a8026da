"""GPU speed of 4:2 Linears: dense fp16 against torch's semi-structured (NVIDIA 2:4) sparse kernels.

For the target Linears of MiniLM-L6 (hidden 384, FFN 1536) and BERT-base (768, 3072):
the attention projections ``[h, h]`` (query, key, value and attention output: four per
layer), FFN in ``[f, h]`` and FFN out ``[h, f]``, at batch 16 and 64 x sequence length
128 (2,048 and 8,192 tokens), fp16, on one CUDA GPU in one run. Each case is
``F.linear(x, W, b)`` with the dense 4:2-pruned weight (``dense``, the baseline), and
the same weight as ``torch.sparse.to_sparse_semi_structured`` with the CUTLASS kernels
(``cutlass``) and, where torch has it, cuSPARSELt (``cusparselt``).

Timing: the cases alternate (``dense cutlass cusparselt dense ...``) after warm-up;
one sample is ``reps`` calls followed by ``torch.cuda.synchronize()``, divided by
``reps``. A ratio is the median over rounds of the case's time over the same round's
dense time (below 1: the sparse kernel is faster); ``layer`` adds the six Linears of
one encoder layer (4 x ``[h, h]`` + FFN in + FFN out). Each case's output is compared
with the dense one (``max_rel_error``).

Weights: ``--model DIR`` (a folder written by ``nxmlab export``) times that model's own
layer-0 targets under its base model's name; otherwise, and always for BERT-base (not
offline), random fp16 weights pruned to 4:2 by magnitude. The kernels' speed depends on
the shapes and the pattern, not on the values.

Usage: ``python -m bench.semi_structured [--model DIR] [--out DIR] [--rounds N] [--quick]``
writes ``bench/results/semi_structured.json``. Without a CUDA GPU of compute capability
>= 8.0 it prints one line and exits 0, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/semi_structured.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "bench"

from .common import REPO_ROOT, machine_info, paired_ratio, summary, table, write_json  # noqa: E402

NAME = "semi_structured"

#: ``{model: (hidden, FFN width)}`` of the timed shapes.
MODELS = {"minilm-l6": (384, 1536), "bert-base": (768, 3072)}
#: Linear kinds of one encoder layer: ``(name, [out, in] from (h, f), count per layer)``.
KINDS = (("attention [h,h] x4", lambda h, f: (h, h), 4), ("ffn1 [f,h]", lambda h, f: (f, h), 1),
         ("ffn2 [h,f]", lambda h, f: (h, f), 1))
FULL = {"models": MODELS, "batches": [16, 64], "seq": 128, "rounds": 20, "warmup": 3, "reps": 20}
QUICK = {"models": {"tiny": (128, 512)}, "batches": [2], "seq": 64, "rounds": 3, "warmup": 1, "reps": 2}
#: Where the weights and inputs live (the tests run the plumbing on CPU with the conversion stubbed).
DEVICE = "cuda"


def gpu_or_reason() -> str | None:
    """``None`` when the semi-structured kernels can run here, else why not (one line)."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"{torch.cuda.get_device_name()} has compute capability {major}.{minor}, the kernels need >= 8.0"
    return None


def prune_4x2(weight):
    """Magnitude 4:2 (keep 2 of every 4 along the input dimension), same dtype and device."""
    import torch

    groups = weight.reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.abs().topk(2, dim=1).indices, True)
    return groups.masked_fill(~keep, 0).reshape(weight.shape)


def exported_weights(folder: str) -> tuple[str, dict[str, tuple[Any, Any]]]:
    """``(base model name, {kind: (weight, bias)})``: layer 0's targets of an exported folder, fp16 on :data:`DEVICE`."""
    import torch

    from nxmlab.export import load_sparse
    from nxmlab.nxm import is_nxm
    from nxmlab.targets import describe_target

    model = load_sparse(folder)
    meta = json.loads((Path(folder) / "config.json").read_text())["nxm_sparsity"]
    if (meta["n"], meta["m"]) != (4, 2):
        raise SystemExit(f"semi_structured: {folder} is {meta['pattern']}; the kernels need 4:2 (NVIDIA's 2:4)")
    modules = dict(model.named_modules())
    by_component = {}
    for name in meta["targets"]:
        component, layer = describe_target(name)
        if layer == 0:
            by_component[component] = modules[name]
    pick = {"attention [h,h] x4": "query", "ffn1 [f,h]": "ffn1", "ffn2 [h,f]": "ffn2"}
    out = {}
    for kind, component in pick.items():
        module = by_component[component]
        weight = module.weight.detach().to(DEVICE, torch.float16)
        assert is_nxm(weight, "4:2"), component
        out[kind] = (weight, module.bias.detach().to(DEVICE, torch.float16))
    return f"{meta.get('base_model', 'exported')} (exported)", out


def random_weights(hidden: int, ffn: int, seed: int = 0) -> dict[str, tuple[Any, Any]]:
    """``{kind: (weight, bias)}``: random fp16 weights pruned 4:2, on :data:`DEVICE`."""
    import torch

    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    out = {}
    for kind, shape, _ in KINDS:
        rows, cols = shape(hidden, ffn)
        weight = torch.randn(rows, cols, device=DEVICE, dtype=torch.float16, generator=generator) * 0.02
        out[kind] = (prune_4x2(weight), torch.zeros(rows, device=DEVICE, dtype=torch.float16))
    return out


def _sparse(weight, cutlass: bool):
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    before = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = cutlass
    try:
        return to_sparse_semi_structured(weight)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = before


def time_kind(weight, bias, tokens: int, cfg: dict[str, Any], backends: list[str]) -> dict[str, Any]:
    """Dense against each sparse backend for one Linear at ``tokens`` rows."""
    import torch
    import torch.nn.functional as F

    from .common import alternate

    x = torch.randn(tokens, weight.shape[1], device=DEVICE, dtype=torch.float16)
    weights = {"dense": weight, **{b: _sparse(weight, cutlass=b == "cutlass") for b in backends}}
    reference = F.linear(x, weight, bias).float()
    errors = {b: float((F.linear(x, weights[b], bias).float() - reference).abs().max() / reference.abs().max())
              for b in backends}

    def case(w):
        def call():
            for _ in range(cfg["reps"]):
                F.linear(x, w, bias)
            torch.cuda.synchronize()
        return call

    torch.cuda.synchronize()
    raw = alternate({name: case(w) for name, w in weights.items()}, rounds=cfg["rounds"], warmup=cfg["warmup"])
    times = {name: [t / cfg["reps"] for t in samples] for name, samples in raw.items()}
    return {"seconds": {name: summary(t) for name, t in times.items()},
            "sparse_over_dense": {b: paired_ratio(times[b], times["dense"]) for b in backends},
            "max_rel_error": errors, "_times": times}


def run(quick: bool = False, model_dir: str | None = None, rounds: int | None = None) -> dict[str, Any]:
    """Time every model shape, batch and Linear kind; return the JSON payload."""
    import torch

    cfg = dict(QUICK if quick else FULL)
    if rounds:
        cfg["rounds"] = rounds
    backends = ["cutlass"] + (["cusparselt"] if torch.backends.cusparselt.is_available() else [])
    sets: dict[str, dict[str, tuple[Any, Any]]] = {}
    if model_dir:
        name, weights = exported_weights(model_dir)
        sets[name] = weights
    for model, (hidden, ffn) in cfg["models"].items():
        if model_dir and model == "minilm-l6" and name.startswith("minilm-l6"):
            continue  # the exported model stands for it
        sets[model] = random_weights(hidden, ffn)
    results, layers = [], []
    for model, weights in sets.items():
        for batch in cfg["batches"]:
            tokens = batch * cfg["seq"]
            layer_times: dict[str, list[float]] = {}
            for kind, _, count in KINDS:
                weight, bias = weights[kind]
                measured = time_kind(weight, bias, tokens, cfg, backends)
                for case, samples in measured.pop("_times").items():
                    per_layer = [count * t for t in samples]
                    layer_times[case] = [a + b for a, b in zip(layer_times[case], per_layer)] if case in layer_times \
                        else per_layer
                results.append({"model": model, "batch": batch, "seq": cfg["seq"], "tokens": tokens, "kind": kind,
                                "shape": list(weight.shape), "per_layer": count, **measured})
            layers.append({"model": model, "batch": batch, "tokens": tokens,
                           "seconds": {case: summary(t) for case, t in layer_times.items()},
                           "sparse_over_dense": {b: paired_ratio(layer_times[b], layer_times["dense"])
                                                 for b in backends}})
    machine = machine_info()
    machine.update(gpu=torch.cuda.get_device_name(), capability=".".join(map(str, torch.cuda.get_device_capability())),
                   cuda=torch.version.cuda, cusparselt=torch.backends.cusparselt.is_available())
    return {
        "name": NAME, "mode": "quick" if quick else "full", "machine": machine,
        "config": {**{k: v for k, v in cfg.items() if k != "models"}, "models": {m: list(s) for m, s in cfg["models"].items()},
                   "quick": quick, "model_dir": model_dir, "dtype": "float16", "backends": backends},
        "results": results, "layers": layers, "targets": {},
        "notes": [
            "sparse_over_dense: median over rounds of (sparse seconds / dense seconds) in the same round; "
            "below 1 the 2:4 kernel is faster than the dense fp16 GEMM.",
            "layer: the six target Linears of one encoder layer (4 x [h,h] + FFN in + FFN out), summed per round.",
            "Only the Linears are timed: attention, LayerNorm and the rest of the layer are unchanged by 4:2.",
        ],
    }


def summarize(payload: dict[str, Any]) -> str:
    """The per-layer table and the per-kind table."""
    backends = payload["config"]["backends"]
    rows = [[r["model"], r["batch"], f"{1e6 * r['seconds']['dense']['median']:.1f}",
             *[f"{r['sparse_over_dense'][b]['median']:.2f}x" for b in backends]] for r in payload["layers"]]
    text = "one encoder layer's six target Linears (fp16)\n" + table(
        rows, ["model", "batch", "dense us", *[f"{b}/dense" for b in backends]])
    rows = [[r["model"], r["batch"], r["kind"], f"{1e6 * r['seconds']['dense']['median']:.1f}",
             *[f"{r['sparse_over_dense'][b]['median']:.2f}x" for b in backends]] for r in payload["results"]]
    return text + "\n\nper Linear\n" + table(rows, ["model", "batch", "kind", "dense us",
                                                    *[f"{b}/dense" for b in backends]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.semi_structured", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a folder written by nxmlab export (its layer-0 targets)")
    parser.add_argument("--out", default=None, help="output folder (default: bench/results, or .../quick)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default: 20)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a few rounds: checks the JSON only")
    ns = parser.parse_args(argv)
    reason = gpu_or_reason()
    if reason is not None:
        print(f"{NAME}: skipped: {reason} (the 2:4 sparse kernels need a CUDA GPU with compute capability >= 8.0)")
        return 0
    tic = time.perf_counter()
    payload = run(quick=ns.quick, model_dir=ns.model, rounds=ns.rounds)
    payload["command"] = "python -m bench.semi_structured " + " ".join(sys.argv[1:] if argv is None else argv)
    payload["elapsed_seconds"] = time.perf_counter() - tic
    out = Path(ns.out) if ns.out else REPO_ROOT / "bench" / "results" / ("quick" if ns.quick else "")
    path = write_json(out / f"{NAME}.json", payload)
    print(summarize(payload))
    print(f"[bench] {NAME}: {payload['elapsed_seconds']:.1f} s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
