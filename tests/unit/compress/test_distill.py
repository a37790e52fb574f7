"""Distillation: the loss is zero for a student equal to its teacher, the student has fewer layers, loads
as a standard Llama, and its distillation loss falls while training."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipelines.compress import distill
from pipelines.compress.checks import CompressInputError, base_shape, check_methods
from pipelines.compress.config import DistillMethod


def test_kl_term_is_zero_for_identical_logits_and_positive_otherwise():
    torch.manual_seed(0)
    z = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    assert distill.distill_loss(z, z, labels, temperature=2.0, alpha=1.0).abs() < 1e-6
    assert distill.distill_loss(z + torch.randn_like(z), z, labels, temperature=2.0, alpha=1.0) > 0.01


def test_student_trains_and_loads(ctx, tmp_path):
    out = str(tmp_path / "student")
    cfg = DistillMethod(student_layers=2, steps=12, lr=3e-3, batch_size=2, train_samples=4)
    info = distill.apply(ctx, cfg, out)
    assert info["last_loss"] < info["first_loss"]
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.num_hidden_layers == 2
    assert student.config.hidden_size == 64


def test_student_must_be_smaller(tiny_base):
    with pytest.raises(CompressInputError, match="student_layers=4 is not fewer than the teacher's 4"):
        check_methods([DistillMethod(student_layers=4)], base_shape(tiny_base))
