"""The dp x pp x tp rank map, its groups, and the layouts refused with a reason (no processes)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipelines.parallel.layout import Layout, LayoutError, check_layout, layout_from
from pipelines.train.config import PretrainConfig


def test_rank_map_packs_tensor_ranks_and_spreads_stages():
    layout = Layout(dp=2, pp=2, tp=2)
    assert [layout.coords(r) for r in range(8)] == [
        (0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1), (0, 1, 0), (0, 1, 1), (1, 1, 0), (1, 1, 1),
    ]  # fmt: skip
    assert layout.all_groups("tp") == [[0, 1], [2, 3], [4, 5], [6, 7]]  # consecutive: same node first
    assert layout.all_groups("dp") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout.all_groups("pp") == [[0, 4], [1, 5], [2, 6], [3, 7]]  # stages the farthest apart
    assert all(layout.rank(*layout.coords(r)) == r for r in range(8))
    assert layout.key == "dp2xpp2xtp2"
    assert layout.describe()[5] == "rank 5: data shard 0/2, pipeline stage 1/2, tensor shard 1/2"


def test_same_order_as_deepspeed_topology():
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    layout = Layout(dp=2, pp=3, tp=2)
    topo = PipeModelDataParallelTopology(num_pp=3, num_mp=2, num_dp=2)
    for r in range(layout.world):
        c = topo.get_coord(r)
        assert layout.coords(r) == (c.data, c.pipe, c.model)


def test_world_must_equal_product():
    assert layout_from(4, None, 2, 1) == Layout(2, 2, 1)
    with pytest.raises(LayoutError, match="must equal dp x pp x tp"):
        layout_from(4, 1, 2, 1)
    with pytest.raises(LayoutError, match="not a multiple of pp x tp"):
        layout_from(3, None, 2, 1)


def test_refusals_say_why_and_what_instead():
    (zero_pp,) = check_layout(Layout(1, 2, 1), zero_stage=2)
    assert "ZeRO-0 and ZeRO-1 only" in zero_pp and "Use zero_stage 1" in zero_pp
    (zero_tp,) = check_layout(Layout(1, 1, 2), zero_stage=1)
    assert "Use zero_stage 0" in zero_tp
    heads = check_layout(
        Layout(1, 1, 2), 0, model={"num_heads": 2, "num_kv_heads": 1, "intermediate_size": 176}
    )
    assert any("num_kv_heads (1)" in p for p in heads)
    assert check_layout(Layout(1, 4, 1), 1, model={"num_layers": 2})[0].startswith("parallel.pp 4 is more")
    assert "decoder family" in check_layout(Layout(1, 2, 1), 1, family="encoder")[0]
    assert check_layout(Layout(2, 2, 1), 1) == [] and check_layout(Layout(2, 1, 2), 0) == []
    # all three axes with ZeRO-1: the pipeline's tensor shards are plain tensors ZeRO can partition
    tiny = {"num_heads": 4, "num_kv_heads": 2, "intermediate_size": 176, "num_layers": 2}
    assert check_layout(Layout(2, 2, 2), 1, model=tiny) == []
    assert "ZeRO-0 and ZeRO-1 only" in check_layout(Layout(1, 2, 2), 2)[0]


def test_recipe_section_validates_layout():
    cfg = PretrainConfig(num_workers=4, zero_stage=1, parallel={"pp": 2})
    assert cfg.layout == Layout(2, 2, 1) and cfg.global_batch == cfg.micro_batch_size * 2
    assert (cfg.pipeline_parallel, cfg.tensor_parallel) == (2, 1)
    with pytest.raises(ValidationError, match="ZeRO-0 and ZeRO-1 only"):
        PretrainConfig(num_workers=2, zero_stage=3, parallel={"pp": 2})
    with pytest.raises(ValidationError, match="must equal dp x pp x tp"):
        PretrainConfig(num_workers=2, parallel={"dp": 2, "tp": 2}, zero_stage=0)


def test_dry_run_lines_show_stages_and_shrinking_parameters():
    from pipelines.models import ModelConfig
    from pipelines.parallel.plan import describe

    model = ModelConfig(family="decoder", preset="tiny", num_kv_heads=2)
    one = describe(model, Layout(1, 1, 1), 256, "parameters")
    pp = describe(model, Layout(2, 2, 1), 256, "parameters")
    tp = describe(model, Layout(1, 1, 2), 256, "parameters")

    def params(line: str) -> int:
        return int(line.rsplit("(", 1)[1].split(" ")[0].replace(",", ""))

    full = params(one[-1])
    assert full == 117_056  # the whole tiny decoder with a 256-token vocabulary (tied head counted once)
    assert pp[1].startswith("stage 0: embedding") and pp[2].startswith("stage 1: block")
    assert [params(x) for x in pp[3:]] == [66_688, 66_688, 66_752, 66_752]  # what the workers reported
    assert params(tp[-1]) == 66_880
