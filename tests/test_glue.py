"""Tests for nxmlab.study.data.glue on the offline Parquet mirror (a few dozen rows per split)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from nxmlab.study.data.glue import GLUE_DIR_ENV, GLUE_TASKS, get_task, load_glue, resolve_glue_dir, tokenize_glue

COMPLETE = ["cola", "sst2", "mrpc", "stsb", "rte", "wnli"]
N = 24


# ---------------------------------------------------------------- registry


def test_registry_has_all_nine_tasks():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    stsb = get_task("stsb")
    assert stsb.is_regression and stsb.num_labels == 1 and stsb.label_names is None
    assert get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")
    assert get_task("mnli").num_labels == 3
    assert get_task("qqp").keys == ("question1", "question2")
    assert get_task("cola").keys == ("sentence",)
    for t in GLUE_TASKS.values():
        assert t.train_split == "train" and t.main_metric == "score"
        if t.name != "mnli":
            assert t.eval_splits == ("validation",)
        assert not t.is_regression or t.name == "stsb"
        assert t.label_names is None or len(t.label_names) == t.num_labels


def test_get_task_unknown_lists_choices():
    with pytest.raises(ValueError, match=r"unknown GLUE task 'xyz'; choose one of: cola, sst2, mrpc"):
        get_task("xyz")
    assert get_task("RTE") is GLUE_TASKS["rte"]


def test_registry_matches_mirror_schema(glue_dir: Path):
    """Text columns and label names agree with the nyu-mll/glue files (schema only, no data read)."""
    from datasets import Features

    for name, task in GLUE_TASKS.items():
        files = sorted((glue_dir / name).glob("*.parquet"))
        if not files:  # qqp is not in the mirror
            continue
        for f in files:
            assert f.stem in task.splits, f
            feats = Features.from_arrow_schema(pq.read_schema(f))
            assert list(feats) == [*task.keys, "label", "idx"], f
            if task.label_names is not None:
                assert tuple(feats["label"].names) == task.label_names, f


# ---------------------------------------------------------------- directory resolution


def test_resolve_glue_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)
    assert resolve_glue_dir(None) is None
    monkeypatch.setenv(GLUE_DIR_ENV, str(tmp_path / "env"))
    assert resolve_glue_dir(None) == tmp_path / "env"
    assert resolve_glue_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv(GLUE_DIR_ENV, "")
    assert resolve_glue_dir(None) is None


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("name", COMPLETE)
def test_load_validation_with_limit(name, glue_dir, hf_cache):
    task = get_task(name)
    ds = load_glue(name, "validation", glue_dir=glue_dir, limit=N, cache_dir=hf_cache)
    assert len(ds) == N
    assert ds.column_names == [*task.keys, "label", "idx"]
    labels = ds["label"]
    if task.is_regression:
        assert all(isinstance(v, float) and 0.0 <= v <= 5.0 for v in labels)
        assert ds.features["label"].dtype == "float32"
    else:
        assert set(labels) <= set(range(task.num_labels))
        assert ds.features["label"].names == list(task.label_names)
    assert all(isinstance(ds[0][k], str) and ds[0][k] for k in task.keys)


def test_limit_is_first_rows_and_env_var_is_used(glue_dir, hf_cache, monkeypatch):
    monkeypatch.setenv(GLUE_DIR_ENV, str(glue_dir))
    full = load_glue("mrpc", "validation", cache_dir=hf_cache)
    head = load_glue("mrpc", "validation", limit=10, cache_dir=hf_cache)
    assert len(full) == 408
    assert head["idx"] == full["idx"][:10]  # MRPC idx has gaps, so this checks row order
    assert len(load_glue("wnli", "validation", glue_dir=glue_dir, limit=10_000, cache_dir=hf_cache)) == 71


def test_mnli_two_eval_splits(glue_dir, hf_cache):
    task = get_task("mnli")
    sizes = {}
    for split in task.eval_splits:
        ds = load_glue("mnli", split, glue_dir=glue_dir, limit=N, cache_dir=hf_cache)
        assert ds.column_names == ["premise", "hypothesis", "label", "idx"]
        sizes[split] = len(ds)
        assert set(ds["label"]) <= {0, 1, 2}
    assert sizes == {"validation_matched": N, "validation_mismatched": N}


def test_missing_split_file_message(glue_dir, hf_cache):
    with pytest.raises(FileNotFoundError) as err:
        load_glue("qnli", "train", glue_dir=glue_dir, cache_dir=hf_cache)
    msg = str(err.value)
    assert str(glue_dir / "qnli" / "train.parquet") in msg
    assert "nyu-mll/glue" in msg and GLUE_DIR_ENV in msg and "glue_dir=None" in msg


def test_missing_glue_dir(tmp_path, hf_cache):
    missing = tmp_path / "no_such_glue"
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        load_glue("rte", "validation", glue_dir=missing, cache_dir=hf_cache)
    assert str(missing) in str(err.value) and "nyu-mll/glue" in str(err.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "scrambled"])
def test_corrupt_parquet_raises_value_error(damage, glue_dir, tmp_path, hf_cache):
    good = (glue_dir / "rte" / "validation.parquet").read_bytes()
    bad = tmp_path / "rte" / "validation.parquet"
    bad.parent.mkdir()
    if damage == "garbage":
        data = b"this is not a parquet file\x00\x01" * 64
    elif damage == "truncated":
        data = good[: len(good) // 3]
    else:  # keep header and footer, flip the bytes of the data pages
        data = bytearray(good)
        for i in range(100, len(data) - 2000):
            data[i] ^= 0x5A
        data = bytes(data)
    bad.write_bytes(data)
    with pytest.raises(ValueError, match="could not read GLUE Parquet file") as err:
        load_glue("rte", "validation", glue_dir=tmp_path, cache_dir=hf_cache)
    assert str(bad) in str(err.value)


def test_copied_mirror_layout_loads(glue_dir, tmp_path, hf_cache):
    (tmp_path / "wnli").mkdir()
    shutil.copy(glue_dir / "wnli" / "validation.parquet", tmp_path / "wnli" / "validation.parquet")
    assert len(load_glue("wnli", "validation", glue_dir=tmp_path, cache_dir=hf_cache)) == 71


def test_bad_arguments(glue_dir, hf_cache):
    with pytest.raises(ValueError, match="unknown GLUE task"):
        load_glue("xyz", "validation", glue_dir=glue_dir)
    with pytest.raises(ValueError, match=r"valid splits: train, validation_matched, validation_mismatched"):
        load_glue("mnli", "validation", glue_dir=glue_dir)
    with pytest.raises(ValueError, match="limit"):
        load_glue("rte", "validation", glue_dir=glue_dir, limit=-1)


def test_hub_fallback_dispatch(monkeypatch):
    """Without a mirror the Hub dataset nyu-mll/glue is requested (faked here: no network)."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs["split"]))
        return datasets.Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "label": [0], "idx": [0]})

    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert len(load_glue("rte", "train")) == 1
    assert calls == [("nyu-mll/glue", "rte", "train")]

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match=GLUE_DIR_ENV):
        load_glue("rte", "train")


