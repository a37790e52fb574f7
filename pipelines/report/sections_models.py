"""Report sections of the compress and serve stages: the compression table and Pareto plot, serving latency
and throughput of the sample requests."""

from __future__ import annotations

from pathlib import Path

from pipelines.report import plots
from pipelines.report.blocks import NOT_RUN, Para, Section, Table, figure, fmt, get, kv
from pipelines.report.collect import RunData


def compress(run: RunData, out: Path) -> Section:
    sec = Section("Compression", "compress")
    if "compress" not in run.manifests or not run.compress:
        sec.blocks.append(Para(NOT_RUN))
        return sec
    models = {"base": run.compress.get("base") or {}, **(run.compress.get("methods") or {})}
    base_path = get(run.compress, "base", "path")
    if base_path:
        sec.blocks.append(Para(f"Base model: `{base_path}`"))
    sec.blocks.append(
        Table(
            [
                "model",
                "parameters",
                "size MB",
                "bytes/param",
                "perplexity",
                "ppl ratio",
                "size ratio",
                "tokens/s (transformers)",
                "tokens/s (vLLM)",
            ],
            [
                [
                    name,
                    fmt(m.get("parameters")),
                    fmt((m.get("size_bytes") or 0) / 1e6, 3),
                    fmt(m.get("bytes_per_parameter")),
                    fmt(m.get("perplexity")),
                    fmt(m.get("perplexity_ratio", 1.0 if name == "base" else None)),
                    fmt(m.get("size_ratio", 1.0 if name == "base" else None)),
                    fmt(m.get("hf_tokens_per_s")),
                    fmt(m.get("vllm_tokens_per_s")),
                ]
                for name, m in models.items()
                if isinstance(m, dict)
            ],
        )
    )
    sec.blocks.append(
        figure(
            out,
            "compress_pareto.png",
            "perplexity against speed and size",
            lambda p: plots.compress_pareto(models, p),
            "no perplexity recorded",
        )
    )
    return sec


def serve(run: RunData, out: Path) -> Section:
    sec = Section("Serving", "serve")
    if "serve" not in run.manifests:
        sec.blocks.append(Para(NOT_RUN))
        return sec
    m = run.metrics("serve")
    s = m.get("samples") or {}
    sec.blocks.append(
        Para(
            f"Models {', '.join(map(str, m.get('models', [])))} served at `{m.get('url', '?')}` "
            f"(startup {fmt(m.get('startup_s'))} s)."
        )
    )
    if s:
        sec.blocks.append(
            kv(
                [
                    ("requests", s.get("requests")),
                    ("wall s", s.get("wall_s")),
                    ("TTFT p50 s", s.get("ttft_p50_s")),
                    ("TTFT max s", s.get("ttft_max_s")),
                    ("latency p50 s", s.get("latency_p50_s")),
                    ("latency max s", s.get("latency_max_s")),
                    ("output tokens", s.get("output_tokens")),
                    ("output tokens/s", s.get("output_tokens_per_s")),
                ]
            )
        )
    else:
        sec.blocks.append(Para("no sample requests were timed"))
    sec.blocks.append(
        figure(
            out,
            "serve_latency.png",
            "latency of each sample request",
            lambda p: plots.serve_latency(run.serve_samples, p),
            "no per-request timings recorded (samples.jsonl)",
        )
    )
    answers = run.serve_samples or m.get("answers") or []
    if answers:
        sec.blocks.append(
            Table(
                ["model", "prompt", "answer", "TTFT s", "latency s", "tokens"],
                [
                    [
                        a.get("model"),
                        a.get("prompt"),
                        a.get("answer"),
                        fmt(a.get("ttft_s")),
                        fmt(a.get("latency_s")),
                        fmt(a.get("completion_tokens")),
                    ]
                    for a in answers
                ],
            )
        )
    kv_plan = m.get("kv_cache") or {}
    if kv_plan:
        sec.blocks.append(
            Table(
                ["model", "KV tokens planned", "KV tokens in the engine", "relative error"],
                [
                    [
                        k,
                        fmt(v.get("planned_tokens")),
                        fmt(v.get("engine_tokens")),
                        fmt(v.get("relative_error")),
                    ]
                    for k, v in kv_plan.items()
                    if isinstance(v, dict)
                ],
            )
        )
    return sec
