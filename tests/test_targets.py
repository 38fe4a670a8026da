import pytest
from torch import nn

from nxmlab.targets import COMPONENTS, describe_target, select_targets

from ._tiny import toy_bert


def test_default_selects_six_components_in_every_layer():
    model = toy_bert(layers=3)
    targets = select_targets(model)
    assert len(targets) == 6 * 3
    assert all(isinstance(m, nn.Linear) for m in targets.values())
    seen = {describe_target(name) for name in targets}
    assert seen == {(c, layer) for c in COMPONENTS for layer in range(3)}
    assert not any("pooler" in n or "classifier" in n or "embeddings" in n for n in targets)


def test_bert_names_map_to_components():
    assert describe_target("bert.encoder.layer.3.attention.output.dense") == ("attn_out", 3)
    assert describe_target("bert.encoder.layer.3.output.dense") == ("ffn2", 3)
    assert describe_target("bert.encoder.layer.0.intermediate.dense") == ("ffn1", 0)
    assert describe_target("distilbert.transformer.layer.5.attention.q_lin") == ("query", 5)
    assert describe_target("bert.pooler.dense") == (None, None)


def test_component_and_layer_subsets():
    model = toy_bert(layers=2)
    ffn = select_targets(model, components=["ffn1", "ffn2"], layers=[1])
    assert list(ffn) == ["bert.encoder.layer.1.intermediate.dense", "bert.encoder.layer.1.output.dense"]
    assert len(select_targets(model, components="all")) == 12


def test_regex_escape_hatch_never_selects_pooler_or_classifier():
    model = toy_bert()
    everything = select_targets(model, regex=".*")
    assert len(everything) == 12
    only_q = select_targets(model, regex=r"query$")
    assert len(only_q) == 2


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"components": ["attention"]}, "unknown component"),
     ({"regex": "pooler"}, "matched no nn.Linear"),
     ({"layers": [7]}, r"matched no nn.Linear")],
)
def test_bad_selections(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        select_targets(toy_bert(), **kwargs)


def test_pattern_validation_names_the_layer_and_shape():
    model = toy_bert(hidden=12)  # 8 does not divide 12
    with pytest.raises(ValueError, match=r"bert\.encoder\.layer\.0\.attention\.self\.query.*\(12, 12\)"):
        select_targets(model, pattern="8:2")
