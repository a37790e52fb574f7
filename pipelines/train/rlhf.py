"""RLHF by RLOO (REINFORCE leave-one-out, Ahmadian et al. 2024): the policy samples k answers per prompt,
the reward model scores them, each answer's reward is its score minus beta x its summed log-ratio to the
reference (log p_policy - log p_ref over the answer's tokens, the sequence-level KL estimate of the RLOO
paper and of TRL's RLOOTrainer), its advantage is that reward minus the mean reward of the other k-1
answers to the same prompt, and the loss is -advantage x log p_policy(answer), averaged over answers.

Why this is written here rather than taken from TRL: TRL 1.16's `RLOOTrainer` (and `GRPOTrainer`) is a
`transformers.Trainer` that owns the training loop, builds its DeepSpeed engine through accelerate,
generates through its own vLLM/transformers paths and checkpoints its own way; inside a Ray Train worker
it would replace raylm's loop (the shared DeepSpeed config, the Ray Train checkpoints that resume after a
failure, the metrics sink), as for DPO (`align_losses`). The algorithm, once rollouts and log-probabilities
are there, is the few lines of `rloo_advantages` and `Rloo.step` (TRL's RLOO loss with one optimizer
step per rollout batch, where its clipped ratio is exactly 1).

Rollouts use transformers' `generate` on the current policy in the worker, not vLLM: vLLM would need the
policy's weights copied into an engine after every step (OpenRLHF does it over NCCL between GPU
processes); the CPU build of vLLM here has no weight-update path, and reloading a model folder per step
would cost more than generating the few dozen tokens per answer directly.

The reference is the base: for LoRA the same model with the adapter switched off, for full fine-tuning a
frozen copy (as for DPO). The reward model is frozen on every worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.train.sft_data import IGNORE, Encoded, Example, Quarantine, Template, encode

# ------------------------------------------------------------------------------------------------
# Driver side: the prompts and the reward model's checks


def encode_prompts(
    tokenizer, template: Template, examples: list[Example], max_prompt_len: int, quarantine: Quarantine
) -> Encoded:
    """One item per distinct prompt, `{"ids": prompt ids, "prompt": text}`; prompts that leave no room for
    the answer (longer than max_prompt_len tokens) are quarantined."""
    out = Encoded([], [], [])
    seen: set[str] = set()
    for ex in examples:
        if ex.prompt in seen:
            continue
        seen.add(ex.prompt)
        ids, labels = encode(tokenizer, template, ex.prompt, "")
        prompt_ids = [i for i, lab in zip(ids, labels, strict=True) if lab == IGNORE]
        if len(prompt_ids) > max_prompt_len:
            quarantine.add(
                "finetune.data",
                f"too long: prompt of {len(prompt_ids)} tokens > max_seq_len - rlhf_max_new_tokens "
                f"({max_prompt_len})",
                {"prompt": ex.prompt[:200]},
            )
            continue
        out.items.append({"ids": prompt_ids, "prompt": ex.prompt})
        out.prompts.append(ex.prompt)
        out.answers.append(ex.chosen)
    return out


def check_reward_model(path: str, tokenizer, key: str = "finetune.reward_model") -> list[str]:
    """Problems with the reward model folder: missing, not a one-score sequence classifier (a full folder
    or a peft SEQ_CLS adapter whose base exists), or a tokenizer other than the policy's (the reward model
    reads the policy's token ids)."""
    p = Path(path)
    if not p.is_dir():
        return [f"{key}: {path}: no such folder"]
    adapter = p / "adapter_config.json"
    if adapter.is_file():
        conf = json.loads(adapter.read_text())
        if conf.get("task_type") != "SEQ_CLS":
            return [
                f"{key}: {path}: a peft adapter of task {conf.get('task_type')}, not a reward model "
                "(SEQ_CLS: the model/ folder of an objective: reward run)"
            ]
        base = conf.get("base_model_name_or_path") or ""
        if not (Path(base) / "config.json").is_file():
            return [f"{key}: {path}: the adapter's base {base!r} is not a model folder here"]
    elif (p / "config.json").is_file():
        conf = json.loads((p / "config.json").read_text())
        arch = (conf.get("architectures") or [""])[0]
        labels = len(conf.get("id2label") or {}) or conf.get("num_labels", 2)
        if not arch.endswith("ForSequenceClassification") or labels != 1:
            return [
                f"{key}: {path}: {arch or 'a model'} with {labels} labels, not a reward model (a one-score "
                "*ForSequenceClassification: the model/ folder of an objective: reward run)"
            ]
    else:
        return [f"{key}: {path}: neither a model folder (config.json) nor an adapter (adapter_config.json)"]
    from transformers import AutoTokenizer

    try:
        rm_tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001  # a folder without a readable tokenizer
        return [f"{key}: {path}: no tokenizer ({type(exc).__name__})"]
    if rm_tok.get_vocab() != tokenizer.get_vocab():
        return [
            f"{key}: {path}: its tokenizer differs from the base model's (vocabulary of {len(rm_tok)} vs "
            f"{len(tokenizer)} tokens); the reward model must share the policy's tokenizer"
        ]
    return []


