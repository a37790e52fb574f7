"""Fine-tuning through the real stage on a local 2-CPU Ray: Ray Train workers running DeepSpeed on CPU
(gloo), a tiny decoder tuned with SFT (LoRA, prefix, P-tuning, full), DPO (LoRA) and RLHF (RLOO, LoRA,
against a small reward model), held-out metrics before and after, checkpoints a longer re-run continues
from, and folders that transformers and peft load; the LoRA adapter and its base also in vLLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cluster.config import parse_recipe
from cluster.orchestrate import run_recipe
from cluster.runtime import ray_session
from tests.unit.finetune.conftest import instruction_pairs, make_tiny_base, write_jsonl

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_cluster():
    with ray_session(num_cpus=2) as resources:
        yield resources


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("ft") / "base")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    bad = [
        {"instruction": "Say nothing.", "output": ""},  # empty field
        "{not json",  # unparsable
        {"instruction": "Count. " + "one two three " * 80, "output": "four"},  # longer than max_seq_len
    ]
    return write_jsonl(tmp_path_factory.mktemp("ftdata") / "pairs.jsonl", instruction_pairs() + bad)


def recipe(run_dir: Path, base: Path, data: Path, **finetune) -> str:
    settings = (
        dict(
            base=str(base),
            data=[str(data)],
            num_workers=2,
            micro_batch_size=4,
            precision="fp32",
            max_seq_len=64,
            heldout_pairs=8,
            lr=2e-2,
            warmup_steps=1,
            max_steps=60,
            eval_interval=30,
            checkpoint_interval=30,
            eval_generate=4,
            max_new_tokens=6,
        )
        | finetune
    )
    lines = [f"name: ft-{settings.get('objective', 'sft')}", f"run_dir: {run_dir}"]
    lines += ["cluster: {num_cpus: 2}", "finetune:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


VLLM_LORA = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    def main():
        base, adapter, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        llm = LLM(model=base, dtype="float32", enforce_eager=True, max_model_len=128, seed=0,
                  enable_lora=True, max_lora_rank=8, max_loras=1)
        params = SamplingParams(max_tokens=6, temperature=0.0)
        inputs = [{"prompt_token_ids": p} for p in prompts]
        for name, lora in (("base", None), ("lora", LoRARequest("sft", 1, adapter))):
            out = llm.generate(inputs, params, lora_request=lora)
            print(name.upper(), json.dumps([list(o.outputs[0].token_ids) for o in out]), flush=True)

    if __name__ == "__main__":
        main()
""")


def vllm_greedy(base: Path, adapter: Path, prompts: list[list[int]], tmp_path: Path) -> dict[str, list]:
    """Greedy tokens from vLLM (CPU) for the base alone and with the adapter as a LoRA request."""
    script = tmp_path / "vllm_lora.py"
    script.write_text(VLLM_LORA)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    out = subprocess.run([sys.executable, str(script), str(base), str(adapter), json.dumps(prompts)],
                         capture_output=True, text=True, env=env, timeout=600)
    found = {}
    for line in out.stdout.splitlines():
        name, _, rest = line.partition(" ")
        if name in ("BASE", "LORA"):
            found[name.lower()] = json.loads(rest)
    assert set(found) == {"base", "lora"}, (out.stdout + out.stderr)[-12000:]
    return found


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "finetune" / "summary.json").read_text())


