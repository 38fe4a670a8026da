"""A tokenizer-free toy BERT for core tests (the `tiny` model lives in nxmlab.study.data.models)."""

import torch
from transformers import BertConfig, BertForSequenceClassification


def toy_bert(hidden: int = 32, layers: int = 2, num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=4 * hidden, max_position_embeddings=32, num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


def toy_batch(batch: int = 4, length: int = 8, num_labels: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 64, (batch, length), generator=g),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (batch,), generator=g),
    }
