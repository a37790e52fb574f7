"""The 3D layout: which worker (global rank) is which (data, pipeline stage, tensor shard), and the
process groups between them.

Ranks are laid out as DeepSpeed's `PipeModelDataParallelTopology` lays them out (axes pipe, data, model;
the last varies fastest): `rank = stage * (dp * tp) + dp_index * tp + tp_index`. Tensor-parallel ranks are
therefore consecutive, which Ray Train places on the same node first (its workers are ranked node by
node): the all-reduce of every layer stays inside a node; pipeline stages, which only send one activation
per micro-batch, are the ones spread across nodes. Using DeepSpeed's order also means its pipeline engine
and this module agree on every group.

Validation lives here too, so that the recipe, the dry run and the workers refuse the same layouts with
the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class LayoutError(ValueError):
    """A layout that cannot run; the message says why and what to use instead."""


@dataclass(frozen=True)
class Layout:
    """dp x pp x tp workers. Plain integers: it travels to Ray workers and into the dry run."""

    dp: int = 1
    pp: int = 1
    tp: int = 1

    @property
    def world(self) -> int:
        return self.dp * self.pp * self.tp

    @property
    def key(self) -> str:
        """The name of a layout in benchmark results: `dp2xpp1xtp1`."""
        return f"dp{self.dp}xpp{self.pp}xtp{self.tp}"

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(dp index, pipeline stage, tensor index) of a global rank."""
        if not 0 <= rank < self.world:
            raise LayoutError(f"rank {rank} outside the layout's {self.world} workers")
        stage, rest = divmod(rank, self.dp * self.tp)
        dp_index, tp_index = divmod(rest, self.tp)
        return dp_index, stage, tp_index

    def rank(self, dp_index: int, stage: int, tp_index: int) -> int:
        return stage * self.dp * self.tp + dp_index * self.tp + tp_index

    def tp_group(self, rank: int) -> list[int]:
        """The ranks holding the other shards of this rank's layers (consecutive: same node first)."""
        d, s, _ = self.coords(rank)
        return [self.rank(d, s, t) for t in range(self.tp)]

    def dp_group(self, rank: int) -> list[int]:
        """The ranks holding the same shard of the same stage (gradients are averaged over them)."""
        _, s, t = self.coords(rank)
        return [self.rank(d, s, t) for d in range(self.dp)]

    def pp_group(self, rank: int) -> list[int]:
        """The stages one micro-batch flows through, first to last."""
        d, _, t = self.coords(rank)
        return [self.rank(d, s, t) for s in range(self.pp)]

    def all_groups(self, axis: str) -> list[list[int]]:
        """Every group along an axis ("dp", "pp" or "tp"), each once, in rank order."""
        of = {"dp": self.dp_group, "pp": self.pp_group, "tp": self.tp_group}[axis]
        seen: dict[tuple[int, ...], None] = {}
        for r in range(self.world):
            seen.setdefault(tuple(of(r)), None)
        return [list(g) for g in seen]

    def describe(self) -> list[str]:
        """One line per rank: which data shard, stage and tensor shard it holds."""
        return [
            f"rank {r}: data shard {d}/{self.dp}, pipeline stage {s}/{self.pp}, tensor shard {t}/{self.tp}"
            for r in range(self.world)
            for d, s, t in [self.coords(r)]
        ]


def layout_from(num_workers: int, dp: int | None, pp: int, tp: int) -> Layout:
    """The layout of `num_workers` workers; `dp` None: whatever the pipeline and tensor degrees leave."""
    if dp is None:
        if num_workers % (pp * tp):
            raise LayoutError(
                f"num_workers {num_workers} is not a multiple of pp x tp = {pp} x {tp}: the data-parallel "
                f"degree would not be whole. Use num_workers {max(1, num_workers // (pp * tp)) * pp * tp}"
            )
        dp = num_workers // (pp * tp)
    layout = Layout(dp, pp, tp)
    if layout.world != num_workers:
        raise LayoutError(
            f"num_workers {num_workers} must equal dp x pp x tp = {dp} x {pp} x {tp} = {layout.world}: "
            f"every worker holds exactly one (data shard, stage, tensor shard). Set num_workers "
            f"{layout.world} or leave dp unset"
        )
    return layout


