"""Run a layout on this machine without Ray: `world` gloo processes (torch.multiprocessing spawn), each
training a `ParallelTrainer` on the same fixed, seeded batches. The equality tests and the benchmark use
it; the Ray Train path (`pipelines/parallel/loop.py`) runs the same trainer.

Batches are packed rows as the tokenize stage writes them (documents ending in eos, position ids
restarting at each document), made from a seeded generator, so every process and the single-process
reference see the same data: global batch s, micro-batch m of data-parallel replica d is
`batches[s][d * grad_accum_steps + m]`.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cluster.runtime import free_port
from pipelines.parallel.layout import Layout


@dataclass
class RunSpec:
    """What one harness run trains (plain values: it crosses the spawn boundary by pickle)."""

    model: dict[str, Any]
    pretrain: dict[str, Any]
    layouts: list[Layout]
    """Trained one after the other by the same processes (one interpreter start, one DeepSpeed import:
    most of a tiny run's time); all with the same number of workers."""
    steps: int = 5
    seq_len: int = 32
    vocab_size: int = 256
    seed: int = 0
    export_dir: str | None = None
    """Where the first layout's trained model is exported (one Hugging Face folder)."""
    names: list[str] | None = None
    """Result keys of the layouts (None: each layout's key, e.g. dp2xpp1xtp1)."""
    overrides: list[dict[str, Any]] | None = None
    """Per layout, pretrain keys set on top of `pretrain` (e.g. grad_accum_steps)."""
    resume_after: int | None = None
    """After this many steps, every rank saves its state, a fresh trainer (step-0 weights) loads it and
    trains the rest: the losses must not notice."""
    base_dir: str | None = None
    """Fine-tuning: every trainer (and the reference) starts from this Llama folder, and the batches are
    padded SFT records of varying length (prompt tokens masked) instead of packed rows."""

    def name(self, i: int) -> str:
        return self.names[i] if self.names else self.layouts[i].key

    @property
    def world(self) -> int:
        worlds = {layout.world for layout in self.layouts}
        if len(worlds) != 1:
            raise ValueError(f"layouts of different sizes in one run: {[x.key for x in self.layouts]}")
        return worlds.pop()


@dataclass
class RankResult:
    layout: str
    rank: int
    coords: tuple[int, int, int]
    losses: list[float]
    local_parameters: int
    step_s: list[float] = field(default_factory=list)
    peak_rss_gb: float = 0.0


def vocab_spec(vocab_size: int):
    from pipelines.models import Vocab
    from pipelines.train.objectives import ObjectiveSpec

    return Vocab(size=vocab_size, pad_id=0, eos_id=2, bos_id=1), ObjectiveSpec(
        family="decoder", pad_id=0, eos_id=2, vocab_size=vocab_size
    )


def fixed_batches(spec: RunSpec, micro_batch_size: int, per_step: int) -> list[list[dict[str, Any]]]:
    """`spec.steps` global batches of `per_step` prepared micro-batches each (packed rows, or with
    `base_dir` padded SFT records)."""
    from pipelines.parallel.sft_loop import sft_micro_batch
    from pipelines.train.objectives import IGNORE, prepare_batch

    _, ospec = vocab_spec(spec.vocab_size)
    rng = np.random.default_rng(spec.seed + 12345)
    out = []
    for _ in range(spec.steps):
        micro = []
        for _ in range(per_step):
            if spec.base_dir:  # records of 8..seq_len tokens: a random prompt of 3..6 (no loss), then a
                items = []  # counting response (learnable: each token is the one before plus one)
                for _ in range(micro_batch_size):
                    n, k = int(rng.integers(8, spec.seq_len + 1)), int(rng.integers(3, 7))
                    start = int(rng.integers(0, 40))
                    ids = [int(x) for x in rng.integers(3, spec.vocab_size, size=k)]
                    ids += [3 + (start + j) % 40 for j in range(n - k)]
                    items.append({"ids": ids, "labels": [IGNORE] * k + ids[k:]})
                micro.append(sft_micro_batch(items, pad_id=0))
                continue
            ids = rng.integers(3, spec.vocab_size, size=(micro_batch_size, spec.seq_len))
            pos = np.zeros_like(ids)
            for r in range(micro_batch_size):  # two documents per row, the first ended by eos
                cut = int(rng.integers(4, spec.seq_len - 4))
                ids[r, cut - 1] = 2
                pos[r] = np.concatenate([np.arange(cut), np.arange(spec.seq_len - cut)])
            rows = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": pos}
            micro.append(prepare_batch(ospec, rows, rng))
        out.append(micro)
    return out


def configs(spec: RunSpec, layout: Layout, override: dict[str, Any] | None = None):
    """The model and pretrain sections of a run, the pretrain one set to `layout`."""
    from pipelines.models import ModelConfig
    from pipelines.train.config import PretrainConfig

    pretrain = {
        **spec.pretrain,
        **(override or {}),
        "num_workers": layout.world,
        "parallel": {"dp": layout.dp, "pp": layout.pp, "tp": layout.tp},
    }
    if layout.tp > 1 and layout.pp == 1:
        pretrain["zero_stage"] = 0  # DTensor shards and ZeRO do not mix (layout.check_layout)
    return ModelConfig.model_validate(spec.model), PretrainConfig.model_validate(pretrain)




def _worker(rank: int, spec: RunSpec, port: int, out_dir: str) -> None:
    import pickle
    import resource

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(spec.world),
        LOCAL_WORLD_SIZE=str(spec.world),
        DS_ACCELERATOR="cpu",
    )
    from pipelines.assets import asset_paths

    # DeepSpeed JIT-builds its CPU comm op once; the same cache as the Ray Train workers (stage.py)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(asset_paths().torch_extensions))
    import torch

    torch.set_num_threads(1)
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)

    results = []
    for i, layout in enumerate(spec.layouts):
        _, cfg = configs(spec, layout, (spec.overrides or [{}] * len(spec.layouts))[i])
        batches = fixed_batches(spec, cfg.micro_batch_size, layout.dp * cfg.grad_accum_steps)
        trainer = _trainer(spec, layout, cfg)
        d, _, _ = layout.coords(rank)
        gas = cfg.grad_accum_steps
        losses, times = [], []
        for s, micro in enumerate(batches):
            if s == spec.resume_after:
                trainer = _reloaded(trainer, os.path.join(out_dir, f"ckpt-{i}"), s, spec, layout, cfg)
            t0 = time.perf_counter()
            losses.append(trainer.step(micro[d * gas : (d + 1) * gas]))
            times.append(time.perf_counter() - t0)
        if spec.export_dir and i == 0:
            from pathlib import Path

            trainer.export_hf(Path(spec.export_dir))
        dist.barrier()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        results.append(
            asdict(
                RankResult(
                    spec.name(i), rank, layout.coords(rank), losses, trainer.local_parameters(), times, peak
                )
            )
        )
        del trainer
        # DeepSpeed's PipelineEngine leaves its grid as the process-wide model-parallel unit
        # (deepspeed.utils.groups.mpu); a later plain-DeepSpeed layout in this same process would then
        # take itself for model parallel and fail. Ray Train workers run one layout per process.
        from deepspeed.utils import groups

        groups.mpu = None
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(results, f)
    dist.destroy_process_group()