def test_sft_lora_lowers_heldout_loss_quarantines_resumes_and_merges(ray_cluster, base, data, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tmp_path / "run"
    cfg = parse_recipe(recipe(run_dir, base, data, method="lora", zero_stage=2, merge=True))
    (result,) = run_recipe(cfg, only={"finetune"})
    s = summary_of(run_dir)
    assert s["step"] == 60 and s["template"] == "simple"
    assert s["heldout_after"]["heldout_loss"] < s["heldout_before"]["heldout_loss"] - 0.5
    assert 0 < s["trainable_share"] < 0.1 and s["trainable_params"] > 0
    # the three bad records are counted and kept with their reason, not dropped
    assert s["quarantined"] == 3
    assert s["quarantine_reasons"] == {"empty field": 1, "unparsable": 1, "too long": 1}
    assert len((run_dir / "finetune" / "quarantine" / "records.jsonl").read_text().splitlines()) == 3
    assert set(s["match"]["before"]) == {"rouge_l", "exact_match"} and s["match"]["prompts"] == 4
    assert result.manifest.metrics["heldout_after"] == s["heldout_after"]
    # peft's format; PeftModel loads it on the base; merged weights give the same logits
    model_dir = run_dir / "finetune" / "model"
    assert (model_dir / "adapter_config.json").is_file() and (
        model_dir / "adapter_model.safetensors"
    ).is_file()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), model_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "finetune" / "merged").eval()
    ids = AutoTokenizer.from_pretrained(model_dir)(
        "Repeat the word apple twice.", return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        torch.testing.assert_close(tuned(ids).logits, merged(ids).logits, atol=1e-4, rtol=1e-4)
    # vLLM serves the stage's adapter on the base (the format `raylm serve` loads): its greedy answers
    # are the merged model's, and the base alone still answers as the base
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok(p).input_ids for p in ("Repeat the word apple twice.", "Say hello to river.",
                                          "What comes after stone?")]
    base_model = AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        want = {name: [m.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False)[0, len(p):].tolist()
                       for p in prompts] for name, m in (("base", base_model), ("lora", merged))}
    got = vllm_greedy(base, model_dir, prompts, tmp_path)
    assert want["lora"] != want["base"]  # the adapter changes the answers, so the check below can fail
    for name in ("base", "lora"):
        assert [g[:3] for g in got[name]] == [w[:3] for w in want[name]], name
    # a longer run continues from the step-60 checkpoint
    cfg = parse_recipe(
        recipe(run_dir, base, data, method="lora", zero_stage=2, max_steps=64, eval_generate=0)
    )
    run_recipe(cfg, only={"finetune"})
    s2 = summary_of(run_dir)
    assert (s2["start_step"], s2["step"], s2["steps_this_run"]) == (60, 64, 4)
    assert s2["heldout_before"] == s["heldout_before"]  # the base's numbers travel in the checkpoint


