"""Hostile input to the OpenAI-compatible API (issue 10, item 4): bodies derived from the app's own OpenAPI
schema with every field set to hostile values, plus hand-made cases (huge prompts and `max_tokens`,
negative/NaN/infinite numbers, deep nesting, invalid UTF-8, out-of-vocabulary token ids, a slow client).

The cases and the check live here; the test runs against the serving test's app
(`tests/integration/test_serve_app.py::test_hostile_requests_never_get_a_5xx_and_the_app_survives`), so
vLLM starts once for both (a minute and more on 2 cores). The count goes to
benchmarks/results/reliability.json as `server_errors_5xx`."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import time

import httpx

from tests.reliability.results import record_result

BODY_TIMEOUT_S = 3.0
"""The app's `request_body_timeout_s` for this check: the slow client must get 408 soon after."""
BASE = {
    "/v1/completions": {"model": "smollm2", "prompt": "Hello", "max_tokens": 1, "temperature": 0},
    "/v1/chat/completions": {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
        "temperature": 0,
    },
}
# What each field is set to, one at a time: wrong types, out-of-range and extreme numbers, empties.
HOSTILE = [None, -1, 2**63, 1e308, "x" * 10_000, [[[[1]]]], {"a": {"b": 1}}]


def schema_cases(openapi: dict) -> list[tuple[str, bytes]]:
    """Every property of each POST endpoint's request schema, set to each hostile value."""
    cases = []
    for path, base in BASE.items():
        op = openapi.get("paths", {}).get(path, {}).get("post", {})
        content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        ref = content.get("schema", {}).get("$ref", "")
        props = openapi.get("components", {}).get("schemas", {}).get(ref.rsplit("/", 1)[-1], {})
        names = sorted(props.get("properties", {})) or sorted(base)
        for name in names:
            for value in HOSTILE:
                body = copy.deepcopy(base)
                body[name] = value
                cases.append((path, json.dumps(body).encode()))
    return cases


def hand_cases() -> list[tuple[str, bytes]]:
    c, ch = "/v1/completions", "/v1/chat/completions"
    raw = [
        (c, b'{"model": "smollm2", "prompt": "hi", "max_tokens": 1, "temperature": NaN}'),
        (c, b'{"model": "smollm2", "prompt": "hi", "max_tokens": 1, "top_p": Infinity}'),
        (c, b'{"model": "smollm2", "prompt": "hi", "max_tokens": 1, "presence_penalty": -Infinity}'),
        (c, b'{"model": "smollm2", "prompt": "caf\xe9 \xff\xfe", "max_tokens": 1}'),  # invalid UTF-8
        (c, b'{"model": "smollm2", "prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}"),  # deep nesting
        (c, b""),
        (c, b"null"),
        (c, b"[]"),
        (c, b'"just a string"'),
        (c, b'{"model": "smollm2", "prompt": "hi"' + b" " * 100),  # truncated
    ]
    bodies = [
        (c, {"model": "smollm2", "prompt": "word " * 200_000, "max_tokens": 1}),  # ~1 MB, far over context
        (c, {"model": "smollm2", "prompt": "x" * (5 << 20), "max_tokens": 1}),  # over max_request_bytes
        (c, {"model": "smollm2", "prompt": "hi", "max_tokens": 10**9}),
        (c, {"model": "smollm2", "prompt": [10**9, 2**31, -5], "max_tokens": 1}),  # out-of-vocabulary ids
        (c, {"model": "smollm2", "prompt": [[1, 2], [10**12]], "max_tokens": 1}),
        (c, {"model": "smollm2", "prompt": [], "max_tokens": 1}),
        (c, {"model": "smollm2", "prompt": "hi", "max_tokens": 1, "n": 10_000}),
        (c, {"model": "smollm2", "prompt": "hi", "max_tokens": 1, "logprobs": 10_000}),
        (c, {"model": "smollm2", "prompt": "hi", "max_tokens": 1, "logit_bias": {"99999999": 100}}),
        (c, {"model": "smollm2", "prompt": "hi", "max_tokens": 1, "stop": ["x"] * 10_000}),
        (c, {"model": "smollm2", "prompt": "hi", "max_tokens": 0, "echo": True}),
        (c, {"model": "../../etc/passwd", "prompt": "hi", "max_tokens": 1}),
        (c, {"model": "smollm2:../../../etc", "prompt": "hi", "max_tokens": 1}),
        (ch, {"model": "smollm2", "messages": [{"role": "wizard", "content": "hi"}], "max_tokens": 1}),
        (ch, {"model": "smollm2", "messages": [{"role": "user"}], "max_tokens": 1}),
        (ch, {"model": "smollm2", "messages": [], "max_tokens": 1}),
        (
            ch,
            {
                "model": "smollm2",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}],
                    }
                ],
                "max_tokens": 1,
            },
        ),
        (ch, {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}] * 5000, "max_tokens": 1}),
    ]
    return raw + [(p, json.dumps(b).encode()) for p, b in bodies]


