"""bench/semi_structured.py: a one-line skip without a suitable GPU; on one, the quick mode's JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.semi_structured import gpu_or_reason, main, prune_4x2
from nxmlab.nxm import is_nxm

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_prune_4x2_keeps_the_two_largest_of_every_four():
    weight = torch.tensor([[0.1, -0.4, 0.3, 0.2, 1.0, 0.0, -2.0, 0.5]])
    assert torch.equal(prune_4x2(weight), torch.tensor([[0.0, -0.4, 0.3, 0.0, 1.0, 0.0, -2.0, 0.0]]))
    assert is_nxm(prune_4x2(torch.randn(64, 128)), "4:2")


@pytest.mark.skipif(gpu_or_reason() is None, reason="a suitable GPU is present: the GPU test runs instead")
def test_without_a_gpu_it_skips_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "bench/semi_structured.py", "--out", str(tmp_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith("semi_structured: skipped: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu
@pytest.mark.skipif(gpu_or_reason() is not None, reason="needs a CUDA GPU with compute capability >= 8.0")
def test_quick_mode_on_a_gpu(tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "semi_structured.json").read_text())
    backends = data["config"]["backends"]
    assert backends[0] == "cutlass" and data["machine"]["gpu"]
    assert len(data["results"]) == 3 and len(data["layers"]) == 1
    for row in data["results"]:
        for backend in backends:
            assert row["max_rel_error"][backend] < 1e-2
            assert row["sparse_over_dense"][backend]["median"] > 0


def test_plumbing_on_cpu_with_the_conversion_stubbed(tmp_path, monkeypatch):
    """Everything but the kernels: weights from an exported folder, alternation, ratios, JSON, summary."""
    from bench import semi_structured as bench
    from nxmlab.admm import ADMM
    from nxmlab.export import save_sparse
    from nxmlab.targets import select_targets

    from ._tiny import toy_bert

    model = toy_bert(hidden=64)
    targets = select_targets(model)
    ADMM(model, targets, "4:2").hard_prune()
    save_sparse(model, targets, "4:2", tmp_path / "hf", metadata={"base_model": "toy"})
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    monkeypatch.setattr(bench, "_sparse", lambda weight, cutlass: weight.clone())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "stub")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (9, 0))
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: True)
    monkeypatch.setattr(bench, "QUICK", {**bench.QUICK, "models": {"tiny": (64, 128)}, "seq": 16, "rounds": 2, "reps": 1})
    payload = bench.run(quick=True, model_dir=str(tmp_path / "hf"))
    assert [r["model"] for r in payload["layers"]] == ["toy (exported)", "tiny"]
    assert payload["config"]["backends"] == ["cutlass", "cusparselt"]
    first = payload["results"][0]
    assert first["shape"] == [64, 64] and first["per_layer"] == 4 and first["tokens"] == 32
    assert first["max_rel_error"] == {"cutlass": 0.0, "cusparselt": 0.0}
    assert payload["layers"][0]["sparse_over_dense"]["cutlass"]["median"] > 0
    json.dumps(payload)
    assert "cusparselt/dense" in bench.summarize(payload)
