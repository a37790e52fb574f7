"""The fine-tuning losses against hand computations, the match metrics, the peft setup and the config's
refusals."""

from __future__ import annotations

import math
import re

import pytest
import torch
from pydantic import ValidationError

from pipelines.train.align_losses import (
    dpo_loss,
    exact_match,
    response_logprobs,
    reward_loss,
    rouge_l,
    sft_loss,
)
from pipelines.train.finetune_config import FinetuneConfig
from pipelines.train.peft_setup import apply_method, check_target_modules, trainable_parameters
from pipelines.train.sft_data import IGNORE


def test_response_logprobs_and_sft_loss_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 1]])  # positions 2 and 3 are response tokens
    logp, n = response_logprobs(logits, labels)
    lsm = torch.log_softmax(logits[0], -1)
    # token 3 at position 2 is predicted by the logits at 1, token 1 at 3 by those at 2
    expected = lsm[1, 3] + lsm[2, 1]
    assert int(n) == 2 and float(logp) == pytest.approx(float(expected), rel=1e-6)
    loss, count = sft_loss(logits, labels)
    assert count == 2 and float(loss) == pytest.approx(-float(expected) / 2, rel=1e-6)


def test_dpo_loss_by_hand():
    pc, pr, rc, rr = torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.5])
    loss, margin = dpo_loss(pc, pr, rc, rr, beta=0.1)
    m = 0.1 * ((-3.0 - -4.0) - (-5.0 - -4.5))  # 0.1 x (1 + 0.5) = 0.15
    assert float(margin) == pytest.approx(m)
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-m))), rel=1e-6)
    # policy == reference: margin 0, loss log 2
    loss0, margin0 = dpo_loss(pc, pr, pc, pr, beta=0.5)
    assert float(margin0) == 0 and float(loss0) == pytest.approx(math.log(2))


def test_reward_loss_by_hand():
    loss, margin = reward_loss(torch.tensor([1.5, -1.0]), torch.tensor([0.5, 1.0]))
    assert margin.tolist() == [1.0, -2.0]
    expected = [math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(2.0))]  # -log sigmoid(m)
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)


def test_match_metrics():
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("", "x") == 0 and rouge_l("a b", "c d") == 0
    assert exact_match(" Hello  World", "hello world") == 1.0 and exact_match("a", "b") == 0.0


def _tiny():
    from pipelines.models import ModelConfig, Vocab, build_model

    torch.manual_seed(0)
    return build_model(
        ModelConfig(family="decoder", preset="tiny"), Vocab(size=300, pad_id=0, eos_id=2, bos_id=1)
    )


