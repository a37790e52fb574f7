"""The finetune stage: `run_finetune(cfg, base_dir, out_dir, ...) -> summary`.

Before any worker starts, `prepare()` reads and checks everything in the driver: the base folder and its
tokenizer, the template, LoRA's target modules (on a meta-device copy), the data files; bad records are
quarantined and counted; the held-out split is made by instruction. Then a Ray Train `TorchTrainer` runs
`pipelines.train.finetune_loop.train_loop_per_worker`, checkpointing into
`checkpoint_storage/finetune-<key>/` (the key hashes the base, the data, the seed and the settings that
shape the trajectory, not max_steps: a re-run or a longer run continues from the latest checkpoint).

For `rlhf` the records are prompts only; the answers are sampled by the policy on the workers and scored
by `reward_model` (`pipelines.train.rlhf`).

The stage folder gets `model/` (a full Hugging Face folder, or for peft methods an adapter folder in
peft's format: adapter_config.json + adapter_model.safetensors; both with the tokenizer), `merged/` (LoRA
folded into the base, with `merge`), `metrics.jsonl`, `tensorboard/`, `loss_curve.png`, `quarantine/`
(the unusable records with their reason), `summary.json` (held-out metrics before/after, match metrics
before/after, trainable-parameter share, quarantine counts).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.assets import asset_paths
from pipelines.run_folder import config_hash, join, read_json, remove_tree, write_json_atomic
from pipelines.train.finetune_config import FinetuneConfig
from pipelines.train.sft_data import (
    Encoded,
    FinetuneDataError,
    Quarantine,
    Template,
    build_preferences,
    choose_template,
    encode_examples,
    normalize,
    read_records,
    split_heldout,
)

# What alignment records carry beyond the loss (DPO / reward model: margin, accuracy; RLHF: reward, KL).
ALIGN_METRIC_KEYS = (
    "margin",
    "accuracy",
    "heldout_margin",
    "heldout_accuracy",
    "reward",
    "kl",
    "heldout_reward",
    "heldout_kl",
)


class FinetuneInputError(ValueError):
    """A finetune stage that cannot run; `problems` name the recipe keys."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass
class Prepared:
    tokenizer: Any
    template: Template
    train: Encoded
    heldout: Encoded
    quarantine: Quarantine
    records: int


def check_base(base_dir: str, key: str = "finetune.base") -> list[str]:
    p = Path(base_dir)
    if "://" in base_dir:
        return [f"{key}: {base_dir}: only local model folders are supported (copy it locally first)"]
    if not (p / "config.json").is_file():
        return [f"{key}: {base_dir}: not a Hugging Face model folder (no config.json)"]
    if not any(p.glob("tokenizer*.json")):
        return [f"{key}: {base_dir}: the folder has no tokenizer (tokenizer.json / tokenizer_config.json)"]
    return []


