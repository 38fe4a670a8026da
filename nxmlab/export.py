"""Deployment: Hugging Face folders with n:m metadata, compressed checkpoints and 2:4 layers.

* :func:`save_sparse` writes a model whose targets are exactly n:m as a Hugging Face
  folder with the pattern in ``config.json`` (key :data:`METADATA_KEY`), in one of two forms:

  - **dense**: an ordinary checkpoint (``model.safetensors``) that
    ``AutoModelForSequenceClassification.from_pretrained`` reloads, zeros included;
  - **compressed**: every target as compressed-tensors' bitmask layout
    (``sparse-24-bitmask`` for 4:2, ``sparse-bitmask`` otherwise, described by
    ``quantization_config.sparsity_config``), in :data:`COMPRESSED_WEIGHTS`.  That is not a
    file name ``from_pretrained`` looks for, so a plain load fails loudly instead of
    initialising the targets at random; :func:`load_sparse` rebuilds the exact weights.

  :func:`verify_sparse` checks a folder against its metadata.  Every file is checked as it
  is read: an unreadable ``config.json``, weights file or metadata, and compressed parts
  that do not describe an n:m weight (positions out of range, counts that disagree, shapes
  that do not match), raise ``ValueError`` naming the file or the tensor.
* :func:`compressed_state_dict` / :func:`decompress_state_dict` store every NxM
  target as ``(values, indices)`` (see :func:`nxmlab.nxm.compress`): for 4:2 in fp32
  that is half the values plus one byte of index per kept value.
* :func:`to_semi_structured` swaps the weights of 4:2 ("2:4" in NVIDIA's notation)
  ``nn.Linear`` layers for ``torch.sparse.SparseSemiStructuredTensor`` so that
  matmuls run on sparse tensor cores (CUDA, compute capability >= 8.0, fp16/bf16).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .nxm import NxM, check_tensor, compress, decompress, is_nxm

__all__ = [
    "COMPRESSED_WEIGHTS",
    "METADATA_KEY",
    "bitmask_compress",
    "bitmask_decompress",
    "compressed_state_dict",
    "decompress_state_dict",
    "load_sparse",
    "read_metadata",
    "save_sparse",
    "semi_structured_supported",
    "sparsity_config",
    "to_semi_structured",
    "verify_sparse",
]

#: ``config.json`` key of nxmlab's sparsity metadata.
METADATA_KEY = "nxm_sparsity"
#: Weights file of the compressed form (``from_pretrained`` does not look for it: a plain load fails).
COMPRESSED_WEIGHTS = "model.nxm-compressed.safetensors"
#: compressed-tensors release whose sparse compressors define the layout written here (the last
#: release that has them; later ones keep only the configuration classes).
COMPRESSED_TENSORS_LAYOUT = "0.14.0.1"
#: Files ``from_pretrained`` loads weights from; a compressed folder must have none of them.
PLAIN_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def compressed_state_dict(
    model: nn.Module, targets: Mapping[str, nn.Module], pattern: NxM | str
) -> dict[str, torch.Tensor]:
    """The model's state dict with each target weight replaced by compressed parts.

    ``{name}.weight`` becomes ``{name}.weight_values`` and ``{name}.weight_indices``.
    """
    pattern = NxM.parse(pattern)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, module in targets.items():
        values, indices = compress(module.weight, pattern, name)
        del state[f"{name}.weight"]
        state[f"{name}.weight_values"] = values.clone()
        state[f"{name}.weight_indices"] = indices.clone()
    return state


def decompress_state_dict(state: Mapping[str, torch.Tensor], pattern: NxM | str) -> dict[str, torch.Tensor]:
    """Inverse of :func:`compressed_state_dict`: a plain, loadable state dict.

    Raises:
        ValueError: a ``*.weight_values`` without its ``*.weight_indices`` (or the reverse),
            or a pair :func:`nxmlab.nxm.decompress` refuses (indices out of range or repeated
            in a group, shapes that differ); the message names the weight.
    """
    pattern = NxM.parse(pattern)
    if not isinstance(state, Mapping):
        raise TypeError(f"state: expected a mapping {{name: tensor}}, got {type(state).__qualname__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".weight_values"):
            base = key[: -len("_values")]
            if base + "_indices" not in state:
                raise ValueError(f"{base}: {key} has no {base}_indices")
            out[base] = decompress(value, state[base + "_indices"], pattern, base)
        elif key.endswith(".weight_indices"):
            if key[: -len("_indices")] + "_values" not in state:
                raise ValueError(f"{key[: -len('_indices')]}: {key} has no values")
        else:
            out[key] = value
    return out


def semi_structured_supported() -> bool:
    """True when CUDA sparse semi-structured (2:4) kernels can run here."""
    if not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability()
    return major >= 8


def to_semi_structured(model: nn.Module, targets: Mapping[str, nn.Linear]) -> dict[str, nn.Linear]:
    """Convert 4:2 target layers in place to sparse semi-structured weights.

    The model must already be on a CUDA device in fp16 or bf16, and every target
    must be exactly 4:2 (keep 2 of every 4).  Layers whose shapes the kernels do not
    support are left dense and omitted from the returned dict.

    Returns:
        ``{name: module}`` of the converted layers.

    Raises:
        RuntimeError: without a CUDA device of compute capability >= 8.0.
        ValueError: if a target is not 4:2 or not fp16/bf16 on CUDA.
    """
    if not semi_structured_supported():
        raise RuntimeError("sparse semi-structured (2:4) kernels need a CUDA GPU with compute capability >= 8.0")
    from torch.sparse import to_sparse_semi_structured

    converted = {}
    for name, module in targets.items():
        weight = module.weight
        if weight.device.type != "cuda" or weight.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"{name}: needs an fp16/bf16 weight on CUDA, got {weight.dtype} on {weight.device}")
        if not is_nxm(weight, NxM(4, 2)):
            raise ValueError(f"{name}: weight is not 4:2 (keep 2 of every 4); prune it first")
        try:
            sparse = to_sparse_semi_structured(weight.detach())
        except (RuntimeError, ValueError):
            continue  # shape not supported by the kernels: stay dense
        module.weight = nn.Parameter(sparse, requires_grad=False)
        converted[name] = module
    return converted


# ------------------------------------------------------------------ Hugging Face folders
#: The tensors compressed-tensors' bitmask layouts store for one weight (besides the module prefix).
_CT_PARTS = ("shape", "compressed", "bitmask", "row_offsets")


def _ct_format(pattern: NxM) -> str:
    return "sparse-24-bitmask" if (pattern.n, pattern.m) == (4, 2) else "sparse-bitmask"


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bit-pack a 2-D bool mask along its rows, little bit order: ``[rows, ceil(cols / 8)]`` uint8."""
    return torch.from_numpy(np.packbits(mask.cpu().numpy(), axis=-1, bitorder="little"))


