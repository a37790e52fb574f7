"""raylm's own metrics, exported through Ray (`ray.util.metrics`) so that they appear beside Ray's in the
dashboard's Metrics view and in Prometheus/Grafana (infra/monitoring/).

Stages record with one call and never set anything up:

    from pipelines import metrics
    metrics.inc("data_rows", n, stage="data", step="dedup")
    metrics.set_gauge("train_loss", loss, run=cfg.name, phase="pretrain")
    with metrics.timed("checkpoint_seconds", run=cfg.name, phase="pretrain", op="save"):
        ...

Every metric is declared once in `CATALOG` (name, kind, meaning, tags), so a typo in a name or tag fails
at once (ValueError) instead of producing a silent new series. Outside Ray (`ray.is_initialized()` is
False: a unit test, a plain script) a call records nothing and costs a dictionary lookup; inside a Ray
driver, task or actor it records into that process's Ray metric, which Ray's metrics agent on the node
exports on its `metrics_export_port` as `ray_raylm_<name>` (Ray prefixes application metrics with
`ray_`; counters get Prometheus's `_total`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

PREFIX = "raylm_"

# Seconds: checkpoint saves and loads take from well under a second (tiny models) to minutes.
_CHECKPOINT_BOUNDARIES = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600]
# Seconds: a request to a served model, first token or whole answer.
_LATENCY_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    """Name without the `raylm_` prefix."""
    kind: str
    """`counter` (only goes up), `gauge` (a current value) or `histogram` (a distribution)."""
    description: str
    tags: tuple[str, ...]
    boundaries: tuple[float, ...] = ()

    @property
    def full_name(self) -> str:
        return PREFIX + self.name


CATALOG: dict[str, MetricSpec] = {s.name: s for s in [
    # data stage (pipelines/data): per step of the cleaning pipeline
    MetricSpec("data_rows", "counter", "Rows a data step has processed.", ("stage", "step")),
    MetricSpec("data_rows_dropped", "counter", "Rows a data step dropped or quarantined, by reason.",
               ("stage", "step", "reason")),
    MetricSpec("data_rows_per_second", "gauge", "Throughput of a data step, rows per second.",
               ("stage", "step")),
    # training (pipelines/train): pretraining and fine-tuning, reported by the rank-0 worker
    MetricSpec("train_loss", "gauge", "Training loss at the latest step.", ("run", "phase")),
    MetricSpec("train_tokens_per_second", "gauge", "Training throughput, tokens per second (all workers).",
               ("run", "phase")),
    MetricSpec("train_mfu", "gauge", "Model FLOPs utilisation, 0..1.", ("run", "phase")),
    MetricSpec("train_margin", "gauge", "Fine-tuning (DPO, reward model): mean margin, chosen - rejected.",
               ("run", "phase")),
    MetricSpec("train_accuracy", "gauge", "Fine-tuning (DPO, reward model): pairs ranked right, 0..1.",
               ("run", "phase")),
    MetricSpec("train_reward", "gauge", "Fine-tuning (RLHF): mean reward-model score of sampled answers.",
               ("run", "phase")),
    MetricSpec("train_kl", "gauge", "Fine-tuning (RLHF): mean KL of a sampled answer to the reference.",
               ("run", "phase")),
    MetricSpec("train_steps", "counter", "Optimizer steps taken.", ("run", "phase")),
    MetricSpec("checkpoint_seconds", "histogram", "Time to save or load a checkpoint, seconds.",
               ("run", "phase", "op"), tuple(_CHECKPOINT_BOUNDARIES)),
    # serving (serving/): per model and outcome
    MetricSpec("serve_requests", "counter", "Requests answered, by model and status (ok, error, rejected).",
               ("model", "status")),
    MetricSpec("serve_request_latency_seconds", "histogram", "Whole-request latency, seconds.",
               ("model",), tuple(_LATENCY_BOUNDARIES)),
    MetricSpec("serve_time_to_first_token_seconds", "histogram", "Time to the first streamed token, seconds.",
               ("model",), tuple(_LATENCY_BOUNDARIES)),
]}

_metrics: dict[str, object] = {}
_metrics_session: str | None = None
_lock = threading.Lock()
_warned = False


def _spec(name: str, kind: str, tags: dict[str, str]) -> MetricSpec:
    spec = CATALOG.get(name.removeprefix(PREFIX))
    if spec is None:
        raise ValueError(f"unknown raylm metric {name!r}; declared ones: {', '.join(sorted(CATALOG))}")
    if spec.kind != kind:
        raise ValueError(f"raylm metric {name!r} is a {spec.kind}, not a {kind}")
    unknown = set(tags) - set(spec.tags)
    if unknown:
        raise ValueError(f"raylm metric {name!r}: unknown tag(s) {sorted(unknown)}; "
                         f"its tags: {list(spec.tags)}")
    return spec


def _ray_ready() -> bool:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency; keep stages importable without it
        return False
    return ray.is_initialized()


def _session() -> str:
    import ray

    return ray.get_runtime_context().get_job_id()


def _instance(spec: MetricSpec):
    global _metrics_session
    session = _session()
    if session != _metrics_session:
        # Ray was shut down and started again in this process (tests, a notebook): metric objects made
        # for the old session are not reused.
        with _lock:
            _metrics.clear()
            _metrics_session = session
    metric = _metrics.get(spec.name)
    if metric is not None:
        return metric
    with _lock:
        metric = _metrics.get(spec.name)
        if metric is None:
            from ray.util import metrics as ray_metrics

            kwargs = {"description": spec.description, "tag_keys": spec.tags}
            if spec.kind == "counter":
                metric = ray_metrics.Counter(spec.full_name, **kwargs)
            elif spec.kind == "gauge":
                metric = ray_metrics.Gauge(spec.full_name, **kwargs)
            else:
                metric = ray_metrics.Histogram(spec.full_name, boundaries=list(spec.boundaries), **kwargs)
            metric.set_default_tags({k: "" for k in spec.tags})
            _metrics[spec.name] = metric
    return metric


def _record(kind: str, name: str, value: float, tags: dict[str, str]) -> bool:
    """Record into Ray's metric; True when recorded, False outside Ray. Never raises for Ray's sake: a
    failure to export must not fail a stage (it is logged once)."""
    global _warned
    spec = _spec(name, kind, tags)
    if not _ray_ready():
        return False
    try:
        metric = _instance(spec)
        clean = {k: str(v) for k, v in tags.items()}
        if kind == "counter":
            metric.inc(value, tags=clean)
        elif kind == "gauge":
            metric.set(value, tags=clean)
        else:
            metric.observe(value, tags=clean)
        return True
    except Exception as exc:  # noqa: BLE001 - metrics are best effort
        if not _warned:
            _warned = True
            log.warning("raylm metrics: could not record %s (%s); further failures are silent", name, exc)
        return False


def inc(name: str, value: float = 1.0, **tags: str) -> bool:
    """Add `value` (>= 0) to a counter."""
    if value < 0:
        raise ValueError(f"counter {name!r} only goes up (got {value})")
    return _record("counter", name, value, tags)


def set_gauge(name: str, value: float, **tags: str) -> bool:
    """Set a gauge to `value`."""
    return _record("gauge", name, float(value), tags)


def observe(name: str, value: float, **tags: str) -> bool:
    """Add one observation to a histogram."""
    return _record("histogram", name, float(value), tags)


@contextlib.contextmanager
def timed(name: str, **tags: str) -> Iterator[None]:
    """Observe the wall time of the `with` block (seconds) into a histogram, also when it raises."""
    _spec(name, "histogram", tags)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        observe(name, time.perf_counter() - t0, **tags)
