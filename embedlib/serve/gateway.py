"""The HTTP ingress: validation, auth, fan-out to the shard searchers, merge, docs join.

Every error is JSON `{"error": {"code", "message"}}` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import posixpath
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fsspec.core import url_to_fs
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError

from embedlib import __version__
from embedlib.documents import TEXT_HASH
from embedlib.index.reader import (
    DocsLookup,
    Hit,
    QueryError,
    combine,
    merge_topk,
    prepare_queries,
)
from embedlib.recommend import Recommender, RecommendError
from embedlib.serve.deployments import (
    SearchTask,
    ShardSet,
    encode_batches,
    group_tasks,
    query_encoder,
    scatter,
)
from embedlib.serve.filters import FilterError
from embedlib.serve.schemas import (
    MAX_BATCH_VECTORS,
    BatchSearchRequest,
    DeleteRequest,
    EmbeddingsRequest,
    RecommendRequest,
    SearchRequest,
    TextItem,
    UpsertRequest,
    VectorBatchRequest,
    VectorItem,
    parse_batch,
)
from embedlib.store import read_json

log = logging.getLogger(__name__)
api = FastAPI(title="embedlib", version=__version__, docs_url="/docs", openapi_url="/openapi.json")
OPEN_ROUTES = {"/healthz", "/readyz"}
ROW_FIELDS = {"text", "metadata", "vector"}  # fields read from the docs tables' rows
INLINE_SEARCH_ROWS = 16  # smaller searches run on the event loop, larger ones in a thread


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson: a 250-query batch answer in ~0.3 ms instead of ~2 ms."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


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
        local = config.get("local_shards")  # placement "gateway": shards and model live here
        self.local = (
            ShardSet(version_path, list(local), config.get("storage_options"))
            if local is not None
            else None
        )
        model = self.manifest.get("model") if self.manifest.get("text_model") else None
        self.local_encoder = query_encoder(model) if local is not None and model else None
        self.encoder = encoder
        self.api_key: str | None = config.get("api_key") or None
        self.timeout_s = float(config.get("request_timeout_s", 30.0))
        self.max_body_bytes = int(config.get("max_body_bytes", 16 * 1024 * 1024))
        self.metric = str(self.manifest["metric"])
        self.dim = int(self.manifest["dim"])
        self.stats = Metrics()
        self.version = str(config.get("version", ""))
        self.app_options: dict[str, Any] | None = config.get("app")
        recommender = config.get("recommender")
        self.recommender = (
            Recommender(recommender, config.get("storage_options")) if recommender else None
        )
        model = self.manifest.get("model") or {}
        self.model_name = model.get("name")
        self.model_names = {
            n for n in (self.model_name, posixpath.basename(self.model_name or "")) if n
        }

    def _metadata_columns(self) -> set[str]:
        text = self.manifest.get("text_column")
        cols: set[str] = set()
        for docs in self.lookup.docs:
            cols |= {c for c in docs.columns if c not in ("_iid", "vector", TEXT_HASH, text)}
        return cols

    # -- plumbing ---------------------------------------------------------------------------

    async def _answer(
        self,
        request: Request,
        route: str,
        work: Callable[[Any], Awaitable[Any]],
        parse: Callable[[Any], Any] | None = None,
    ) -> Any:
        start = time.perf_counter()
        try:
            self._authorize(request, route)
            body = await self._body(request, parse) if parse is not None else None
            result = await asyncio.wait_for(work(body), timeout=self.timeout_s)
            response = (
                result
                if isinstance(result, JSONResponse | PlainTextResponse)
                else FastJSONResponse(result)
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

    async def _body(self, request: Request, parse: Callable[[Any], Any]) -> Any:
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
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}") from e
        try:
            return parse(data)
        except ValidationError as e:
            raise ApiError(422, "validation_error", _validation_message(e)) from e

    # -- search -----------------------------------------------------------------------------

    async def _encode(self, texts: list[str]) -> np.ndarray:
        if self.local_encoder is not None:
            return await self._encode_here(texts)
        if self.encoder is None:
            raise ApiError(
                400, "no_text_model",
                "this index was built from vectors without a text model: query it with 'vector' or ids, not text",
            )  # fmt: skip
        return await self.encoder.encode.remote(texts)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0)
    async def _encode_here(self, batches: list[list[str]]) -> list[np.ndarray]:
        """The texts of requests that arrived while the model was busy, in one call, off
        the event loop (vector queries go on meanwhile); one call at a time."""
        return await asyncio.to_thread(encode_batches, self.local_encoder, batches)

    async def _count_tokens(self, texts: list[str]) -> int:
        if self.local_encoder is not None:
            return int(self.local_encoder.token_lengths(texts).sum())
        assert self.encoder is not None  # _encode refused otherwise
        return int(await self.encoder.count_tokens.remote(texts))

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

    async def _search_many(self, reqs: list[SearchRequest]) -> list[dict[str, Any]]:
        """Answer queries together: one search per group of queries with the same
        parameters, one docs lookup per group of queries that want the same fields."""
        start = time.perf_counter()
        for req in reqs:
            self._check_filter(req.filter)
        if any(req.vector is None for req in reqs):  # text to encode: let it batch
            queries = list(await asyncio.gather(*(self._query_vector(r) for r in reqs)))
        else:  # vectors only: no task per query, one conversion for the batch
            matrix = self._vector_rows([r.vector or [] for r in reqs])
            queries = [(row, set()) for row in matrix]
        return await self._search_queries(reqs, queries, start)

    async def _search_queries(
        self,
        reqs: list[SearchRequest],
        queries: list[tuple[np.ndarray, set[int]]],
        start: float,
    ) -> list[dict[str, Any]]:
        """Search each request's query vector, leaving out its excluded internal ids."""
        encoded = time.perf_counter()
        for vector, _ in queries:
            if np.shape(vector) != (self.dim,):
                raise QueryError(
                    f"query vectors have dimension {np.size(vector)}; the index has {self.dim}"
                )
        prepared = prepare_queries(  # all at once: vectorized over the batch
            np.stack([np.asarray(vector, dtype=np.float32) for vector, _ in queries]),
            dim=self.dim,
            metric=self.metric,
        )
        first = reqs[0]
        if all(  # the common batch: one search for all, no per-query task to group
            not r.filter and not excluded and (r.k, r.nprobe, r.ef_search) == (first.k, first.nprobe, first.ef_search)
            for r, (_, excluded) in zip(reqs, queries, strict=True)
        ):  # fmt: skip
            task = SearchTask(vectors=prepared, k=first.k, **self._search_params(first))
            d, i = await self._search_task(task)
            searched = time.perf_counter()
            pairs = _hit_pairs(d, i)
        else:
            tasks = [
                SearchTask(
                    vectors=prepared[n : n + 1],
                    k=req.k + len(excluded),
                    filter=req.filter,
                    **self._search_params(req),
                )
                for n, (req, (_, excluded)) in enumerate(zip(reqs, queries, strict=True))
            ]
            groups = group_tasks(tasks)
            found = scatter(
                tasks, groups, await asyncio.gather(*(self._search_task(t) for _, t in groups))
            )
            searched = time.perf_counter()
            pairs = [
                [
                    (s, n)
                    for s, n in zip(d[0].tolist(), i[0].tolist(), strict=True)
                    if n >= 0 and n not in excluded
                ][: req.k]
                for req, (_, excluded), (d, i) in zip(reqs, queries, found, strict=True)
            ]
        results = self._results(reqs, pairs)
        end = time.perf_counter()
        timing = {
            "encode": round((encoded - start) * 1000, 3),
            "search": round((searched - encoded) * 1000, 3),
            "total": round((end - start) * 1000, 3),
        }
        return [{"results": r, "metric": self.metric, "timing_ms": timing} for r in results]

    async def _search_task(self, task: SearchTask) -> tuple[np.ndarray, np.ndarray]:
        """Every shard searched for one (stacked) task, the top k merged."""
        if self.local is not None:
            if len(task.vectors) <= INLINE_SEARCH_ROWS and not task.filter:
                return self.local.search_one(task)  # microseconds: no thread hop
            return await asyncio.to_thread(self.local.search_one, task)
        parts = await asyncio.gather(*(_with_retry(s.search, task) for s in self.searchers))
        return merge_topk(parts, task.k, self.metric)

    def _results(
        self, reqs: list[SearchRequest], pairs: list[list[tuple[float, int]]]
    ) -> list[list[dict[str, Any]]]:
        """The result rows of each query; the docs are read once per set of fields asked."""
        by_include: dict[tuple[str, ...], list[int]] = {}
        for n, req in enumerate(reqs):
            by_include.setdefault(tuple(sorted(set(req.include))), []).append(n)
        out: list[list[dict[str, Any]]] = [[] for _ in reqs]
        for include, members in by_include.items():
            rows = self._rows([p for m in members for p in pairs[m]], include)
            for m, part in zip(members, _split(rows, [pairs[m] for m in members]), strict=True):
                out[m] = part
        return out

    def _rows(
        self, flat: list[tuple[float, int]], include: tuple[str, ...]
    ) -> list[dict[str, Any]]:
        """Result rows of (score, internal id) hits, the docs read once for them all."""
        if ROW_FIELDS & set(include):
            return [_row(h, include) for h in self.lookup.hits(flat, include)]
        # ids only: from the ids held in memory, no Hit objects
        ids = self.lookup.string_ids(np.array([i for _, i in flat], dtype=np.int64))
        return [{"id": i, "score": s} for i, (s, _) in zip(ids, flat, strict=True)]

    async def _search_vector_batch(self, body: VectorBatchRequest) -> dict[str, Any]:
        """One search for all the vectors of a batch that shares its parameters."""
        start = time.perf_counter()
        self._check_filter(body.filter)
        task = SearchTask(
            vectors=prepare_queries(self._batch_matrix(body), dim=self.dim, metric=self.metric),
            k=body.k,
            filter=body.filter,
            **self._search_params(body),
        )
        decoded = time.perf_counter()
        pairs = _hit_pairs(*await self._search_task(task))
        searched = time.perf_counter()
        rows = self._rows([p for ps in pairs for p in ps], tuple(sorted(set(body.include))))
        timing = {
            "decode": round((decoded - start) * 1000, 3),
            "search": round((searched - decoded) * 1000, 3),
            "total": round((time.perf_counter() - start) * 1000, 3),
        }
        return {"results": _split(rows, pairs), "metric": self.metric, "timing_ms": timing}

    def _vector_rows(self, rows: list[list[float]]) -> np.ndarray:
        """Query vectors given as rows of floats, checked for the index's dimension."""
        dims = {len(v) for v in rows}
        if dims != {self.dim}:
            raise QueryError(
                f"query vectors have dimension {', '.join(map(str, sorted(dims)))}; the "
                f"index has {self.dim}"
            )
        return np.asarray(rows, dtype=np.float32)

    def _search_params(self, req: SearchRequest | VectorBatchRequest) -> dict[str, Any]:
        """A request's nprobe / efSearch, or the index's tuned defaults."""
        defaults = self.manifest.get("search_params", {})
        return {
            "nprobe": req.nprobe or defaults.get("nprobe"),
            "ef_search": req.ef_search or defaults.get("efSearch"),
        }

    def _batch_matrix(self, body: VectorBatchRequest) -> np.ndarray:
        """The batch's query vectors as an (n, dim) float32 matrix."""
        if isinstance(body.vectors, list):
            return self._vector_rows(body.vectors)
        try:
            raw = base64.b64decode(body.vectors, validate=True)
        except binascii.Error as e:
            raise QueryError(f"vectors is not valid base64: {e}") from None
        row_bytes = 4 * self.dim
        if not raw or len(raw) % row_bytes:
            raise QueryError(
                f"vectors holds {len(raw)} bytes, not a whole number of {self.dim}-d float32 "
                f"rows ({row_bytes} bytes each): send little-endian float32 values, row after row"
            )
        if len(raw) // row_bytes > MAX_BATCH_VECTORS:
            raise QueryError(f"at most {MAX_BATCH_VECTORS} vectors per request")
        return np.frombuffer(raw, dtype="<f4").reshape(-1, self.dim)

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
        tokens = await self._count_tokens(texts)
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

    async def _recommend(self, req: RecommendRequest) -> dict[str, Any]:
        """Items for a user: the item index searched with the user's vector, the items
        the user has left out; an unknown user gets the popular items, said so."""
        rec = self.recommender
        if rec is None:
            raise ApiError(
                404,
                "no_recommender",
                "this server has no recommender: serve a recommender's index with "
                "`embedlib serve OUT/index --recommender OUT`",
            )
        try:
            rec.check_k(req.k)
        except RecommendError as e:
            raise ApiError(422, "validation_error", str(e)) from e
        found = rec.user(req.user)
        if found is None:
            return rec.popular_answer(req.user, req.k)
        vector, seen = found
        excluded = {self.lookup.iid_of(item) for item in seen}
        search = SearchRequest(vector=vector.tolist(), k=req.k, include=req.include)
        start = time.perf_counter()
        answer = (await self._search_queries([search], [(vector, excluded)], start))[0]
        return {"user": req.user, "results": answer["results"], "fallback": None,
                "timing_ms": answer["timing_ms"]}  # fmt: skip

    async def _write(self, upserts: list[Any], deletes: list[str]) -> Any:
        """Apply small changes through the versioned update path (`update_index`, the lock
        included), then switch the app to the new version as /v1/admin/reload does."""
        import pyarrow as pa

        from embedlib.exceptions import EmbedlibError
        from embedlib.index.lock import IndexLockedError
        from embedlib.index.update import update_index
        from embedlib.options import RunOptions
        from embedlib.serve.app import redeploy

        if self.api_key is None:
            raise ApiError(403, "writes_disabled", "writes need an API key: start the server "
                           "with EMBEDLIB_API_KEY set")  # fmt: skip
        if self.app_options is None:
            raise ApiError(
                409, "not_updatable", "this application was not started by embedlib serve"
            )
        text = self.manifest.get("text_column") or "text"
        table = (
            pa.Table.from_pylist([{"id": d.id, text: d.text, **d.metadata} for d in upserts])
            if upserts
            else None
        )
        options = self.app_options.get("storage_options") or {}
        try:
            report = await asyncio.to_thread(
                update_index, self.app_options["index"], upserts=table, delete_ids=deletes,
                delta=True, wait_s=min(30.0, self.timeout_s / 2),
                run=RunOptions(runner="local", progress=False, storage_options=options),
            )  # fmt: skip
        except IndexLockedError as e:
            raise ApiError(409, "locked", str(e)) from e
        except EmbedlibError as e:
            raise ApiError(422, "invalid_update", str(e)) from e
        if report.version is not None:  # in the background: this replica is being replaced
            threading.Thread(target=redeploy, args=(self.app_options, report.version),
                             daemon=True).start()  # fmt: skip
        body = {"version": report.version, "previous": report.previous, "added": report.added,
                "changed": report.changed, "deleted": report.deleted,
                "switching": report.version is not None, "warnings": report.warnings}  # fmt: skip
        return JSONResponse(body, status_code=202 if report.version else 200)

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
        async def work(body: SearchRequest) -> Any:
            return (await self._search_many([body]))[0]

        return await self._answer(request, "/v1/search", work, SearchRequest.model_validate)

    @api.post("/v1/search/batch")
    async def search_batch(self, request: Request) -> Any:
        async def work(body: BatchSearchRequest | VectorBatchRequest) -> Any:
            if isinstance(body, VectorBatchRequest):
                return await self._search_vector_batch(body)
            answers = await self._search_many(body.queries)
            return {"results": [a["results"] for a in answers], "metric": self.metric}

        return await self._answer(request, "/v1/search/batch", work, parse_batch)

    @api.post("/v1/recommend")
    async def recommend(self, request: Request) -> Any:
        return await self._answer(
            request, "/v1/recommend", self._recommend, RecommendRequest.model_validate
        )

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> Any:
        return await self._answer(
            request, "/v1/embeddings", self._embeddings, EmbeddingsRequest.model_validate
        )

    @api.post("/v1/upsert")
    async def upsert(self, request: Request) -> Any:
        async def work(body: UpsertRequest) -> Any:
            return await self._write(body.documents, [])

        return await self._answer(request, "/v1/upsert", work, UpsertRequest.model_validate)

    @api.post("/v1/delete")
    async def delete(self, request: Request) -> Any:
        async def work(body: DeleteRequest) -> Any:
            return await self._write([], body.ids)

        return await self._answer(request, "/v1/delete", work, DeleteRequest.model_validate)

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


def _hit_pairs(d: np.ndarray, i: np.ndarray) -> list[list[tuple[float, int]]]:
    """Each query's (score, internal id) hits; tolist converts them all at once."""
    return [
        [(s, n) for s, n in zip(ds, ns, strict=True) if n >= 0]
        for ds, ns in zip(d.tolist(), i.tolist(), strict=True)
    ]


def _split(rows: list[dict[str, Any]], pairs: list[list[Any]]) -> list[list[dict[str, Any]]]:
    """Flat result rows cut back into one list per query."""
    out, start = [], 0
    for hits in pairs:
        out.append(rows[start : start + len(hits)])
        start += len(hits)
    return out


def _row(hit: Hit, include: tuple[str, ...]) -> dict[str, Any]:
    row: dict[str, Any] = {"id": hit.id, "score": hit.score}
    if "text" in include and hit.text is not None:
        row["text"] = hit.text
    if "metadata" in include:
        row["metadata"] = hit.metadata
    if "vector" in include:
        row["vector"] = hit.vector
    return row


async def _const(value: Any) -> Any:
    return value


# The routes above become methods of the deployment at import time, in the driver and in
# every replica alike (Serve's class-based views).
GatewayIngress = serve.ingress(api)(Gateway)
