"""The recovery fine-tune that prune_structured, low_rank and weight_share run after their change:
which windows it reads, and its learning-rate schedule (constant, or warm-up + cosine)."""

from __future__ import annotations

import itertools

import pytest
import torch


def test_recovery_reads_new_windows_for_every_step(ctx, heldout_file):
    from dataclasses import replace

    from pipelines.compress import recovery

    text = replace(ctx, train_text=heldout_file)
    windows = recovery.recovery_windows(text, steps=5)  # 5 steps of 4: 20 distinct windows, not 64 cycled
    assert windows.shape == (20, ctx.calibration.shape[1])
    assert len({tuple(w.tolist()) for w in windows}) == 20
    assert recovery.recovery_windows(text, steps=2).equal(windows[:8])  # the same text, in order


def test_recovery_longer_than_the_text_cycles_over_all_of_it(ctx, tmp_path):
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    from pipelines.compress import recovery
    from pipelines.compress.text import TextError

    short = tmp_path / "short.txt"
    short.write_text(" ".join(f"word{i}" for i in range(60)))  # a few windows of 64 tokens, not 40
    text = replace(ctx, train_text=str(short))
    windows = recovery.recovery_windows(text, steps=10)  # asks for 40 windows: gets what the file has
    assert 1 <= len(windows) < 40
    assert len({tuple(w.tolist()) for w in windows}) == len(windows)
    model = AutoModelForCausalLM.from_pretrained(ctx.base)
    assert len(windows) < 3 * 4  # so the 3 steps of 4 below go round the file's windows more than once
    info = recovery.recovery_finetune(model, windows, steps=3, lr=1e-4)
    assert info["steps"] == 3 and info["distinct_windows"] == len(windows)
    one_window = tmp_path / "tiny.txt"
    one_window.write_text("too short")
    with pytest.raises(TextError, match=r"tiny.txt has fewer than 128 tokens"):
        recovery.recovery_windows(replace(ctx, train_text=str(one_window)), steps=1)


def test_warmup_is_capped_at_a_tenth_of_the_steps():
    from pipelines.compress.recovery import warmup_steps

    assert warmup_steps(640, 20) == 20
    assert warmup_steps(80, 20) == 8
    assert warmup_steps(8, 20) == 0
    assert warmup_steps(640, 0) == 0


def _update_sizes(tiny_base, windows, schedule, warmup):
    """The mean absolute change of one weight at each step of a 10-step recovery (lr 1e-3)."""
    from transformers import AutoModelForCausalLM

    from pipelines.compress.recovery import train_on_windows

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    weight = model.model.layers[0].mlp.up_proj.weight
    seen = []

    def loss_fn(x):  # called before each step's update: records the weight the step starts from
        seen.append(weight.detach().clone())
        return model(input_ids=x, labels=x).loss

    info = train_on_windows(model, windows, 10, 1e-3, 2, loss_fn, schedule, warmup)
    seen.append(weight.detach().clone())
    return info, [float((b - a).abs().mean()) for a, b in itertools.pairwise(seen)]


def test_cosine_recovery_warms_up_then_decays_where_constant_does_not(ctx, tiny_base):
    windows = ctx.calibration
    info, constant = _update_sizes(tiny_base, windows, "constant", 0)
    assert info["schedule"] == "constant"
    # AdamW moves each weight by about lr a step whatever the gradient's size: constant steps stay alike
    assert min(constant) > 0.3 * max(constant)
    info, cosine = _update_sizes(tiny_base, windows, "cosine", 2)
    assert info["schedule"] == "cosine, warm-up 2"
    assert cosine[0] == 0.0  # the warm-up starts from lr 0
    assert cosine[1] < cosine[2]  # still rising
    assert cosine[-1] < 0.1 * max(cosine)  # the last step's lr is 4% of the peak
    assert sum(cosine) < 0.8 * sum(constant)


def test_a_method_recovers_with_its_schedule_keys(ctx, heldout_file):
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    from pipelines.compress.config import PruneStructuredMethod
    from pipelines.compress.recovery import recover

    cfg = PruneStructuredMethod(mlp_fraction=0.25, recovery_steps=20, recovery_schedule="cosine")
    model = AutoModelForCausalLM.from_pretrained(ctx.base)
    info = recover(replace(ctx, train_text=heldout_file), model, cfg)
    assert info["steps"] == 20 and info["schedule"] == "cosine, warm-up 2"  # 20 wanted, capped at 2


def test_an_unknown_schedule_is_refused_by_name():
    from pydantic import ValidationError

    from pipelines.compress.config import LowRankMethod
    from pipelines.compress.recovery import train_on_windows

    with pytest.raises(ValidationError, match="recovery_schedule"):
        LowRankMethod(rank=8, recovery_schedule="linear")
    with pytest.raises(ValueError, match="constant or cosine, not 'linear'"):
        train_on_windows(None, torch.zeros(1, 4), 1, 1e-3, 1, None, "linear")
