"""`raylm pretrain` with `parallel: {pp: 2}` end to end on a local 2-CPU Ray: two Ray Train workers, each
one stage of the tiny decoder as a DeepSpeed PipelineModule (gloo), fed from Ray Data, exported back into
ONE Hugging Face folder that transformers loads and generates with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.config import parse_recipe
from cluster.orchestrate import run_recipe
from cluster.runtime import ray_session
from pipelines.train.token_data import write_token_data
from tests.unit.train.conftest import pydoc_texts

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_pipeline_parallel_pretrain_exports_one_hf_folder(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    tokens = tmp_path / "tokenize"
    write_token_data(str(tokens), pydoc_texts(), seq_len=64, vocab_size=400)
    run_dir = tmp_path / "run"
    text = f"""
name: it-pp2
run_dir: {run_dir}
cluster: {{num_cpus: 2}}
model: {{family: decoder, preset: tiny}}
pretrain:
  data: {tokens}
  num_workers: 2
  parallel: {{pp: 2}}
  zero_stage: 1
  precision: fp32
  micro_batch_size: 4
  grad_accum_steps: 2
  max_steps: 4
  warmup_steps: 1
  lr: 3.0e-3
"""
    with ray_session(num_cpus=2):
        (result,) = run_recipe(parse_recipe(text), only={"pretrain"})
    stage = Path(run_dir) / "pretrain"
    records = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("kind") == "train"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    summary = json.loads((stage / "summary.json").read_text())
    assert summary["step"] == 4 and summary["world_size"] == 2
    assert summary["layout"] == "dp1xpp2xtp1"
    model = AutoModelForCausalLM.from_pretrained(stage / "model")
    total = sum(p.numel() for p in model.parameters())
    counts = summary["parameters_per_worker"]  # each stage: part of the blocks + a tied embedding copy
    assert len(counts) == 2 and max(counts) < total
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)
    assert result.manifest.metrics["step"] == 4
