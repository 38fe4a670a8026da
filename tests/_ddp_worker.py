"""``nxmlab train`` with dropout off and a per-rank dump of what each rank holds (tests/test_ddp.py).

Usage: ``[torchrun ...] tests/_ddp_worker.py DUMP_DIR train ARGS...``.  Each rank writes
``DUMP_DIR/rank<r>.pt``: its ADMM state at the end of the ADMM phase (Z, U, masks), the
masks of every prune step and its final weights.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def main() -> int:
    dump_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    from nxmlab.study import cli
    from nxmlab.study.train import hooks, recipe

    rank = int(os.environ.get("RANK", "0"))
    dump: dict = {"prune_masks": []}
    load = recipe.load_model_and_tokenizer

    def no_dropout(*args, **kwargs):
        model, tokenizer = load(*args, **kwargs)
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            if hasattr(model.config, key):
                setattr(model.config, key, 0.0)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        return model, tokenizer

    end = hooks.ADMMHooks.end

    def keep_admm(self):
        end(self)
        dump["admm"] = {k: {n: t.clone() for n, t in self.admm.state_dict()[k].items()} for k in ("Z", "U", "masks")}

    apply = recipe.apply_masks

    def keep_masks(model, masks):
        dump["prune_masks"].append({n: m.clone() for n, m in masks.items()})
        return apply(model, masks)

    evaluate = recipe._Run.evaluate

    def keep_final(self, key, model, predictions=False):
        if key == "final":
            dump["final"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return evaluate(self, key, model, predictions)

    recipe.load_model_and_tokenizer = no_dropout
    hooks.ADMMHooks.end = keep_admm
    recipe.apply_masks = keep_masks
    recipe._Run.evaluate = keep_final
    code = cli.main(argv)
    dump_dir.mkdir(parents=True, exist_ok=True)
    torch.save(dump, dump_dir / f"rank{rank}.pt")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
