"""Distillation on Ray Train: two data-parallel workers (started like raylm's training workers, DDP over
DeepSpeed's gloo group) train a one-layer student against a two-layer tiny teacher; the student comes back
from the run's checkpoint as a standard, shallower Llama and its distillation loss fell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.runtime import ray_session
from tests.unit.finetune.conftest import make_tiny_base
from tests.unit.train.conftest import pydoc_texts

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_distill_student_on_ray_train(tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.compress import distill
    from pipelines.compress.config import DistillMethod
    from pipelines.compress.context import CompressContext
    from pipelines.compress.text import token_windows

    torch.set_num_threads(1)
    base = make_tiny_base(tmp_path / "base")
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"text": t}) + "\n" for t in pydoc_texts(60)[30:]))
    tok = AutoTokenizer.from_pretrained(base)
    tok.model_max_length = 10**9
    _, calib = token_windows(tok, str(heldout), seq_len=64, eval_tokens=64, calib_windows=8)
    ctx = CompressContext(base=str(base), tokenizer=tok, calibration=calib, dtype=torch.float32)
    teacher_layers = AutoModelForCausalLM.from_pretrained(base).config.num_hidden_layers
    cfg = DistillMethod(
        student_layers=teacher_layers - 1,
        steps=10,
        lr=3e-3,
        batch_size=2,
        train_samples=8,
        ray_train=True,
        num_workers=2,
        cpus_per_worker=1,
    )
    with ray_session(num_cpus=2):
        info = distill.apply(ctx, cfg, str(tmp_path / "student"))
    assert info["ray_train_workers"] == 2
    assert info["last_loss"] < info["first_loss"]
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert student.config.num_hidden_layers == teacher_layers - 1
