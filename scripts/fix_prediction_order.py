"""Repair predictions.parquet files written before the evaluation-order fix (issue #14).

transformers 5 groups *evaluation* batches by length too when ``group_by_length`` is on,
so ``Trainer.predict`` returned the predictions in its length-grouped order while nxmlab
paired them with the GLUE ``idx`` in dataset order.  The scores were right (Trainer
pairs predictions and labels in the same order); only the stored ``idx`` column was not.

The order is deterministic: a ``LengthGroupedSampler`` over the tokenized validation set
with the run's eval batch size and a generator seeded with the run's seed.  This script
rebuilds it, reorders the stored ``idx``, and writes the file back **only** when the GLUE
score recomputed from the repaired file equals the run's stored score (|diff| < 1e-6) and
the stored file does not already match.  Usage: ``python scripts/fix_prediction_order.py
results`` (dry run: ``--check``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler


def _score(task, frame, gold):
    from nxmlab.study.data.metrics import glue_metrics

    pred = frame.set_index("idx")["prediction"].reindex(gold.index)
    if pred.isna().any():
        return float("nan")
    return glue_metrics(task, pred.to_numpy(), gold.to_numpy())["score"]


def main(argv=None) -> int:
    from nxmlab.study.data.glue import get_task, load_glue, tokenize_glue
    from nxmlab.study.data.models import load_tokenizer
    from nxmlab.study.results.stats import gold_labels

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results_dir")
    ap.add_argument("--check", action="store_true", help="report only, write nothing")
    ns = ap.parse_args(argv)
    golds, tokenizers, fixed, ok, failed = {}, {}, 0, 0, 0
    for metrics_path in sorted(Path(ns.results_dir).glob("*/*/metrics.json")):
        run = metrics_path.parent
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("status") != "finished" or not (run / "predictions.parquet").is_file():
            continue
        config = json.loads((run / "config.json").read_text())
        task = get_task(metrics["task"])
        if task.name not in golds:
            golds[task.name] = gold_labels(task.name)
        frame = pd.read_parquet(run / "predictions.parquet")
        split = task.eval_splits[0]
        if frame["split"].nunique() != 1 or config.get("eval_limit"):
            print(f"skip {run}: several splits or an eval limit")
            continue
        if abs(_score(task.name, frame, golds[task.name]) - metrics["score"]) < 1e-6:
            ok += 1
            continue
        model = config["model"]
        if model not in tokenizers:
            tokenizers[model] = load_tokenizer(model)
        raw = load_glue(task.name, split, None)
        data = tokenize_glue(raw, task, tokenizers[model], config.get("max_seq_length", 128))
        training = config.get("training", {})
        sampler = LengthGroupedSampler(training.get("per_device_eval_batch_size", 64), dataset=data,
                                       model_input_name="input_ids",
                                       generator=torch.Generator().manual_seed(training["seed"] if training.get("data_seed") is None else training["data_seed"]))
        order = np.fromiter(iter(sampler), dtype=np.int64)
        repaired = frame.copy()
        repaired["idx"] = np.asarray(raw["idx"])[order]
        score = _score(task.name, repaired, golds[task.name])
        if abs(score - metrics["score"]) >= 1e-6:
            print(f"FAILED {run}: repaired score {score:.6f} != stored {metrics['score']:.6f}")
            failed += 1
            continue
        if not ns.check:
            repaired = repaired.sort_values("idx", kind="stable").reset_index(drop=True)
            tmp = run / ".predictions.parquet.tmp"
            repaired.to_parquet(tmp, index=False)
            tmp.replace(run / "predictions.parquet")
        fixed += 1
        print(f"{'would fix' if ns.check else 'fixed'} {run}: score {score:.6f}")
    print(f"{ok} already right, {fixed} {'to fix' if ns.check else 'fixed'}, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
