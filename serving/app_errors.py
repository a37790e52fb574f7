"""The OpenAI routes' exceptions turned into OpenAI error bodies, without a task switch per streamed chunk.

Ray Serve LLM's FastAPI app (`ray.llm._internal.serve.core.ingress.ingress.init`) installs its
application-exception handler as a Starlette `BaseHTTPMiddleware`: a route's `RequestValidationError`
becomes a 400 with an OpenAI error body, any other exception the status and body of Ray's
`get_response_for_error`. A `BaseHTTPMiddleware` runs the rest of the app in a task of its own and hands
every message of the response to the server's task through an anyio memory stream, so each streamed chunk
costs two task switches and a stream hand-off. Under the mixed concurrency-32 benchmark on the 2-core VM
that plumbing was about a tenth of the ingress replica's Python samples (docs/serving.md, "Evening
rounds"), on the cores the engine's threads are pinned to.

`OpenAIErrorsMiddleware` does the same conversion as a plain ASGI middleware, in the server's task: an
exception raised before the response starts gets the same status and body as Ray's handler gives it; one
raised after the response started (mid-stream) propagates as it did, and the server ends the connection.
Cancellation propagates untouched, as in Ray's handler. `use_plain_asgi_errors` swaps it into an app
that `init()` built, in Ray's middleware's place in the stack. Written here because Starlette offers no
pure-ASGI form of a `dispatch` function, and Ray Serve LLM's is only available as one.
"""

from __future__ import annotations

from asyncio import CancelledError

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse


class OpenAIErrorsMiddleware:
    """The app's exceptions before its response starts, as OpenAI error bodies (Ray Serve LLM's rules)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except CancelledError:
            raise
        except Exception as exc:
            if started:
                raise
            response = await error_response(Request(scope, receive), exc)
            await response(scope, receive, send)


async def error_response(request: Request, exc: Exception) -> JSONResponse:
    """What Ray Serve LLM's application-exception handler answers for `exc` (same status, same body)."""
    from ray.llm._internal.serve.core.ingress.middleware import _handle_validation_error, get_request_id
    from ray.llm._internal.serve.utils.server_utils import get_response_for_error

    if isinstance(exc, RequestValidationError):
        return await _handle_validation_error(request, exc)
    error = get_response_for_error(exc, get_request_id(request))
    return JSONResponse(content=error.model_dump(), status_code=error.error.code)


def use_plain_asgi_errors(app: FastAPI) -> bool:
    """Replace the `BaseHTTPMiddleware` that Ray Serve LLM's `init()` added to `app` by
    `OpenAIErrorsMiddleware`, at the same place in the stack. Returns False (and changes nothing) where
    no such middleware is there, e.g. a Ray version that no longer adds it. Call before the app serves
    (Starlette builds its middleware stack on the first request)."""
    for i, m in enumerate(app.user_middleware):
        dispatch = getattr(m.kwargs.get("dispatch"), "__name__", "")
        if m.cls is BaseHTTPMiddleware and dispatch == "_handle_application_exceptions":
            app.user_middleware[i] = Middleware(OpenAIErrorsMiddleware)
            return True
    return False
