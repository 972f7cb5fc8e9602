"""The HTTP ingress: validation, auth, fan-out to the shard searchers, merge, docs join.

Every error is JSON `{"error": {"code", "message"}}` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import posixpath
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fsspec.core import url_to_fs
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError

from embedlib import __version__
from embedlib.index.reader import DocsLookup, QueryError, combine, merge_topk, prepare_queries
from embedlib.serve.deployments import SearchTask
from embedlib.serve.filters import FilterError
from embedlib.serve.schemas import (
    BatchSearchRequest,
    EmbeddingsRequest,
    SearchRequest,
    TextItem,
    VectorItem,
)
from embedlib.store import read_json

log = logging.getLogger(__name__)
api = FastAPI(title="embedlib", version=__version__, docs_url="/docs", openapi_url="/openapi.json")
OPEN_ROUTES = {"/healthz", "/readyz"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__")
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts)


class Metrics:
    """Request counts and latency per route, in Prometheus text format."""

    def __init__(self) -> None:
        self.count: dict[tuple[str, int], int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.requests: dict[str, int] = defaultdict(int)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.count[(route, status)] += 1
        self.seconds[route] += seconds
        self.requests[route] += 1

    def render(self) -> str:
        lines = [
            "# HELP embedlib_requests_total Requests by route and status.",
            "# TYPE embedlib_requests_total counter",
        ]
        for (route, status), n in sorted(self.count.items()):
            lines.append(f'embedlib_requests_total{{route="{route}",status="{status}"}} {n}')
        lines += [
            "# HELP embedlib_request_seconds Time spent answering requests, by route.",
            "# TYPE embedlib_request_seconds summary",
        ]
        for route in sorted(self.requests):
            lines.append(
                f'embedlib_request_seconds_sum{{route="{route}"}} {self.seconds[route]:.6f}'
            )
            lines.append(
                f'embedlib_request_seconds_count{{route="{route}"}} {self.requests[route]}'
            )
        return "\n".join(lines) + "\n"


class Gateway:
    """FastAPI ingress over the searcher (and encoder) deployments of one index version."""

    def __init__(
        self, version_path: str, searchers: list[Any], encoder: Any | None, config: dict[str, Any]
    ) -> None:
        fs, path = url_to_fs(version_path, **config.get("storage_options", {}))
        self.manifest: dict[str, Any] = read_json(fs, posixpath.join(path, "manifest.json"))
        self.lookup = DocsLookup(fs, path, self.manifest)
        self.metadata_columns = self._metadata_columns()
        self.searchers = searchers
        self.encoder = encoder
        self.api_key: str | None = config.get("api_key") or None
        self.timeout_s = float(config.get("request_timeout_s", 30.0))
        self.max_body_bytes = int(config.get("max_body_bytes", 16 * 1024 * 1024))
        self.metric = str(self.manifest["metric"])
        self.dim = int(self.manifest["dim"])
        self.stats = Metrics()
        self.version = str(config.get("version", ""))
        self.app_options: dict[str, Any] | None = config.get("app")
        model = self.manifest.get("model") or {}
        self.model_name = model.get("name")
        self.model_names = {
            n for n in (self.model_name, posixpath.basename(self.model_name or "")) if n
        }

    def _metadata_columns(self) -> set[str]:
        text = self.manifest.get("text_column")
        cols: set[str] = set()
        for docs in self.lookup.docs:
            cols |= {c for c in docs.columns if c not in ("_iid", "vector", text)}
        return cols

    # -- plumbing ---------------------------------------------------------------------------

    async def _answer(
        self, request: Request, route: str, work: Callable[[Any], Awaitable[Any]], parse: Any = None
    ) -> Any:
        start = time.perf_counter()
        try:
            self._authorize(request, route)
            body = await self._body(request, parse) if parse is not None else None
            result = await asyncio.wait_for(work(body), timeout=self.timeout_s)
            response = (
                result
                if isinstance(result, JSONResponse | PlainTextResponse)
                else JSONResponse(result)
            )
        except ApiError as e:
            response = error_response(e.status, e.code, e.message)
        except TimeoutError:
            response = error_response(
                504, "timeout", f"the request took longer than {self.timeout_s:.0f}s"
            )
        except (QueryError, FilterError) as e:
            cause = getattr(e, "cause", None) or e  # raised in a searcher: Ray wraps it
            response = error_response(422, "invalid_query", str(cause))
        except Exception as e:
            log.exception("request to %s failed", route)
            response = error_response(500, "internal_error", f"{type(e).__name__}: {e}")
        self.stats.observe(route, response.status_code, time.perf_counter() - start)
        return response

    def _authorize(self, request: Request, route: str) -> None:
        if self.api_key is None or route in OPEN_ROUTES:
            return
        header = request.headers.get("authorization", "")
        token = (
            header[7:]
            if header.lower().startswith("bearer ")
            else request.headers.get("x-api-key", "")
        )
        if not token or not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise ApiError(
                401,
                "unauthorized",
                "a valid API key is required: send 'Authorization: Bearer <key>'",
            )

    async def _body(self, request: Request, model: Any) -> Any:
        chunks, size = [], 0
        async for chunk in request.stream():  # read it all, keep at most the limit
            size += len(chunk)
            if size <= self.max_body_bytes:
                chunks.append(chunk)
        if size > self.max_body_bytes:
            raise ApiError(
                413,
                "body_too_large",
                f"the body is {size} bytes, over the limit of {self.max_body_bytes}",
            )
        raw = b"".join(chunks)
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}") from e
        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise ApiError(422, "validation_error", _validation_message(e)) from e

    # -- search -----------------------------------------------------------------------------

    async def _encode(self, texts: list[str]) -> np.ndarray:
        if self.encoder is None:
            raise ApiError(
                400, "no_text_model",
                "this index was built from vectors without a text model: query it with 'vector' or ids, not text",
            )  # fmt: skip
        return await self.encoder.encode.remote(texts)

    async def _query_vector(self, req: SearchRequest) -> tuple[np.ndarray, set[int]]:
        if req.query is not None:
            return (await self._encode([req.query]))[0], set()
        if req.vector is not None:
            return np.asarray(req.vector, dtype=np.float32), set()
        vectors, weights, excluded = [], [], set()
        for items, weight in ((req.positive, 1.0), (req.negative, -1.0)):
            for item in items:
                if isinstance(item, str):
                    iid = self.lookup.iid_of(item)
                    excluded.add(iid)
                    vectors.append(self.lookup.vector_of_iid(iid))
                elif isinstance(item, TextItem):
                    vectors.append((await self._encode([item.text]))[0])
                else:
                    assert isinstance(item, VectorItem)
                    vectors.append(
                        prepare_queries(np.asarray(item.vector), dim=self.dim, metric="dot")[0]
                    )
                weights.append(weight)
        return combine(vectors, weights), excluded

    def _check_filter(self, spec: dict[str, Any] | None) -> None:
        for column in spec or {}:
            if column not in self.metadata_columns:
                known = ", ".join(sorted(map(repr, self.metadata_columns))) or "none"
                raise FilterError(
                    f"cannot filter on {column!r}: the index has no such metadata column (it has {known})"
                )

    async def _search(self, req: SearchRequest) -> dict[str, Any]:
        start = time.perf_counter()
        self._check_filter(req.filter)
        vector, excluded = await self._query_vector(req)
        encoded = time.perf_counter()
        x = prepare_queries(vector, dim=self.dim, metric=self.metric)
        defaults = self.manifest.get("search_params", {})
        k = req.k + len(excluded)
        task = SearchTask(
            vectors=x,
            k=k,
            nprobe=req.nprobe or defaults.get("nprobe"),
            ef_search=req.ef_search or defaults.get("efSearch"),
            filter=req.filter,
        )
        parts = await asyncio.gather(*(_with_retry(s.search, task) for s in self.searchers))
        d, i = merge_topk(parts, k, self.metric)
        searched = time.perf_counter()
        pairs = [
            (float(s), int(n))
            for s, n in zip(d[0], i[0], strict=True)
            if n >= 0 and int(n) not in excluded
        ][: req.k]
        hits = self.lookup.hits(pairs, req.include)
        results = []
        for h in hits:
            row: dict[str, Any] = {"id": h.id, "score": h.score}
            if "text" in req.include and h.text is not None:
                row["text"] = h.text
            if "metadata" in req.include:
                row["metadata"] = h.metadata
            if "vector" in req.include:
                row["vector"] = h.vector
            results.append(row)
        end = time.perf_counter()
        return {
            "results": results,
            "metric": self.metric,
            "timing_ms": {
                "encode": round((encoded - start) * 1000, 3),
                "search": round((searched - encoded) * 1000, 3),
                "total": round((end - start) * 1000, 3),
            },
        }

    # -- other routes -----------------------------------------------------------------------

    async def _ready(self) -> bool:
        calls = [s.ping.remote() for s in self.searchers]
        if self.encoder is not None:
            calls.append(self.encoder.ping.remote())
        try:
            await asyncio.wait_for(asyncio.gather(*calls), timeout=5)
        except (TimeoutError, RuntimeError):
            return False
        return True

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "indexes": [
                {
                    "model": self.model_name,
                    "text_model": bool(m.get("text_model")),
                    "dim": m["dim"],
                    "metric": m["metric"],
                    "ntotal": m["ntotal"],
                    "shards": len(m["shards"]),
                    "factory": m["factory"],
                    "search_params": m.get("search_params", {}),
                    "recall_at_10": m.get("recall_at_10"),
                    "created_at": m.get("created_at"),
                    "version": self.version,
                    "metadata_columns": sorted(self.metadata_columns),
                }
            ]
        }

    async def _embeddings(self, req: EmbeddingsRequest) -> dict[str, Any]:
        if req.model is not None and req.model not in self.model_names:
            known = ", ".join(sorted(self.model_names)) or "none (this index has no text model)"
            raise ApiError(
                404, "model_not_found", f"model {req.model!r} is not served here; known: {known}"
            )
        if req.dimensions is not None and req.dimensions != self.dim:
            raise ApiError(422, "validation_error", f"dimensions must be {self.dim} for this model")
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        vectors = await self._encode(texts)
        assert self.encoder is not None  # _encode refused otherwise
        tokens = await self.encoder.count_tokens.remote(texts)
        data = []
        for n, v in enumerate(vectors):
            v32 = np.asarray(v, dtype="<f4")
            embedding: Any = (
                base64.b64encode(v32.tobytes()).decode()
                if req.encoding_format == "base64"
                else v32.tolist()
            )
            data.append({"object": "embedding", "index": n, "embedding": embedding})
        return {
            "object": "list",
            "data": data,
            "model": req.model or posixpath.basename(self.model_name or ""),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    # -- routes -----------------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self, request: Request) -> Any:
        return await self._answer(request, "/healthz", lambda _: _const({"status": "ok"}))

    @api.get("/readyz")
    async def readyz(self, request: Request) -> Any:
        async def work(_: Any) -> Any:
            if await self._ready():
                return {"ready": True}
            raise ApiError(503, "not_ready", "not every shard answers yet")

        return await self._answer(request, "/readyz", work)

    @api.get("/v1/indexes")
    async def indexes(self, request: Request) -> Any:
        return await self._answer(request, "/v1/indexes", lambda _: _const(self.info()))

    @api.post("/v1/search")
    async def search(self, request: Request) -> Any:
        return await self._answer(request, "/v1/search", self._search, SearchRequest)

    @api.post("/v1/search/batch")
    async def search_batch(self, request: Request) -> Any:
        async def work(body: BatchSearchRequest) -> Any:
            answers = await asyncio.gather(*(self._search(q) for q in body.queries))
            return {"results": [a["results"] for a in answers], "metric": self.metric}

        return await self._answer(request, "/v1/search/batch", work, BatchSearchRequest)

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> Any:
        return await self._answer(request, "/v1/embeddings", self._embeddings, EmbeddingsRequest)

    @api.post("/v1/admin/reload")
    async def reload(self, request: Request) -> Any:
        async def work(_: Any) -> Any:
            from embedlib.serve.app import current_version, redeploy

            if self.app_options is None:
                raise ApiError(
                    409, "not_reloadable", "this application was not started by embedlib serve"
                )
            now = await asyncio.to_thread(
                current_version, self.app_options["index"], self.app_options.get("storage_options")
            )
            if now == self.version:
                return {"reloading": False, "version": now}
            # deploy in the background: this replica is among those being replaced
            threading.Thread(target=redeploy, args=(self.app_options, now), daemon=True).start()
            return JSONResponse(
                {"reloading": True, "from": self.version, "to": now}, status_code=202
            )

        return await self._answer(request, "/v1/admin/reload", work)

    @api.get("/metrics")
    async def metrics(self, request: Request) -> Any:
        return await self._answer(
            request, "/metrics", lambda _: _const(PlainTextResponse(self.stats.render()))
        )


async def _with_retry(method: Any, *args: Any, attempts: int = 3) -> Any:
    """Call a deployment; when the replica died mid-call, Serve routes the retry to a live one."""
    for attempt in range(attempts):
        try:
            return await method.remote(*args)
        except RayActorError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


async def _const(value: Any) -> Any:
    return value


# The routes above become methods of the deployment at import time, in the driver and in
# every replica alike (Serve's class-based views).
GatewayIngress = serve.ingress(api)(Gateway)
