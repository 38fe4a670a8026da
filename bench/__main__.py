"""``python -m bench [--quick] [--only projection,admm,learned,kd,study,padding] [--out DIR] [--threads N]``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from . import BENCHMARKS
from .common import REPO_ROOT, write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="seconds-long smoke mode (tiny sizes; for CI, its timings mean nothing)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: bench/results, or bench/results/quick with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--results-dir", default="results", help="results store read by study (default: results)")
    parser.add_argument("--glue-dir", default=None, help="GLUE mirror for study (default: $NXMLAB_GLUE_DIR)")
    ns = parser.parse_args(argv)

    wanted = [w.strip() for w in ns.only.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in BENCHMARKS]
    if unknown or not wanted:
        parser.error(f"unknown benchmark(s) {unknown or '(none)'}; choose from {', '.join(BENCHMARKS)}")
    out = Path(ns.out) if ns.out else REPO_ROOT / "bench" / "results" / ("quick" if ns.quick else "")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

    import torch

    if ns.threads:
        torch.set_num_threads(ns.threads)
    summaries = []
    for key, module_name in BENCHMARKS.items():  # fixed order, see BENCHMARKS
        if key not in wanted:
            continue
        module = importlib.import_module(f".{module_name}", __package__)
        print(f"[bench] {module.NAME} ({'quick' if ns.quick else 'full'}) ...", flush=True)
        tic = time.perf_counter()
        payload = module.run(quick=ns.quick, results_dir=ns.results_dir, glue_dir=ns.glue_dir)
        payload["mode"] = "quick" if ns.quick else "full"
        payload["command"] = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
        payload["elapsed_seconds"] = time.perf_counter() - tic
        path = write_json(out / f"{module.NAME}.json", payload)
        text = module.summarize(payload)
        missed = [name for name, t in payload.get("targets", {}).items() if not t["met"]]
        if payload.get("targets"):
            text += f"\ntargets met: {len(payload['targets']) - len(missed)}/{len(payload['targets'])}" + (
                f" (missed: {'; '.join(missed)})" if missed else "")
        print(f"[bench] {module.NAME}: {payload['elapsed_seconds']:.1f} s -> {path}", flush=True)
        summaries.append(text)
    print("\n" + "\n\n".join(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
