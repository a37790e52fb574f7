"""`raylm run RECIPE --dry-run`: validate a recipe and print its plan, starting nothing.

For each stage: its inputs and output folder, the resources it asks Ray for, its DeepSpeed layout and the
memory one training worker needs (`cluster/estimate.py`), then the stage planner's own checks (the same
ones a real run does before Ray starts). A recipe meant for a cluster (`cluster.address`,
`cluster.storage` or `$RAY_ADDRESS` set) may name inputs that only the cluster has, e.g. a 7B base model
on shared storage: those stages are listed as checked on the cluster instead of failing here.
"""

from __future__ import annotations

import glob
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cluster.config import Recipe, RecipeError
from cluster.estimate import (
    describe_memory,
    gib,
    shape_guess,
    shape_of_folder,
    shape_of_preset,
    training_memory,
)
from cluster.stages import STAGE_MODULES
from pipelines.assets import resolve_path
from pipelines.run_folder import RunFolder


@dataclass
class StageView:
    name: str
    folder: str = ""
    inputs: list[str] = field(default_factory=list)
    details: list[tuple[str, str]] = field(default_factory=list)
    """(label, text) lines: resources, layout, model, memory."""
    deferred: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def cluster_bound(recipe: Recipe) -> bool:
    c = recipe.cluster
    return bool(c.address or c.storage or os.environ.get("RAY_ADDRESS"))


def _external(recipe: Recipe, stage: str) -> list[tuple[str, str]]:
    """(key, resolved path) of the inputs a stage reads that no earlier stage of this run writes."""
    out: list[tuple[str, str]] = []
    if stage == "data" and recipe.data:
        out += [(f"data.inputs[{i}]", resolve_path(x.path)) for i, x in enumerate(recipe.data.inputs)]
    elif stage == "tokenize" and recipe.tokenizer:
        out += [
            (f"tokenizer.{k}", resolve_path(v))
            for k in ("path", "input")
            if (v := getattr(recipe.tokenizer, k))
        ]
    elif stage == "pretrain" and recipe.pretrain:
        for k in ("data", "init_from"):
            if v := getattr(recipe.pretrain, k):
                out.append((f"pretrain.{k}", resolve_path(v)))
    elif stage == "finetune" and recipe.finetune:
        if recipe.finetune.base:
            out.append(("finetune.base", resolve_path(recipe.finetune.base)))
        out += [(f"finetune.data[{i}]", resolve_path(p)) for i, p in enumerate(recipe.finetune.data)]
    elif stage == "compress" and recipe.compress and recipe.compress.base:
        out.append(("compress.base", resolve_path(recipe.compress.base)))
    return out


def _here(path: str) -> bool:
    return "://" not in path and (Path(path).exists() or bool(glob.glob(path)))


def _gpu_text(use_gpu: bool | None) -> str:
    return {True: " + 1 GPU", False: ""}.get(use_gpu, " (+ 1 GPU if the cluster has GPUs)")