def _unpack_bits(bits: torch.Tensor, shape: list[int]) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(bits.cpu().numpy(), axis=-1, count=shape[-1], bitorder="little")
                            .reshape(shape).astype(bool))


def bitmask_compress(weight: torch.Tensor, pattern: NxM | str, name: str = "weight") -> dict[str, torch.Tensor]:
    """One n:m weight in compressed-tensors' bitmask layout (its keys without the module prefix).

    * 4:2 (NVIDIA's 2:4), ``sparse-24-bitmask``: ``compressed`` ``[rows, cols / 2]`` holds the
      two kept values of every group of four (zeros included when a group keeps fewer),
      ``bitmask`` ``[rows, ceil(cols / 8)]`` their positions (one bit per weight, little
      bit order), ``shape`` ``[[rows], [cols]]``;
    * other patterns, ``sparse-bitmask``: ``compressed`` the non-zeros in row-major order,
      ``bitmask`` as above, ``shape`` ``[rows, cols]``, ``row_offsets`` where each row starts.

    Raises:
        ValueError: if ``weight`` is not 2-D and n:m.
    """
    pattern = NxM.parse(pattern)
    w = weight.detach().cpu().contiguous()
    if not is_nxm(w, pattern):
        raise ValueError(f"{name}: weight is not {pattern!r}")
    rows, cols = w.shape
    if _ct_format(pattern) == "sparse-24-bitmask":
        # exactly two positions per group of four: the non-zeros, then the lowest-index zeros
        rank = (w != 0).reshape(-1, 4).to(torch.int8) * 4 + torch.arange(3, -1, -1, dtype=torch.int8)
        mask = torch.zeros(rank.shape, dtype=torch.bool).scatter_(1, rank.topk(2, dim=1).indices, True).reshape(w.shape)
        return {"shape": torch.tensor([rows, cols]).reshape(-1, 1), "compressed": w[mask].reshape(rows, cols // 2),
                "bitmask": _pack_bits(mask)}
    mask = w != 0
    counts = mask.sum(dim=-1)
    return {"shape": torch.tensor([rows, cols]), "compressed": w[mask], "bitmask": _pack_bits(mask),
            "row_offsets": torch.cumsum(counts, 0) - counts}


def _check_parts(parts: Mapping[str, torch.Tensor], name: str, pattern: NxM | None) -> tuple[list[int], torch.Tensor]:
    """``(shape, mask)`` of one weight's bitmask parts, after checking that they describe one."""
    if not isinstance(parts, Mapping):
        raise TypeError(f"{name}: expected a mapping of bitmask parts, got {type(parts).__qualname__}")
    missing = [k for k in ("shape", "compressed", "bitmask") if k not in parts]
    if missing:
        raise ValueError(f"{name}: bitmask parts {', '.join(missing)} missing")
    for key in ("shape", "compressed", "bitmask", "row_offsets"):
        if key in parts:
            check_tensor(parts[key], f"{name}.{key}", dtypes=None)
    shape = [int(s) for s in parts["shape"].flatten()]
    if len(shape) != 2 or min(shape) < 1 or parts["shape"].is_floating_point():
        raise ValueError(f"{name}.shape: expected [rows, cols] of positive integers, got {shape}")
    rows, cols = shape
    bits = parts["bitmask"]
    if bits.dtype != torch.uint8 or tuple(bits.shape) != (rows, (cols + 7) // 8):
        raise ValueError(f"{name}.bitmask: expected uint8 of shape {(rows, (cols + 7) // 8)} for a {rows}x{cols} "
                         f"weight, got {bits.dtype} {tuple(bits.shape)}")
    if cols % 8 and bool((bits[:, -1] >> (cols % 8)).any()):
        raise ValueError(f"{name}.bitmask: positions set beyond column {cols} (the row has {cols})")
    mask = _unpack_bits(bits, shape)
    compressed = parts["compressed"]
    if not compressed.is_floating_point():
        raise ValueError(f"{name}.compressed: expected floating-point values, got {compressed.dtype}")
    kept = int(mask.sum())
    if pattern is not None:
        if cols % pattern.n:
            raise ValueError(f"{name}.shape: {cols} columns are not groups of {pattern.n}")
        per_group = mask.reshape(-1, pattern.n).sum(dim=1)
        exact = _ct_format(pattern) == "sparse-24-bitmask"  # this layout keeps exactly m per group
        bad = (per_group != pattern.m) if exact else (per_group > pattern.m)
        if bool(bad.any()):
            g = int(bad.nonzero()[0])
            groups = cols // pattern.n
            raise ValueError(f"{name}.bitmask: group {g % groups} of row {g // groups} keeps {int(per_group[g])} "
                             f"of {pattern.n}, not {'' if exact else 'at most '}{pattern.m} ({pattern!r})")
        if exact and tuple(compressed.shape) != (rows, cols // 2):
            raise ValueError(f"{name}.compressed: expected shape {(rows, cols // 2)}, got {tuple(compressed.shape)}")
    if compressed.numel() != kept:
        raise ValueError(f"{name}.compressed: {compressed.numel()} values for {kept} positions set in the bitmask")
    if "row_offsets" in parts:
        counts = mask.sum(dim=1)
        offsets = parts["row_offsets"].flatten()
        if offsets.numel() != rows or not torch.equal(offsets.long(), torch.cumsum(counts, 0) - counts):
            raise ValueError(f"{name}.row_offsets: do not match the bitmask's row counts")
    return shape, mask


def bitmask_decompress(parts: Mapping[str, torch.Tensor], name: str = "weight",
                       pattern: NxM | str | None = None) -> torch.Tensor:
    """Inverse of :func:`bitmask_compress` (either layout): the dense weight, exactly.

    The parts are checked first: ``shape`` two positive integers, ``bitmask`` uint8
    ``[rows, ceil(cols / 8)]`` with no position set beyond the row, as many ``compressed``
    values as positions set, ``row_offsets`` (when present) matching the bitmask and, with
    ``pattern``, every group of ``n`` keeping at most ``m`` (4:2's layout: exactly 2).

    Raises:
        TypeError: a part that is not a tensor.
        ValueError: parts that do not describe one n:m weight; the message names ``name``.
    """
    pattern = None if pattern is None else NxM.parse(pattern)
    shape, mask = _check_parts(parts, name, pattern)
    dense = torch.zeros(shape, dtype=parts["compressed"].dtype)
    dense[mask] = parts["compressed"].flatten()
    return dense


def sparsity_config(pattern: NxM | str, targets: list[str], global_sparsity: float) -> dict[str, Any]:
    """compressed-tensors' ``sparsity_config`` for these targets (the fields of its
    ``Sparse24BitMaskConfig`` / ``BitmaskConfig``; ``sparsity_structure`` in NVIDIA's notation)."""
    pattern = NxM.parse(pattern)
    fmt = _ct_format(pattern)
    return {"format": fmt, "targets": sorted(targets), "ignore": [], "global_sparsity": float(global_sparsity),
            "sparsity_structure": "2:4" if fmt == "sparse-24-bitmask" else "unstructured",
            "registry_requires_subclass": False}


def _edit_config(folder: Path, updates: Mapping[str, Any]) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(updates)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_sparse(model: nn.Module, targets: Mapping[str, nn.Module], pattern: NxM | str, out: str | os.PathLike[str],
                *, compressed: bool = False, metadata: Mapping[str, Any] | None = None,
                tokenizer: Any = None) -> dict[str, Any]:
    """Write ``model`` (its targets exactly n:m) as a Hugging Face folder with n:m metadata.

    ``config.json`` gets :data:`METADATA_KEY`: the pattern (``"4:2 (keep 2 of every 4)"``,
    ``n``, ``m``, NVIDIA's notation), the form, the target names and ``metadata``.  The
    compressed form adds compressed-tensors' ``quantization_config.sparsity_config`` and
    stores the targets in its bitmask layout (see the module docstring).

    Args:
        model: A ``PreTrainedModel``.
        targets: ``{name: nn.Linear}`` (e.g. :func:`~nxmlab.targets.select_targets`).
        pattern: The n:m pattern every target satisfies.
        out: The folder to write (created; it should not hold another model).
        compressed: The compressed form instead of the dense one.
        metadata: Extra entries of the metadata (method, source run, score, ...).
        tokenizer: Saved alongside when given.

    Returns:
        Sizes in bytes: ``targets_dense`` (the targets as dense tensors), ``targets_stored``
        (as written) and ``files`` (every file of the folder).

    Raises:
        ValueError: if a target is not n:m.
    """
    from safetensors.torch import save_file

    pattern = NxM.parse(pattern)
    out = Path(out)
    bad = [name for name, module in targets.items() if not is_nxm(module.weight, pattern)]
    if bad:
        raise ValueError(f"{len(bad)} target(s) are not {pattern!r}, e.g. {bad[0]}")
    names = list(targets)
    params = sum(p.numel() for p in model.parameters())
    zeros = sum(int((p == 0).sum()) for p in model.parameters())
    meta = {"pattern": repr(pattern), "n": pattern.n, "m": pattern.m, "nvidia": f"{pattern.m}:{pattern.n}",
            "form": "compressed" if compressed else "dense", "targets": names, **(metadata or {})}
    header = {"format": "pt", "nxm_pattern": f"{pattern.n}:{pattern.m}", "nxm_targets": json.dumps(names)}
    dense_bytes = sum(m.weight.numel() * m.weight.element_size() for m in targets.values())
    out.mkdir(parents=True, exist_ok=True)
    if not compressed:
        model.save_pretrained(out)
        for file in out.glob("*.safetensors"):  # the pattern also in the safetensors header
            from safetensors.torch import load_file

            save_file(load_file(file), file, metadata=header)
        stored = dense_bytes
        _edit_config(out, {METADATA_KEY: meta})
    else:
        model.config.architectures = [type(model).__name__]  # as save_pretrained records it
        model.config.save_pretrained(out)
        state: dict[str, torch.Tensor] = {}
        stored = 0
        weights = {f"{name}.weight": name for name in names}
        for key, tensor in model.state_dict().items():
            if key in weights:
                parts = bitmask_compress(tensor, pattern, weights[key])
                stored += sum(t.numel() * t.element_size() for t in parts.values())
                state.update({f"{weights[key]}.{part}": t for part, t in parts.items()})
            else:
                state[key] = tensor.detach().cpu().contiguous()
        meta.update(weights_file=COMPRESSED_WEIGHTS, compressed_tensors_layout=COMPRESSED_TENSORS_LAYOUT,
                    load_with="nxmlab.export.load_sparse(folder)")
        save_file(state, out / COMPRESSED_WEIGHTS, metadata=header)
        _edit_config(out, {METADATA_KEY: meta, "quantization_config": {
            "quant_method": "compressed-tensors", "version": COMPRESSED_TENSORS_LAYOUT,
            "sparsity_config": sparsity_config(pattern, names, zeros / params), "transform_config": {}}})
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    files = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return {"targets_dense": dense_bytes, "targets_stored": stored, "files": files}


def read_metadata(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The n:m metadata (:data:`METADATA_KEY`) of a folder written by :func:`save_sparse`.

    Raises:
        ValueError: no ``config.json``, one that cannot be read or is not a JSON object, no
            metadata, or metadata without a valid pattern, form or target list; the message
            names the file.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} is not a model folder (no config.json)")
    try:
        config = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a JSON object")
    meta = config.get(METADATA_KEY)
    if not meta:
        raise ValueError(f"{path} has no {METADATA_KEY} metadata (not written by nxmlab export)")
    problem = None
    if not isinstance(meta, dict):
        problem = "is not an object"
    elif not (isinstance(meta.get("targets"), list) and all(isinstance(t, str) for t in meta["targets"])):
        problem = "has no list of target names"
    elif meta.get("form") not in ("dense", "compressed"):
        problem = f"has form {meta.get('form')!r}, not dense or compressed"
    else:
        try:
            NxM(meta.get("n"), meta.get("m"))
        except ValueError as exc:
            problem = f"has no valid pattern ({exc})"
    if problem:
        raise ValueError(f"{path}: the {METADATA_KEY} metadata {problem}")
    return meta


_metadata = read_metadata  # the name nxmlab 0.2.0 used


def _load_error(path: Path, exc: BaseException) -> ValueError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ValueError(f"{path}: cannot be loaded (damaged or incomplete: {text[:200]})")


def load_sparse(folder: str | os.PathLike[str]) -> nn.Module:
    """Load a folder written by :func:`save_sparse`, dense or compressed, with its exact weights.

    The dense form goes through ``from_pretrained``; the compressed form is rebuilt from
    its config and :func:`bitmask_decompress` of every target (``load_state_dict`` with
    ``strict=True``: a missing or unexpected tensor is an error, never a random weight).
    The model class is the first of ``config.architectures``.

    Raises:
        ValueError: a file that cannot be read (``config.json``, the weights, the metadata),
            or compressed parts that do not describe the n:m weights of the metadata (see
            :func:`bitmask_decompress`); the message names the file or the tensor.
    """
    import transformers
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_metadata(folder)
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _load_error(folder / "config.json", exc) from exc
    cls = getattr(transformers, (config.architectures or ["AutoModelForSequenceClassification"])[0], None)
    if cls is None:
        raise ValueError(f"{folder / 'config.json'}: unknown architecture {config.architectures[0]!r}")
    if meta.get("form") != "compressed":
        weights = next((folder / f for f in PLAIN_WEIGHTS if (folder / f).is_file()), None)
        if weights is None:
            raise ValueError(f"{folder}: no weights file ({', '.join(PLAIN_WEIGHTS)})")
        try:
            return cls.from_pretrained(folder).eval()
        except Exception as exc:  # safetensors, torch and transformers each raise their own type
            raise _load_error(weights, exc) from exc
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    weights = folder / meta.get("weights_file", COMPRESSED_WEIGHTS)
    if not weights.is_file():
        raise ValueError(f"{weights}: missing (the compressed form's weights)")
    try:
        stored = load_file(weights)
    except Exception as exc:  # safetensors' SafetensorError is no OSError
        raise _load_error(weights, exc) from exc
    targets = set(meta["targets"])
    state, parts = {}, {}
    for key, tensor in stored.items():
        module, _, part = key.rpartition(".")
        if module in targets and part in _CT_PARTS:
            parts.setdefault(module, {})[part] = tensor
        else:
            state[key] = tensor
    pattern = NxM(int(meta["n"]), int(meta["m"]))
    for module, pieces in parts.items():
        state[f"{module}.weight"] = bitmask_decompress(pieces, f"{weights.name}: {module}", pattern)
    model = cls(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)  # assign: the stored dtype
    except RuntimeError as exc:  # a missing, unexpected or misshapen tensor
        raise _load_error(weights, exc) from exc
    return model.eval()


def verify_sparse(folder: str | os.PathLike[str]) -> list[str]:
    """Check a folder written by :func:`save_sparse` against its metadata; return the problems.

    Every listed target must exist, be an ``nn.Linear`` and be exactly n:m; for a BERT-family
    model the list must also be the whole selection of its components; a compressed folder
    must hold no weights file ``from_pretrained`` would load.

    Raises:
        ValueError: ``folder`` has no nxmlab metadata, or a file of it (``config.json``, the
            weights) cannot be read; the message names the file.
    """
    from .targets import select_targets

    folder = Path(folder)
    meta = read_metadata(folder)
    pattern = NxM(int(meta["n"]), int(meta["m"]))
    problems = []
    if meta.get("form") == "compressed":
        problems += [f"{f}: a plain from_pretrained would load it" for f in PLAIN_WEIGHTS if (folder / f).exists()]
    model = load_sparse(folder)
    modules = dict(model.named_modules())
    for name in meta["targets"]:
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            problems.append(f"{name}: no such nn.Linear in the model")
        elif not is_nxm(module.weight, pattern):
            problems.append(f"{name}: weight is not {pattern!r}")
    if meta.get("components"):
        try:
            expected = select_targets(model, meta["components"])
        except ValueError:
            expected = None
        missing = sorted(set(expected or ()) - set(meta["targets"]))
        if missing:
            problems.append(f"{len(missing)} target(s) of components {meta['components']} are not listed, "
                            f"e.g. {missing[0]}")
    return problems