async def _send_all(url: str, key: str, cases: list[tuple[str, bytes]], concurrency: int = 8):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    sem = asyncio.Semaphore(concurrency)
    out: list[tuple[str, bytes, int | str]] = []
    async with httpx.AsyncClient(timeout=120) as client:

        async def one(path, body):
            async with sem:
                try:
                    r = await client.post(url + path, content=body, headers=headers)
                    out.append((path, body, r.status_code))
                except httpx.HTTPError as exc:
                    out.append((path, body, f"{type(exc).__name__}: {exc}"))

        await asyncio.gather(*(one(p, b) for p, b in cases))
    return out


def _slow_client(url: str, key: str) -> int:
    """Send the headers and half the body, then stall: the server must answer 408, not wait forever."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(BASE["/v1/completions"]).encode()
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer "
            + key.encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body[: len(body) // 2]
        )
        t0 = time.monotonic()
        reply = s.recv(4096)
        assert time.monotonic() - t0 < BODY_TIMEOUT_S + 30
    return int(reply.split(b" ", 2)[1])


MEMORY_GROWTH_LIMIT_MB = 1536  # a few more Ray worker processes at most; a leak per request would pass it


class TreeMemory:
    """Summed RSS of this test process and its descendants (the embedded Ray: proxy, replicas, engine),
    sampled every 0.5 s while the fuzzing runs: before, peak and after, in MB."""

    def __init__(self):
        import threading

        self.before_mb = self.peak_mb = self.after_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def sample() -> float:
        import psutil

        total = 0
        me = psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak_mb = max(self.peak_mb, self.sample())

    def __enter__(self):
        self.before_mb = self.peak_mb = self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.after_mb = self.sample()
        self.peak_mb = max(self.peak_mb, self.after_mb)

    def figures(self) -> dict[str, float]:
        return {k: round(getattr(self, f"{k}_mb")) for k in ("before", "peak", "after")}


def check_hostile_requests(app_url: str, key: str) -> None:
    """Fuzz the app at `app_url` (bearer `key`): no 5xx, the slow client gets 408, it answers normally
    afterwards, and the process tree's memory stays bounded; the figures go to reliability.json."""
    openapi = httpx.get(app_url + "/openapi.json", headers={"Authorization": f"Bearer {key}"}, timeout=60)
    spec = openapi.json() if openapi.status_code == 200 else {}
    cases = schema_cases(spec) + hand_cases()
    with TreeMemory() as memory:
        t0 = time.perf_counter()
        results = asyncio.run(_send_all(app_url, key, cases))
        wall = time.perf_counter() - t0
        slow_status = _slow_client(app_url, key)
    statuses: dict[str, int] = {}
    for _, _, status in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    server_errors = [(p, b[:200], s) for p, b, s in results if not isinstance(s, int) or s >= 500]
    # the app still answers normally
    ok = httpx.post(
        app_url + "/v1/completions",
        json=BASE["/v1/completions"],
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    record_result(
        "api_fuzz",
        {
            "requests": len(results) + 1,
            "from_openapi_schema": len(cases) - len(hand_cases()),
            "statuses": statuses,
            "slow_client_status": slow_status,
            "wall_s": round(wall, 1),
            "examples_5xx": [f"{p} {s} {b!r}" for p, b, s in server_errors[:5]],
            "memory_rss_mb": memory.figures(),
        },
    )
    _set_5xx(len(server_errors) + (slow_status >= 500))
    assert spec.get("paths"), "the app serves its OpenAPI schema"
    assert not server_errors, server_errors[:10]
    assert slow_status == 408
    assert ok.status_code == 200, ok.text
    # memory bounded: hostile bodies are refused at the ingress (max_request_bytes), not buffered
    assert memory.peak_mb - memory.before_mb < MEMORY_GROWTH_LIMIT_MB, memory.figures()


def _set_5xx(count: int) -> None:
    from tests.reliability.results import RESULTS

    data = json.loads(RESULTS.read_text())
    data["server_errors_5xx"] = count
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
