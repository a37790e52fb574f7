"""Memory per training worker, estimated before anything runs (what `raylm run --dry-run` prints).

The model is built on PyTorch's meta device (shapes only, no memory), so parameter counts are exact for
any preset or Hugging Face config; the rest is the standard accounting of mixed-precision training with
DeepSpeed ZeRO (Rajbhandari et al. 2020: 16-bit weights and gradients, fp32 master weights and two Adam
moments = 12 bytes per trainable parameter, each sharded by the ZeRO stage over data-parallel ranks) and
the activation rule of thumb of Korthikanti et al. 2022 (about 34 bytes x sequence x batch x hidden per
layer in 16-bit without recomputation; 2 bytes x ... with activation checkpointing, plus one layer's
worth). Written here rather than taken from DeepSpeed's `estimate_zero*_model_states_mem_needs`, which
needs an instantiated model on the real device and covers model states only, not activations or logits.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 1024**3
RUNTIME_BYTES = 1 * GIB
"""PyTorch, DeepSpeed and (on GPUs) the CUDA context in each worker process: about 0.4 GiB measured on CPU
workers (quickstart, `memory_base_gb_per_worker`), about 1 GiB with CUDA; 1 GiB is assumed."""


@dataclass
class Shape:
    """What the estimate needs about a model."""

    parameters: int
    hidden: int
    layers: int
    vocab: int
    source: str
    """Where the numbers come from (shown to the user)."""
    lora_trainable: int | None = None


def _count(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _lora_params(model, targets: list[str], rank: int) -> int:
    """Parameters LoRA adds: rank x (in + out) per Linear whose name ends with a target (peft's rule)."""
    import torch

    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            total += rank * (module.in_features + module.out_features)
    return total


Lora = tuple[list[str], int] | None
"""(target module names, rank) of a LoRA fine-tune, or None."""


def _shape(model, hidden: int, layers: int, vocab: int, source: str, lora: Lora) -> Shape:
    return Shape(
        _count(model),
        hidden,
        layers,
        vocab,
        source,
        lora_trainable=_lora_params(model, *lora) if lora else None,
    )


def shape_of_preset(model_cfg, vocab_size: int, source: str, lora: Lora = None) -> Shape:
    """A `ModelConfig` (the recipe's `model` section) with a vocabulary, built on the meta device."""
    from pipelines.models.build import Vocab, build_model

    model = build_model(model_cfg, Vocab(size=vocab_size, pad_id=0, eos_id=1), device="meta")
    r = model_cfg.resolved()
    layers = r["num_layers"] + (r.get("num_decoder_layers") or 0)
    return _shape(model, r["hidden_size"], layers, vocab_size, source, lora)


def shape_of_folder(folder: str, lora: Lora = None) -> Shape | None:
    """A Hugging Face model folder's shape from its config.json (None when there is none here)."""
    cfg_file = Path(folder, "config.json")
    if "://" in folder or not cfg_file.is_file():
        return None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    raw = json.loads(cfg_file.read_text())
    return _shape(
        model,
        raw.get("hidden_size", 0),
        raw.get("num_hidden_layers", 0),
        raw.get("vocab_size", 0),
        f"{folder}/config.json",
        lora,
    )


_SIZE_IN_NAME = re.compile(r"(?<![0-9.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])")


def shape_guess(folder: str, lora: Lora = None) -> Shape | None:
    """For a base that is not on this machine: the decoder preset of the size in its name ("Llama-2-7b-hf"
    -> the 7b preset, Llama-2-7B's shape), vocabulary 32,000. Said to be a guess wherever it is shown."""
    from pipelines.models import ModelConfig
    from pipelines.models.presets import PRESETS

    m = _SIZE_IN_NAME.search(Path(folder.rstrip("/")).name)
    preset = f"{float(m.group(1)):g}b" if m else None
    if preset not in PRESETS["decoder"]:
        return None
    return shape_of_preset(
        ModelConfig(family="decoder", preset=preset),
        32000,
        f"guessed from the folder name: the decoder {preset} preset's shape",
        lora,
    )


def training_memory(
    shape: Shape, section: Any, seq_len: int, trainable: int | None = None
) -> dict[str, float]:
    """Bytes per worker, by part, for a pretrain or finetune section (ZeRO stage, precision, offload,
    micro-batch, activation checkpointing; tensor/pipeline degrees when the section has them)."""
    tp = int(getattr(section, "tensor_parallel", 1) or 1)
    pp = int(getattr(section, "pipeline_parallel", 1) or 1)
    dp = max(1, section.num_workers // (tp * pp))
    half = section.precision in ("bf16", "fp16")
    wbytes = 2 if half else 4
    P = shape.parameters / (tp * pp)  # noqa: N806 - P and T as in the ZeRO paper
    T = (shape.parameters if trainable is None else trainable) / (tp * pp)  # noqa: N806
    z = section.zero_stage
    weights = P * wbytes / (dp if z >= 3 else 1)
    if getattr(section, "offload_param", False) and z >= 3:
        weights = 0.0
    grads = T * wbytes / (dp if z >= 2 else 1)
    optimizer = T * (12 if half else 8) / (dp if z >= 1 else 1)
    if getattr(section, "offload_optimizer", False):
        optimizer = 0.0
    s, b, h = seq_len, section.micro_batch_size, shape.hidden
    layers = max(1, shape.layers // pp)
    scale = 1 if half else 2
    if getattr(section, "activation_checkpointing", False):
        acts = (2 * s * b * h * layers + 34 * s * b * h) * scale / tp
    else:
        acts = 34 * s * b * h * layers * scale / tp
    logits = s * b * shape.vocab * (wbytes + 4) / tp  # the logits, and their fp32 copy for the loss
    return {
        "weights": weights,
        "gradients": grads,
        "optimizer": optimizer,
        "activations": acts + logits,
        "runtime": RUNTIME_BYTES,
    }


def gib(n: float) -> str:
    """Bytes as GiB with the precision a reader needs (small CPU models and 7B GPU models alike)."""
    g = n / GIB
    return f"{g:.1f}" if g >= 10 else f"{g:.2f}" if g >= 0.1 else f"{g:.3f}"


def describe_memory(parts: dict[str, float]) -> str:
    detail = ", ".join(f"{k} {gib(v)}" for k, v in parts.items())
    return f"~{gib(sum(parts.values()))} GiB ({detail} GiB)"
