"""RLHF by RLOO (`pipelines.train.rlhf`) in one process, no Ray: the leave-one-out advantages by hand, the
KL estimate is 0 while the policy is the reference, a few dozen RLOO steps of a LoRA policy on the tiny
decoder raise the mean score of its sampled answers under a fixed scoring model with the KL to the
reference bounded, and the reward-model checks refuse folders that cannot score the policy's answers."""

from __future__ import annotations

import json
import types

import pytest
import torch

from pipelines.train.finetune_config import FinetuneConfig
from pipelines.train.rlhf import Rloo, check_reward_model, encode_prompts, rloo_advantages
from pipelines.train.sft_data import Example, Quarantine, Template
from tests.unit.finetune.conftest import WORDS, make_tiny_base


def test_rloo_advantages_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 0.0]])
    adv = rloo_advantages(rewards)
    # 1 - mean(2, 3, 6) = -2.667; 6 - mean(1, 2, 3) = 4
    torch.testing.assert_close(adv[0], torch.tensor([1 - 11 / 3, 2 - 10 / 3, 3 - 3.0, 4.0]))
    assert adv[1].abs().sum() == 0  # equal rewards: no signal


class ShortAnswerScore(torch.nn.Module):
    """A fixed scoring model with a reward model's interface: minus the number of tokens of the (prompt +
    answer) sequence, so within a prompt the shorter answer scores higher. What RLOO must learn from it
    (stop earlier) is visible in the sampled answers' length too."""

    def forward(self, input_ids, attention_mask):
        return types.SimpleNamespace(logits=-attention_mask.sum(-1, keepdim=True).float() / 4)


@pytest.fixture(scope="module")
def trained_base(tmp_path_factory):
    torch.set_num_threads(1)  # 2 cores shared with other work: more threads only contend
    return make_tiny_base(tmp_path_factory.mktemp("rlhf") / "base", pretrain_steps=150)


def _policy(base):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    model.config.use_cache = False
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    )
    return tok, model


def test_rloo_raises_the_score_of_sampled_answers_with_bounded_kl(trained_base):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok, model = _policy(trained_base)
    template = Template("simple")
    examples = [Example(f"Repeat the word {w} twice.", f"{w} {w}") for w in WORDS[:8]]
    items = encode_prompts(tok, template, examples, 48, Quarantine()).items
    rloo = Rloo(
        tok,
        template,
        ShortAnswerScore(),
        k=4,
        beta=0.05,
        temperature=1.0,
        max_new_tokens=12,
        pad_id=tok.pad_token_id,
        device=torch.device("cpu"),
    )

    def evaluate():
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            _, sums = rloo.step(model, model, None, items, train=False)
        return {k: float(sums[k]) / sums["weight"] for k in ("reward", "kl", "length")}

    before = evaluate()
    assert before["kl"] == pytest.approx(0.0, abs=1e-5)  # LoRA's B starts at 0: the policy is the reference
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(25):
        batch = [items[(2 * step + i) % len(items)] for i in range(2)]
        loss, _ = rloo.step(model, model, None, batch, train=True)
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = evaluate()
    assert after["reward"] > before["reward"] + 0.3, (before, after)
    assert after["length"] < before["length"]
    assert 0 <= after["kl"] < 20, after  # nats per answer: the policy moved, not collapsed


def test_encode_prompts_dedupes_and_quarantines_long_prompts(tiny_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    q = Quarantine()
    ex = [Example("Say hi.", "hi"), Example("Say hi.", "hello"), Example("word " * 80, "x")]
    enc = encode_prompts(tok, Template("simple"), ex, 40, q)
    assert [it["prompt"] for it in enc.items] == ["Say hi."]
    assert enc.items[0]["ids"][0] == tok.bos_token_id and tok.eos_token_id not in enc.items[0]["ids"]
    assert q.counts() == {"too long": 1}


def test_reward_model_checks(tmp_path, tiny_base):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    assert check_reward_model(str(tmp_path / "none"), tok) == [
        f"finetune.reward_model: {tmp_path / 'none'}: no such folder"
    ]
    # a causal LM folder is not a reward model
    (problem,) = check_reward_model(str(tiny_base), tok)
    assert "not a reward model" in problem and "ForCausalLM" in problem
    rm = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1).save_pretrained(rm)
    tok.save_pretrained(rm)
    assert check_reward_model(str(rm), tok) == []
    # a tokenizer other than the policy's
    other = AutoTokenizer.from_pretrained(tiny_base)
    other.add_tokens(["zzzunseen"])
    other.save_pretrained(rm)
    (problem,) = check_reward_model(str(rm), tok)
    assert "its tokenizer differs from the base model's" in problem
    # a LoRA adapter of another task
    ad = tmp_path / "adapter"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"task_type": "CAUSAL_LM"}))
    (problem,) = check_reward_model(str(ad), tok)
    assert "a peft adapter of task CAUSAL_LM, not a reward model" in problem


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"objective": "rlhf"}, "objective rlhf needs reward_model"),
        (
            {"objective": "rlhf", "reward_model": "x", "method": "prefix"},
            "objective rlhf needs method full or lora",
        ),
        (
            {"objective": "rlhf", "reward_model": "x", "method": "full", "zero_stage": 3},
            "rlhf needs zero_stage 0-2",
        ),
        (
            {"objective": "rlhf", "reward_model": "x", "max_seq_len": 32},
            "rlhf_max_new_tokens (32) must be below",
        ),
        ({"objective": "sft", "reward_model": "x"}, "reward_model is used by objective rlhf only"),
    ],
)
def test_rlhf_config_refusals(settings, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FinetuneConfig(**settings)
