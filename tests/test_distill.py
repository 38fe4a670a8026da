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