def _training(view: StageView, section, shape, seq_len: int, trainable: int | None) -> None:
    dp_note = ""
    tp = int(getattr(section, "tensor_parallel", 1) or 1)
    pp = int(getattr(section, "pipeline_parallel", 1) or 1)
    dp = max(1, section.num_workers // (tp * pp))
    if tp * pp > 1:
        dp_note = f" x tensor {tp} x pipeline {pp}"
    per_step = section.micro_batch_size * section.grad_accum_steps * dp
    view.details.append(
        (
            "resources",
            f"{section.num_workers} Ray Train workers x ({section.cpus_per_worker:g} CPU"
            f"{_gpu_text(section.use_gpu)})",
        )
    )
    offload = [
        n for n, on in (("optimizer", section.offload_optimizer), ("parameters", section.offload_param)) if on
    ]
    view.details.append(
        (
            "layout",
            (
                f"DeepSpeed ZeRO-{section.zero_stage}, {section.precision}, {dp} data-parallel{dp_note}; "
                f"micro-batch {section.micro_batch_size} x grad-accum {section.grad_accum_steps} x {dp} = "
                f"{per_step:,} sequences ({per_step * seq_len:,} tokens) per step"
                + (f"; offload {' and '.join(offload)} to CPU" if offload else "")
                + ("; activation checkpointing" if section.activation_checkpointing else "")
            ),
        )
    )
    if shape is None:
        view.details.append(("memory", "unknown here (the model's config is not on this machine)"))
        return
    train_text = (
        f", {trainable / 1e6:,.1f} M trainable ({trainable / shape.parameters:.2%})" if trainable else ""
    )
    view.details.append(
        (
            "model",
            f"{shape.parameters / 1e9:,.3f} B parameters{train_text}, hidden "
            f"{shape.hidden}, {shape.layers} layers, vocab {shape.vocab:,} ({shape.source})",
        )
    )
    parts = training_memory(shape, section, seq_len, trainable)
    view.details.append(("memory", f"{describe_memory(parts)} per worker, estimated"))


def _describe_pretrain(recipe: Recipe, view: StageView) -> None:
    from pipelines.models import ModelConfig

    model = recipe.model or ModelConfig()
    seq_len = recipe.tokenizer.seq_len if recipe.tokenizer else 2048
    vocab = recipe.tokenizer.vocab_size if recipe.tokenizer else (model.vocab_size or 32000)
    init = recipe.pretrain.init_from
    if init:  # continued pretraining: the folder is the model (None: not on this machine)
        shape = shape_of_folder(resolve_path(init), None)
    else:
        shape = shape_of_preset(model, vocab, f"the {model.family} {model.preset} preset")
    _training(view, recipe.pretrain, shape, seq_len, None)
    hook = getattr(importlib.import_module("cluster.stages.pretrain"), "describe_layout", None)
    if callable(hook):  # the pretrain planner's own account of its parallel layout, when it has one
        text = hook(recipe)
        _insert_layout(view, [text] if isinstance(text, str) else (text or []))


def _insert_layout(view: StageView, lines: list) -> None:
    """A pipeline/tensor layout's lines, right under the DeepSpeed layout line."""
    at = next((i + 1 for i, (k, _) in enumerate(view.details) if k == "layout"), len(view.details))
    view.details[at:at] = [("layout", str(line)) for line in lines]


def _describe_finetune(recipe: Recipe, view: StageView, run_folder: RunFolder) -> None:
    cfg = recipe.finetune
    base = resolve_path(cfg.base) if cfg.base else str(Path(run_folder.stage_dir("pretrain"), "model"))
    lora = (cfg.lora_target_modules, cfg.lora_rank) if cfg.method == "lora" else None
    shape = shape_of_folder(base, lora) or (shape_guess(base, lora) if cfg.base else None)
    if shape is None and not cfg.base and recipe.pretrain is not None:
        from pipelines.models import ModelConfig

        model = recipe.model or ModelConfig()
        vocab = recipe.tokenizer.vocab_size if recipe.tokenizer else 32000
        shape = shape_of_preset(model, vocab, f"this run's pretrained {model.family} {model.preset}", lora)
    trainable = shape.lora_trainable if shape and cfg.method == "lora" else None
    if cfg.method in ("prefix", "p-tuning"):
        trainable = 0  # a few virtual tokens: the frozen model dominates
    view.details.append(
        (
            "objective",
            f"{cfg.objective}, {cfg.method}"
            + (
                f" rank {cfg.lora_rank} on {', '.join(cfg.lora_target_modules)}"
                if cfg.method == "lora"
                else ""
            ),
        )
    )
    _training(view, cfg, shape, cfg.max_seq_len, trainable)
    if cfg.model_parallel and Path(base, "config.json").is_file():  # which rank holds which stage/shard
        from pipelines.parallel.plan import describe

        _insert_layout(view, describe(base, cfg.layout, 0, cfg.parallel.partition_method))
    if cfg.objective in ("dpo", "sft+dpo") and cfg.method == "full":
        view.details.append(
            (
                "note",
                "full DPO keeps a frozen reference copy of the weights: add them once more "
                "(peft methods use the base with the adapter disabled instead)",
            )
        )


def _describe_serve(recipe: Recipe, view: StageView) -> None:
    for m in recipe.serve.models:
        replicas = (
            f"{m.autoscaling.min_replicas}-{m.autoscaling.max_replicas}" if m.autoscaling else str(m.replicas)
        )
        view.details.append(
            (
                "resources",
                f"{m.name}: {replicas} replica(s) x ({m.cpus_per_replica:g} CPU, device "
                f"{m.device}), context {m.targets.context_length:,} x "
                f"{m.targets.concurrent_sequences} sequences",
            )
        )
    try:
        from cluster.stages.serve import with_run_paths
        from serving.app import plan_app
        from serving.planner import PlanError

        recipe = with_run_paths(
            recipe, RunFolder(recipe.resolved_run_dir())
        )  # `run:` paths -> this run's folders
        present = [m for m in recipe.serve.models if _here(m.resolved_path())]
        if present:
            app = plan_app(recipe.serve.model_copy(update={"models": present}))
            for name, p in app.plans.items():
                view.details.append(
                    (
                        "memory",
                        f"{name}: ~{gib(p.total_bytes)} GiB per replica on {app.devices[name]} "
                        f"(weights {gib(p.weight_bytes)}, KV cache {gib(p.kv_cache_bytes)} "
                        f"GiB for {p.kv_capacity_tokens:,} tokens; the vLLM planner's figures)",
                    )
                )
        absent = [m.name for m in recipe.serve.models if not _here(m.resolved_path())]
        if absent:
            view.details.append(("memory", f"{', '.join(absent)}: planned when the model folder exists"))
    except (PlanError, ImportError) as exc:
        view.problems.append(f"serve: {exc}")


def describe(recipe: Recipe) -> list[StageView]:
    """Every stage the recipe has, in run order, described and checked."""
    run_folder = RunFolder(recipe.resolved_run_dir())
    bound = cluster_bound(recipe)
    views = []
    for module_name in STAGE_MODULES:
        stage = module_name.rsplit(".", 1)[-1]
        section = getattr(recipe, "tokenizer" if stage == "tokenize" else stage, None)
        if section is None:
            continue
        view = StageView(stage, run_folder.stage_dir(stage))
        missing = [(k, p) for k, p in _external(recipe, stage) if not _here(p)]
        if bound and missing:
            view.deferred = [
                f"{k}: {p} is not on this machine; it must exist on the cluster" for k, p in missing
            ]
        else:
            try:
                plan = importlib.import_module(module_name).plan(recipe, run_folder)
                if plan is not None:
                    view.inputs = list(plan.inputs.values())
            except RecipeError as exc:
                view.problems += exc.problems
        if not view.inputs:
            view.inputs = [p for _, p in _external(recipe, stage)]
        if stage in ("data", "tokenize"):
            view.details.append(("resources", "Ray Data tasks on the cluster's CPUs"))
        elif stage == "pretrain":
            _describe_pretrain(recipe, view)
        elif stage == "finetune":
            _describe_finetune(recipe, view, run_folder)
        elif stage == "compress":
            view.details.append(
                ("resources", f"the driver process, {', '.join(m.method for m in recipe.compress.methods)}")
            )
        elif stage == "serve":
            _describe_serve(recipe, view)
        views.append(view)
    return views


def _short(items: list[str], keep: int = 3) -> str:
    if not items:
        return "-"
    head = ", ".join(items[:keep])
    return head + (f" (+{len(items) - keep} more)" if len(items) > keep else "")


def print_plan(recipe: Recipe, out: Callable[[str], None]) -> int:
    """Print the plan; returns the exit code (0: valid, 2: a check failed)."""
    views = describe(recipe)
    out(f"plan for {recipe.name} -> {recipe.resolved_run_dir()} ({len(views)} stages; nothing is started)")
    if not views:
        out("the recipe has no stage sections: nothing would run")
        return 0
    for i, v in enumerate(views, 1):
        out(f"[{i}/{len(views)}] {v.name}")
        out(f"      inputs:    {_short(v.inputs)}")
        out(f"      output:    {v.folder}")
        for label, text in v.details:
            out(f"      {label + ':':<10} {text}")
        for d in v.deferred:
            out(f"      checked on the cluster: {d}")
        for p in v.problems:
            out(f"      PROBLEM:   {p}")
    problems = [p for v in views for p in v.problems]
    deferred = [d for v in views for d in v.deferred]
    if deferred:
        out(f"{len(deferred)} input(s) are checked when the run starts on the cluster (`raylm submit`).")
    if problems:
        out(f"{len(problems)} problem(s): the run would stop before starting Ray.")
        return 2
    out("valid: a run would run these stages in this order.")
    return 0