def test_dpo_lora_raises_margin_and_preference_accuracy(ray_cluster, base, data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = parse_recipe(
        recipe(
            run_dir,
            base,
            data,
            objective="dpo",
            method="lora",
            dpo_beta=0.5,
            lr=5e-4,
            heldout_pairs=16,
            max_steps=100,
            eval_interval=50,
            eval_generate=0,
        )
    )
    run_recipe(cfg, only={"finetune"})
    s = summary_of(run_dir)
    before, after = s["heldout_before"], s["heldout_after"]
    assert before["heldout_margin"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at the start
    # The tiny model's trajectory depends on the last bits of the CPU's fp32 kernels. At lr 2e-3 two
    # AVX512 CPUs disagreed: an AMD EPYC gave loss 0.693 -> 0.55, accuracy 0.75, margin 1.8, but an
    # Intel Xeon (2026-12-06) overfit (train loss 0.03, held-out loss 0.693 -> 0.94, accuracy 0.44).
    # At lr 5e-4 on that Xeon: 0.693 -> 0.57, accuracy 0.625, margin 0.92; with its AVX2 kernels
    # (ATEN_CPU_CAPABILITY=avx2): 0.48, 0.81, 1.26. At 1e-3 the Xeon gave accuracy 0.56.
    assert after["heldout_loss"] < before["heldout_loss"]
    assert after["heldout_margin"] > 0.5
    assert after["heldout_accuracy"] >= 0.6
    # The raw log-prob ordering (chosen above rejected, no reference) is not what DPO optimizes; on 16
    # held-out pairs it may lose one pair while the reference-relative accuracy rises (AMD EPYC,
    # 2026-12-07: 0.5625 -> 0.5 with accuracy 0.625 and margin 0.87). It must not fall further.
    assert after["heldout_logp_accuracy"] >= before["heldout_logp_accuracy"] - 1 / 16 - 1e-9


def test_reward_model_ranks_heldout_pairs_above_chance(ray_cluster, base, data, tmp_path):
    """A one-score head on the tiny backbone (LoRA + the trained head), Bradley-Terry loss, one worker."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    run_dir = tmp_path / "run"
    settings = dict(objective="reward", method="lora", num_workers=1, micro_batch_size=8, lr=5e-3)
    cfg = parse_recipe(
        recipe(
            run_dir, base, data, heldout_pairs=16, max_steps=60, eval_interval=30, eval_generate=0, **settings
        )
    )
    run_recipe(cfg, only={"finetune"})
    s = summary_of(run_dir)
    assert s["heldout_after"]["heldout_accuracy"] >= 0.75
    assert s["heldout_after"]["heldout_loss"] < s["heldout_before"]["heldout_loss"]
    head = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    PeftModel.from_pretrained(head, run_dir / "finetune" / "model")  # adapter + the score head load


@pytest.mark.parametrize("method", ["prefix", "p-tuning", "full"])
def test_other_methods_lower_heldout_loss_and_export(ray_cluster, base, data, tmp_path, method):
    """One worker each, a few steps: a worker group's start-up dominates on 2 cores."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    lr = {"full": 1e-3, "prefix": 3e-2, "p-tuning": 1e-2}[method]
    cfg = parse_recipe(
        recipe(
            run_dir,
            base,
            data,
            method=method,
            num_workers=1,
            max_steps=40,
            lr=lr,
            eval_generate=2,
            num_virtual_tokens=4,
            prompt_encoder_hidden_size=32,
            checkpoint_interval=100,
        )
    )
    run_recipe(cfg, only={"finetune"})
    s = summary_of(run_dir)
    before, after = s["heldout_before"]["heldout_loss"], s["heldout_after"]["heldout_loss"]
    if method == "p-tuning":
        # measured on this tiny model, 40 steps: 4.19 -> 4.11 on an AVX2 CPU, 5.14 -> 3.77 on an AVX512
        # one (peft starts the virtual tokens from N(0, 1), and where that start lands depends on the
        # kernels' rounding); so only that it did not get worse is checked
        assert after < before + 0.05
    else:
        assert after < before
    model_dir = run_dir / "finetune" / "model"
    if method == "full":
        assert s["trainable_share"] == 1.0
        AutoModelForCausalLM.from_pretrained(model_dir)
    else:
        assert s["trainable_share"] < 0.2
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), model_dir)


