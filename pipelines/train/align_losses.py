"""The fine-tuning losses and metrics: response log-probabilities, SFT's response-only cross-entropy, the
DPO loss, and ROUGE-L / exact match for generated answers.

Why DPO is written here rather than taken from TRL: TRL's `DPOTrainer` is a `transformers.Trainer` that
owns the training loop, builds its own DeepSpeed engine through accelerate and checkpoints its own way,
so inside a Ray Train worker it would replace raylm's loop (the shared DeepSpeed config, the Ray Train
checkpoints that resume after a failure, the metrics sink). Its loss, once the log-probabilities are
there, is the one line of `dpo_loss` (the "sigmoid" loss of Rafailov et al. 2023, TRL's default).
ROUGE-L is the longest-common-subsequence F1 over words (Lin 2004), twenty lines, not worth a dependency.
"""

from __future__ import annotations

IGNORE = -100


def response_logprobs(logits, labels):
    """Per-sequence (sum of log p(response token), number of response tokens).

    `labels[:, t]` is the token at position t (or -100 where it is not a response token); the logits at
    t-1 predict it. Computed in fp32."""
    import torch
    import torch.nn.functional as F

    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != IGNORE
    token_logp = -F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.clamp(min=0).reshape(-1), reduction="none"
    ).view(target.shape)
    token_logp = torch.where(mask, token_logp, torch.zeros_like(token_logp))
    return token_logp.sum(-1), mask.sum(-1)


def sft_loss(logits, labels):
    """(mean cross-entropy over the micro-batch's response tokens, their count)."""
    logp, n = response_logprobs(logits, labels)
    total = n.sum()
    return -logp.sum() / total.clamp(min=1), int(total)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Per-pair DPO loss, -log sigmoid(beta ((pi_c - ref_c) - (pi_r - ref_r))), and the implicit reward
    margin beta ((pi_c - ref_c) - (pi_r - ref_r)) (the arguments are summed response log-probabilities)."""
    import torch.nn.functional as F

    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin), margin


def reward_loss(chosen, rejected):
    """Per-pair Bradley-Terry loss of a reward model, -log sigmoid(r_chosen - r_rejected), and the reward
    margin r_chosen - r_rejected."""
    import torch.nn.functional as F

    margin = chosen - rejected
    return -F.logsigmoid(margin), margin


def model_logits(model, batch):
    """Logits aligned with `batch["input_ids"]`: P-tuning prepends its virtual tokens to the inputs, so
    peft returns logits for them too; the first ones are cut off."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = out.logits
    n = batch["input_ids"].shape[1]
    return logits[:, -n:] if logits.shape[1] > n else logits


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased whitespace words."""
    p, r = prediction.lower().split(), reference.lower().split()
    if not p or not r:
        return float(p == r)
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the answers are equal up to case and whitespace."""
    return float(" ".join(prediction.lower().split()) == " ".join(reference.lower().split()))
