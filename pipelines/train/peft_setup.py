"""The base model, made ready for a fine-tuning method: as it is (full) or wrapped by peft (LoRA, prefix
tuning, P-tuning). Also the check that LoRA's target modules exist, run on a meta-device copy of the
model (no weights loaded) before any worker starts."""

from __future__ import annotations

from typing import Any

from pipelines.train.finetune_config import FinetuneConfig


def peft_config(cfg: FinetuneConfig):
    """peft's config for `cfg.method`, or None for full fine-tuning."""
    from peft import LoraConfig, PrefixTuningConfig, PromptEncoderConfig, TaskType

    if cfg.method == "lora":
        targets: Any = cfg.lora_target_modules
        if targets == ["all-linear"]:
            targets = "all-linear"
        return LoraConfig(
            # a reward model's new score head trains fully (peft's SEQ_CLS task keeps it in modules_to_save)
            task_type=TaskType.SEQ_CLS if cfg.objective == "reward" else TaskType.CAUSAL_LM,
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
        )
    if cfg.method == "prefix":
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens)
    if cfg.method == "p-tuning":
        return PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=cfg.num_virtual_tokens,
            encoder_reparameterization_type=cfg.prompt_encoder,
            encoder_hidden_size=cfg.prompt_encoder_hidden_size,
        )
    return None


LORA_LAYER_TYPES = {"Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "MultiheadAttention"}
"""Module classes peft 0.21's LoRA can wrap; a target of another class (a whole block, an MLP, a norm)
fails deep inside peft."""


def module_names(base_dir: str) -> dict[str, str]:
    """Every module name of the base model and its class name, from its config on the meta device (no
    weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name: type(module).__name__ for name, module in model.named_modules()}


def check_target_modules(cfg: FinetuneConfig, names: list[str] | dict[str, str]) -> list[str]:
    """LoRA targets the model has no module for (peft's matching: the name or a dotted suffix of it), and,
    when `names` maps names to class names, targets that match only modules LoRA cannot wrap."""
    if cfg.method != "lora" or cfg.lora_target_modules == ["all-linear"]:
        return []

    def matches(t: str) -> list[str]:
        return [n for n in names if n == t or n.endswith("." + t)]

    missing = [t for t in cfg.lora_target_modules if not matches(t)]
    problems = []
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n and not n.rsplit(".", 1)[-1].isdigit()})
    if missing:
        problems.append(
            f"finetune.lora_target_modules: {', '.join(missing)} not in the base model (its module names "
            f"include: {', '.join(leaves)})"
        )
    if isinstance(names, dict):
        for t in cfg.lora_target_modules:
            found = matches(t)
            kinds = sorted({names[n] for n in found} - LORA_LAYER_TYPES)
            if found and kinds:
                problems.append(
                    f"finetune.lora_target_modules: {t} names {', '.join(kinds)} modules, which LoRA cannot "
                    "wrap (it adapts Linear / Embedding / Conv layers: e.g. q_proj, v_proj, or all-linear)"
                )
    return problems


def apply_method(model, cfg: FinetuneConfig, prefix_init_ids: list[int] | None = None):
    """The model to train: `model` itself (full) or peft's wrapper with only the adapter trainable.
    For prefix tuning, `prefix_init_ids` (the tokenized `finetune.prefix_init`) seed the prefix."""
    config = peft_config(cfg)
    if config is None:
        return model
    from peft import get_peft_model

    peft_model = get_peft_model(model, config)
    if cfg.method == "prefix" and prefix_init_ids:
        init_prefix_from_tokens(peft_model, prefix_init_ids)
    return peft_model


def init_prefix_from_tokens(peft_model, token_ids: list[int]) -> None:
    """Set the prefix's keys and values to the base model's own cache for `token_ids` (repeated or cut to
    `num_virtual_tokens`), so the tuned model starts as the base model reading that text.

    Why our own: peft 0.21 starts prefix tuning from N(0, 1) keys and values, which are far from any real
    key/value and make the untuned model much worse than its base (SmolLM2-135M: held-out loss 7.2 vs 3.6);
    Li & Liang (2021, section 7.2) found that initializing from real words' activations fixes this, and
    peft offers that only for prompt tuning's input embeddings, not for prefix tuning."""
    import torch

    config = peft_model.active_peft_config
    n = config.num_virtual_tokens
    ids = (list(token_ids) * (n // len(token_ids) + 1))[:n]
    base = peft_model.get_base_model()
    was_training = base.training
    base.eval()  # gradient checkpointing turns the cache off in training mode
    with torch.no_grad():
        cache = base(torch.tensor([ids], device=base.device), use_cache=True).past_key_values
    base.train(was_training)
    # peft's layout (PeftModel.get_prompt): [token, 2 * layer + (0 key | 1 value), kv head, head dim]
    layers = []
    for layer in range(config.num_layers):
        keys, values = cache.layers[layer].keys, cache.layers[layer].values  # [1, kv heads, n, head dim]
        layers += [keys[0].transpose(0, 1), values[0].transpose(0, 1)]
    weight = torch.stack(layers, dim=1).reshape(n, -1)
    embedding = peft_model.prompt_encoder[peft_model.active_adapter].embedding
    if embedding.weight.shape != weight.shape:  # a cache layout peft's prefix does not use
        raise ValueError(
            f"finetune.prefix_init: the model's cache gives {tuple(weight.shape)} prefix values, peft "
            f"expects {tuple(embedding.weight.shape)}; set prefix_init to an empty string for peft's random "
            "start"
        )
    embedding.weight.data.copy_(weight.to(embedding.weight.dtype))


def trainable_parameters(model) -> dict[str, Any]:
    """Trainable and total parameter counts and the trainable share. For a peft model peft's own count
    (prompt-learning adapters are not `requires_grad` parameters of the base)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        total = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())
        trainable = sum(
            p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters() if p.requires_grad
        )
    return {
        "trainable_params": int(trainable),
        "total_params": int(total),
        "trainable_share": trainable / total,
    }
