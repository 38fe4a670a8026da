"""Which ``nn.Linear`` layers of an encoder get NxM sparsity.

The six components of a Transformer layer are named as in the paper's analysis:

============  ===========================================  ==========================
component     BERT / RoBERTa / ELECTRA module              DistilBERT module
============  ===========================================  ==========================
``query``     ``encoder.layer.{i}.attention.self.query``   ``transformer.layer.{i}.attention.q_lin``
``key``       ``encoder.layer.{i}.attention.self.key``     ``...attention.k_lin``
``value``     ``encoder.layer.{i}.attention.self.value``   ``...attention.v_lin``
``attn_out``  ``encoder.layer.{i}.attention.output.dense`` ``...attention.out_lin``
``ffn1``      ``encoder.layer.{i}.intermediate.dense``     ``...ffn.lin1``
``ffn2``      ``encoder.layer.{i}.output.dense``           ``...ffn.lin2``
============  ===========================================  ==========================

Embeddings, the pooler and the classifier are never selected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from .nxm import NxM, check_module, check_targets

__all__ = ["COMPONENTS", "select_targets", "describe_target", "train_only"]

COMPONENTS: tuple[str, ...] = ("query", "key", "value", "attn_out", "ffn1", "ffn2")

_LAYER = r"(?:encoder|transformer)\.layer\.(\d+)\."
_COMPONENT_RES: dict[str, re.Pattern[str]] = {
    "query": re.compile(_LAYER + r"attention\.(?:self\.query|q_lin)$"),
    "key": re.compile(_LAYER + r"attention\.(?:self\.key|k_lin)$"),
    "value": re.compile(_LAYER + r"attention\.(?:self\.value|v_lin)$"),
    "attn_out": re.compile(_LAYER + r"attention\.(?:output\.dense|out_lin)$"),
    "ffn1": re.compile(_LAYER + r"(?:intermediate\.dense|ffn\.lin1)$"),
    "ffn2": re.compile(_LAYER + r"(?:output\.dense|ffn\.lin2)$"),
}
_NEVER = re.compile(r"(?:^|\.)(?:embeddings?|pooler|classifier|pre_classifier|lm_head|cls)(?:\.|$)")


def describe_target(name: str) -> tuple[str | None, int | None]:
    """Return ``(component, layer index)`` of a module name, or ``(None, None)``.

    Raises:
        TypeError: ``name`` is not a string (e.g. the module itself).
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a module name (str), got {type(name).__qualname__}")
    # attention.output.dense also ends in output.dense: test attn_out before ffn2
    for component in ("query", "key", "value", "attn_out", "ffn1", "ffn2"):
        match = _COMPONENT_RES[component].search(name)
        if match:
            return component, int(match.group(1))
    return None, None


def select_targets(
    model: nn.Module,
    components: Sequence[str] | str = COMPONENTS,
    layers: Iterable[int] | None = None,
    regex: str | None = None,
    pattern: NxM | str | None = None,
) -> dict[str, nn.Linear]:
    """Select the encoder's ``nn.Linear`` modules to sparsify.

    Args:
        model: A Hugging Face encoder (BERT family or DistilBERT naming).
        components: Subset of :data:`COMPONENTS`, or ``"all"`` (default: all six, in
            every layer, as in the reference implementation).
        layers: Layer indices to keep (default: every layer).
        regex: Escape hatch for other architectures: select every ``nn.Linear``
            whose qualified name matches (``re.search``); ``components`` is then
            ignored.  Embeddings, pooler and classifier are still excluded.
        pattern: If given, every selected weight is validated against it.

    Returns:
        An ordered ``{qualified name: module}`` dict.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` (e.g. a numpy array or a state dict).
        ValueError: for an unknown component, a selection that matches nothing, or
            (with ``pattern``) a layer whose input width ``n`` does not divide.
    """
    check_module(model)
    if isinstance(components, str):
        components = COMPONENTS if components == "all" else (components,)
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {list(COMPONENTS)}")
    wanted_layers = None if layers is None else set(layers)
    compiled = re.compile(regex) if regex is not None else None

    selected: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or _NEVER.search(name):
            continue
        if compiled is not None:
            if not compiled.search(name):
                continue
        else:
            component, layer = describe_target(name)
            if component not in components:
                continue
            if wanted_layers is not None and layer not in wanted_layers:
                continue
        selected[name] = module

    if not selected:
        how = f"regex {regex!r}" if regex is not None else f"components {list(components)}"
        where = "" if wanted_layers is None else f" in layers {sorted(wanted_layers)}"
        raise ValueError(f"target selection by {how}{where} matched no nn.Linear in {type(model).__name__}")
    if pattern is not None:
        pattern = NxM.parse(pattern)
        for name, module in selected.items():
            pattern.check(module.weight, name)
    return selected


def train_only(model: nn.Module, targets: Mapping[str, nn.Module]) -> list[str]:
    """Freeze every parameter of ``model`` except the weights and biases of ``targets``.

    Returns the names of the parameters left trainable.  ``Trainer`` builds its optimizer
    from the trainable parameters only.
    """
    check_module(model)
    check_targets(targets)
    keep = {id(p) for module in targets.values() for p in (module.weight, getattr(module, "bias", None))
            if p is not None}
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(id(param) in keep)
        if id(param) in keep:
            trainable.append(name)
    return trainable