@pytest.mark.parametrize("method", ["lora", "prefix", "p-tuning"])
def test_peft_methods_train_a_small_share(method):
    model = apply_method(
        _tiny(), FinetuneConfig(method=method, num_virtual_tokens=4, prompt_encoder_hidden_size=16)
    )
    share = trainable_parameters(model)
    assert 0 < share["trainable_share"] < 0.2 and share["trainable_params"] > 0
    ids = torch.randint(3, 300, (2, 8))
    from pipelines.train.align_losses import model_logits

    logits = model_logits(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert logits.shape[:2] == (2, 8)  # P-tuning's virtual-token logits are cut off


def test_full_method_trains_everything():
    assert (
        trainable_parameters(apply_method(_tiny(), FinetuneConfig(method="full")))["trainable_share"] == 1.0
    )


def test_lora_targets_the_model_lacks_are_refused():
    names = [n for n, _ in _tiny().named_modules()]
    assert check_target_modules(FinetuneConfig(lora_target_modules=["q_proj", "v_proj"]), names) == []
    (problem,) = check_target_modules(
        FinetuneConfig(lora_target_modules=["q_proj", "query_key_value"]), names
    )
    assert problem.startswith("finetune.lora_target_modules: query_key_value not in the base model")
    assert "q_proj" in problem  # the names it does have
    assert check_target_modules(FinetuneConfig(method="prefix", lora_target_modules=["nope"]), names) == []


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"method": "lora", "zero_stage": 3}, "zero_stage 3 works with method full only"),
        ({"method": "prefix", "merge": True}, "merge needs method lora"),
        ({"offload_param": True}, "offload_param needs zero_stage 3"),
        ({"warmup_steps": 10, "max_steps": 5}, "warmup_steps (10) must be below max_steps (5)"),
        ({"method": "qlora"}, "Input should be 'full', 'lora', 'prefix' or 'p-tuning'"),
        ({"lora_target_modules": []}, "lora_target_modules: at least one module name"),
        ({"objective": "reward", "method": "prefix"}, "objective reward needs method full or lora"),
        ({"objective": "sft+dpo", "method": "p-tuning"}, "objective sft+dpo needs method full or lora"),
        ({"method": "lora", "parallel": {"pp": 2}}, "parallel (pp 2, tp 1) runs objective sft with method"),
        ({"objective": "dpo", "method": "full", "num_workers": 2, "parallel": {"tp": 2}, "zero_stage": 0},
         "runs objective sft with method full (got dpo/full)"),
        ({"method": "full", "num_workers": 3, "parallel": {"pp": 2}}, "num_workers 3 is not a multiple of"),
    ],
)
def test_config_refusals(settings, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        FinetuneConfig(**settings)


def test_recipe_refusals_name_the_key():
    from cluster.config import RecipeError, parse_recipe

    with pytest.raises(RecipeError) as err:
        parse_recipe("name: x\nfinetune:\n  method: prefix\n  merge: true\n", source="r.yaml")
    assert err.value.problems == [
        "r.yaml:2: finetune: merge needs method lora (got prefix): only LoRA's update "
        "can be folded into the base weights; prefix and p-tuning adapters stay separate"
    ]
    with pytest.raises(RecipeError) as err:
        parse_recipe("name: x\nfinetune:\n  lora_rnk: 4\n", source="r.yaml")
    assert err.value.problems == ["r.yaml:3: finetune.lora_rnk: unknown key (did you mean 'lora_rank'?)"]


def test_planner_refuses_a_missing_base_and_bad_targets(tmp_path, tiny_base, pairs_file):
    from cluster.config import RecipeError, parse_recipe
    from cluster.orchestrate import plan_stages

    with pytest.raises(RecipeError, match="finetune.base: empty, and the recipe has no `pretrain` section"):
        plan_stages(parse_recipe(f"name: x\nrun_dir: {tmp_path}\nfinetune: {{}}\n"))
    recipe = f"name: x\nrun_dir: {tmp_path}\nfinetune: {{base: {tiny_base}, data: [{pairs_file}], "
    with pytest.raises(RecipeError, match="finetune.lora_target_modules: query not in the base model"):
        plan_stages(parse_recipe(recipe + "lora_target_modules: [query]}\n"))
    (plan,) = plan_stages(parse_recipe(recipe + "heldout_pairs: 4}\n"))
    assert plan.name == "finetune" and plan.inputs == {}


def test_planner_refuses_parallel_layouts_the_base_cannot_take(tmp_path, tiny_base, pairs_file):
    """finetune.parallel is checked against the base's config before Ray starts: the tiny base has 4
    heads, 1 key/value head and 2 layers."""
    from cluster.config import RecipeError, parse_recipe
    from cluster.orchestrate import plan_stages

    recipe = (f"name: x\nrun_dir: {tmp_path}\nfinetune: {{base: {tiny_base}, data: [{pairs_file}], "
              "heldout_pairs: 4, method: full, ")
    with pytest.raises(RecipeError, match=re.escape("parallel.tp 2 must divide model.num_kv_heads (1)")):
        plan_stages(parse_recipe(recipe + "zero_stage: 0, parallel: {tp: 2}}\n"))
    with pytest.raises(RecipeError, match=re.escape("parallel.pp 4 is more than model.num_layers (2)")):
        plan_stages(parse_recipe(recipe + "num_workers: 4, parallel: {pp: 4}}\n"))
    (plan,) = plan_stages(parse_recipe(recipe + "parallel: {pp: 2}}\n"))
    assert plan.name == "finetune"


def test_lora_targets_that_are_not_layers_lora_can_wrap_are_refused(tiny_base):
    from pipelines.train.peft_setup import module_names

    names = module_names(str(tiny_base))
    assert names["model.layers.0.self_attn.q_proj"] == "Linear"
    cfg = FinetuneConfig(lora_target_modules=["q_proj", "mlp", "input_layernorm"])
    assert check_target_modules(cfg, names) == [
        "finetune.lora_target_modules: mlp names LlamaMLP modules, which LoRA cannot wrap (it adapts "
        "Linear / Embedding / Conv layers: e.g. q_proj, v_proj, or all-linear)",
        "finetune.lora_target_modules: input_layernorm names LlamaRMSNorm modules, which LoRA cannot wrap "
        "(it adapts Linear / Embedding / Conv layers: e.g. q_proj, v_proj, or all-linear)",
    ]
    assert check_target_modules(FinetuneConfig(lora_target_modules=["q_proj", "down_proj"]), names) == []
