"""supervised_step: one optimiser step, NaN refused with the trainer's name, logging."""

import pytest
import torch

from toolkit.train.steps import supervised_step


def test_step_updates_and_logs_and_refuses_nan():
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.SGD([w], lr=0.5)
    logs = []
    supervised_step((w ** 2).sum(), opt, None, step=0, total=3, what="probe", log=logs.append)
    assert torch.allclose(w.detach(), torch.tensor([0.0]))  # 1 - 0.5 * 2
    assert logs == ["probe step 0/3 loss 1.0000"]
    with pytest.raises(FloatingPointError, match="probe loss is nan at step 7"):
        supervised_step(w.sum() * float("nan"), opt, None, step=7, total=9, what="probe")