# ---------------------------------------------------------------- tokenisation


@pytest.mark.parametrize(("name", "label_dtype"), [("rte", "int64"), ("stsb", "float32"), ("sst2", "int64")])
def test_tokenize_glue(name, label_dtype, glue_dir, hf_cache, minilm_tokenizer):
    max_len = 64  # RTE: some pairs are truncated, some are not
    task = get_task(name)
    raw = load_glue(name, "validation", glue_dir=glue_dir, limit=N, cache_dir=hf_cache)
    tok = tokenize_glue(raw, name, minilm_tokenizer, max_seq_length=max_len)
    assert set(tok.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert tok.features["labels"].dtype == label_dtype
    if task.is_regression:
        assert tok["labels"] == pytest.approx(raw["label"])
    else:
        assert tok["labels"] == raw["label"]
    lengths = [len(ids) for ids in tok["input_ids"]]
    assert max(lengths) <= max_len
    assert len(set(lengths)) > 1  # not padded to a common length
    pad = minilm_tokenizer.pad_token_id
    for ids, mask, types in zip(tok["input_ids"], tok["attention_mask"], tok["token_type_ids"]):
        assert pad not in ids and set(mask) == {1}
        assert ids[0] == minilm_tokenizer.cls_token_id and ids[-1] == minilm_tokenizer.sep_token_id
        assert (1 in types) == (len(task.keys) == 2)  # sentence pairs use segment B
    if name == "rte":
        assert max_len in lengths  # RTE premises are long: truncation happened


def test_tokenize_glue_checks_columns(glue_dir, hf_cache, minilm_tokenizer):
    raw = load_glue("rte", "validation", glue_dir=glue_dir, limit=4, cache_dir=hf_cache)
    with pytest.raises(ValueError, match="sentence"):
        tokenize_glue(raw, "cola", minilm_tokenizer)
