"""The pretrain stage: `run_pretrain(model, pretrain, token_dir, out_dir, ...) -> metrics`.

Before any worker starts, `preflight()` checks the model against the data and the cluster and refuses,
naming the key: positions shorter than the sequence length, a vocabulary smaller than the tokenizer, a
tokenizer that does not match the data, an empty dataset, more workers or GPUs than the cluster has.

Then a Ray Train `TorchTrainer` runs `pipelines.train.loop.train_loop_per_worker` on the workers, fed by
Ray Data streams of the Parquet shards, checkpointing into `checkpoint_storage/pretrain-<key>/` (outside
the stage folder, which an interrupted stage gets back empty). `<key>` hashes what determines the training
trajectory (model, data, optimisation settings) but not its length (max_steps, time_budget_s) nor the
logging and checkpoint cadence: re-running the same recipe, or the same one with more steps, continues from
the latest checkpoint. With `pretrain.init_from` the workers start from a model folder's weights instead of
a new model (continued pretraining), and the folder's config stands for the `model` section in every
check (`init_model_section`). The stage folder gets:

- `model/`: the trained model as a Hugging Face folder with its tokenizer (transformers, vLLM load it);
- `metrics.jsonl` (one record per step and per evaluation, every attempt), `tensorboard/`,
  `loss_curve.png`, `summary.json` (final metrics), `deepspeed_config.json`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipelines.assets import asset_paths, resolve_path
from pipelines.models import ModelConfig, ModelConfigError, hf_config, max_positions
from pipelines.models.build import model_vocab_size
from pipelines.run_folder import config_hash, input_record, join, remove_tree, write_json_atomic
from pipelines.train.config import PretrainConfig
from pipelines.train.objectives import span_lengths
from pipelines.train.token_data import TokenData, TokenDataError, inspect_token_data, load_tokenizer
from pipelines.train.vocab import family_tokenizer, objective_spec, vocab_of


class PretrainInputError(ValueError):
    """A pretrain stage that cannot run; `problems` name the recipe keys."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


# ------------------------------------------------------------------------------------------------
# Checks before any worker starts


def init_model_section(pretrain: PretrainConfig) -> ModelConfig | None:
    """The model section of `pretrain.init_from`'s folder (its own config), or None without one."""
    if not pretrain.init_from:
        return None
    from pipelines.models.from_folder import model_section_from_folder

    try:
        return model_section_from_folder(resolve_path(pretrain.init_from))
    except ModelConfigError as exc:
        raise PretrainInputError([str(exc)]) from None


def check_init_tokenizer(pretrain: PretrainConfig, data: TokenData) -> list[str]:
    """`pretrain.init_from`'s tokenizer (when the folder has one) must be the one the data was made with."""
    if not pretrain.init_from:
        return []
    from pipelines.models.from_folder import folder_tokenizer_differs

    why = folder_tokenizer_differs(resolve_path(pretrain.init_from), data.tokenizer_dir)
    if why is None:
        return []
    return [
        f"pretrain.init_from: {pretrain.init_from}: {why}. Tokenize with the model's own tokenizer "
        f"(tokenizer.path: {pretrain.init_from})"
    ]


def check_model_fits(model: ModelConfig, seq_len: int, seq_len_key: str) -> list[str]:
    """The model's position embedding must cover the packed sequences."""
    limit = max_positions(model)
    if limit is not None and limit < seq_len:
        return [
            f"model.max_position_embeddings: {limit} is smaller than the sequence length {seq_len} "
            f"({seq_len_key}): positions past {limit} have no embedding. Raise it or shorten the sequences"
        ]
    return []


def check_vocab(model: ModelConfig, pretrain: PretrainConfig, tokenizer_size: int) -> list[str]:
    """The model's embedding must hold every id of the tokenizer plus the objective's added tokens."""
    added = {"encoder-decoder": pretrain.num_sentinels, "encoder": 1}.get(model.family, 0)
    if model.vocab_size is not None and model.vocab_size < tokenizer_size + added:
        extra = f" + {added} {'sentinel' if added > 1 else 'mask'} token(s)" if added else ""
        return [
            f"model.vocab_size: {model.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({tokenizer_size} tokens{extra}): tokenizer/vocab mismatch. Leave it unset to take the "
            "tokenizer's"
        ]
    return []