def _trainer(spec: RunSpec, layout: Layout, cfg):
    from pipelines.parallel.trainer import ParallelTrainer

    model_cfg, _ = configs(spec, layout)
    vocab, ospec = vocab_spec(spec.vocab_size)
    return ParallelTrainer(
        model_cfg, vocab, ospec, cfg, layout, spec.seed,
        base_dir=spec.base_dir, variable_length=spec.base_dir is not None,
    )


def _reloaded(trainer, folder: str, step: int, spec: RunSpec, layout: Layout, cfg):
    """`trainer`'s state saved into `folder` (shared by the ranks, as Ray Train's merged checkpoint is),
    loaded by a new trainer built from the seed; the new one."""
    import torch.distributed as dist
    from deepspeed.utils import groups


    os.makedirs(folder, exist_ok=True)
    trainer.save_state(folder, {"step": step})
    dist.barrier()
    del trainer
    groups.mpu = None  # as between layouts (below)
    fresh = _trainer(spec, layout, cfg)
    client = fresh.load_state(folder)
    if client.get("step") != step:
        raise RuntimeError(f"the checkpoint's client state says step {client.get('step')}, not {step}")
    return fresh


def run_layouts(spec: RunSpec) -> dict[str, list[dict[str, Any]]]:
    """Train `spec` on `spec.world` spawned gloo processes: {layout key: every rank's `RankResult` as a
    dict, in rank order}."""
    import pickle

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="raylm-parallel-") as out_dir:
        mp.spawn(_worker, args=(spec, free_port(), out_dir), nprocs=spec.world, join=True)
        out: dict[str, list[dict[str, Any]]] = {}
        for r in range(spec.world):
            with open(os.path.join(out_dir, f"rank{r}.pkl"), "rb") as f:
                for result in pickle.load(f):
                    out.setdefault(result["layout"], []).append(result)
    return out


def reference_losses(spec: RunSpec, dp: int, trained: list | None = None) -> list[float]:
    """One process, plain torch, over the same global batches as a layout with `dp` replicas (`trained`:
    see `single_process_losses`)."""
    import torch

    from pipelines.parallel.trainer import single_process_losses

    torch.set_num_threads(1)
    model_cfg, cfg = configs(spec, Layout(dp=dp))
    vocab, ospec = vocab_spec(spec.vocab_size)
    batches = fixed_batches(spec, cfg.micro_batch_size, dp * cfg.grad_accum_steps)
    return single_process_losses(model_cfg, vocab, ospec, cfg, spec.seed, batches, trained, spec.base_dir)
