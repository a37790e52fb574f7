"""serving/app_errors.py on Ray Serve LLM's own FastAPI app (its `init()`), through Starlette's test client:
with Ray's BaseHTTPMiddleware swapped for the plain ASGI one, a route's exceptions get the same status and
body as Ray's handler gives them, streams arrive whole, and an exception mid-stream still ends the stream."""

from __future__ import annotations

import pytest
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.testclient import TestClient

from serving.app_errors import OpenAIErrorsMiddleware, use_plain_asgi_errors


class Body(BaseModel):
    n: int


def make_app(swap: bool):
    from ray.llm._internal.serve.core.ingress.ingress import init

    app = init()
    if swap:
        assert use_plain_asgi_errors(app)

    @app.post("/v1/fails")
    async def fails():
        raise ValueError("the engine said no")

    @app.post("/v1/typed")
    async def typed(body: Body):
        return {"n": body.n}

    @app.get("/v1/stream")
    async def stream():
        async def chunks():
            for i in range(50):
                yield f"data: {i}\n\n"
        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.get("/v1/stream_breaks")
    async def stream_breaks():
        async def chunks():
            yield "data: 0\n\n"
            raise RuntimeError("engine died mid-stream")
        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app


def test_the_swap_leaves_no_base_http_middleware_and_keeps_the_stack_order():
    ray_app, ours = make_app(swap=False), make_app(swap=True)
    assert [m.cls for m in ours.user_middleware if m.cls is BaseHTTPMiddleware] == []
    before = [m.cls for m in ray_app.user_middleware]
    after = [m.cls for m in ours.user_middleware]
    assert len(before) == len(after)
    i = before.index(BaseHTTPMiddleware)
    assert after[i] is OpenAIErrorsMiddleware
    assert after[:i] + after[i + 1:] == before[:i] + before[i + 1:]
    assert use_plain_asgi_errors(ours) is False  # nothing left to swap


@pytest.mark.parametrize("path, body", [("/v1/fails", {}), ("/v1/typed", {"n": "not a number"}),
                                        ("/v1/typed", None)])
def test_errors_get_the_same_status_and_body_as_rays_handler(path, body):
    """The test clients re-raise what reaches the server: Ray's app also has a last-resort handler that
    gives the same body, so only an exception the middleware under test answered passes here."""
    headers = {"x-request-id": "req-1"}
    kw = {"json": body} if body is not None else {"content": b"{not json"}
    with TestClient(make_app(swap=False)) as a, TestClient(make_app(swap=True)) as b:
        ra, rb = a.post(path, headers=headers, **kw), b.post(path, headers=headers, **kw)
    assert 400 <= ra.status_code < 600 and "error" in ra.json()
    assert (rb.status_code, rb.json()) == (ra.status_code, ra.json())


def test_a_route_error_becomes_an_openai_error_body():
    with TestClient(make_app(swap=True)) as c:  # re-raises anything the middleware let through
        r = c.post("/v1/fails", headers={"x-request-id": "req-2"})
    err = r.json()["error"]
    assert r.status_code == err["code"] and r.status_code >= 400
    assert "the engine said no" in err["message"]


def test_streams_arrive_whole():
    with TestClient(make_app(swap=True)) as c:
        r = c.get("/v1/stream")
    assert r.status_code == 200
    assert r.text == "".join(f"data: {i}\n\n" for i in range(50))


def test_an_exception_mid_stream_still_ends_the_stream():
    """After the response started there is no status left to change: the exception goes up to the server,
    which ends the connection (the test client re-raises it), as with Ray's middleware."""
    with TestClient(make_app(swap=True)) as c, pytest.raises(RuntimeError, match="mid-stream"):
        c.get("/v1/stream_breaks")