def make_trainer(
    loop_fn, train_config: dict, section, on_gpu: bool, name: str, checkpoint_root: str, **extra
):
    """A Ray Train `TorchTrainer` from a training section (pretrain or finetune: num_workers,
    cpus_per_worker, keep_checkpoints, max_failures): one worker per GPU or `cpus_per_worker` CPUs each,
    checkpoints under `checkpoint_root/name`, restarts on worker failure."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.allocator import allocator_env

    section_name = {"PretrainConfig": "pretrain", "FinetuneConfig": "finetune"}.get(type(section).__name__)
    env = allocator_env(getattr(section, "allocator", "auto"), f"{section_name or 'worker'}.allocator")
    return TorchTrainer(
        loop_fn,
        train_loop_config=train_config,
        scaling_config=ScalingConfig(
            num_workers=section.num_workers,
            use_gpu=on_gpu,
            resources_per_worker={"CPU": section.cpus_per_worker, **({"GPU": 1} if on_gpu else {})},
            # pretrain.parallel.placement_strategy: PACK keeps a tensor group (consecutive ranks) on a node
            placement_strategy=getattr(getattr(section, "parallel", None), "placement_strategy", "PACK"),
        ),
        run_config=RunConfig(
            name=name,
            storage_path=checkpoint_root,
            checkpoint_config=CheckpointConfig(num_to_keep=section.keep_checkpoints),
            failure_config=FailureConfig(max_failures=section.max_failures),
            # the workers' memory allocator (tcmalloc where installed): pipelines/allocator.py
            worker_runtime_env={"env_vars": env} if env else None,
        ),
        **extra,
    )


def check_layout(
    pretrain: PretrainConfig, resources: dict[str, float] | None, section: str = "pretrain"
) -> list[str]:
    """Workers, CPUs and GPUs against the cluster; ZeRO against the layout; an `allocator: tcmalloc` this
    node cannot give. `pretrain` is any section with
    num_workers, use_gpu, cpus_per_worker and precision (the finetune section too); `section` names it."""
    problems = []
    if getattr(pretrain, "allocator", "auto") == "tcmalloc":  # the library on this (the driver's) node
        from pipelines.allocator import allocator_env

        try:
            allocator_env("tcmalloc", f"{section}.allocator")
        except ValueError as exc:
            problems.append(str(exc))
    if resources is None:
        return problems
    gpus = resources.get("GPU", 0)
    use_gpu = pretrain.use_gpu if pretrain.use_gpu is not None else gpus > 0
    if use_gpu and gpus < pretrain.num_workers:
        problems.append(
            f"{section}.num_workers: {pretrain.num_workers} GPU workers but the cluster has "
            f"{int(gpus)} GPU(s)"
        )
    cpus = resources.get("CPU", 0)
    if pretrain.num_workers * pretrain.cpus_per_worker > cpus:
        need = pretrain.num_workers * pretrain.cpus_per_worker
        problems.append(
            f"{section}.num_workers: {pretrain.num_workers} workers x {pretrain.cpus_per_worker:g} "
            f"CPU ({section}.cpus_per_worker) need {need:g} CPUs but the cluster has {cpus:g}"
        )
    if pretrain.precision == "fp16" and not use_gpu:
        problems.append(f"{section}.precision: fp16 needs GPU workers; CPU workers train in bf16 or fp32")
    return problems


def check_data_size(pretrain: PretrainConfig, data: TokenData, key: str) -> list[str]:
    problems = []
    per_step = pretrain.num_workers * pretrain.micro_batch_size
    if data.train_rows < per_step:
        problems.append(
            f"{key}: the training set has {data.train_rows} sequences, fewer than one "
            f"micro-batch per worker ({pretrain.num_workers} workers x micro_batch_size "
            f"{pretrain.micro_batch_size}): lower pretrain.micro_batch_size or add data"
        )
    return problems


def preflight(
    model: ModelConfig,
    pretrain: PretrainConfig,
    data: TokenData | None = None,
    seq_len: int | None = None,
    resources: dict[str, float] | None = None,
    data_key: str = "pretrain.data",
) -> None:
    """Every check that can run now; raises `PretrainInputError` listing all problems."""
    problems: list[str] = []
    if data is not None:
        problems += check_model_fits(model, data.seq_len, f"{data_key}: the tokenize stage's seq_len")
        problems += check_vocab(model, pretrain, data.tokenizer_size)
    elif seq_len is not None:
        problems += check_model_fits(model, seq_len, "tokenizer.seq_len")
    if pretrain.init_from:  # the model is the folder's config: name that, not the model section
        where = f"pretrain.init_from ({pretrain.init_from}/config.json): "
        problems = [where + p.removeprefix("model.") if p.startswith("model.") else p for p in problems]
    if data is not None:
        problems += check_init_tokenizer(pretrain, data)
        problems += check_data_size(pretrain, data, data_key)
    problems += check_layout(pretrain, resources)
    problems += _parallel_problems(model, pretrain)
    if problems:
        raise PretrainInputError(problems)


def inspect(token_dir: str, data_key: str) -> TokenData:
    try:
        return inspect_token_data(token_dir, key=data_key)
    except TokenDataError as exc:
        raise PretrainInputError(exc.problems) from None


# ------------------------------------------------------------------------------------------------
# The run


_RESUME_NEUTRAL = {
    "max_steps",
    "time_budget_s",
    "eval_interval",
    "eval_sequences",
    "checkpoint_interval",
    "keep_checkpoints",
    "checkpoint_storage",
    "max_failures",
    "log_every",
}


def checkpoint_key(
    model: ModelConfig, pretrain: PretrainConfig, data_fingerprint: str | None, seed: int
) -> str:
    """What a checkpoint can be resumed under: everything that shapes the trajectory, not its length."""
    p = {k: v for k, v in pretrain.model_dump(mode="json").items() if k not in _RESUME_NEUTRAL}
    return config_hash(
        {"model": model.model_dump(mode="json"), "pretrain": p, "data": data_fingerprint, "seed": seed}
    )


def _parallel_problems(model: ModelConfig, pretrain: PretrainConfig) -> list[str]:
    """The pipeline/tensor layout against the model (family, heads, layers); pipelines/parallel/layout.py."""
    if not pretrain.model_parallel:
        return []
    from pipelines.parallel.layout import check_layout as check_parallel

    return [
        f"pretrain.{x}"
        for x in check_parallel(pretrain.layout, pretrain.zero_stage, model.family, model.resolved())
    ]


def _datasets(data: TokenData, eval_rows: int, ordered: bool = False):
    import ray.data
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = ctx.use_datasource_v2, ctx.enable_progress_bars, ctx.execution_options.preserve_order
    # ordered: every worker of a pipeline/tensor layout reads the whole stream and keeps its replica's
    # rows, so all of them must see the rows in the same order
    ctx.execution_options.preserve_order = ordered or saved[2]
    # The V1 Parquet reader lists files in the driver; V2's listing runs as a 1-CPU task that can never
    # schedule when the Train workers hold every CPU (a 2-CPU machine with 2 workers). Each dataset keeps
    # a copy of the context it was made under, so the process-wide settings are restored after.
    ctx.use_datasource_v2, ctx.enable_progress_bars = False, False
    try:
        # Reading is light: 0-CPU read tasks run beside the workers instead of waiting for a free CPU.
        out = {"train": ray.data.read_parquet(data.train_dir, num_cpus=0)}
        if data.heldout_rows and eval_rows:
            out["heldout"] = ray.data.read_parquet(data.heldout_dir, num_cpus=0).limit(eval_rows)
    finally:
        ctx.use_datasource_v2, ctx.enable_progress_bars, ctx.execution_options.preserve_order = saved
    return out


def run_pretrain(
    model: ModelConfig,
    pretrain: PretrainConfig,
    token_dir: str,
    out_dir: str,
    *,
    seed: int = 0,
    checkpoint_root: str,
    fresh: bool = False,
    log: Callable[[str], None] = print,
    data_key: str = "pretrain.data",
) -> dict[str, Any]:
    """Pretrain on the token folder; write the stage outputs into `out_dir`; return the metrics."""
    import ray
    from ray.train import DataConfig

    t0 = time.perf_counter()
    model = init_model_section(pretrain) or model
    data = inspect(token_dir, data_key)
    resources = ray.cluster_resources()
    preflight(model, pretrain, data, resources=resources, data_key=data_key)
    on_gpu = pretrain.use_gpu if pretrain.use_gpu is not None else resources.get("GPU", 0) > 0

    # the tokenizer the model is trained with (+ sentinels / mask) goes into the exported folder first
    model_dir = join(out_dir, "model")
    tokenizer = family_tokenizer(load_tokenizer(data.tokenizer_dir), model.family, pretrain.num_sentinels)
    vocab = vocab_of(tokenizer)
    try:
        vocab_size = model_vocab_size(model, vocab)
        cfg_hf = hf_config(model, vocab)
    except ModelConfigError as exc:
        raise PretrainInputError([str(exc)]) from None
    spec = objective_spec(
        tokenizer,
        model.family,
        vocab_size=len(tokenizer),
        num_sentinels=pretrain.num_sentinels,
        mlm_probability=pretrain.mlm_probability,
        noise_density=pretrain.noise_density,
        mean_noise_span_length=pretrain.mean_noise_span_length,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        from pipelines.train.progress import copy_local

        copy_local(tmp, model_dir)
    enc_len, dec_len = data.seq_len, 0
    if model.family == "encoder-decoder":
        enc_len, dec_len = span_lengths(data.seq_len, pretrain.noise_density, pretrain.mean_noise_span_length)
    from pipelines.train.flops import train_flops_per_sequence

    flops_seq = train_flops_per_sequence(model.family, cfg_hf, enc_len, dec_len)

    fingerprint = input_record(token_dir)["fingerprint"]
    init_dir = resolve_path(pretrain.init_from) if pretrain.init_from else None
    if init_dir:  # other weights in the same folder are another trajectory
        fingerprint = f"{fingerprint}+{input_record(init_dir)['fingerprint'] or _folder_stamp(init_dir)}"
    key = checkpoint_key(model, pretrain, fingerprint, seed)
    name = f"pretrain-{key}"
    run_root = join(checkpoint_root, name)
    if fresh:
        remove_tree(run_root)
    if "://" not in checkpoint_root:
        Path(checkpoint_root).mkdir(parents=True, exist_ok=True)
    eval_rows = min(pretrain.eval_sequences, data.heldout_rows)
    eval_rows -= eval_rows % pretrain.num_workers  # equal shards
    if pretrain.model_parallel:
        eval_rows = 0  # the pipeline/tensor worker has no held-out evaluation yet (docs/parallel.md)
    from pipelines.train.progress import Monitor, fit_with_progress, metrics_sink_class

    sink = metrics_sink_class().remote()
    train_config = {
        "model": model.model_dump(mode="json"),
        "pretrain": pretrain.model_dump(mode="json"),
        "spec": asdict(spec),
        "vocab": asdict(vocab),
        "seed": seed,
        "on_gpu": on_gpu,
        "sink": sink,
        "run": name,  # the `run` tag of raylm's Ray metrics (pipelines/metrics.py)
        "train_rows": data.train_rows,
        "heldout_rows": eval_rows,
        "train_flops_per_sequence": flops_seq,
        "init_from": str(Path(init_dir).resolve()) if init_dir else None,
        "torch_extensions_dir": os.environ.get("TORCH_EXTENSIONS_DIR", str(asset_paths().torch_extensions)),
    }
    datasets = _datasets(data, eval_rows, ordered=pretrain.model_parallel)
    trainer = make_trainer(
        _loop_fn(pretrain),
        train_config,
        pretrain,
        on_gpu,
        name,
        checkpoint_root,
        datasets=datasets,
        # a pipeline/tensor layout shards along dp only: each worker takes its replica's rows itself
        dataset_config=DataConfig(datasets_to_split=[] if pretrain.model_parallel else "all"),
    )
    log_uri = join(run_root, "raylm_metrics.jsonl")
    monitor = Monitor(sink, log_uri, pretrain.max_steps, log)
    result, fit_s = fit_with_progress(trainer, monitor, "pretraining")
    final = monitor.final or dict(result.metrics or {})

    # ---- outputs
    with result.checkpoint.as_directory() as ckpt_dir:
        export = Path(ckpt_dir) / "hf_model"
        if not export.is_dir():
            raise RuntimeError(f"the final checkpoint {result.checkpoint.path} has no exported model")
        for f in export.iterdir():
            if f.is_file():
                _copy_file(str(f), join(model_dir, f.name))
    records = monitor.records
    from pipelines.train.progress import plot_loss_curve, write_jsonl, write_tensorboard

    write_jsonl(join(out_dir, "metrics.jsonl"), records)
    local_out = "://" not in out_dir
    if local_out:
        write_tensorboard(records, join(out_dir, "tensorboard"))
        what = Path(init_dir).name if init_dir else f"{model.family} {model.preset}"
        plot_loss_curve(records, join(out_dir, "loss_curve.png"), title=f"{what}: pretraining loss")
    write_json_atomic(join(out_dir, "deepspeed_config.json"), final.get("deepspeed_config", {}))
    summary = _summary(records, final, pretrain, flops_seq, fit_s, time.perf_counter() - t0, run_root)
    summary.update(
        family=model.family,
        preset=None if init_dir else model.preset,
        init_from=init_dir,
        vocab_size=vocab_size,
        seq_len=data.seq_len,
        checkpoint_key=key,
        checkpoint=str(result.checkpoint.path),
    )
    write_json_atomic(join(out_dir, "summary.json"), summary)
    log(
        f"pretrain: step {summary['step']} loss {summary.get('loss', float('nan')):.4f} "
        f"held-out ppl {summary.get('heldout_ppl') or float('nan'):.2f} "  # None: a pp/tp run has none
        f"{summary.get('tokens_per_s', 0):,.0f} tokens/s MFU {100 * (summary.get('mfu') or 0):.1f}% "
        f"-> {model_dir}"
    )
    return summary


def _loop_fn(pretrain: PretrainConfig | None = None):
    if pretrain is not None and pretrain.model_parallel:
        from pipelines.parallel.loop import parallel_train_loop_per_worker

        return parallel_train_loop_per_worker
    from pipelines.train.loop import train_loop_per_worker

    return train_loop_per_worker


def _folder_stamp(folder: str) -> str:
    """A folder without a raylm manifest (e.g. the reference model): its weight files' sizes and times."""
    files = sorted(p for p in Path(folder).glob("*.safetensors")) or sorted(Path(folder).glob("*.bin"))
    return config_hash([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def _copy_file(src: str, dst: str) -> None:
    if "://" not in dst:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return
    import pyarrow.fs as pafs

    from pipelines.run_folder import _fs

    dfs, dpath = _fs(dst)
    pafs.copy_files(src, dpath, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=dfs)


def _summary(
    records: list[dict[str, Any]],
    final: dict[str, Any],
    pretrain: PretrainConfig,
    flops_seq: float,
    fit_s: float,
    wall_s: float,
    run_root: str,
) -> dict[str, Any]:
    """Final metrics: the last step's, plus throughput averaged over this attempt's steps (the first two
    steps, which include warm-up, are left out when there are more)."""
    train = [r for r in records if r.get("kind") == "train" and r.get("step", 0) > final.get("start_step", 0)]
    steady = train[2:] if len(train) > 4 else train
    out: dict[str, Any] = {
        k: final.get(k)
        for k in (
            "step",
            "loss",
            "heldout_loss",
            "heldout_ppl",
            "stop_reason",
            "start_step",
            "world_size",
            "precision",
            "peak_flops",
            "memory_peak_gb_per_worker",
            "memory_base_gb_per_worker",
            "allocator_per_worker",
            "tokens_seen",
            "layout",  # a pipeline/tensor layout's (pipelines/parallel/loop.py)
            "parameters_per_worker",
        )
    }
    if steady:
        time_s = sum(r["step_time_s"] for r in steady)
        tokens = sum(r["tokens"] for r in steady)
        out.update(
            tokens_per_s=tokens / time_s,
            step_time_s=time_s / len(steady),
            mfu=flops_seq * pretrain.global_batch * len(steady) / time_s / final["peak_flops"]
            if final.get("peak_flops")
            else None,
        )
    evals = [r for r in records if r.get("kind") == "eval"]
    if evals and out.get("heldout_loss") is None:
        out.update(heldout_loss=evals[-1]["heldout_loss"], heldout_ppl=evals[-1]["heldout_ppl"])
    out.update(
        steps_this_run=len(train),
        fit_s=round(fit_s, 2),
        wall_s=round(wall_s, 2),
        train_flops_per_sequence=flops_seq,
        global_batch=pretrain.global_batch,
        checkpoint_root=run_root,
    )
    return out