def prepare(cfg: FinetuneConfig, base_dir: str, seed: int) -> Prepared:
    """Everything that can be checked and computed before any worker starts; raises FinetuneInputError."""
    problems = check_base(base_dir)
    if not problems and cfg.model_parallel:
        problems = parallel_base_problems(cfg, base_dir)
    if problems:
        raise FinetuneInputError(problems)
    from transformers import AutoTokenizer

    from pipelines.train.peft_setup import check_target_modules, module_names

    problems = check_target_modules(cfg, module_names(base_dir))
    if problems:
        raise FinetuneInputError(problems)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out; any id will do
    try:
        template = choose_template(tokenizer, cfg.template)
        quarantine = Quarantine()
        records = read_records(cfg.data)
        examples = normalize(records, quarantine)
        if cfg.max_pairs:
            examples = examples[: cfg.max_pairs]
        train_ex, held_ex = split_heldout(examples, cfg.heldout_pairs, seed)
        if cfg.objective in ("dpo", "reward"):
            train_ex = build_preferences(train_ex, cfg.rejected, seed)
            held_ex = build_preferences(held_ex, cfg.rejected, seed + 1)
        if cfg.objective == "rlhf":  # prompts only: the answers are sampled from the policy
            from pipelines.train.rlhf import check_reward_model, encode_prompts

            problems = check_reward_model(cfg.reward_model or "", tokenizer)
            if problems:
                raise FinetuneInputError(problems)
            room = cfg.max_seq_len - cfg.rlhf_max_new_tokens
            train = encode_prompts(tokenizer, template, train_ex, room, quarantine)
            heldout = encode_prompts(tokenizer, template, held_ex, room, quarantine)
        else:
            train = encode_examples(tokenizer, template, train_ex, cfg.objective, cfg.max_seq_len, quarantine)
            heldout = encode_examples(
                tokenizer, template, held_ex, cfg.objective, cfg.max_seq_len, quarantine
            )
    except FinetuneDataError as exc:
        raise FinetuneInputError(exc.problems) from None
    dp = cfg.layout.dp  # pipeline stages and tensor shards of a replica share its records
    if len(train.items) < dp * cfg.micro_batch_size:
        problems.append(
            f"finetune.data: {len(train.items)} usable training records, fewer than one micro-batch per "
            f"data-parallel replica ({dp} x micro_batch_size {cfg.micro_batch_size}); "
            f"{len(quarantine.rows)} quarantined ({quarantine.counts()})"
        )
    if len(heldout.items) < cfg.num_workers:
        problems.append(
            f"finetune.heldout_pairs: {len(heldout.items)} usable held-out records, fewer than workers"
        )
    if problems:
        raise FinetuneInputError(problems)
    # every worker evaluates the same number of records (ZeRO-3 forwards are collective)
    keep = len(heldout.items) - len(heldout.items) % cfg.num_workers
    heldout = Encoded(heldout.items[:keep], heldout.prompts[:keep], heldout.answers[:keep])
    return Prepared(tokenizer, template, train, heldout, quarantine, len(records))


def base_fingerprint(base_dir: str) -> str:
    """What identifies the base: its manifest's fingerprint when a raylm stage wrote it, else its config
    and the sizes and times of its weight files."""
    manifest = read_json(join(base_dir, "manifest.json"))
    if manifest and "fingerprint" in manifest and "stage" in manifest:
        return str(manifest["fingerprint"])
    p = Path(base_dir)
    files = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in p.iterdir() if f.is_file())
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


def data_fingerprint(paths: list[str]) -> str:
    from pipelines.assets import resolve_path

    files = []
    for raw in paths:
        st = Path(resolve_path(raw)).stat()
        files.append((raw, st.st_size, int(st.st_mtime)))
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


_RESUME_NEUTRAL = {
    "max_steps",
    "time_budget_s",
    "eval_interval",
    "checkpoint_interval",
    "keep_checkpoints",
    "checkpoint_storage",
    "max_failures",
    "log_every",
    "merge",
    "eval_generate",
    "max_new_tokens",
}


def checkpoint_key(cfg: FinetuneConfig, base_dir: str, seed: int) -> str:
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _RESUME_NEUTRAL}
    return config_hash(
        {
            "finetune": settings,
            "base": base_fingerprint(base_dir),
            "data": data_fingerprint(cfg.data),
            "seed": seed,
            # rlhf: another reward model is another trajectory
            **({"reward_model": base_fingerprint(cfg.reward_model)} if cfg.reward_model else {}),
        }
    )


# ------------------------------------------------------------------------------------------------
# Generation and the match metrics (driver side, before and after)


def greedy_answers(
    model, tokenizer, template: Template, prompts: list[str], max_new_tokens: int, cached: bool = True
) -> list[str]:
    """Greedy answers, one prompt at a time (no padding to get wrong). Prefix tuning decodes without a
    KV cache: peft 0.21's prefix key/values break transformers 5's cached `generate` on grouped-query
    attention (a shape error), while a plain forward works; `cached=False` selects that path."""
    import torch

    from pipelines.train.sft_data import encode

    stop = {tokenizer.eos_token_id}
    out = []
    model.eval()
    with torch.no_grad():
        for p in prompts:
            ids, labels = encode(tokenizer, template, p, "")
            n_prompt = sum(1 for x in labels if x == -100)
            x = torch.tensor([ids[:n_prompt]])
            if cached:
                gen = model.generate(
                    input_ids=x,
                    attention_mask=torch.ones_like(x),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=list(stop),
                    pad_token_id=tokenizer.pad_token_id,
                )[0, x.shape[1] :]
            else:
                gen = []
                for _ in range(max_new_tokens):
                    logits = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits
                    nxt = int(logits[0, -1].argmax())
                    gen.append(nxt)
                    if nxt in stop:
                        break
                    x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
                gen = torch.tensor(gen)
            out.append(tokenizer.decode(gen, skip_special_tokens=True).strip())
    return out


