"""raylm's metrics end to end: a job on a real Ray cluster (`ray start --head --metrics-export-port`)
records them with pipelines.metrics from an actor and a task; a real Prometheus (Debian's `prometheus`),
started on 127.0.0.1 with infra/monitoring/prometheus.yml (Ray's service-discovery file), scrapes the
cluster and answers PromQL for them; every query of the Grafana dashboard is valid PromQL there."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from cluster.jobs import connect

from .local_cluster import LocalRayCluster, free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MONITORING = Path(__file__).resolve().parents[2] / "infra" / "monitoring"
EMITTER = """
import sys, time
import ray
from pipelines import metrics

ray.init()

@ray.remote(num_cpus=0)
class Trainer:
    def checkpoint(self):
        with metrics.timed("checkpoint_seconds", run="mon", phase="pretrain", op="save"):
            time.sleep(0.2)

    def step(self):
        # a gauge is re-reported on every training step, as a training loop does
        return metrics.set_gauge("train_loss", 2.5, run="mon", phase="pretrain")

@ray.remote(num_cpus=0)
def clean(n):
    metrics.inc("data_rows", n, stage="data", step="dedup")
    metrics.inc("data_rows_dropped", 7, stage="data", step="dedup", reason="duplicate")
    return n

trainer = Trainer.remote()
ray.get(trainer.checkpoint.remote())
print("rows", sum(ray.get([clean.remote(100), clean.remote(23)])), flush=True)
deadline = time.time() + float(sys.argv[1])  # keep reporting until the test has scraped (it stops the job)
while time.time() < deadline:
    assert ray.get(trainer.step.remote())
    time.sleep(0.5)
"""


def _prometheus_exe() -> str:
    exe = shutil.which("prometheus") or "/usr/bin/prometheus"
    assert Path(exe).exists(), "Prometheus missing: apt-get install -y --no-install-recommends prometheus"
    return exe


def _query(port: int, expr: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:  # 400: a bad expression; the body says why
        return json.loads(exc.read())


def _wait_for(fn, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@pytest.fixture
def prometheus_for(tmp_path):
    procs = []

    def start(ray_temp_dir: Path) -> int:
        cfg = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
        cfg["global"]["scrape_interval"] = "1s"
        sd = cfg["scrape_configs"][0]["file_sd_configs"][0]
        assert sd["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
        sd["files"] = [str(ray_temp_dir / "prom_metrics_service_discovery.json")]
        sd["refresh_interval"] = "1s"
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        port = free_port()
        log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115
        procs.append(subprocess.Popen(
            [_prometheus_exe(), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for(lambda: _ready(port), 30, "Prometheus to be ready")
        return port

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_raylm_metrics_reach_prometheus_and_the_dashboard_queries_run(tmp_path, prometheus_for):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "emit.py").write_text(textwrap.dedent(EMITTER))
    # Ray's metrics report interval is 10 s by default: 1 s keeps the test short.
    with LocalRayCluster(workers=0, extra_env={"RAY_metrics_report_interval_ms": "1000"}) as cluster:
        prom = prometheus_for(cluster.head_temp_dir)
        client = connect(cluster.dashboard_url, token=cluster.token)
        job_id = client.submit_job(entrypoint="python emit.py 120",
                                   runtime_env={"working_dir": str(tmp_path / "job")})
        try:
            def total(expr: str, want: float):
                # tasks run in several worker processes, each exporting its own series: wait for all
                result = _query(prom, expr)["data"]["result"]
                return result if result and float(result[0]["value"][1]) == want else None

            _wait_for(lambda: total('sum(ray_raylm_data_rows_total{stage="data",step="dedup"})', 123),
                      90, "ray_raylm_data_rows_total == 123 in Prometheus")
            dropped = _wait_for(lambda: total("sum by (reason) (ray_raylm_data_rows_dropped_total)", 14),
                                30, "ray_raylm_data_rows_dropped_total == 14")
            assert dropped[0]["metric"]["reason"] == "duplicate"
            loss = _wait_for(lambda: _query(prom, 'ray_raylm_train_loss{run="mon"}')["data"]["result"],
                             30, "ray_raylm_train_loss in Prometheus")
            assert float(loss[0]["value"][1]) == 2.5 and loss[0]["metric"]["phase"] == "pretrain"
            ckpt = _query(prom, 'sum(ray_raylm_checkpoint_seconds_count{op="save"})')["data"]["result"]
            assert float(ckpt[0]["value"][1]) == 1
            # Ray's own series (its reporter agent's) arrive through the same scrape
            _wait_for(lambda: _query(prom, "ray_node_cpu_count")["data"]["result"], 60, "ray_node_cpu_count")

            dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "raylm.json").read_text())
            exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
            assert len(exprs) >= 12
            for expr in exprs:
                answer = _query(prom, expr)
                assert answer["status"] == "success", (expr, answer)
            # a broken expression is refused by the same check
            assert _query(prom, "sum by (step (rate(ray_raylm_data_rows_total[1m]))")["status"] == "error"
        finally:
            client.stop_job(job_id)