def check_layout(
    layout: Layout, zero_stage: int, family: str = "decoder", model: dict[str, Any] | None = None
):
    """Problems (strings) of a layout with a ZeRO stage and a model; empty when it can run."""
    problems: list[str] = []
    if (layout.pp > 1 or layout.tp > 1) and family != "decoder":
        problems.append(
            f"parallel: pp/tp need the decoder family (got {family}): the pipeline stages and tensor plans "
            "are written for the Llama-style decoder. Use data parallelism (pp 1, tp 1) with ZeRO"
        )
    if layout.pp > 1 and zero_stage >= 2:
        problems.append(
            f"parallel.pp {layout.pp} with zero_stage {zero_stage}: ZeRO-2/3 partition gradients (and "
            "parameters) across data-parallel ranks and reduce them once per step, while the pipeline "
            "accumulates each stage's gradients over its micro-batches; DeepSpeed's pipeline engine "
            "supports ZeRO-0 and ZeRO-1 only. Use zero_stage 1 (optimizer state still sharded), or pp 1 "
            "with ZeRO-3 if the model does not fit otherwise"
        )
    if layout.tp > 1 and layout.pp == 1 and zero_stage >= 1:
        problems.append(
            f"parallel.tp {layout.tp} with zero_stage {zero_stage}: tensor parallelism without a pipeline "
            "is PyTorch DTensor, whose sharded parameters DeepSpeed's ZeRO optimizer cannot flatten and "
            "partition; gradients are averaged across data-parallel ranks with a plain all-reduce. Use "
            "zero_stage 0 (the weights, gradients and optimizer state are already split tp ways)"
        )
    if model is not None and layout.tp > 1:
        heads, kv = model.get("num_heads", 1), model.get("num_kv_heads") or model.get("num_heads", 1)
        inter = model.get("intermediate_size", 0)
        for name, value in (("num_heads", heads), ("num_kv_heads", kv), ("intermediate_size", inter)):
            if value % layout.tp:
                problems.append(
                    f"parallel.tp {layout.tp} must divide model.{name} ({value}): each tensor shard holds "
                    f"a whole number of {'heads' if 'heads' in name else 'columns'}"
                )
    if model is not None and layout.pp > 1 and model.get("num_layers", 0) < layout.pp:
        problems.append(
            f"parallel.pp {layout.pp} is more than model.num_layers ({model.get('num_layers')}): a stage "
            "would hold no decoder block. Lower pp"
        )
    return problems


@dataclass
class Groups:
    """This rank's torch.distributed groups (None where the degree is 1) and where it sits."""

    layout: Layout
    rank: int
    dp_index: int
    stage: int
    tp_index: int
    dp: Any = None
    pp: Any = None
    tp: Any = None


def build_groups(layout: Layout) -> Groups:
    """`new_group` for every dp, pp and tp group. Every rank must call it (new_group is collective over
    the whole world, even for the groups a rank is not in), in the same order: the loops below."""
    import torch.distributed as dist

    rank = dist.get_rank()
    if dist.get_world_size() != layout.world:
        raise LayoutError(
            f"the process group has {dist.get_world_size()} ranks but the layout {layout.key} needs "
            f"{layout.world}"
        )
    d, s, t = layout.coords(rank)
    out = Groups(layout, rank, d, s, t)
    for axis, degree in (("dp", layout.dp), ("pp", layout.pp), ("tp", layout.tp)):
        if degree == 1:
            continue
        for ranks in layout.all_groups(axis):
            group = dist.new_group(ranks)
            if rank in ranks:
                setattr(out, axis, group)
    return out
