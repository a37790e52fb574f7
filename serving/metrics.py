"""Metrics: what Ray Serve and vLLM export through Ray's metrics endpoint, and the engine's KV capacity.

Ray Serve LLM runs vLLM with `RayPrometheusStatLogger` (`log_engine_metrics`), so vLLM's metrics (TTFT,
token counts, KV cache usage, prefix-cache queries and hits) appear beside Ray Serve's (request latency,
HTTP errors, ongoing requests) on every node's metrics agent, prefixed `ray_`: the endpoint Prometheus
scrapes and the Ray dashboard reads. No extra exporter is needed.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections import defaultdict

# The metrics `raylm serve` promises (docs/serving.md); a test scrapes the endpoint for each family.
KEY_METRICS = {
    "request latency (Serve)": "ray_serve_http_request_latency_ms",
    "requests (Serve)": "ray_serve_num_http_requests_total",
    "HTTP errors (Serve)": "ray_serve_num_http_error_requests_total",
    "end-to-end latency (vLLM)": "ray_vllm_e2e_request_latency_seconds",
    "time to first token": "ray_vllm_time_to_first_token_seconds",
    "time per output token": "ray_vllm_request_time_per_output_token_seconds",
    "output tokens": "ray_vllm_generation_tokens_total",
    "prompt tokens": "ray_vllm_prompt_tokens_total",
    "KV cache usage": "ray_vllm_kv_cache_usage_perc",
    "prefix cache queries": "ray_vllm_prefix_cache_queries_total",
    "prefix cache hits": "ray_vllm_prefix_cache_hits_total",
    "running requests": "ray_vllm_num_requests_running",
    "waiting requests": "ray_vllm_num_requests_waiting",
    "requests by model and outcome (raylm)": "ray_raylm_serve_requests_total",
    "request latency by model (raylm)": "ray_raylm_serve_request_latency_seconds",
}

_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)")


def metrics_urls() -> list[str]:
    """Each alive node's metrics endpoint (`http://<node>:<metrics_export_port>/metrics`); Ray connected."""
    import ray

    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")]


def scrape(url: str, timeout: float = 10.0) -> dict[str, list[tuple[str, float]]]:
    """Prometheus text -> {sample name: [(labels text, value), ...]} (histograms keep their _bucket/_sum
    /_count names)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - a Ray node's own endpoint
        text = resp.read().decode("utf-8", "replace")
    samples: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m:
            try:
                samples[m.group(1)].append((m.group(2) or "", float(m.group(3))))
            except ValueError:
                continue
    return dict(samples)


def families(samples: dict) -> set[str]:
    """Metric family names (histogram and counter suffixes stripped)."""
    out = set()
    for name in samples:
        out.add(name)
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix):
                out.add(name[: -len(suffix)])
    return out


def total(samples: dict, name: str, label_filter: str = "") -> float:
    """Sum of a sample's values over label sets containing `label_filter`."""
    return sum(v for labels, v in samples.get(name, []) if label_filter in labels)


def engine_kv_info(app_name: str, model: str, timeout_s: float = 60.0) -> dict:
    """What the running vLLM engine allocated, asked from one replica through its deployment handle."""
    from ray import serve

    handle = serve.get_deployment_handle(f"LLMServer:{model}", app_name=app_name)
    return handle.kv_cache_info.remote().result(timeout_s=timeout_s)


class RequestMetricsMiddleware:
    """raylm's per-model request metrics (`raylm_serve_requests` by status, whole-request latency, time to
    the first body chunk of a streamed answer), recorded in the ingress replica through
    `pipelines.metrics`. Ray Serve's own HTTP metrics carry no model name; vLLM's carry no refused or
    failed requests: this fills both gaps. Pure ASGI, so streaming responses pass through untouched.
    Placed outside the auth middleware, so refused (401) requests are counted as `rejected`."""

    # The request body is only peeked at for its "model" field; bodies past this size are not parsed.
    MAX_PEEK = 1 << 16

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v1/"):
            return await self.app(scope, receive, send)
        from pipelines import metrics

        t0 = time.perf_counter()
        body = bytearray()
        state: dict = {"status": 500, "first": None}

        async def peek_receive():
            message = await receive()
            if message.get("type") == "http.request" and len(body) < self.MAX_PEEK:
                body.extend(message.get("body", b"")[: self.MAX_PEEK - len(body)])
            return message

        async def timed_send(message):
            if message["type"] == "http.response.start":
                state["status"] = int(message["status"])
            elif message["type"] == "http.response.body" and message.get("body") and state["first"] is None:
                state["first"] = time.perf_counter() - t0
            await send(message)

        try:
            await self.app(scope, peek_receive, timed_send)
        finally:
            model = request_model(bytes(body))
            status = state["status"]
            outcome = "ok" if status < 400 else ("rejected" if status < 500 else "error")
            metrics.inc("serve_requests", 1, model=model, status=outcome)
            if outcome == "ok":
                metrics.observe("serve_request_latency_seconds", time.perf_counter() - t0, model=model)
                if state["first"] is not None:
                    metrics.observe("serve_time_to_first_token_seconds", state["first"], model=model)


_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')


def request_model(body: bytes) -> str:
    """The `model` field of an OpenAI request body, or "" (none found). A regular expression, not a JSON
    parse: this runs for every request, hostile ones included (a body nested thousands deep would
    exhaust the JSON parser's recursion)."""
    m = _MODEL_FIELD.search(body)
    return m.group(1).decode("utf-8", "replace") if m else ""