def load_reward_model(path: str, pad_id: int):
    """The frozen reward model: a full sequence-classification folder, or a peft SEQ_CLS adapter (with its
    trained score head) merged into its base."""
    import torch
    from transformers import AutoModelForSequenceClassification

    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftModel

        base = json.loads(adapter.read_text())["base_model_name_or_path"]
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=1, dtype=torch.float32, local_files_only=True
        )
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=torch.float32, local_files_only=True
        )
    model.config.pad_token_id = pad_id  # it scores the last non-pad token, as in its training
    return model.requires_grad_(False).eval()


# ------------------------------------------------------------------------------------------------
# The algorithm


def rloo_advantages(rewards):
    """(prompts, k) rewards -> advantages: each reward minus the mean of the other k-1 of its prompt."""
    k = rewards.shape[-1]
    baseline = (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)
    return rewards - baseline


def sample_answers(
    model, prompt_ids: list[int], k: int, max_new_tokens: int, temperature: float, eos_id: int, pad_id: int
) -> list[list[int]]:
    """k sampled answers (token ids, cut after the first eos, eos kept) to one prompt. One prompt per call:
    the k rows have the same length, so no padding enters the prompt."""
    import torch

    device = next(model.parameters()).device
    x = torch.tensor([prompt_ids] * k, device=device)
    out = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        do_sample=True,
        temperature=temperature,
        top_k=0,  # sample from the whole distribution: the policy gradient assumes it
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
    )[:, len(prompt_ids) :]
    answers = []
    for row in out.tolist():
        answers.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return answers


@dataclass
class Rloo:
    """One RLOO step (or a held-out evaluation) over a micro-batch of prompts, on one worker."""

    tokenizer: Any
    template: Template
    reward_model: Any
    k: int
    beta: float
    temperature: float
    max_new_tokens: int
    pad_id: int
    device: Any

    def scores(self, prompts: list[str], answers: list[list[int]]):
        """Reward-model scores of the answers, each re-rendered as text in the training template (so the
        model sees the layout it was trained on: the chat template's end of turn, the simple template's
        eos)."""
        import torch

        from pipelines.train.sft_data import collate

        items = []
        for prompt, ans in zip(prompts, answers, strict=True):
            text = self.tokenizer.decode(ans, skip_special_tokens=True).strip()
            ids, _ = encode(self.tokenizer, self.template, prompt, text)
            items.append({"ids": ids, "labels": ids})
        batch = collate(items, self.pad_id)
        with torch.no_grad():
            out = self.reward_model(
                input_ids=torch.as_tensor(batch["input_ids"], device=self.device),
                attention_mask=torch.as_tensor(batch["attention_mask"], device=self.device),
            )
        return out.logits[:, 0].float()

    def logprobs(self, model, batch):
        from pipelines.train.align_losses import model_logits, response_logprobs

        return response_logprobs(model_logits(model, batch) / self.temperature, batch["labels"])[0]

    def step(self, engine, module, reference, items: list[dict[str, Any]], train: bool):
        """(loss to backpropagate, sums to log). `engine` runs the trained forward, `module` generates and
        (LoRA, `reference` None) gives the reference with its adapter disabled."""
        import torch

        from pipelines.train.sft_data import collate

        module.eval()
        prompts, answers, seqs = [], [], []
        with torch.no_grad():
            for it in items:
                eos = self.tokenizer.eos_token_id
                for ans in sample_answers(
                    module, it["ids"], self.k, self.max_new_tokens, self.temperature, eos, self.pad_id
                ):
                    prompts.append(it["prompt"])
                    answers.append(ans)
                    seqs.append({"ids": it["ids"] + ans, "labels": [IGNORE] * len(it["ids"]) + ans})
            scores = self.scores(prompts, answers)
            batch = {k: torch.as_tensor(v, device=self.device) for k, v in collate(seqs, self.pad_id).items()}
            if reference is not None:
                ref = self.logprobs(reference, batch)
            else:
                with module.disable_adapter():
                    ref = self.logprobs(module, batch)
        if train:
            engine.train()
        # one policy forward: with one optimizer step per rollout batch the sampling policy's log-probs
        # are these, detached (as TRL does when it generates once per step)
        logp = self.logprobs(engine if train else module, batch)
        kl = logp.detach() - ref
        reward = scores - self.beta * kl
        advantages = rloo_advantages(reward.view(len(items), self.k)).reshape(-1)
        loss = -(advantages * logp).mean()
        n = len(seqs)
        sums = {
            "loss": loss.detach().double() * n,
            "weight": n,
            "tokens": batch["attention_mask"].sum(),
            "reward": scores.double().sum(),
            "kl": kl.double().sum(),
            "objective": reward.double().sum(),
            "length": float(sum(len(a) for a in answers)),
        }
        return loss, sums
