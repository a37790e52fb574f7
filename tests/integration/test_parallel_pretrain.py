"""`raylm pretrain` with `parallel: {pp: 2}` end to end on a local 2-CPU Ray: two Ray Train workers, each
one stage of the tiny decoder as a DeepSpeed PipelineModule (gloo), fed from Ray Data, exported back into
ONE Hugging Face folder that transformers loads and generates with; a longer re-run resumes from the
last checkpoint."""

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
  checkpoint_interval: 2
  warmup_steps: 1
  lr: 3.0e-3
"""
    stage = Path(run_dir) / "pretrain"
    with ray_session(num_cpus=2):
        (result,) = run_recipe(parse_recipe(text), only={"pretrain"})
        # a longer re-run resumes the pipeline's state from step 4 (the step-for-step equality of a
        # resumed run is in test_parallel_equality.py)
        (longer,) = run_recipe(parse_recipe(text.replace("max_steps: 4", "max_steps: 6")), only={"pretrain"})
    records = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("kind") == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]  # both runs, each step once
    assert [r["step"] for r in records if r.get("kind") == "resume"] == [4]
    losses = [r["loss"] for r in train]
    assert losses[4] < losses[0] and losses[-1] < losses[0]  # step 5 continues the curve
    summary = json.loads((stage / "summary.json").read_text())
    assert (summary["start_step"], summary["step"], summary["world_size"]) == (4, 6, 2)
    assert summary["layout"] == "dp1xpp2xtp1"
    model = AutoModelForCausalLM.from_pretrained(stage / "model")
    total = sum(p.numel() for p in model.parameters())
    counts = summary["parameters_per_worker"]  # each stage: part of the blocks + a tied embedding copy
    assert len(counts) == 2 and max(counts) < total
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)
    assert result.manifest.metrics["step"] == 4 and longer.manifest.metrics["step"] == 6
