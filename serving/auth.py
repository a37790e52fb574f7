"""Bearer-token authentication for the OpenAI API, without the keys ever leaving the driver in clear.

The app receives only SHA-256 digests of the accepted keys; each request's `Authorization: Bearer <key>`
is hashed and compared in constant time. Neither the keys nor the digests are logged; a refused request
logs its path and the reason ("missing" / "invalid"), never the presented token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable

logger = logging.getLogger("raylm.serving.auth")

# Paths answered without a key: liveness probes carry no data.
PUBLIC_PATHS = frozenset({"/-/healthz", "/-/routes", "/health"})


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def digests(keys: Iterable[str]) -> tuple[str, ...]:
    """The digests the app is given (sorted, so the deployment's config does not depend on key order)."""
    return tuple(sorted({key_digest(k) for k in keys if k}))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def is_authorized(authorization: str | None, allowed: Iterable[str]) -> bool:
    """Whether the header carries one of the keys whose digests are `allowed`. Compares every digest (no
    early exit) in constant time, so timing does not tell how close a guess was."""
    token = bearer_token(authorization)
    if token is None:
        return False
    presented = key_digest(token)
    ok = False
    for digest in allowed:
        ok |= hmac.compare_digest(presented, digest)
    return ok


def unauthorized_body(reason: str) -> bytes:
    """An OpenAI-style 401 body (the shape the openai client turns into `AuthenticationError`)."""
    return json.dumps({"error": {
        "message": f"{reason} API key: send 'Authorization: Bearer <key>' with a key this server accepts.",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key",
    }}).encode("utf-8")


class BearerAuthMiddleware:
    """Pure ASGI middleware (it also guards streaming responses, unlike `BaseHTTPMiddleware`)."""

    def __init__(self, app, allowed_digests: Iterable[str]):
        self.app = app
        self.allowed = tuple(allowed_digests)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.allowed or scope.get("path") in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        if scope.get("method") == "OPTIONS":  # CORS pre-flight requests never carry credentials
            return await self.app(scope, receive, send)
        header = None
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                header = value.decode("latin-1")
                break
        if is_authorized(header, self.allowed):
            return await self.app(scope, receive, send)
        reason = "Missing" if bearer_token(header) is None else "Invalid"
        logger.warning("refused %s %s: %s API key", scope.get("method"), scope.get("path"), reason.lower())
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="raylm"')]})
        await send({"type": "http.response.body", "body": unauthorized_body(reason)})
