"""Bearer-token auth: header parsing, digest comparison, the ASGI middleware; keys never reach logs."""

from __future__ import annotations

import asyncio
import json
import logging

from serving.auth import BearerAuthMiddleware, bearer_token, digests, is_authorized, key_digest

KEY = "sk-raylm-unit-7f3a"


def test_bearer_token_parsing():
    assert bearer_token(f"Bearer {KEY}") == KEY
    assert bearer_token(f"bearer   {KEY}  ") == KEY
    for bad in (None, "", "Bearer", "Bearer ", f"Basic {KEY}", KEY):
        assert bearer_token(bad) is None, bad


def test_only_listed_keys_pass():
    allowed = digests([KEY, "sk-other", ""])
    assert len(allowed) == 2 and KEY not in "".join(allowed)  # digests only
    assert is_authorized(f"Bearer {KEY}", allowed)
    assert is_authorized("Bearer sk-other", allowed)
    assert not is_authorized(f"Bearer {KEY}x", allowed)
    assert not is_authorized(None, allowed)
    assert not is_authorized(f"Bearer {KEY}", ())
    assert key_digest(KEY) in allowed


async def _call(mw, path="/v1/models", headers=(), method="GET"):
    sent = []
    scope = {"type": "http", "path": path, "method": method, "headers": list(headers)}

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    await mw(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


async def _inner(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_middleware_401s_with_openai_body_and_never_logs_the_key(caplog):
    mw = BearerAuthMiddleware(_inner, digests([KEY]))
    caplog.set_level(logging.DEBUG)
    status, body = asyncio.run(_call(mw))
    assert status == 401
    err = json.loads(body)["error"]
    assert err["code"] == "invalid_api_key" and err["message"].startswith("Missing API key")
    status, body = asyncio.run(_call(mw, headers=[(b"authorization", b"Bearer sk-wrong-guess")]))
    assert status == 401 and json.loads(body)["error"]["message"].startswith("Invalid API key")
    assert asyncio.run(_call(mw, headers=[(b"authorization", f"Bearer {KEY}".encode())])) == (200, b"ok")
    assert asyncio.run(_call(mw, path="/-/healthz")) == (200, b"ok")  # probes need no key
    assert asyncio.run(_call(mw, method="OPTIONS")) == (200, b"ok")  # CORS pre-flight
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused GET /v1/models: invalid API key" in logged
    assert KEY not in logged and "sk-wrong-guess" not in logged and key_digest(KEY) not in logged


def test_no_keys_means_no_auth():
    mw = BearerAuthMiddleware(_inner, ())
    assert asyncio.run(_call(mw)) == (200, b"ok")
