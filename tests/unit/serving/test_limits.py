"""serving/limits.py against a real ASGI app (Starlette's test client): size, depth and slow-body limits
answer 413/400/408 with OpenAI error bodies; requests within the limits reach the app unchanged."""

from __future__ import annotations

import asyncio
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.limits import RequestLimitsMiddleware, json_depth


async def echo(request: Request):
    body = await request.body()
    return JSONResponse({"bytes": len(body), "model": json.loads(body).get("model")})


def client(**limits) -> TestClient:
    app = Starlette(routes=[Route("/v1/completions", echo, methods=["POST"])])
    app.add_middleware(
        RequestLimitsMiddleware,
        **{"max_body_bytes": 4096, "max_json_depth": 8, "body_timeout_s": 5, **limits},
    )
    return TestClient(app)


def test_json_depth_ignores_brackets_in_strings_and_stops_past_the_limit():
    assert json_depth(b'{"a": [1, {"b": 2}]}', 64) <= 64
    assert json_depth(b'{"a": "[[[[[[[[[[[["}', 3) == 1
    assert json_depth(b'{"a": "\\"[[[[[[[["}', 3) == 1  # an escaped quote does not end the string
    assert json_depth(b"[" * 10 + b"]" * 10, 5) == 6  # stops counting once past the limit
    assert json_depth(b"[" * 3 + b"]" * 3, 5) <= 5


def test_within_limits_the_body_reaches_the_app_unchanged():
    body = json.dumps({"model": "m", "prompt": "x" * 1000, "stop": [["a"]]})
    r = client().post("/v1/completions", content=body)
    assert r.status_code == 200 and r.json() == {"bytes": len(body), "model": "m"}


def test_too_large_and_too_deep_are_refused_with_openai_errors():
    c = client()
    r = c.post("/v1/completions", content=json.dumps({"model": "m", "prompt": "x" * 5000}))
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    deep = '{"model": "m", "prompt": ' + "[" * 50 + "]" * 50 + "}"
    r = c.post("/v1/completions", content=deep)
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_too_deep"


def test_a_body_sent_too_slowly_gets_408():
    """Raw ASGI (a test client buffers the body before calling the app): the second chunk never comes."""
    sent = []

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the app must not see a request whose body timed out")

    async def receive():
        if not sent and not getattr(receive, "first_done", False):
            receive.first_done = True
            return {"type": "http.request", "body": b'{"model": "m", ', "more_body": True}
        await asyncio.sleep(30)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}
    mw = RequestLimitsMiddleware(app, max_body_bytes=4096, max_json_depth=8, body_timeout_s=0.5)
    asyncio.run(asyncio.wait_for(mw(scope, receive, send), 10))
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_timeout"


def test_bodies_the_ingress_would_fail_on_are_400s_before_they_reach_it():
    from serving.limits import check_openai_body

    c, ch = "/v1/completions", "/v1/chat/completions"
    # vLLM's validators raise TypeError/AttributeError on these (a 500 inside the ingress)
    assert "AttributeError" in check_openai_body(
        c, b'{"model": "m", "prompt": "hi", "structured_outputs": -1}', 16
    )
    assert "TypeError" in check_openai_body(ch, b'{"model": "m", "messages": null}', 16)
    assert "at most 16" in check_openai_body(c, b'{"model": "m", "prompt": "hi", "n": 10000}', 16)
    assert "JSON object" in check_openai_body(c, b"[]", 16)
    # valid bodies, and pydantic validation errors (FastAPI reports those itself), pass through
    assert check_openai_body(c, b'{"model": "m", "prompt": "hi", "n": 2}', 16) is None
    assert (
        check_openai_body(ch, b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', 16) is None
    )
    assert check_openai_body(c, b'{"model": "m", "prompt": "hi", "temperature": "hot"}', 16) is None
    assert check_openai_body("/v1/models", b"anything", 16) is None


def test_the_metrics_model_tag_never_parses_the_body():
    from serving.metrics import request_model

    assert request_model(b'{"prompt": "x", "model": "smollm2:tutor"}') == "smollm2:tutor"
    assert request_model(b'{"model": "m", "prompt": ' + b"[" * 100_000) == "m"
    assert request_model(b"\xff\xfe not json") == ""
