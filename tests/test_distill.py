import math

import pytest
import torch

from nxmlab.distill import distillation_loss


def test_classification_kd_equals_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 1.5]])
    t = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    y = torch.tensor([1, 2])
    T, alpha = 2.0, 0.7

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    kl = 0.0
    ce = 0.0
    for i in range(2):
        ps = softmax([v / T for v in s[i].tolist()])
        pt = softmax([v / T for v in t[i].tolist()])
        kl += sum(pt[k] * math.log(pt[k] / ps[k]) for k in range(3))
        ce += -math.log(softmax(s[i].tolist())[int(y[i])])
    expected = alpha * (kl / 2) * T * T + (1 - alpha) * ce / 2
    assert float(distillation_loss(s, t, y, T, alpha)) == pytest.approx(expected, rel=1e-6)


def test_regression_kd_is_mse_to_teacher_mixed_with_labels():
    s = torch.tensor([[1.0], [2.0], [4.0]])
    t = torch.tensor([[1.5], [2.0], [3.0]])
    y = torch.tensor([1.0, 3.0, 4.0])
    mse_t = (0.25 + 0 + 1) / 3
    mse_y = (0 + 1 + 0) / 3
    assert float(distillation_loss(s, t, y, alpha=1.0)) == pytest.approx(mse_t)
    assert float(distillation_loss(s, t, y, alpha=0.25)) == pytest.approx(0.25 * mse_t + 0.75 * mse_y)
    assert float(distillation_loss(s, t, None, alpha=1.0)) == pytest.approx(mse_t)


def test_teacher_gets_no_gradient_and_identical_logits_give_zero_kl():
    s = torch.randn(4, 3, requires_grad=True)
    t = s.detach().clone().requires_grad_(True)
    loss = distillation_loss(s, t, None, alpha=1.0)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert t.grad is None


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"alpha": 1.5}, "alpha"), ({"temperature": 0.0}, "temperature"), ({"labels": None}, "labels are required")],
)
def test_bad_arguments(kwargs, fragment):
    args = {"student_logits": torch.zeros(2, 3), "teacher_logits": torch.zeros(2, 3), "labels": torch.zeros(2)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=fragment):
        distillation_loss(**args)
    with pytest.raises(ValueError, match="same label count"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2))


def _tiny_bert(seed: int, num_labels: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=num_labels)
    return BertForSequenceClassification(config)


def _examples(n: int = 12) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        length = 3 + i % 7
        rows.append({"input_ids": torch.randint(5, 50, (length,), generator=g).tolist(),
                     "token_type_ids": [0] * (length // 2) + [1] * (length - length // 2), "labels": i % 2})
    return rows


def _pad(rows: list[dict]) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    out = {"input_ids": [], "token_type_ids": [], "attention_mask": []}
    for r in rows:
        pad = width - len(r["input_ids"])
        out["input_ids"].append(r["input_ids"] + [0] * pad)
        out["token_type_ids"].append(r["token_type_ids"] + [0] * pad)
        out["attention_mask"].append([1] * len(r["input_ids"]) + [0] * pad)
    batch = {k: torch.tensor(v) for k, v in out.items()}
    batch["labels"] = torch.tensor([r["labels"] for r in rows])
    return batch


def test_example_keys_ignore_padding_and_tell_segments_apart():
    from nxmlab.callbacks import _example_keys

    rows = _examples(3)
    alone, padded = _example_keys(_pad(rows[:1])), _example_keys(_pad(rows))
    assert alone[0] == padded[0] and len(set(padded)) == 3
    other = dict(rows[0], token_type_ids=[0] * len(rows[0]["input_ids"]))
    assert _example_keys(_pad([other]))[0] != alone[0]


def test_kd_keeps_the_teachers_logits_per_example_and_trains_as_with_the_live_teacher(tmp_path):
    """3 epochs of 3 shuffled batches: the teacher runs on the 3 batches of the first epoch
    only, and every logged loss and the final weights equal those of a trainer that runs
    the teacher at every step (the padding differs between epochs: float rounding only)."""
    from transformers import TrainingArguments

    from nxmlab.callbacks import DistillationTrainer

    class Live(DistillationTrainer):
        def teach(self, inputs):
            with torch.no_grad():
                return self.teacher(**inputs).logits

    runs = {}
    for name, cls in (("kept", DistillationTrainer), ("live", Live)):
        args = TrainingArguments(output_dir=str(tmp_path / name), num_train_epochs=3, per_device_train_batch_size=4,
                                 learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], seed=0,
                                 disable_tqdm=True, use_cpu=True)
        trainer = cls(model=_tiny_bert(1), args=args, train_dataset=_examples(), data_collator=_pad,
                      teacher=_tiny_bert(2), temperature=2.0, alpha=0.5)
        trainer.train()
        runs[name] = (trainer, [log["loss"] for log in trainer.state.log_history if "loss" in log])
    kept, live = runs["kept"][0], runs["live"][0]
    assert kept.teacher_batches == 3 and len(kept.teacher_logits) == 12
    assert len(runs["kept"][1]) == 9 and runs["kept"][1] == pytest.approx(runs["live"][1], rel=1e-5, abs=1e-6)
    for (name, a), b in zip(kept.model.named_parameters(), live.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
