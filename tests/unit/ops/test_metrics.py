"""pipelines.metrics outside Ray: declared names and tags only, and nothing recorded (no error) when Ray
is not initialised. (Inside Ray, through Prometheus: tests/integration/test_monitoring.py.)"""

from __future__ import annotations

import pytest
import ray

from pipelines import metrics


def test_catalog_names_are_prometheus_safe_and_prefixed():
    for spec in metrics.CATALOG.values():
        assert spec.full_name.startswith("raylm_") and spec.full_name.replace("_", "").isalnum()
        assert not spec.name.endswith("_total"), "Ray adds _total to counters"
        assert spec.kind in ("counter", "gauge", "histogram")
        assert bool(spec.boundaries) == (spec.kind == "histogram")


def test_calls_outside_ray_record_nothing_and_do_not_fail():
    assert not ray.is_initialized()
    made = dict(metrics._metrics)  # earlier tests in this process may have recorded under a Ray session
    assert metrics.inc("data_rows", 5, stage="data", step="dedup") is False
    assert metrics.set_gauge("train_loss", 1.5, run="r", phase="pretrain") is False
    assert metrics.observe("serve_request_latency_seconds", 0.1, model="m") is False
    with metrics.timed("checkpoint_seconds", run="r", phase="pretrain", op="save"):
        pass
    assert not ray.is_initialized() and metrics._metrics == made  # no metric object made outside Ray


def test_unknown_names_tags_and_kinds_fail_at_once():
    with pytest.raises(ValueError, match="unknown raylm metric 'data_rowz'"):
        metrics.inc("data_rowz", 1)
    with pytest.raises(ValueError, match=r"unknown tag\(s\) \['stepp'\]"):
        metrics.inc("data_rows", 1, stepp="x")
    with pytest.raises(ValueError, match="is a gauge, not a counter"):
        metrics.inc("train_loss", 1)
    with pytest.raises(ValueError, match="only goes up"):
        metrics.inc("data_rows", -1)
    with pytest.raises(ValueError, match="unknown tag"), metrics.timed("checkpoint_seconds", oops="1"):
        pass
