"""Proof by numbers: a tiny decoder trained 5 steps under dp x pp x tp layouts (gloo processes spawned on
this machine) reaches the same losses as one process, also across a mid-run save and resume, and every
worker holds its share of the weights.

The losses agree to about 1e-7 relative in fp32 (summation order is all that differs); the tolerance
asserted is 1e-4. One spawn trains the 4-worker layouts one after the other (each process imports torch,
transformers and DeepSpeed once: most of the time); the 2-worker layouts and dp2 x pp2 (each axis of
which the CI layouts cover) are behind `bench`.
"""

from __future__ import annotations

import pytest
import torch

from pipelines.parallel.harness import RunSpec, reference_losses, run_layouts
from pipelines.parallel.layout import Layout

pytestmark = [pytest.mark.slow]

REL_TOL = 1e-4
MODEL = {"family": "decoder", "preset": "tiny", "num_kv_heads": 2}  # 2 kv heads: tp 2 splits them
PRETRAIN = {
    "precision": "fp32",
    "zero_stage": 1,
    "micro_batch_size": 2,
    "grad_accum_steps": 2,
    "max_steps": 5,
    "warmup_steps": 1,
    "lr": 3e-3,
    "use_gpu": False,
}


def _check(spec: RunSpec, results: dict, full_params: int) -> None:
    from pipelines.models import ModelConfig
    from pipelines.parallel.plan import stage_parameters

    for layout in spec.layouts:
        ranks = results[layout.key]
        ref = reference_losses(spec, layout.dp)
        # what the dry run says each stage's worker stores: blocks split pp and tp ways
        model = ModelConfig.model_validate(MODEL)
        per_stage, _ = stage_parameters(model, layout, spec.vocab_size, "parameters")
        for r in ranks:
            n = r["local_parameters"]
            print(f"{layout.key} rank {r['rank']} {r['coords']}: {n:,} parameters, losses {r['losses']}")
            assert r["losses"] == pytest.approx(ref, rel=REL_TOL), (layout.key, r["rank"])
            assert n == per_stage[r["coords"][1]], (layout.key, r["rank"])
        assert ref[-1] < ref[0]  # it trained
        if layout.pp > 1 or layout.tp > 1:  # each worker holds less than the whole model
            assert max(r["local_parameters"] for r in ranks) < full_params
        if layout.tp > 1:  # block weights split tp ways, embedding and norms replicated
            assert max(r["local_parameters"] for r in ranks) < full_params * 0.7


def _full_params() -> int:
    from pipelines.models import ModelConfig, count_parameters
    from pipelines.parallel.harness import vocab_spec

    return count_parameters(ModelConfig.model_validate(MODEL), vocab_spec(256)[0])["total"]


def test_four_worker_layouts_equal_one_process_across_a_resume(tmp_path):
    """Each layout saves its state after step 3 and a fresh trainer (step-0 weights) loads it and trains
    steps 4-5: the losses stay equal to the uninterrupted single process. pp2 x tp2 puts DeepSpeed's
    tensor-parallel layers inside the pipeline's stages; dp2 x tp2 is the DTensor path."""
    from transformers import AutoModelForCausalLM

    spec = RunSpec(MODEL, PRETRAIN, [Layout(1, 2, 2), Layout(2, 1, 2)], export_dir=str(tmp_path / "hf"),
                   resume_after=3)
    results = run_layouts(spec)
    _check(spec, results, _full_params())
    # the stages' tensor shards exported back into ONE folder that transformers loads, holding the very
    # weights the single process trained
    trained: list = []
    reference_losses(spec, 1, trained)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert sum(p.numel() for p in model.parameters()) == _full_params()
    want = trained[0].state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, want[name], rtol=1e-3, atol=1e-5, msg=name)


def test_three_axes_at_once_equal_one_process_across_a_resume():
    """dp2 x pp2 x tp2: eight gloo processes, every parallel axis at once, with a save and resume."""
    spec = RunSpec(MODEL, PRETRAIN, [Layout(2, 2, 2)], resume_after=3)
    _check(spec, run_layouts(spec), _full_params())


@pytest.mark.bench
@pytest.mark.parametrize(
    "layout", [Layout(2, 1, 1), Layout(1, 2, 1), Layout(1, 1, 2), Layout(2, 2, 1)], ids=lambda x: x.key
)
def test_other_layouts_equal_one_process(layout):
    spec = RunSpec(MODEL, PRETRAIN, [layout])
    _check(spec, run_layouts(spec), _full_params())


def test_sft_from_a_base_folder_equals_one_process(tmp_path):
    """Fine-tuning's path (`finetune.parallel`): the trainers load a base folder and train on padded SFT
    records of varying length (the pipeline sends each activation's shape), pp2 and tp2 in one spawn,
    each equal to one process training the same folder on the same records."""
    from pipelines.models import ModelConfig, build_model
    from pipelines.parallel.harness import vocab_spec

    torch.manual_seed(7)
    base = tmp_path / "base"
    build_model(ModelConfig.model_validate(MODEL), vocab_spec(256)[0]).save_pretrained(base)
    spec = RunSpec(MODEL, PRETRAIN, [Layout(1, 2, 1), Layout(1, 1, 2)], base_dir=str(base), resume_after=3)
    results = run_layouts(spec)
    ref = reference_losses(spec, 1)
    for layout in spec.layouts:
        for r in results[layout.key]:
            print(f"sft {layout.key} rank {r['rank']}: losses {r['losses']} (one process {ref})")
            assert r["losses"] == pytest.approx(ref, rel=REL_TOL), (layout.key, r["rank"])
    assert ref[-1] < ref[0]
