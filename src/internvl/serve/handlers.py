"""The HTTP plumbing the chat server (`app.py`) and the DvD vision server (`vision.py`) share, so that both
answer errors alike: OpenAI-shaped error bodies, statuses counted in `/metrics`, a client that leaves logged
as 499 rather than as a failure; and the two steps every request starts with, bearer auth and a bounded body.
"""

from __future__ import annotations

import hmac
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .metrics import Metrics
from .protocol import APIError, error_body

log = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI, metrics: Metrics, counted_path: str) -> None:
    """Answer every failure of `app` as an error body; refusals (`APIError`) and bugs (any other exception,
    a 500) on `counted_path`, the server's one working endpoint, count in `metrics.requests` by status."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        if request.url.path == counted_path:
            metrics.requests[e.status] += 1
        if e.status == 499:
            log.info("%s %s: %s", request.method, request.url.path, e.message)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(f"{e.detail}: {request.method} {request.url.path}", kind), e.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        if request.url.path == counted_path:
            metrics.requests[500] += 1
        return JSONResponse(error_body(f"internal server error: {type(e).__name__}: {e}", "server_error"), 500)


def check_auth(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(401, "missing or incorrect API key: send the header 'Authorization: Bearer <key>'",
                       code="invalid_api_key", type="authentication_error")


async def read_body(request: Request, limit: int) -> bytearray:
    """The request body, refusing oversized bodies before reading them whole; a client that disconnects
    before its body is complete ends the request as 499 (nobody is left to answer)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is {int(declared):,} bytes, over the server's limit of {limit:,}")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise APIError(413, f"the request body is over the server's limit of {limit:,} bytes")
    except ClientDisconnect:
        raise APIError(499, f"the client disconnected after sending {len(body):,} bytes of its request body",
                       code="client_disconnected") from None
    return body
