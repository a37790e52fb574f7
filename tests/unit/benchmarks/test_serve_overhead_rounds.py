"""The paired-rounds overhead of benchmarks/serve_overhead_bench.py: drift cancels, bad rounds refused."""

from __future__ import annotations

import pytest

from benchmarks.serve_overhead_bench import paired_overhead, round_order


def test_order_alternates_so_drift_favours_neither_system():
    orders = [round_order(r) for r in range(4)]
    assert orders == [("vllm", "raylm"), ("raylm", "vllm"), ("vllm", "raylm"), ("raylm", "vllm")]
    firsts = [o[0] for o in orders]
    assert firsts.count("vllm") == firsts.count("raylm")


def test_per_round_ratio_cancels_a_machine_that_slows_between_rounds():
    # The machine runs 20% slower in the later rounds; within every round raylm gives 10% less.
    rounds = [{"vllm": 150.0 * s, "raylm": 135.0 * s} for s in (1.0, 1.0, 0.8, 0.8, 0.8)]
    got = paired_overhead(rounds)
    assert got["overhead"] == pytest.approx(0.10)
    assert got["min"] == pytest.approx(0.10) and got["max"] == pytest.approx(0.10)
    assert got["per_round"] == [pytest.approx(0.10)] * 5
    # rounds that differ: the headline is the median round, not the ratio of the medians
    skew = [{"vllm": 150.0, "raylm": 120.0}, {"vllm": 100.0, "raylm": 95.0}, {"vllm": 140.0, "raylm": 126.0}]
    got = paired_overhead(skew)
    assert got["per_round"] == [pytest.approx(0.2), pytest.approx(0.05), pytest.approx(0.1)]
    assert got["overhead"] == pytest.approx(0.1)  # the median round
    assert got["of_medians"] == pytest.approx(1 - 120.0 / 140.0, abs=1e-4)


def test_rounds_without_a_figure_are_refused():
    with pytest.raises(ValueError, match="no rounds"):
        paired_overhead([])
    with pytest.raises(ValueError, match="round 1"):
        paired_overhead([{"vllm": 100.0, "raylm": 90.0}, {"vllm": 0.0, "raylm": 90.0}])


def test_serve_json_overhead_comes_from_the_paired_rounds_when_there_are_some():
    from benchmarks.serve_bench import headline_overhead

    sets = {"vllm": [150.0, 140.0, 130.0], "raylm": [120.0, 110.0, 100.0]}
    paired = paired_overhead([{"vllm": 150.0, "raylm": 135.0}, {"vllm": 100.0, "raylm": 88.0},
                              {"vllm": 140.0, "raylm": 126.0}])
    value, rule = headline_overhead(0.2, sets, paired)
    assert value == pytest.approx(0.1) and "3 rounds" in rule and "median over rounds" in rule
    # no paired rounds: the ratio of the sets' medians, then the single headline cell
    value, rule = headline_overhead(0.2, sets, None)
    assert value == pytest.approx(1 - 110.0 / 140.0, abs=1e-4) and "request sets" in rule
    assert headline_overhead(0.2, {"vllm": [150.0], "raylm": [120.0]}, None) == (0.2, "one run each")
