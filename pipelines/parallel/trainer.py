"""One training step under any dp x pp x tp layout, behind one interface, for the Ray Train worker
(`pipelines/parallel/loop.py`), the equality tests and the benchmark.

- pp 1, tp 1: DeepSpeed's engine over the transformers model (ZeRO over the data-parallel ranks), as
  `pipelines/train/loop.py` trains;
- pp > 1: DeepSpeed's `PipelineEngine` over `pipeline.build_pipeline` (1F1B schedule over the
  `grad_accum_steps` micro-batches, data parallel across pipeline replicas, ZeRO-0/1); with tp > 1 too,
  each stage's blocks split by `pipeline_tensor.shard_pipeline_blocks` (DeepSpeed's AutoTP layers);
- tp > 1 alone: the model sharded by `tensor.apply_tensor_parallel` (DTensor), stepped by torch's AdamW;
  gradients averaged over the data-parallel group with an all-reduce and clipped by their global norm.

Every path starts from the same weights (the transformers model built from the same seed, then split)
and computes the same objective: the mean over the global batch's micro-batches of each micro-batch's
mean next-token loss. `single_process_losses` is that computation in one process, plain torch, which
the tests compare every layout against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipelines.parallel.layout import Groups, Layout, build_groups
from pipelines.train.loop import CLIENT_STATE, STATE_TAG

LAYOUT_FILE = "raylm-layout.json"  # the layout a checkpoint was saved under
TP_STATE = "raylm-tp-state-rank"  # + rank + .pt: one tensor-parallel rank's weights, optimizer, schedule


def _hf_model(model_cfg, vocab, seed: int, base_dir: str | None = None):
    """The whole transformers model every rank starts from: built from the seed, or loaded from a base
    folder (fine-tuning). The stages and shards are cut from it."""
    if base_dir is None:
        from pipelines.models import build_model

        torch.manual_seed(seed)
        return build_model(model_cfg, vocab)
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)
    if not isinstance(model, LlamaForCausalLM):  # the driver refuses these first (finetune_stage)
        raise ValueError(f"{base_dir}: {type(model).__name__} is not a Llama-architecture model; the "
                         "pipeline stages and tensor plans are written for LlamaForCausalLM")
    model.config.use_cache = False
    return model


class ParallelTrainer:
    """This rank's share of the model, optimizer and LR schedule. `cfg` is a `PretrainConfig` or a
    `FinetuneConfig` (its precision resolved); the process group must be up (gloo or NCCL) with
    layout.world ranks. `base_dir`: start from that model folder instead of the seed's initialisation.
    `variable_length`: micro-batches differ in sequence length (padded SFT records), so the pipeline's
    stages send each activation's shape along."""

    def __init__(
        self,
        model_cfg,
        vocab,
        spec,
        cfg,
        layout: Layout,
        seed: int,
        on_gpu: bool = False,
        base_dir: str | None = None,
        variable_length: bool = False,
    ):
        from pipelines.train.ds_config import deepspeed_config, make_optimizer, make_scheduler

        self.cfg, self.spec, self.layout, self.on_gpu = cfg, spec, layout, on_gpu
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
        self.groups: Groups = build_groups(layout)
        model = _hf_model(model_cfg, vocab, seed, base_dir)
        self.hf_config = model.config
        self.total_parameters = sum(p.numel() for p in model.parameters())  # the whole model's
        self.mode = "pipeline" if layout.pp > 1 else "tensor" if layout.tp > 1 else "deepspeed"
        ds_config = deepspeed_config(cfg, layout.dp, on_gpu)
        self.ds_config = ds_config
        if self.mode == "tensor":
            from pipelines.parallel.tensor import apply_tensor_parallel, tp_mesh

            model = model.to(self.device)
            self.module = apply_tensor_parallel(model, tp_mesh(self.groups.tp, self.device.type))
            self.optimizer = make_optimizer(
                self.module, cfg.model_copy(update={"offload_optimizer": False}), False
            )
            for g in self.optimizer.param_groups:  # DTensor and plain tensors in one foreach call mix badly
                g["foreach"] = False
            self.scheduler = make_scheduler(self.optimizer, cfg)
            self.engine = None
            return
        import deepspeed

        if self.mode == "pipeline":
            from pipelines.parallel.pipeline import build_pipeline, load_hf_weights

            pipe = build_pipeline(model.config, layout, cfg.parallel.partition_method, variable_length)
            load_hf_weights(pipe, model.state_dict())
            del model  # the other stages' weights
            if layout.tp > 1:  # the stage's blocks split over its tensor ranks (DeepSpeed AutoTP layers)
                from pipelines.parallel.pipeline_tensor import shard_pipeline_blocks

                shard_pipeline_blocks(pipe, self.hf_config, self.groups.tp)
            module = pipe
        else:
            module = model
        optimizer = make_optimizer(module, cfg, on_gpu)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module,
            optimizer=optimizer,
            lr_scheduler=lambda opt: make_scheduler(opt, cfg),
            config=ds_config,
        )
        self.module = self.engine.module

    # ---- what this rank holds

    def local_parameters(self) -> int:
        """Parameters this rank stores (a tensor shard counts its local part; a tied copy counts)."""
        from pipelines.parallel.tensor import local

        return sum(local(p).numel() for p in self.module.parameters())

    # ---- one optimizer step

    def step(self, micro_batches: list[dict[str, Any]]) -> float:
        """Train on this rank's data-parallel share of one global batch (`grad_accum_steps` prepared
        micro-batches); returns the global batch's mean loss, the same number on every rank."""
        if len(micro_batches) != self.cfg.grad_accum_steps:
            raise ValueError(
                f"{len(micro_batches)} micro-batches for grad_accum_steps {self.cfg.grad_accum_steps}"
            )
        if self.mode == "pipeline":
            data = iter(
                [
                    (
                        (b["input_ids"].to(self.device), b["position_ids"].to(self.device)),
                        b["labels"].to(self.device),
                    )
                    for b in micro_batches
                ]
            )
            return float(self.engine.train_batch(data_iter=data))
        if self.mode == "deepspeed":
            return self._deepspeed_step(micro_batches)
        return self._tensor_step(micro_batches)

    def eval_sums(self, batch: dict[str, Any]) -> tuple[float, float]:
        """(loss x predicted tokens, predicted tokens) of one prepared micro-batch, without gradients, as
        this rank sees it: under a pipeline the last stage has the loss and the other stages give (0, 0).
        Every rank of a replica that has it gives the same pair, so the ratio of the sums over all ranks
        is the token-weighted mean loss over the replicas' micro-batches. A collective within a replica:
        every rank calls it."""
        from pipelines.train.objectives import IGNORE, forward_loss

        n = float((batch["labels"] != IGNORE).sum())
        if self.mode == "pipeline":
            data = iter([((batch["input_ids"].to(self.device), batch["position_ids"].to(self.device)),
                          batch["labels"].to(self.device))])
            out = self.engine.eval_batch(data, reduce_output=None, bcast_loss=False, num_micro_batches=1)
            self.engine.train()
            return (float(out[0]) * n, n) if self.engine.is_last_stage() else (0.0, 0.0)
        module = self.engine if self.engine is not None else self.module
        module.eval()
        with torch.no_grad(), torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32
        ):
            loss, _ = forward_loss(self.spec, module, batch, self.device, self.dtype)
        module.train()
        return float(loss) * n, n

    def _deepspeed_step(self, micro_batches) -> float:
        import torch.distributed as dist

        from pipelines.train.objectives import forward_loss

        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for b in micro_batches:
            loss, _ = forward_loss(self.spec, self.engine, b, self.device, self.dtype)
            self.engine.backward(loss)
            self.engine.step()
            total += loss.detach().double()
        dist.all_reduce(total)
        return float(total) / (self.layout.dp * len(micro_batches))

    def _tensor_step(self, micro_batches) -> float:
        import torch.distributed as dist

        from pipelines.parallel.tensor import grad_norm, local
        from pipelines.train.objectives import forward_loss

        model, gas = self.module, len(micro_batches)
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for b in micro_batches:
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                loss, _ = forward_loss(self.spec, model, b, self.device, self.dtype)
            (loss / gas).backward()
            total += loss.detach().double()
        params = [p for p in model.parameters() if p.grad is not None]
        if self.groups.dp is not None:
            for p in params:  # data parallel: the mean gradient over the replicas of this shard
                g = local(p.grad)
                dist.all_reduce(g, group=self.groups.dp)
                g.div_(self.layout.dp)
            dist.all_reduce(total, group=self.groups.dp)
        if self.cfg.grad_clip > 0:
            norm = grad_norm(params, self.groups.tp)
            coef = self.cfg.grad_clip / (float(norm) + 1e-6)  # DeepSpeed's and torch's formula
            if coef < 1:
                for p in params:
                    local(p.grad).mul_(coef)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(total) / (self.layout.dp * gas)

    # ---- checkpoints: resume mid-run under the same layout

    def save_state(self, folder: str | Path, client: dict[str, Any]) -> None:
        """This rank's share of the training state (weights, optimizer, LR schedule) and `client` into
        `folder`. A collective: every rank calls it, each with its own folder under Ray Train (which merges
        them into one checkpoint) or all with the same one."""
        folder = Path(folder)
        if self.groups.rank == 0:
            (folder / LAYOUT_FILE).write_text(json.dumps({"layout": self.layout.key}))
        if self.engine is not None:  # DeepSpeed's engine, plain or pipeline: its own per-stage files
            self.engine.save_checkpoint(str(folder), tag=STATE_TAG, client_state={CLIENT_STATE: client})
            return
        torch.save(self._tensor_state(client), folder / f"{TP_STATE}{self.groups.rank}.pt")

    def load_state(self, folder: str | Path) -> dict[str, Any]:
        """Restore what `save_state` wrote (under the same layout); returns its `client`."""
        folder = Path(folder)
        try:
            saved = json.loads((folder / LAYOUT_FILE).read_text())["layout"]
        except (OSError, ValueError, KeyError):
            raise RuntimeError(f"checkpoint {folder} has no readable {LAYOUT_FILE}: not written by raylm's "
                               "pipeline/tensor-parallel path") from None
        if saved != self.layout.key:
            raise RuntimeError(f"checkpoint {folder} was saved under layout {saved}, this run is "
                               f"{self.layout.key}: a resume needs the same pretrain.parallel (set it back, "
                               "or delete the run's checkpoints to start over)")
        if self.engine is not None:
            _, client = self.engine.load_checkpoint(str(folder), tag=STATE_TAG)
            return (client or {}).get(CLIENT_STATE, {})
        state = torch.load(folder / f"{TP_STATE}{self.groups.rank}.pt", weights_only=True)
        self._load_tensor_state(state)
        return state["client"]

    def _tensor_state(self, client: dict[str, Any]) -> dict[str, Any]:
        # DTensor shards saved as this rank's local tensors: a resume under the same layout puts each back
        # into the same shard. (torch.distributed.checkpoint would also reshard across layouts; a plain
        # per-rank file keeps the merge of the workers' folders by Ray Train trivial.)
        from pipelines.parallel.tensor import local

        optim = self.optimizer.state_dict()
        optim["state"] = {
            i: {k: local(v).clone() if torch.is_tensor(v) else v for k, v in st.items()}
            for i, st in optim["state"].items()
        }
        return {
            "model": {k: local(v).detach().clone() for k, v in self.module.state_dict().items()},
            "optimizer": optim,
            "scheduler": self.scheduler.state_dict(),
            "client": client,
        }

    def _load_tensor_state(self, state: dict[str, Any]) -> None:
        from torch.distributed.tensor import DTensor

        from pipelines.parallel.tensor import is_sharded, local

        with torch.no_grad():
            for k, v in self.module.state_dict().items():
                local(v).copy_(state["model"][k])
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        optim = state["optimizer"]
        for i, st in optim["state"].items():
            p = params[int(i)]
            if not is_sharded(p):
                continue
            for k, v in st.items():  # moments of a sharded weight go back to DTensors on its mesh
                if torch.is_tensor(v) and v.shape == local(p).shape:
                    st[k] = DTensor.from_local(v, p.device_mesh, p.placements, run_check=False)
        self.optimizer.load_state_dict(optim)
        self.scheduler.load_state_dict(state["scheduler"])

    # ---- export

    def export_hf(self, out: Path) -> None:
        """The trained model as ONE Hugging Face folder, written by rank 0 (a collective: every rank
        calls it)."""
        if self.mode == "pipeline":
            from pipelines.parallel.pipeline import export_pipeline_hf

            export_pipeline_hf(self.module, self.hf_config, out, self.groups)
            return
        if self.mode == "tensor":
            from transformers import LlamaForCausalLM

            from pipelines.parallel.tensor import full_state_dict

            state = full_state_dict(self.module)  # collective over the tensor group
            if self.groups.rank != 0:
                return
            cfg = self.hf_config.__class__.from_dict(self.hf_config.to_dict())
            model = LlamaForCausalLM(cfg)
            model.load_state_dict(state, strict=False)
        else:
            if self.groups.rank != 0:
                return
            model = self.module
        model.config.use_cache = True
        model.save_pretrained(str(out), safe_serialization=True)


def single_process_losses(
    model_cfg,
    vocab,
    spec,
    cfg,
    seed: int,
    global_batches: list[list[dict]],
    trained: list | None = None,
    base_dir: str | None = None,
) -> list[float]:
    """The reference: plain torch in one process over the same global batches (each a list of every
    data-parallel rank's micro-batches), the same optimizer, schedule and clipping. `trained`, when
    given, receives the trained model (to compare an exported one with); `base_dir`: start from that
    folder (fine-tuning) instead of the seed's initialisation."""
    from pipelines.train.ds_config import make_optimizer, make_scheduler
    from pipelines.train.objectives import forward_loss

    model = _hf_model(model_cfg, vocab, seed, base_dir)
    opt = make_optimizer(model, cfg.model_copy(update={"offload_optimizer": False}), False)
    sched = make_scheduler(opt, cfg)
    model.train()
    losses = []
    for micro in global_batches:
        total = 0.0
        for b in micro:
            loss, _ = forward_loss(spec, model, b)
            (loss / len(micro)).backward()
            total += float(loss.detach())
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total / len(micro))
    if trained is not None:
        trained.append(model)
    return losses
