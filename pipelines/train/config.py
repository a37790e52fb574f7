"""The recipe's `pretrain` section: how the model is trained on Ray Train + DeepSpeed.

```yaml
pretrain:
  num_workers: 2          # Ray Train workers (one process each; data parallel, ZeRO shards across them)
  zero_stage: 2
  precision: bf16
  micro_batch_size: 8     # sequences per worker per forward
  grad_accum_steps: 1
  max_steps: 300
  lr: 1.0e-3
  warmup_steps: 30
```

Settings that cannot work together are refused when the recipe loads (e.g. parameter offload without
ZeRO-3), naming the key; what depends on the data or the cluster (sequence length, vocabulary, dataset
size, GPUs) is checked by the stage's planner before any worker starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipelines.allocator import AllocatorSection
from pipelines.parallel.config import ParallelConfig, ParallelSection


class PretrainConfig(ParallelSection, AllocatorSection):
    """Pretraining: Ray Train `TorchTrainer` workers running `deepspeed.initialize`."""

    data: str | None = None
    """A tokenize-stage folder to train on (tokenizer/, train/, heldout/ Parquet of packed sequences), local
    or `s3://`; `assets:` paths work. None: this run's `<run>/tokenize/`."""
    init_from: str | None = None
    """A Hugging Face model folder (Llama-style decoder; local path every node reads, `assets:` paths work)
    to start from instead of random weights: continued pretraining. E.g. the long recovery of a
    structurally pruned or distilled model (`<run>/compress/prune_structured` of another run), or the
    reference model on new text. The folder's config is the model: leave the `model` section out. The
    tokenize stage must use the folder's tokenizer (`tokenizer.path: <folder>`); another one is refused
    before any worker starts. Not with a pipeline/tensor layout. None: a new model from `model`."""
    num_workers: int = Field(default=2, ge=1)
    """Ray Train workers, one process (and one GPU, with use_gpu) each. They train data-parallel: each
    streams its own shard of the data and ZeRO partitions optimizer state (1), gradients (2) and
    parameters (3) across them."""
    use_gpu: bool | None = None
    """One GPU per worker, NCCL between them. None: when the Ray cluster has GPUs. False: CPU workers,
    gloo between them (DeepSpeed's CPU accelerator)."""
    cpus_per_worker: float = Field(default=1.0, gt=0)
    """Ray CPUs each worker reserves; on CPU workers also its torch threads (rounded down, at least 1)."""
    micro_batch_size: int = Field(default=8, ge=1)
    """Packed sequences per worker per forward/backward (DeepSpeed's train_micro_batch_size_per_gpu)."""
    grad_accum_steps: int = Field(default=1, ge=1)
    """Micro-batches accumulated per optimizer step. Global batch = micro_batch_size x grad_accum_steps x
    num_workers sequences."""
    max_steps: int = Field(default=300, ge=1)
    """Optimizer steps to train for (the LR schedule decays over these). Raising it and re-running
    continues from the latest checkpoint."""
    time_budget_s: float | None = Field(default=None, gt=0)
    """Stop after this many seconds of training (this attempt's), checkpoint and export as at max_steps.
    None: no time limit."""
    lr: float = Field(default=1e-3, gt=0)
    """Peak learning rate of AdamW, reached after the warm-up."""
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    """The schedule decays to lr x min_lr_ratio at max_steps."""
    warmup_steps: int = Field(default=30, ge=0)
    """Linear warm-up from 0 to lr over these optimizer steps."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """LR decay after warm-up."""
    weight_decay: float = Field(default=0.1, ge=0)
    """AdamW decoupled weight decay (not applied to biases and norm weights)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's decay rates of the first and second moment estimates."""
    grad_clip: float = Field(default=1.0, ge=0)
    """Clip the global gradient norm to this (DeepSpeed gradient_clipping); 0 disables clipping."""
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    """Training dtype: bf16 (bf16 weights and activations, fp32 master weights in the optimizer; CPUs with
    AVX512-BF16/AMX and Ampere+ GPUs), fp32, or fp16 (GPUs only, dynamic loss scaling)."""
    zero_stage: Literal[0, 1, 2, 3] = 1
    """DeepSpeed ZeRO stage: 0 plain data parallel, 1 partitions optimizer state, 2 also gradients, 3 also
    parameters across the workers."""
    offload_optimizer: bool = False
    """Keep optimizer state in CPU memory and step it with DeepSpeed's CPU Adam (ZeRO 1-3). JIT-builds
    the cpu_adam op the first time (about 30 s; cached in TORCH_EXTENSIONS_DIR)."""
    offload_param: bool = False
    """Keep parameters in CPU memory between uses (ZeRO-3 only)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of keeping them (less memory,
    about a third more compute): transformers' gradient checkpointing."""
    eval_interval: int = Field(default=50, ge=1)
    """Compute the held-out loss every this many optimizer steps, and at the end."""
    eval_sequences: int = Field(default=64, ge=1)
    """Held-out sequences per evaluation, over all workers (read once, kept in the workers' memory)."""
    checkpoint_interval: int = Field(default=100, ge=1)
    """Save a checkpoint every this many optimizer steps, and at the end."""
    keep_checkpoints: int = Field(default=2, ge=1)
    """Keep the latest K checkpoints."""
    checkpoint_storage: str | None = None
    """Where checkpoints go (local path every node sees, or `s3://`). None: `<run>/checkpoints/pretrain`.
    Checkpoints live outside the stage folder so that an interrupted stage, which is redone from an
    empty folder, resumes from them."""
    max_failures: int = Field(default=1, ge=0)
    """Worker-group restarts after a failure (each resumes from the latest checkpoint)."""
    shuffle_buffer_rows: int = Field(default=256, ge=0)
    """Rows each worker shuffles locally while streaming (Ray Data's local shuffle buffer). 0: none."""
    mlm_probability: float = Field(default=0.15, gt=0, lt=1)
    """encoder (BERT) only: fraction of tokens chosen for prediction."""
    noise_density: float = Field(default=0.15, gt=0, lt=1)
    """encoder-decoder (T5) only: fraction of tokens corrupted."""
    mean_noise_span_length: float = Field(default=3.0, ge=1)
    """encoder-decoder (T5) only: mean length of a corrupted span."""
    num_sentinels: int = Field(default=100, ge=1)
    """encoder-decoder (T5) only: sentinel tokens `<extra_id_N>` added to the tokenizer."""
    log_every: int = Field(default=1, ge=1)
    """Send metrics to the driver (progress bar, metrics.jsonl, TensorBoard) every this many steps."""
    parallel: ParallelConfig = ParallelConfig()
    """3D parallelism (`raylm keys pretrain.parallel`): data x pipeline x tensor-parallel degrees of the
    num_workers workers (docs/parallel.md). Default: all data parallel."""

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:
        problems = []
        if self.offload_param and self.zero_stage != 3:
            problems.append(
                f"offload_param needs zero_stage 3 (got {self.zero_stage}): only ZeRO-3 partitions "
                "parameters, so only it can offload them"
            )
        if self.offload_optimizer and self.zero_stage == 0:
            problems.append(
                "offload_optimizer needs zero_stage 1, 2 or 3 (ZeRO-0 keeps no partitioned "
                "optimizer state to offload)"
            )
        if self.precision == "fp16" and self.use_gpu is False:
            problems.append("precision fp16 needs GPUs (use_gpu is false): CPUs train in bf16 or fp32")
        if self.warmup_steps >= self.max_steps and self.max_steps > 1:
            problems.append(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        if self.init_from and self.model_parallel:
            problems.append(
                "init_from with a pipeline/tensor layout: the layout's workers build their own stage of a "
                "new model; continued pretraining runs data parallel (ZeRO shards it)"
            )
        problems += self.parallel_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self