def match_metrics(answers: list[str], references: list[str]) -> dict[str, float]:
    from pipelines.train.align_losses import exact_match, rouge_l

    n = max(len(answers), 1)
    return {
        "rouge_l": sum(rouge_l(a, r) for a, r in zip(answers, references, strict=True)) / n,
        "exact_match": sum(exact_match(a, r) for a, r in zip(answers, references, strict=True)) / n,
    }


def load_tuned(cfg: FinetuneConfig, base_dir: str, model_dir: str):
    from transformers import AutoModelForCausalLM

    if cfg.method == "full":
        return AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    return PeftModel.from_pretrained(base, model_dir)


# ------------------------------------------------------------------------------------------------
# The run


def run_finetune(
    cfg: FinetuneConfig,
    base_dir: str,
    out_dir: str,
    *,
    seed: int = 0,
    checkpoint_root: str,
    fresh: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune `base_dir`; write the stage outputs into `out_dir` (local); return the summary."""
    import ray

    from pipelines.train.finetune_plots import plot_finetune_curves
    from pipelines.train.progress import (
        Monitor,
        fit_with_progress,
        metrics_sink_class,
        write_jsonl,
        write_tensorboard,
    )
    from pipelines.train.stage import _copy_file, check_layout, make_trainer

    t0 = time.perf_counter()
    prep = prepare(cfg, base_dir, seed)
    resources = ray.cluster_resources()
    problems = check_layout(cfg, resources, section="finetune")
    if problems:
        raise FinetuneInputError(problems)
    on_gpu = cfg.use_gpu if cfg.use_gpu is not None else resources.get("GPU", 0) > 0
    if prep.quarantine.rows:
        write_jsonl(join(out_dir, "quarantine", "records.jsonl"), prep.quarantine.rows)
    log(
        f"finetune: {cfg.objective}/{cfg.method} on {len(prep.train.items)} records "
        f"({len(prep.heldout.items)} held out, {len(prep.quarantine.rows)} quarantined), template "
        f"{prep.template.kind}, base {base_dir}"
    )

    key = checkpoint_key(cfg, base_dir, seed)
    name = f"finetune-{key}"
    run_root = join(checkpoint_root, name)
    if fresh:
        remove_tree(run_root)
    Path(checkpoint_root).mkdir(parents=True, exist_ok=True)
    sink = metrics_sink_class().remote()
    train_config = {
        "finetune": cfg.model_dump(mode="json"),
        "base_dir": str(Path(base_dir).resolve()),
        "train_items": prep.train.items,
        "heldout_items": prep.heldout.items,
        "pad_id": prep.tokenizer.pad_token_id,
        "prefix_init_ids": prep.tokenizer(cfg.prefix_init, add_special_tokens=False).input_ids,
        "template": prep.template.kind,
        "reward_model": str(Path(cfg.reward_model).resolve()) if cfg.reward_model else None,
        "run": name,  # the `run` tag of raylm's Ray metrics (pipelines/metrics.py)
        "seed": seed,
        "on_gpu": on_gpu,
        "sink": sink,
        "torch_extensions_dir": os.environ.get("TORCH_EXTENSIONS_DIR", str(asset_paths().torch_extensions)),
    }
    trainer = make_trainer(_loop_fn(cfg), train_config, cfg, on_gpu, name, checkpoint_root)
    monitor = Monitor(sink, join(run_root, "raylm_metrics.jsonl"), cfg.max_steps, log, desc="finetune")
    result, fit_s = fit_with_progress(trainer, monitor, "fine-tuning")
    final = monitor.final or dict(result.metrics or {})

    # ---- outputs: the model or adapter folder with the tokenizer
    model_dir = join(out_dir, "model")
    with result.checkpoint.as_directory() as ckpt_dir:
        export = Path(ckpt_dir) / "hf_model"
        if not export.is_dir():
            raise RuntimeError(f"the final checkpoint {result.checkpoint.path} has no exported model")
        for f in export.iterdir():
            if f.is_file():
                _copy_file(str(f), join(model_dir, f.name))
    prep.tokenizer.save_pretrained(model_dir)
    records = monitor.records
    write_jsonl(join(out_dir, "metrics.jsonl"), records)
    write_tensorboard(
        records,
        join(out_dir, "tensorboard"),
        prefix="finetune",
        extra_keys=ALIGN_METRIC_KEYS,
    )
    plot_finetune_curves(
        records, join(out_dir, "loss_curve.png"), title=f"finetune {cfg.objective}/{cfg.method}"
    )
    write_json_atomic(join(out_dir, "deepspeed_config.json"), final.get("deepspeed_config", {}))

    summary = _summary(cfg, records, final, fit_s, prep, key, str(result.checkpoint.path))
    if cfg.eval_generate and prep.heldout.prompts and cfg.objective != "reward":
        summary["match"] = _match_before_after(cfg, base_dir, model_dir, prep)
    if cfg.merge:
        merged = join(out_dir, "merged")
        t_merge = time.perf_counter()
        merge_lora(base_dir, model_dir, merged)
        prep.tokenizer.save_pretrained(merged)
        summary["merged"] = {"path": merged, "merge_s": round(time.perf_counter() - t_merge, 2)}
    summary["wall_s"] = round(time.perf_counter() - t0, 2)
    write_json_atomic(join(out_dir, "summary.json"), summary)
    b, a = summary["heldout_before"], summary["heldout_after"]
    if cfg.objective == "rlhf":
        log(
            f"finetune: rlhf step {summary['step']} held-out reward {b.get('heldout_reward', 0):.4f} -> "
            f"{a.get('heldout_reward', 0):.4f}, KL to the reference {a.get('heldout_kl', 0):.3f}"
        )
    log(
        f"finetune: step {summary['step']} held-out loss {b.get('heldout_loss', float('nan')):.4f} -> "
        f"{a.get('heldout_loss', float('nan')):.4f}; trainable {100 * summary['trainable_share']:.3f}% "
        f"-> {model_dir}"
    )
    return summary


def run_finetune_stage(
    cfg: FinetuneConfig,
    base_dir: str,
    out_dir: str,
    *,
    seed: int = 0,
    checkpoint_root: str,
    fresh: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The stage body: one `run_finetune`, or for `sft+dpo` two, the DPO pass tuning the SFT model (for
    LoRA the merged one, so that switching DPO's new adapter off gives the SFT model as the reference)."""
    if cfg.objective != "sft+dpo":
        return run_finetune(
            cfg, base_dir, out_dir, seed=seed, checkpoint_root=checkpoint_root, fresh=fresh, log=log
        )
    lora = cfg.method == "lora"
    sft_cfg = cfg.model_copy(update={"objective": "sft", "merge": lora})
    sft = run_finetune(
        sft_cfg,
        base_dir,
        join(out_dir, "sft"),
        seed=seed,
        checkpoint_root=checkpoint_root,
        fresh=fresh,
        log=log,
    )
    dpo_base = join(out_dir, "sft", "merged" if lora else "model")
    dpo_cfg = cfg.model_copy(
        update={
            "objective": "dpo",
            "max_steps": cfg.dpo_max_steps,
            "lr": cfg.dpo_lr or cfg.lr / 2,
            "eval_generate": 0,
        }
    )
    dpo = run_finetune(
        dpo_cfg,
        dpo_base,
        join(out_dir, "dpo"),
        seed=seed,
        checkpoint_root=checkpoint_root,
        fresh=fresh,
        log=log,
    )
    return {"objective": "sft+dpo", "method": cfg.method, "sft": sft, "dpo": dpo}


def merge_lora(base_dir: str, adapter_dir: str, out: str) -> None:
    """The base with the LoRA update folded into its weights (peft's merge_and_unload): a plain folder."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(out, safe_serialization=True)


def _match_before_after(cfg: FinetuneConfig, base_dir: str, model_dir: str, prep: Prepared) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    prompts = prep.heldout.prompts[: cfg.eval_generate]
    refs = prep.heldout.answers[: cfg.eval_generate]
    t = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    before = greedy_answers(base, prep.tokenizer, prep.template, prompts, cfg.max_new_tokens)
    del base
    tuned = load_tuned(cfg, base_dir, model_dir)
    after = greedy_answers(
        tuned, prep.tokenizer, prep.template, prompts, cfg.max_new_tokens, cached=cfg.method != "prefix"
    )
    return {
        "prompts": len(prompts),
        "before": match_metrics(before, refs),
        "after": match_metrics(after, refs),
        "samples": [
            {"prompt": p, "reference": r, "before": x, "after": y}
            for p, r, x, y in list(zip(prompts, refs, before, after, strict=True))[:4]
        ],
        "generate_s": round(time.perf_counter() - t, 2),
    }


def _summary(
    cfg: FinetuneConfig,
    records: list[dict[str, Any]],
    final: dict[str, Any],
    fit_s: float,
    prep: Prepared,
    key: str,
    checkpoint: str,
) -> dict[str, Any]:
    train = [r for r in records if r.get("kind") == "train" and r.get("step", 0) > final.get("start_step", 0)]
    steady = train[2:] if len(train) > 4 else train
    heldout_keys = (
        "heldout_loss",
        "heldout_ppl",
        "heldout_margin",
        "heldout_accuracy",
        "heldout_logp_accuracy",
        "heldout_reward",
        "heldout_kl",
        "heldout_objective",
        "heldout_length",
    )
    after = {k: final[k] for k in heldout_keys if final.get(k) is not None}
    out: dict[str, Any] = {
        "objective": cfg.objective,
        "method": cfg.method,
        "template": prep.template.kind,
        "step": final.get("step"),
        "start_step": final.get("start_step"),
        "stop_reason": final.get("stop_reason"),
        "loss": final.get("loss"),
        "heldout_before": final.get("before") or {},
        "heldout_after": after,
        "trainable_params": final.get("trainable_params"),
        "total_params": final.get("total_params"),
        "trainable_share": final.get("trainable_share"),
        "precision": final.get("precision"),
        "world_size": final.get("world_size"),
        "memory_peak_gb_per_worker": final.get("memory_peak_gb_per_worker"),
        "records": prep.records,
        "train_records": len(prep.train.items),
        "heldout_records": len(prep.heldout.items),
        "quarantined": len(prep.quarantine.rows),
        "quarantine_reasons": prep.quarantine.counts(),
        "steps_this_run": len(train),
        "fit_s": round(fit_s, 2),
        "checkpoint_key": key,
        "checkpoint": checkpoint,
    }
    if steady:
        time_s = sum(r["step_time_s"] for r in steady)
        out.update(tokens_per_s=sum(r["tokens"] for r in steady) / time_s, step_time_s=time_s / len(steady))
    return out


def parallel_base_problems(cfg: FinetuneConfig, base_dir: str) -> list[str]:
    """`finetune.parallel` against the base model: a Llama architecture (the pipeline stages and tensor
    plans are written for it) whose heads, columns and layers the layout divides."""
    from pipelines.parallel.layout import check_layout as check_parallel

    try:
        config = json.loads((Path(base_dir) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"finetune.base: {base_dir}/config.json is unreadable ({exc})"]
    if config.get("model_type") != "llama":
        return [
            f"finetune.parallel (pp {cfg.parallel.pp}, tp {cfg.parallel.tp}): the base {base_dir} is a "
            f"{config.get('model_type')!r} model; pipeline stages and tensor shards are written for the "
            "Llama architecture. Use data parallelism (pp 1, tp 1)"
        ]
    model = {
        "num_heads": config.get("num_attention_heads", 1),
        "num_kv_heads": config.get("num_key_value_heads") or config.get("num_attention_heads", 1),
        "intermediate_size": config.get("intermediate_size", 0),
        "num_layers": config.get("num_hidden_layers", 0),
    }
    return [f"finetune.{p}" for p in check_parallel(cfg.layout, cfg.zero_stage, "decoder", model)]


def _loop_fn(cfg: FinetuneConfig):
    if cfg.model_parallel:  # pipeline/tensor layouts: pipelines/parallel's worker
        from pipelines.parallel.sft_loop import parallel_sft_loop_per_worker

        return parallel_sft_loop_per_worker
    from pipelines.train.finetune_loop import train_loop_per_worker

    return train_loop_per_worker
