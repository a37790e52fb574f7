"""Talking to a running app through its OpenAI API: the sample requests a pipeline run ends with, timed.

Each request streams (so the time to the first token is measured where the client sees it) and asks for
usage in the last chunk (`stream_options.include_usage`), so token counts come from the server.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass


@dataclass
class SampleResult:
    model: str
    prompt: str
    answer: str
    ttft_s: float
    latency_s: float
    prompt_tokens: int
    completion_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def openai_client(base_url: str, api_key: str | None = None, timeout: float = 300.0):
    from openai import OpenAI

    # The openai client insists on a key; an app without auth ignores whatever is sent.
    return OpenAI(base_url=base_url, api_key=api_key or "no-key", timeout=timeout, max_retries=0)


def chat_once(client, model: str, prompt: str, max_tokens: int = 64,
              temperature: float = 0.0) -> SampleResult:
    """One streamed chat request; TTFT is the first chunk carrying text."""
    t0 = time.perf_counter()
    ttft = None
    parts: list[str] = []
    usage = None
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
        temperature=temperature, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text = choice.delta.content if choice.delta else None
            if text:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                parts.append(text)
    latency = time.perf_counter() - t0
    return SampleResult(model=model, prompt=prompt, answer="".join(parts), ttft_s=round(ttft or latency, 4),
                        latency_s=round(latency, 4), prompt_tokens=int(usage.prompt_tokens) if usage else 0,
                        completion_tokens=int(usage.completion_tokens) if usage else 0)


def run_samples(base_url: str, models: list[str], prompts: list[str], *, api_key: str | None = None,
                max_tokens: int = 64, concurrency: int = 1) -> tuple[list[SampleResult], dict]:
    """Send every prompt to every model (`concurrency` at a time); returns the results and a summary:
    requests, output tokens/s over the whole wall time, TTFT and latency p50/max."""
    client = openai_client(base_url, api_key)
    jobs = [(m, p) for m in models for p in prompts]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        results = list(pool.map(lambda job: chat_once(client, job[0], job[1], max_tokens), jobs))
    wall = time.perf_counter() - t0
    return results, summarize(results, wall)


def summarize(results: list[SampleResult], wall_s: float) -> dict:
    if not results:
        return {"requests": 0}
    ttft = [r.ttft_s for r in results]
    lat = [r.latency_s for r in results]
    out_tokens = sum(r.completion_tokens for r in results)
    return {
        "requests": len(results),
        "wall_s": round(wall_s, 3),
        "output_tokens": out_tokens,
        "output_tokens_per_s": round(out_tokens / wall_s, 2) if wall_s > 0 else 0.0,
        "ttft_p50_s": round(statistics.median(ttft), 4),
        "ttft_max_s": round(max(ttft), 4),
        "latency_p50_s": round(statistics.median(lat), 4),
        "latency_max_s": round(max(lat), 4),
    }
