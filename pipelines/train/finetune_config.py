"""The recipe's `finetune` section: supervised fine-tuning (SFT), DPO, a reward model and RLHF (RLOO against
that reward model) on Ray Train + DeepSpeed, with full fine-tuning or a peft method (LoRA, prefix tuning,
P-tuning).

```yaml
finetune:
  base: assets:models/SmolLM2-135M-Instruct   # or a raylm model folder; empty: this run's pretrain/model
  objective: sft          # sft | dpo | sft+dpo | reward | rlhf
  method: lora            # full | lora | prefix | p-tuning
  data: [assets:instructions/chatterbot.jsonl]
  max_steps: 40
```

The optimisation keys (zero_stage, precision, lr, schedule, ...) mean what they mean in `pretrain`, and
the same DeepSpeed config builder (`pipelines.train.ds_config`) reads them; only their defaults differ
(fine-tuning uses a lower learning rate and fewer steps). Combinations that cannot work are refused when
the recipe loads, naming the key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipelines.allocator import AllocatorSection
from pipelines.parallel.config import ParallelConfig, ParallelSection

PEFT_METHODS = ("lora", "prefix", "p-tuning")


class FinetuneConfig(ParallelSection, AllocatorSection):
    """Fine-tuning: SFT, DPO, a reward model or RLHF of a causal LM, full or parameter-efficient, as a Ray
    Train job."""

    base: str | None = None
    """The model to tune: a Hugging Face causal-LM folder with its tokenizer (a raylm `pretrain/model`, or
    `assets:models/SmolLM2-135M-Instruct`). None: this run's `<run>/pretrain/model`."""
    objective: Literal["sft", "dpo", "sft+dpo", "reward", "rlhf"] = "sft"
    """sft: next-token loss on the response tokens of (instruction, output) pairs. dpo: Direct Preference
    Optimization on (prompt, chosen, rejected) triples, against the base model as the reference. sft+dpo:
    SFT, then DPO of the SFT model (LoRA: merged first) with it as the reference, `dpo_max_steps` steps at
    `dpo_lr`; outputs in `sft/` and `dpo/` (methods full and lora). reward: a reward model, a
    sequence-classification head (one score) on the base's backbone, trained with the Bradley-Terry loss
    -logsigmoid(r_chosen - r_rejected) on the same preference pairs as dpo (methods full and lora). rlhf:
    policy optimization of the base against `reward_model` with a KL penalty to the base (RLOO: `rlhf_samples`
    sampled answers per prompt of `data`; methods full and lora)."""
    method: Literal["full", "lora", "prefix", "p-tuning"] = "lora"
    """full: every weight trains. lora: low-rank adapters on `lora_target_modules`. prefix: trained key/value
    prefixes in every layer (prefix tuning). p-tuning: trained virtual-token embeddings produced by a small
    prompt encoder (P-tuning). The peft methods save an adapter folder instead of a whole model."""
    data: list[str] = ["assets:instructions/chatterbot.jsonl"]
    """JSONL or Parquet files (local, `assets:`). Records are `{instruction, output}` pairs (`prompt`/
    `response` also accepted) or, for dpo, `{prompt, chosen, rejected}` triples; pairs without a rejected
    answer get one built (see `rejected`)."""
    max_pairs: int | None = Field(default=None, ge=1)
    """Use only the first N valid records of `data` (before the held-out split). None: all."""
    heldout_pairs: int = Field(default=32, ge=1)
    """Records held out for evaluation (before/after loss, match metric, DPO margins). Split by
    instruction: a held-out instruction's other answers are not trained on either."""
    max_seq_len: int = Field(default=256, ge=8)
    """Longest prompt + response in tokens. Longer records are quarantined (counted, written to
    `quarantine/`), not truncated: a truncated response teaches the model to stop mid-sentence."""
    template: Literal["auto", "chat", "simple"] = "auto"
    """How a prompt is rendered. chat: the tokenizer's chat template (user turn, then the assistant's
    generation prompt). simple: `### Instruction:\\n{instruction}\\n\\n### Response:\\n` (for tokenizers
    without a chat template, e.g. a raylm-pretrained one). auto: chat when the tokenizer has a template."""
    rejected: Literal["other_answer", "shuffled_words"] = "other_answer"
    """dpo, for records without a rejected answer: other_answer takes the answer of a record with another
    instruction; shuffled_words shuffles the reference answer's words (a fluent-vs-garbled preference)."""
    dpo_beta: float = Field(default=0.1, gt=0)
    """dpo: the KL strength beta of the DPO loss -logsigmoid(beta x (chosen log-ratio - rejected
    log-ratio)). Larger keeps the policy closer to the reference."""
    dpo_max_steps: int = Field(default=30, ge=1)
    """sft+dpo: optimizer steps of the DPO pass (`max_steps` is the SFT pass's)."""
    dpo_lr: float | None = Field(default=None, gt=0)
    """sft+dpo: peak learning rate of the DPO pass. None: lr / 2."""
    reward_model: str | None = None
    """rlhf: the reward model scoring sampled answers: the `model/` folder of an `objective: reward` run (a
    LoRA adapter with its score head, or a full sequence-classification folder). A local path, `assets:`, or
    `run:<folder>` relative to this run's folder. Its tokenizer must be the base's."""
    rlhf_samples: int = Field(default=4, ge=2)
    """rlhf: answers sampled per prompt (RLOO's k); an answer's baseline is the mean reward of the other
    k-1."""
    rlhf_beta: float = Field(default=0.05, ge=0)
    """rlhf: KL penalty; a sampled answer's reward is its reward-model score minus rlhf_beta x its summed
    log-ratio log p_policy - log p_reference."""
    rlhf_temperature: float = Field(default=1.0, gt=0)
    """rlhf: sampling temperature of the rollouts (the log-probabilities use the same temperature)."""
    rlhf_max_new_tokens: int = Field(default=32, ge=1)
    """rlhf: longest sampled answer; a prompt must leave this much room within max_seq_len."""
    lora_rank: int = Field(default=8, ge=1)
    """lora: rank r of each adapter (A: r x in, B: out x r)."""
    lora_alpha: float = Field(default=16.0, gt=0)
    """lora: the update is scaled by lora_alpha / lora_rank."""
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    """lora: dropout on the adapter's input."""
    lora_target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    """lora: module names (name suffixes, e.g. `q_proj`) that get adapters, or ["all-linear"]. A name the
    model has no module for is refused before any worker starts."""
    num_virtual_tokens: int = Field(default=16, ge=1)
    """prefix / p-tuning: virtual tokens prepended (prefix: per layer as keys/values; p-tuning: as input
    embeddings)."""
    prefix_init: str = "Answer the request below helpfully, accurately and briefly."
    """prefix: text whose keys/values (the base model's own, per layer) start the prefix, so tuning starts
    from the base model's behaviour; repeated or cut to `num_virtual_tokens` tokens. Empty: peft's random
    start, which begins far worse than the base."""
    prompt_encoder: Literal["MLP", "LSTM"] = "MLP"
    """p-tuning: the encoder that produces the virtual-token embeddings (peft's
    encoder_reparameterization_type)."""
    prompt_encoder_hidden_size: int = Field(default=128, ge=1)
    """p-tuning: hidden size of the prompt encoder."""
    merge: bool = False
    """lora: also write `merged/`, the base with the adapters folded into its weights (a plain model
    folder). `raylm finetune --merge` sets it."""
    eval_generate: int = Field(default=16, ge=0)
    """Held-out prompts answered greedily before and after tuning for the match metrics (ROUGE-L F1,
    exact match) in the summary. 0: skip."""
    max_new_tokens: int = Field(default=48, ge=1)
    """Longest generated answer for the match metrics."""
    num_workers: int = Field(default=2, ge=1)
    """Ray Train workers (data parallel, ZeRO shards across them; with `parallel`, dp x pp x tp)."""
    parallel: ParallelConfig = ParallelConfig()
    """3D parallelism, as `pretrain.parallel` (docs/parallel.md): pipeline stages and tensor shards of a
    Llama-architecture base. pp > 1 or tp > 1 runs objective sft with method full (the adapters and the
    alignment objectives train data parallel). Default: all data parallel."""
    use_gpu: bool | None = None
    """One GPU per worker. None: when the Ray cluster has GPUs."""
    cpus_per_worker: float = Field(default=1.0, gt=0)
    """Ray CPUs each worker reserves; on CPU workers also its torch threads."""
    micro_batch_size: int = Field(default=4, ge=1)
    """Records per worker per forward (a dpo record is two sequences: chosen and rejected; an rlhf record is
    a prompt with rlhf_samples sampled answers)."""
    grad_accum_steps: int = Field(default=1, ge=1)
    """Micro-batches accumulated per optimizer step."""
    max_steps: int = Field(default=60, ge=1)
    """Optimizer steps. Raising it and re-running continues from the latest checkpoint."""
    time_budget_s: float | None = Field(default=None, gt=0)
    """Stop after this many seconds of training, checkpoint and export as at max_steps. None: no limit."""
    lr: float = Field(default=2e-4, gt=0)
    """Peak AdamW learning rate (2e-4 suits LoRA; full fine-tuning usually wants 1e-5 to 5e-5)."""
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    """The schedule decays to lr x min_lr_ratio at max_steps."""
    warmup_steps: int = Field(default=5, ge=0)
    """Linear warm-up from 0 to lr over these optimizer steps."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """LR decay after warm-up."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW decoupled weight decay (not on biases and norms)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's moment decay rates."""
    grad_clip: float = Field(default=1.0, ge=0)
    """Clip the global gradient norm (0: off)."""
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    """bf16 where the hardware computes it natively (else fp32), fp32, or fp16 (GPUs only)."""
    zero_stage: Literal[0, 1, 2, 3] = 1
    """DeepSpeed ZeRO stage (3 only with method full: peft adapters are small and their export reads the
    module's own weights)."""
    offload_optimizer: bool = False
    """Optimizer state in CPU memory, DeepSpeed's CPU Adam (ZeRO 1-3)."""
    offload_param: bool = False
    """Parameters in CPU memory between uses (ZeRO-3 only)."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more compute)."""
    eval_interval: int = Field(default=20, ge=1)
    """Held-out evaluation every this many steps, before the first step, and at the end."""
    checkpoint_interval: int = Field(default=50, ge=1)
    """Checkpoint every this many steps, and at the end."""
    keep_checkpoints: int = Field(default=2, ge=1)
    """Keep the latest K checkpoints."""
    checkpoint_storage: str | None = None
    """Where checkpoints go (a path every node sees, or `s3://`). None: `<run>/checkpoints/finetune`."""
    max_failures: int = Field(default=1, ge=0)
    """Worker-group restarts after a failure (each resumes from the latest checkpoint)."""
    log_every: int = Field(default=1, ge=1)
    """Send metrics to the driver every this many steps."""

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneConfig:
        problems = []
        if self.offload_param and self.zero_stage != 3:
            problems.append(f"offload_param needs zero_stage 3 (got {self.zero_stage})")
        if self.offload_optimizer and self.zero_stage == 0:
            problems.append("offload_optimizer needs zero_stage 1, 2 or 3")
        if self.precision == "fp16" and self.use_gpu is False:
            problems.append("precision fp16 needs GPUs (use_gpu is false): CPUs train in bf16 or fp32")
        if self.zero_stage == 3 and self.method != "full":
            problems.append(
                f"zero_stage 3 works with method full only (got method {self.method}): an adapter is a "
                "small fraction of the model, ZeRO 1-2 already shard its optimizer state"
            )
        if self.merge and self.method != "lora":
            problems.append(
                f"merge needs method lora (got {self.method}): only LoRA's update can be folded into "
                "the base weights; prefix and p-tuning adapters stay separate"
            )
        if self.objective == "reward" and self.method not in ("full", "lora"):
            problems.append(
                f"objective reward needs method full or lora (got {self.method}): a score head reads the "
                "last token's hidden state, which virtual tokens do not feed into peft's classifier"
            )
        if self.objective == "rlhf":
            if self.method not in ("full", "lora"):
                problems.append(
                    f"objective rlhf needs method full or lora (got {self.method}): rollouts use generate's "
                    "KV cache, which peft's prefix key/values break, and the reference is the adapter "
                    "switched off or a frozen copy"
                )
            if not self.reward_model:
                problems.append(
                    "objective rlhf needs reward_model: the model/ folder of an objective: reward run"
                )
            if self.zero_stage == 3:
                problems.append(
                    "objective rlhf needs zero_stage 0-2: rollouts generate token by token, and under "
                    "ZeRO-3 every token would gather every layer's weights"
                )
            if self.rlhf_max_new_tokens >= self.max_seq_len:
                problems.append(
                    f"rlhf_max_new_tokens ({self.rlhf_max_new_tokens}) must be below max_seq_len "
                    f"({self.max_seq_len}): the prompt needs room too"
                )
        elif self.reward_model:
            problems.append(f"reward_model is used by objective rlhf only (got objective {self.objective})")
        if self.objective == "sft+dpo" and self.method not in ("full", "lora"):
            problems.append(
                f"objective sft+dpo needs method full or lora (got {self.method}): DPO starts from the SFT "
                "model, and only a LoRA adapter can be merged into it"
            )
        if self.objective == "sft+dpo" and self.warmup_steps >= self.dpo_max_steps > 1:
            problems.append(
                f"warmup_steps ({self.warmup_steps}) must be below dpo_max_steps ({self.dpo_max_steps})"
            )
        if self.warmup_steps >= self.max_steps and self.max_steps > 1:
            problems.append(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        if not self.data:
            problems.append("data: at least one JSONL or Parquet file")
        if not self.lora_target_modules:
            problems.append("lora_target_modules: at least one module name")
        if self.model_parallel and (self.objective != "sft" or self.method != "full"):
            problems.append(
                f"parallel (pp {self.parallel.pp}, tp {self.parallel.tp}) runs objective sft with method "
                f"full (got {self.objective}/{self.method}): pipeline stages and tensor shards split the "
                "whole model's weights; adapters and the alignment objectives train data parallel "
                "(parallel: {pp: 1, tp: 1})"
            )
        problems += self.parallel_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self
