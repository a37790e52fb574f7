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
    """Tensor-parallel shards: every block's attention heads and MLP columns split tp ways (PyTorch
    DTensor, Megatron column/row plans). Must divide num_heads, num_kv_heads and intermediate_size.
    Decoder family only; zero_stage 0; not combined with pp > 1 yet."""
    partition_method: str = "parameters"
    """How DeepSpeed cuts the layers into stages: `parameters` (balanced parameter counts), `uniform`
    (balanced layer counts) or `type:BlockPipe` (balanced decoder blocks)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """The Ray placement group strategy of the workers' bundles. PACK (default) fills a node before the
    next: Ray Train ranks workers node by node, so the consecutive ranks of a tensor group share a node
    and the pipeline stages land on different ones. STRICT_PACK: all on one node."""
