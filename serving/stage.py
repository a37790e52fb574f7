"""The serve stage's body: start the app, send the recipe's sample prompts, record what came back.

Runs with Ray connected (the pipeline's session). Writes to the stage folder:
- `plan.json`: each model's memory plan, and the KV capacity the engine reported beside it;
- `samples.jsonl`: every sample request's prompt, answer, TTFT, latency and token counts;
and returns the metrics the manifest keeps (latency/throughput summary, answers, planned vs measured KV).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serving.app import AppPlan, RunningApp, plan_app, plan_summary, start_app, stop_app
from serving.config import ServeConfig


def kv_check(app_plan: AppPlan, app_name: str) -> dict[str, Any]:
    """Planned vs allocated KV cache per model (asked from a replica of each)."""
    from serving.metrics import engine_kv_info

    out = {}
    for name, plan in app_plan.plans.items():
        got = engine_kv_info(app_name, name)
        measured = int(got.get("kv_cache_size_tokens") or 0)
        out[name] = {
            "planned_blocks": plan.num_blocks, "engine_blocks": got.get("num_blocks"),
            "planned_tokens": plan.kv_capacity_tokens, "engine_tokens": measured,
            "relative_error": (round(abs(plan.kv_capacity_tokens - measured) / measured, 5)
                               if measured else None),
            "engine": got,
        }
    return out


def describe(running: RunningApp, metrics_urls: list[str] | None = None) -> list[str]:
    """What `raylm serve` and the stage print once the app is up: URL, models, an example curl."""
    auth = ' -H "Authorization: Bearer $RAYLM_API_KEY"' if running.auth else ""
    first = running.models[0]
    lines = [f"serving {running.name} at {running.url} (ready in {running.started_s:.0f}s)",
             "models: " + ", ".join(running.models),
             "try:",
             f"  curl {running.url}/chat/completions -H 'Content-Type: application/json'{auth} \\",
             f"    -d '{json.dumps({'model': first, 'messages': [{'role': 'user', 'content': 'Hello!'}]})}'"]
    if running.auth:
        lines.append("  (authentication is on: export RAYLM_API_KEY=<one of your keys>)")
    if metrics_urls:
        lines.append("metrics (Prometheus): " + ", ".join(metrics_urls))
    return lines


def wait_for_interrupt(log: Callable[[str], None]) -> None:
    log("serving until Ctrl-C ...")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log("Ctrl-C: shutting the app down")


def run_serve_stage(cfg: ServeConfig, out_dir: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    from serving.client import run_samples
    from serving.metrics import metrics_urls

    app_plan = plan_app(cfg)  # refuses what cannot fit before any replica starts
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    running = start_app(app_plan, log=log)
    try:
        for line in describe(running, metrics_urls()):
            log(line)
        keys = cfg.resolved_api_keys()
        results, summary = [], {"requests": 0}
        if cfg.sample_prompts:
            results, summary = run_samples(
                running.url, [m.name for m in cfg.models], cfg.sample_prompts,
                api_key=keys[0] if keys else None, max_tokens=cfg.sample_max_tokens)
            for r in results:
                log(f"[{r.model}] {r.prompt!r} -> {r.answer!r} (TTFT {r.ttft_s:.2f}s, {r.latency_s:.2f}s, "
                    f"{r.completion_tokens} tokens)")
            with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
                for r in results:
                    f.write(json.dumps(r.to_dict()) + "\n")
        kv = kv_check(app_plan, cfg.app_name)
        record = {"plans": plan_summary(app_plan), "engine_kv": kv}
        (out / "plan.json").write_text(json.dumps(record, indent=2, default=str))
        metrics = {
            "startup_s": running.started_s,
            "url": running.url,
            "models": running.models,
            "samples": summary,
            "answers": [{"model": r.model, "prompt": r.prompt, "answer": r.answer} for r in results],
            "kv_cache": {name: {k: v[k] for k in ("planned_tokens", "engine_tokens", "relative_error")}
                         for name, v in kv.items()},
        }
        if cfg.keep_serving:
            wait_for_interrupt(log)
        return metrics
    finally:
        stop_app(cfg)
