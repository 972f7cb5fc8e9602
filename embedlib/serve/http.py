"""HTTP plumbing of the gateway, apart from its routes: the API key, body limits,
timeouts, metrics and the JSON error format, applied to every route by `GatewayRoute`.

Every error is JSON `{"error": {"code", "message"}}` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, cast

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from ray import serve
from starlette.exceptions import HTTPException
from starlette.types import Message

from embedlib.exceptions import (
    ApiError,
    FilterError,
    NoLexicalIndexError,
    NoTextModelError,
    QueryError,
)
from embedlib.search.deadline import deadline_in
from embedlib.search.query import validation_message
from embedlib.serve.metrics import RequestMetrics
from embedlib.serve.openapi import OPEN_ROUTES

log = logging.getLogger(__name__)
# routes that change what is served: the admin key only (EMBEDLIB_API_KEY), never the
# read key (EMBEDLIB_READ_KEY), which opens every other route
ADMIN_ROUTES = frozenset({
    "/v1/upsert", "/v1/collections/{collection}/upsert",
    "/v1/delete", "/v1/collections/{collection}/delete",
    "/v1/writes/{write_id}",
    "/v1/admin/reload", "/v1/collections/{collection}/reload",
})  # fmt: skip


class HttpSettings(Protocol):
    """What the plumbing needs from the gateway replica it runs in."""

    api_key: str | None
    read_key: str | None
    request_timeout_s: float
    max_body_bytes: int
    metrics: RequestMetrics
    default: str  # the default collection's name
    collections: Mapping[str, Any]  # the served collections, by name


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson: a 250-query batch answer in ~0.3 ms instead of ~2 ms."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class OrjsonRequest(Request):
    """A request whose JSON body orjson parses (NaN and 1e999 are not JSON numbers)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def current_settings() -> HttpSettings:
    """The gateway instance of this replica (Serve's class-based view)."""
    return cast(HttpSettings, serve.get_replica_context().servable_object)


class GatewayRoute(APIRoute):
    """A route that checks the API key and the body's size and type before the body is
    parsed, answers within the timeout, renders every error as JSON and counts the
    request in /metrics."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        path = self.path_format
        takes_body = self.body_field is not None or "requestBody" in (self.openapi_extra or {})

        async def route(request: Request) -> Response:
            settings = current_settings()
            start = time.perf_counter()
            try:
                if path not in OPEN_ROUTES:
                    _authorize(request, settings, admin=path in ADMIN_ROUTES)
                receive = request.receive
                if takes_body:
                    body = await _read_body(request, settings.max_body_bytes)
                    if body:
                        _require_json(request)
                    receive = _replay(body)
                with deadline_in(settings.request_timeout_s):  # seen by its threads' work
                    response = await asyncio.wait_for(
                        handler(OrjsonRequest(request.scope, receive)), settings.request_timeout_s
                    )
            except Exception as e:  # every error becomes a JSON answer (CancelledError passes)
                expected = _render(e, settings.request_timeout_s)
                if expected is None:  # unexpected: the log keeps it, the client gets an id
                    error_id = uuid.uuid4().hex[:16]
                    log.exception("request to %s failed: error id %s", path, error_id)
                response = expected or _internal_error(error_id)
            collection = (
                request.scope.get("path_params", {}).get("collection")
                or request.query_params.get("collection")
                or settings.default
            )
            if collection not in settings.collections:  # a made-up name: no label of its own
                collection = "unknown"
            settings.metrics.observe(
                path, collection, response.status_code, time.perf_counter() - start
            )
            return response

        return route


def _authorize(request: Request, settings: HttpSettings, *, admin: bool) -> None:
    """The admin key opens every route, the read key every route but the admin ones;
    with neither key set the server is open (writes still need a key: `_require_key`)."""
    api_key, read_key = settings.api_key, settings.read_key
    if api_key is None and read_key is None:
        return
    header = request.headers.get("authorization", "")
    token = (
        header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    )
    if token and api_key is not None and hmac.compare_digest(token.encode(), api_key.encode()):
        return
    if token and read_key is not None and hmac.compare_digest(token.encode(), read_key.encode()):
        if not admin:
            return
        raise ApiError(403, "admin_key_required",
                       "this route changes what is served: it needs the admin key "
                       "(EMBEDLIB_API_KEY), not the read key")  # fmt: skip
    if api_key is None and admin:  # no admin key at all: `_require_key` says so
        return
    raise ApiError(
        401, "unauthorized", "a valid API key is required: send 'Authorization: Bearer <key>'"
    )


def _require_json(request: Request) -> None:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the body must be JSON, sent with 'Content-Type: application/json' (got {kind or 'none'!r})",
        )


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body; over `limit` bytes, a 413. The rest is read and dropped, never
    kept: a client still sending would see its connection reset instead of the 413."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise ApiError(
            413, "body_too_large", f"the body is {size} bytes, over the limit of {limit}"
        )
    return b"".join(chunks)


def _replay(body: bytes) -> Callable[[], Coroutine[Any, Any, Message]]:
    """An ASGI receive that hands the body already read to FastAPI."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _internal_error(error_id: str) -> Response:
    """A 500 that says only an error id; the log holds the traceback under it (exception
    text can carry paths, data or a remote replica's traceback)."""
    return error_response(
        500, "internal_error", f"internal error; the server's log holds it as error id {error_id}"
    )


def _render(e: Exception, timeout_s: float) -> Response | None:
    """The answer for an expected error; None for any other (a 500)."""
    if isinstance(e, ApiError):
        return error_response(e.status, e.code, e.message)
    if isinstance(e, orjson.JSONDecodeError):  # a route that parses its own body
        return error_response(400, "invalid_json", f"the body is not valid JSON: {e}")
    if isinstance(e, ValidationError):  # ... and validates it with the contract's class
        return error_response(422, "validation_error", validation_message(e.errors()))
    if isinstance(e, RequestValidationError):
        errors = e.errors()
        if errors and errors[0].get("type") == "json_invalid":
            detail = (errors[0].get("ctx") or {}).get("error", "")
            return error_response(400, "invalid_json", f"the body is not valid JSON: {detail}")
        return error_response(422, "validation_error", validation_message(errors))
    if isinstance(e, TimeoutError):
        return error_response(504, "timeout", f"the request took longer than {timeout_s:g}s")
    if isinstance(e, NoTextModelError):
        return error_response(400, "no_text_model", str(e))
    if isinstance(e, NoLexicalIndexError):
        return error_response(422, "no_lexical_index", str(e))
    if isinstance(e, QueryError | FilterError):
        cause = getattr(e, "cause", None) or e  # raised in a searcher replica: Ray wraps it
        return error_response(422, "invalid_query", str(cause))
    if isinstance(e, HTTPException):
        return error_response(e.status_code, "http_error", str(e.detail))
    return None
