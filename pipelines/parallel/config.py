"""The `parallel` key of a training section: how its workers split the model.

```yaml
pretrain:
  num_workers: 4
  zero_stage: 1
  parallel: {pp: 2}        # 2 pipeline stages x 2 data-parallel replicas (dp = num_workers / (pp x tp))
```

num_workers stays the number of Ray Train workers and must equal dp x pp x tp; the ZeRO stage stays the
section's `zero_stage` (checked against the layout by `layout.check_layout`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.config_base import SectionConfig


class ParallelConfig(SectionConfig):
    """Data x pipeline x tensor parallelism of the training workers (3D parallelism)."""

    dp: int | None = Field(default=None, ge=1)
    """Data-parallel replicas: each streams its own shard of the data; gradients are averaged over them
    (and ZeRO shards across them). None: num_workers / (pp x tp). Set, dp x pp x tp must equal
    num_workers."""
    pp: int = Field(default=1, ge=1)
    """Pipeline stages: the decoder's layers split into pp consecutive stages (DeepSpeed PipelineModule,
    1F1B schedule over the grad_accum_steps micro-batches). Decoder family only; ZeRO-0 or 1."""
    tp: int = Field(default=1, ge=1)
    """Tensor-parallel shards: every block's attention heads and MLP columns split tp ways (Megatron
    column/row plans: PyTorch DTensor with pp 1, zero_stage 0; DeepSpeed's AutoTP layers inside pipeline
    stages, zero_stage 0 or 1). Must divide num_heads, num_kv_heads and intermediate_size. Decoder family
    only."""
    partition_method: str = "parameters"
    """How DeepSpeed cuts the layers into stages: `parameters` (balanced parameter counts), `uniform`
    (balanced layer counts) or `type:BlockPipe` (balanced decoder blocks)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """The Ray placement group strategy of the workers' bundles. PACK (default) fills a node before the
    next: Ray Train ranks workers node by node, so the consecutive ranks of a tensor group share a node
    and the pipeline stages land on different ones. STRICT_PACK: all on one node."""


class ParallelSection:
    """What a training section with `num_workers`, `zero_stage` and a `parallel` key derives from them
    (pretrain and finetune share it). A plain mixin: the pydantic fields are the section's own."""

    @property
    def layout(self):
        """The dp x pp x tp `Layout` of the workers (`pipelines/parallel/layout.py`)."""
        from pipelines.parallel.layout import layout_from

        p = self.parallel
        return layout_from(self.num_workers, p.dp, p.pp, p.tp)

    @property
    def model_parallel(self) -> bool:
        """Pipeline or tensor parallelism: the workers run `pipelines/parallel/` instead of the plain
        data-parallel loop."""
        return self.parallel.pp > 1 or self.parallel.tp > 1

    @property
    def tensor_parallel(self) -> int:
        """Tensor-parallel degree (read by the dry run's memory estimate)."""
        return self.parallel.tp

    @property
    def pipeline_parallel(self) -> int:
        """Pipeline-parallel degree (read by the dry run's memory estimate)."""
        return self.parallel.pp

    def parallel_problems(self) -> list[str]:
        """The layout against num_workers and the ZeRO stage (the model is checked where it is known)."""
        p = self.parallel
        if p.pp == 1 and p.tp == 1 and p.dp is None:
            return []
        from pipelines.parallel.layout import LayoutError, check_layout

        try:
            return check_layout(self.layout, self.zero_stage)
        except LayoutError as exc:
            return [str(exc)]

    @property
    def global_batch(self) -> int:
        """Sequences (records) per optimizer step over all workers: the data-parallel ones (pipeline
        stages and tensor shards of one replica see the same batch)."""
        dp = self.num_workers // (self.parallel.pp * self.parallel.tp)
        return self.micro_batch_size * self.grad_accum_steps * max(dp, 1)