def heldout_response_loss(model_dir: Path, cfg, base: Path, seed: int) -> float:
    """The held-out response loss of a model folder, computed here in one process the data-parallel
    loop's way (transformers' forward with the attention mask, `sft_loss`, token-weighted)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipelines.train.align_losses import model_logits, sft_loss
    from pipelines.train.finetune_stage import prepare
    from pipelines.train.sft_data import collate

    prep = prepare(cfg, str(base), seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    items, total, count = prep.heldout.items, 0.0, 0
    with torch.no_grad():
        for i in range(0, len(items), cfg.micro_batch_size):
            batch = {k: torch.as_tensor(v) for k, v in collate(items[i : i + cfg.micro_batch_size],
                                                                prep.tokenizer.pad_token_id).items()}
            loss, n = sft_loss(model_logits(model, batch), batch["labels"])
            total, count = total + float(loss) * n, count + n
    return total / count


def test_full_sft_under_a_pipeline_lowers_heldout_loss_and_exports_the_trained_model(
    ray_cluster, base, data, tmp_path
):
    """`finetune.parallel: {pp: 2}`: each of two Ray Train workers holds half the base's blocks in
    DeepSpeed's pipeline engine. Its held-out loss before tuning is the base's own response loss computed
    by transformers here, and after tuning that of the exported folder: the pipeline's masking, label
    shift and export are the data-parallel loop's."""
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    cfg = parse_recipe(
        recipe(
            run_dir, base, data, method="full", parallel={"pp": 2}, max_steps=30, lr=1e-3,
            eval_interval=15, checkpoint_interval=100, eval_generate=0,
        )
    )
    run_recipe(cfg, only={"finetune"})
    s = summary_of(run_dir)
    before, after = s["heldout_before"]["heldout_loss"], s["heldout_after"]["heldout_loss"]
    assert before == pytest.approx(heldout_response_loss(base, cfg.finetune, base, cfg.seed), rel=1e-4)
    assert after < before - 0.1
    model_dir = run_dir / "finetune" / "model"
    assert after == pytest.approx(heldout_response_loss(model_dir, cfg.finetune, base, cfg.seed), rel=1e-3)
    assert s["world_size"] == 2 and s["trainable_share"] == 1.0 and s["step"] == 30
    tuned = AutoModelForCausalLM.from_pretrained(model_dir)
    start = AutoModelForCausalLM.from_pretrained(base)
    assert sum(p.numel() for p in tuned.parameters()) == sum(p.numel() for p in start.parameters())
    records = [json.loads(x) for x in (run_dir / "finetune" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 15, 30]


def train_length_reward_model(base: Path, out: Path, steps: int = 80) -> Path:
    """A reward model made in-process in a few seconds: the tiny backbone with a one-score head, trained
    (Bradley-Terry) to prefer the reference answer over the same answer with four more words. Saved like
    a full `objective: reward` model folder. (What a policy then finds that this model scores high need
    not be short answers: in-process runs went to longer answers, reward 2.2 -> 4.3-4.7, which is why
    the KL penalty matters.)"""
    import random

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipelines.train.align_losses import reward_loss
    from pipelines.train.sft_data import Template, collate, encode
    from tests.unit.finetune.conftest import WORDS

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = random.Random(0)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    pairs = []
    for p in instruction_pairs():
        longer = p["output"] + " " + " ".join(rng.sample(WORDS, 4))
        c, _ = encode(tok, Template("simple"), p["instruction"], p["output"])
        r, _ = encode(tok, Template("simple"), p["instruction"], longer)
        pairs.append(({"ids": c, "labels": c}, {"ids": r, "labels": r}))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch = [pairs[(step * 8 + i) % len(pairs)] for i in range(8)]
        b = collate([x for x, _ in batch] + [y for _, y in batch], tok.pad_token_id)
        scores = model(
            input_ids=torch.as_tensor(b["input_ids"]), attention_mask=torch.as_tensor(b["attention_mask"])
        ).logits[:, 0]
        reward_loss(scores[:8], scores[8:])[0].mean().backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_rlhf_lora_raises_the_reward_of_sampled_answers(ray_cluster, base, data, tmp_path):
    """RLOO (4 answers per prompt) of a LoRA policy against a reward model, one worker: the mean reward
    of answers sampled for held-out prompts goes up, their KL to the reference (0 at the start) stays
    bounded, and the training records carry the reward and KL per step."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rm = train_length_reward_model(base, tmp_path / "rm")
    run_dir = tmp_path / "run"
    cfg = parse_recipe(
        recipe(
            run_dir,
            base,
            data,
            objective="rlhf",
            method="lora",
            reward_model=str(rm),
            num_workers=1,
            micro_batch_size=2,
            rlhf_samples=4,
            rlhf_max_new_tokens=10,
            rlhf_beta=0.2,
            lr=5e-3,
            max_steps=20,
            eval_interval=20,
            heldout_pairs=8,
            eval_generate=0,
            checkpoint_interval=100,
        )
    )
    run_recipe(cfg, only={"finetune"})
    s = summary_of(run_dir)
    before, after = s["heldout_before"], s["heldout_after"]
    assert before["heldout_kl"] == pytest.approx(0.0, abs=1e-4)  # the policy is the reference at the start
    assert after["heldout_reward"] > before["heldout_reward"] + 0.5, (before, after)
    assert 0 <= after["heldout_kl"] < 15  # nats per answer (in-process: 4-7 with beta 0.2, 15-25 with 0.05)
    records = [json.loads(x) for x in (run_dir / "finetune" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 20 and all({"reward", "kl", "loss"} <= set(r) for r in train)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run_dir / "finetune" / "model")
