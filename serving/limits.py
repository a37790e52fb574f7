"""Request limits in front of the OpenAI API: body size (413), JSON nesting depth (400) and body read time
(408), answered with OpenAI-style error bodies before anything reaches FastAPI or vLLM.

Why our own middleware: Ray Serve's proxy and FastAPI put no bound on the body a client may send or on how
slowly it may send it, and Python's JSON parser recurses per nesting level, so a body like `[[[[...]]]]`
thousands deep fails inside the framework with a 500 instead of a 400. Pure ASGI (like the auth
middleware), so streamed responses are untouched.
"""

from __future__ import annotations

import asyncio
import json


def error_body(message: str, code: str, param: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    ).encode()


def json_depth(body: bytes, limit: int) -> int:
    """Nesting depth of JSON arrays/objects in `body` (brackets inside strings ignored), or a bound of it:
    a body with at most `limit` opening brackets is answered by counting them (C speed); only others are
    scanned byte by byte, and the scan stops once past `limit`."""
    brackets = body.count(b"[") + body.count(b"{")
    return brackets if brackets <= limit else _exact_depth(body, limit)


def _exact_depth(body: bytes, limit: int) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


# The request models the ingress itself parses (vLLM's, re-exported by Ray Serve LLM), by route.
_REQUEST_MODELS = {
    "/v1/completions": "CompletionRequest",
    "/v1/chat/completions": "ChatCompletionRequest",
}


def check_openai_body(path: str, body: bytes, max_choices: int) -> str | None:
    """Why this body cannot be served (a 400), or None. Validates with the same request models the ingress
    uses: some of vLLM's validators raise TypeError/AttributeError on wrong types (e.g. `structured_outputs:
    -1`, `messages: null`), which pydantic does not turn into a validation error, so inside the ingress they
    surface as 500s. Also bounds `n`/`best_of`: one request asking for 10,000 choices would occupy an
    engine for minutes and stall every request queued behind it."""
    name = _REQUEST_MODELS.get(path.rstrip("/"))
    if name is None:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return f"The body is not valid JSON: {str(exc)[:200]}"
    if not isinstance(data, dict):
        return f"The body must be a JSON object, got {type(data).__name__}."
    for key in ("n", "best_of"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > max_choices:
            return f"'{key}' is {value}; this server allows at most {max_choices} (serve.max_choices)."
    from pydantic import ValidationError
    from ray.llm._internal.serve.core.configs import openai_api_models

    try:
        getattr(openai_api_models, name).model_validate(data)
    except ValidationError:
        return None  # FastAPI reports these itself, with the field's location
    except (TypeError, AttributeError, ValueError, OverflowError, RecursionError) as exc:
        return f"Invalid request: {type(exc).__name__}: {str(exc)[:300]}"
    return None


class RequestLimitsMiddleware:
    def __init__(
        self, app, max_body_bytes: int, max_json_depth: int, body_timeout_s: float, max_choices: int = 16
    ):
        self.app = app
        self.max_choices = max_choices
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _refuse(send, 400, "Content-Length is not a number.", "invalid_header")
                if declared > self.max_body_bytes:
                    return await self._too_large(send)
        body = bytearray()
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    body.extend(message.get("body", b""))
                    if len(body) > self.max_body_bytes:
                        return await self._too_large(send)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return await _refuse(
                send,
                408,
                f"The request body was not received within {self.body_timeout_s:g} s.",
                "request_timeout",
            )
        if json_depth(bytes(body), self.max_json_depth) > self.max_json_depth:
            return await _refuse(
                send,
                400,
                f"The JSON body is nested deeper than {self.max_json_depth} levels.",
                "json_too_deep",
            )
        problem = check_openai_body(scope.get("path", ""), bytes(body), self.max_choices)
        if problem:
            return await _refuse(send, 400, problem, "invalid_request")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        return await self.app(scope, replay, send)

    async def _too_large(self, send):
        return await _refuse(
            send,
            413,
            f"The request body is larger than {self.max_body_bytes} bytes (serve.max_request_bytes).",
            "request_too_large",
        )


async def _refuse(send, status: int, message: str, code: str) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": error_body(message, code)})
