"""The HTTP API: FastAPI routes over the served collections, and nothing else.

Each route validates its declared body (schemas.py), asks the addressed collection's one
`Searcher` through its placement (collection.py, placement.py), and renders the answer.
`/v1/collections/{name}/...` address a collection by name; the un-prefixed routes
(`/v1/search`, ...) the default one (the first; `?collection=NAME` works there too). The API key, body limits,
timeouts, metrics and the JSON error format are applied to every route by
`http.GatewayRoute`; index writes run as Ray work (writes.py); switching to another
version is the `switch` callable the application builder hands in.
"""

from __future__ import annotations

import asyncio
import base64
import posixpath
import time
from collections.abc import Callable, Mapping
from functools import cache, partial
from html import escape as html_escape
from importlib import resources
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import RayServeException

from embedlib._version import __version__
from embedlib.exceptions import (
    ApiError,
    QueryError,
    RecommendError,
    SourceError,
)
from embedlib.index.store.layout import has_version, published_version
from embedlib.index.store.leases import LeaseRenewer
from embedlib.models.encoders import QueryModels
from embedlib.search.query import Query, hits_json
from embedlib.serve.collection import ServedCollection
from embedlib.serve.config import GatewayConfig
from embedlib.serve.http import FastJSONResponse, GatewayRoute
from embedlib.serve.metrics import RequestMetrics, metrics_endpoints, scrape
from embedlib.serve.openapi import ServedFacts, declared_body, openapi_with_key
from embedlib.serve.schemas import (
    MAX_BATCH_VECTORS,
    RESERVED_COLUMNS,
    BatchRequest,
    BatchSearchResponse,
    CollectionsResponse,
    DeleteRequest,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorResponse,
    IndexesResponse,
    Ready,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    SearchResponse,
    Status,
    UpsertDocument,
    UpsertRequest,
    VectorBatchRequest,
    WriteAccepted,
    WriteStatus,
    check_hits,
    check_work,
)
from embedlib.serve.writes import keeper
from embedlib.sets.columns import fitted_schema, unify_schemas
from embedlib.uses.recommend import Recommender

PAGE_HEADERS = {  # the page runs only its own script file (no inline script)
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; "
    "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
EMBED_SLICE = 64  # /v1/embeddings encodes this many texts per call
KEEPER_WAIT_S = 10.0  # a call waits this long for a keeper Ray is restarting (then 503)


@cache
def static_file(name: str) -> str:
    """A file of the search page (search.html, search.js), read from the package once."""
    return (resources.files("embedlib.serve") / "static" / name).read_text("utf-8")


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in (
        (400, "the body is not JSON, or text sent to an index without a text model"),
        (401, "a valid API key is required"),
        (413, "the body is over the size limit"),
        (415, "the body is not sent as application/json"),
        (422, "the request does not validate, or asks what the index cannot answer"),
        (504, "the request took longer than the timeout"),
    )
}
KEEPER_RESTARTING: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "the keeper is restarting; send it again"},
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorResponse, "description": "too many writes are waiting"},
    **KEEPER_RESTARTING,
}
RELOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such version"},
    409: {
        "model": ErrorResponse,
        "description": "the version cannot be served (damaged); the served one stays",
    },
    **KEEPER_RESTARTING,
}
api = FastAPI(
    title="embedlib",
    version=__version__,
    description="k-NN search over a sharded FAISS index, served by Ray Serve.",
    # no Swagger UI: it loads its script from a CDN; /openapi.json (a route below, behind
    # the read key) feeds any OpenAPI viewer or client generator
    docs_url=None,
    openapi_url=None,
    responses=ERRORS,
)
# every route is a GatewayRoute, registered on the app itself: included routers and
# per-route dependencies cost ~40 us of matching and dependency solving per request
api.router.route_class = GatewayRoute
api.openapi = partial(openapi_with_key, api)  # type: ignore[method-assign]


class Gateway:
    """The ingress of the served collections (one per replica)."""

    def __init__(
        self,
        config: GatewayConfig,
        parts: dict[str, tuple[list[Any], Any | None]],
        switch: Callable[[Mapping[str, str]], None] | None = None,
    ) -> None:
        o = config.options
        self.config = config
        self.api_key = o.api_key
        self.read_key = o.read_key
        self.request_timeout_s = o.request_timeout_s
        self.max_body_bytes = o.max_body_bytes
        self.metrics = RequestMetrics(_app_name())
        self.models = QueryModels()  # one query model per distinct fingerprint
        self.collections = {
            s.name: ServedCollection(o, s, *parts[s.name], self.models) for s in config.served
        }
        self.default = config.served[0].name
        # leases on the versions served: gc never deletes a version a replica reads
        self.leases = LeaseRenewer(o.storage_options)
        for s in config.served:
            self.leases.hold(posixpath.dirname(posixpath.dirname(s.version_url.rstrip("/"))),
                             posixpath.basename(s.version_url.rstrip("/")))  # fmt: skip
        self.recommender = Recommender(o.recommender, o.storage_options) if o.recommender else None
        self.switch = switch  # deploys other versions of this application
        api.openapi_schema = None  # this replica's document states what it serves
        api.openapi = partial(openapi_with_key, api, self._facts())  # type: ignore[method-assign]
        self.keeper: Any = None

    def _facts(self) -> ServedFacts:
        """What this replica serves, for its OpenAPI document."""
        served = list(self.collections.values())
        dims = {c.manifest.dim for c in served}
        metadata: dict[str, pa.DataType] = {}
        for c in served:
            metadata |= c.searcher.docs.metadata_types
        models = {n for c in served if c.manifest.text_model for n in c.model_names}
        return ServedFacts(
            collections=tuple(self.collections),
            models=tuple(sorted(models)),
            dim=dims.pop() if len(dims) == 1 else None,
            metadata=metadata,
            reserved=RESERVED_COLUMNS | {c.manifest.text_column or "text" for c in served},
            cosine=all(c.metric == "cosine" for c in served),
            image_queries=any(c.image_queries for c in served),
            lexical=any(c.manifest.lexical for c in served),
            recommender=self.recommender is not None,
        )

    def __del__(self) -> None:
        """Serve calls it when the replica stops: its leases go (else they lapse)."""
        leases = getattr(self, "leases", None)
        if leases is not None:
            leases.stop()

    def collection(self, name: str | None) -> ServedCollection:
        """The collection named (None: the default); 404 naming those that exist."""
        if name is None:
            return self.collections[self.default]
        found = self.collections.get(name)
        if found is None:
            raise ApiError(404, "no_such_collection", f"no collection {name!r} here; the "
                           f"collections are {', '.join(sorted(self.collections))}")  # fmt: skip
        return found

    # -- search ---------------------------------------------------------------------------

    @api.post("/v1/search", response_model=SearchResponse, openapi_extra=declared_body(Query))
    @api.post("/v1/collections/{collection}/search", response_model=SearchResponse,
              openapi_extra=declared_body(Query))  # fmt: skip
    async def search(self, request: Request, collection: str | None = None) -> Response:
        """The k nearest documents of one query: text, a vector, or vector arithmetic."""
        c = self.collection(collection)
        body = Query.model_validate(await request.json())  # a 422 when it does not validate
        answers = await c.run([body])
        return FastJSONResponse(
            {"results": hits_json(answers.hits)[0], "metric": c.metric,
             "timing_ms": answers.timing_ms}
        )  # fmt: skip

    @api.post("/v1/search/batch", response_model=BatchSearchResponse)
    @api.post("/v1/collections/{collection}/search/batch", response_model=BatchSearchResponse)
    async def search_batch(self, body: BatchRequest, collection: str | None = None) -> Response:
        """Many searches in one request: `queries` (each with its own parameters), or
        `vectors` (one search for all, sharing one set of parameters)."""
        c = self.collection(collection)
        if isinstance(body, VectorBatchRequest):
            answers = await c.run_batch(_batch_matrix(c, body), body)
            timing: dict[str, float] | None = answers.timing_ms
        else:
            answers = await c.run(body.queries)
            timing = None
        return FastJSONResponse({"results": hits_json(answers.hits), "metric": c.metric,
                                 **({"timing_ms": timing} if timing else {})})  # fmt: skip

    @api.post("/v1/recommend", response_model=RecommendResponse)
    async def recommend(self, body: RecommendRequest) -> Response:
        """Items for a user, the items the user already has left out; an unknown user
        gets the popular items, and is told so (the default collection's recommender)."""
        rec = self.recommender
        if rec is None:
            raise ApiError(404, "no_recommender", "this server has no recommender: serve a "
                           "recommender's index with `embedlib serve OUT/index --recommender OUT`")  # fmt: skip
        try:
            rec.check_k(body.k)
        except RecommendError as e:
            raise ApiError(422, "validation_error", str(e)) from e
        found = rec.user(body.user)
        if found is None:
            return FastJSONResponse(rec.popular_answer(body.user, body.k))
        vector, seen = found
        query = Query(vector=vector, k=body.k, include=body.include, exclude=seen)
        answers = await self.collection(None).run([query])
        return FastJSONResponse({"user": body.user, "results": hits_json(answers.hits)[0],
                                 "fallback": None,
                                 "timing_ms": answers.timing_ms})  # fmt: skip

    # -- embeddings -----------------------------------------------------------------------

    @api.post("/v1/embeddings", response_model=EmbeddingsResponse)
    async def embeddings(self, body: EmbeddingsRequest) -> Response:
        """OpenAI's embeddings API, with the served models (`model` names one; without
        it, the default collection's)."""
        c = self._by_model(body.model)
        if body.dimensions is not None and body.dimensions != c.manifest.dim:
            raise ApiError(
                422, "validation_error", f"dimensions must be {c.manifest.dim} for this model"
            )
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        # in slices: a request that times out stops at the next slice, freeing the model
        vectors = np.concatenate([await c.placement.encode(texts[a : a + EMBED_SLICE])
                                  for a in range(0, len(texts), EMBED_SLICE)])  # fmt: skip
        tokens = await c.placement.count_tokens(texts)
        data = []
        for n, v in enumerate(vectors):
            v32 = np.asarray(v, dtype="<f4")
            embedding: Any = (
                base64.b64encode(v32.tobytes()).decode()
                if body.encoding_format == "base64"
                else v32.tolist()
            )
            data.append({"object": "embedding", "index": n, "embedding": embedding})
        model = body.model or posixpath.basename(c.manifest.model.name if c.manifest.model else "")
        return FastJSONResponse({"object": "list", "data": data, "model": model,
                                 "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})  # fmt: skip

    def _by_model(self, model: str | None) -> ServedCollection:
        """The collection whose text model is `model` (None: the default collection)."""
        if model is None:
            return self.collection(None)
        for c in self.collections.values():
            if c.manifest.text_model and model in c.model_names:
                return c
        known = sorted({n for c in self.collections.values() if c.manifest.text_model
                        for n in c.model_names})  # fmt: skip
        raise ApiError(404, "model_not_found", f"model {model!r} is not served here; known: "
                       f"{', '.join(known) or 'none (no collection has a text model)'}")  # fmt: skip

    # -- writes and versions --------------------------------------------------------------

    @api.post("/v1/upsert", response_model=WriteAccepted, status_code=202,
              responses=WRITE_ERRORS)  # fmt: skip
    @api.post("/v1/collections/{collection}/upsert", response_model=WriteAccepted,
              status_code=202, responses=WRITE_ERRORS)  # fmt: skip
    async def upsert(self, body: UpsertRequest, collection: str | None = None) -> Response:
        """Add or replace documents (by id; metadata-only changes included): a new
        version, then the app switches to it. Answers 202 with the write's id at once."""
        return await self._write(self.collection(collection), body.documents, [])

    @api.post("/v1/delete", response_model=WriteAccepted, status_code=202,
              responses=WRITE_ERRORS)  # fmt: skip
    @api.post("/v1/collections/{collection}/delete", response_model=WriteAccepted,
              status_code=202, responses=WRITE_ERRORS)  # fmt: skip
    async def delete(self, body: DeleteRequest, collection: str | None = None) -> Response:
        """Remove documents: a new version, then the app switches to it. Answers 202 with
        the write's id at once."""
        return await self._write(self.collection(collection), [], body.ids)

    async def _write(
        self, c: ServedCollection, documents: list[UpsertDocument], deletes: list[str]
    ) -> Response:
        """Hand the write to the application's keeper (outside this replica), which runs
        it as a Ray task and switches the app to the version it publishes; 202 with the
        write's id at once."""
        self._require_key("writes")
        if documents:
            _check_fits(c, documents)
        record = await self._call_keeper(
            "submit", c.name, [d.model_dump() for d in documents], deletes,
            c.manifest.text_column or "text",
        )  # fmt: skip
        if record is None:
            raise ApiError(429, "too_many_writes", "too many writes are waiting; send it again "
                           "once some are done (GET /v1/writes/{id})")  # fmt: skip
        record["status_url"] = f"/v1/writes/{record['write_id']}"
        return JSONResponse(record, status_code=202)

    @api.get("/v1/writes/{write_id}", response_model=WriteStatus, responses=KEEPER_RESTARTING)
    async def write_status(self, write_id: str) -> Response:
        """A write's state: queued, running, done (with the version it published and
        whether the app switched to it) or failed (with the error)."""
        self._require_key("writes")
        record = await self._call_keeper("status", write_id)
        if record is None:
            raise ApiError(404, "no_such_write", f"no write {write_id!r} is known here")
        return JSONResponse(record)

    @api.post("/v1/admin/reload", response_model=ReloadResponse, responses=RELOAD_ERRORS)
    @api.post("/v1/collections/{collection}/reload", response_model=ReloadResponse,
              responses=RELOAD_ERRORS)  # fmt: skip
    async def reload(
        self, body: ReloadRequest | None = None, collection: str | None = None
    ) -> Response:
        """Serve another version without downtime: the one named (a rollback is allowed),
        else CURRENT's."""
        self._require_key("admin routes")
        c = self.collection(collection)
        so = self.config.options.storage_options
        if body is not None and body.version is not None:
            target = body.version
            if not await asyncio.to_thread(has_version, c.index, target, so):
                raise ApiError(404, "no_such_version", f"{c.index!r} holds no version {target!r}")
        else:
            target = await asyncio.to_thread(published_version, c.index, so)
        if target == c.version:
            return JSONResponse({"reloading": False, "version": target})
        problem = await self._call_keeper("verify", c.name, target)
        if problem is not None:  # the served version stays
            raise ApiError(409, "version_damaged", problem)
        # the keeper deploys it (this replica is among those replaced) and keeps its record
        record = await self._call_keeper("reload", c.name, target)
        return JSONResponse({"reloading": True, "from": c.version, "to": target,
                             "write_id": record["write_id"],
                             "status_url": f"/v1/writes/{record['write_id']}"},
                            status_code=202)  # fmt: skip

    def _require_key(self, what: str) -> None:
        """Writes and admin routes: refused without a server key, or outside `embedlib serve`."""
        if self.api_key is None:
            raise ApiError(403, "key_required", f"{what} need an API key: start the server "
                           "with EMBEDLIB_API_KEY set")  # fmt: skip
        if self.switch is None:
            raise ApiError(
                409, "not_updatable", "this application was not started by embedlib serve"
            )

    async def _call_keeper(self, method: str, *args: Any) -> Any:
        """Call the keeper. While Ray restarts it, wait for it (up to KEEPER_WAIT_S; a
        write is not sent twice: 503, send it again); when it died for good, start (or
        find) it again and retry once (a handle to one killed outright is dead)."""
        deadline, fresh = time.monotonic() + KEEPER_WAIT_S, False
        while True:
            try:
                return await getattr(self._keeper(), method).remote(*args)
            except ActorUnavailableError as e:  # restarting: the call may or may not have run
                if method == "submit" or time.monotonic() > deadline:
                    raise ApiError(503, "keeper_unavailable", "the keeper of writes and "
                                   "versions is restarting; send the request again in a few "
                                   "seconds (an upsert or delete sent twice changes nothing "
                                   "more)") from e  # fmt: skip
                await asyncio.sleep(0.5)
            except RayActorError:
                if fresh:
                    raise
                self.keeper, fresh = None, True

    def _keeper(self) -> Any:
        """The application's `VersionKeeper` (started on first use)."""
        assert self.switch is not None
        if self.keeper is None:
            self.keeper = keeper(self.config.options, self.config.versions, self.switch)
        return self.keeper

    # -- about the server -----------------------------------------------------------------

    @api.get("/v1/collections", response_model=CollectionsResponse)
    async def collections_info(self) -> dict[str, Any]:
        """The collections served, the default first: name, model, dim, metric, counts,
        version, search modes."""
        return {"collections": [c.info() for c in self.collections.values()],
                "default": self.default}  # fmt: skip

    @api.get("/v1/indexes", response_model=IndexesResponse)
    async def indexes(self) -> dict[str, Any]:
        """What is served: per collection, model, dimension, metric, size, shards, tuned
        parameters (as /v1/collections; kept for earlier clients)."""
        return {"indexes": [c.info() for c in self.collections.values()]}

    @api.get("/metrics", response_class=PlainTextResponse)
    async def metrics_text(self) -> Response:
        """Request counts and latency histograms by route, collection and status, and the
        counts of writes and version switches, from every replica of every node, in
        Prometheus' text format (Ray's metrics, gathered from each node's exporter; a
        Prometheus scrapes those endpoints itself: README "Metrics")."""
        nodes = await asyncio.to_thread(ray.nodes)
        text = await asyncio.to_thread(scrape, metrics_endpoints(nodes))
        return PlainTextResponse(text)

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self, request: Request) -> Response:
        """The search page (static; it uses the JSON API, with the key it asks for once
        per tab). Its policy lets it reach this server only and run only its own script,
        named beside the page's path (the app may be served under a route prefix)."""
        script = html_escape(request.url.path.rstrip("/") + "/search.js")
        html = static_file("search.html").replace("{{SCRIPT}}", script)
        return HTMLResponse(html, headers=PAGE_HEADERS)

    @api.get("/search.js", include_in_schema=False)
    async def page_script(self) -> Response:
        return Response(static_file("search.js"), media_type="text/javascript",
                        headers=PAGE_HEADERS)  # fmt: skip

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi_document(self) -> Response:
        """The OpenAPI document of what this server serves (behind the read key)."""
        return JSONResponse(api.openapi())

    @api.get("/healthz", response_model=Status)
    async def healthz(self) -> dict[str, str]:
        """The replica answers (no key needed)."""
        return {"status": "ok"}

    @api.get("/readyz", response_model=Ready, responses={503: {"model": ErrorResponse}})
    async def readyz(self) -> dict[str, bool]:
        """Every collection's shards and encoder answer (no key needed)."""
        for c in self.collections.values():
            if not await c.placement.ready():
                raise ApiError(503, "not_ready", f"not every shard of {c.name!r} answers yet")
        return {"ready": True}


def _check_fits(c: ServedCollection, documents: list[UpsertDocument]) -> None:
    """Refuse (422) an upsert whose metadata would overwrite the text column or does not
    fit the types of the index's columns, before it is queued: nothing is published."""
    text_column = c.manifest.text_column or "text"
    for d in documents:
        if text_column in d.metadata:
            raise ApiError(422, "reserved_metadata", f"metadata key {text_column!r} is the "
                           "index's text column; send the text as `text`")  # fmt: skip
    schema = unify_schemas([docs.schema for docs in c.searcher.docs.shards])
    try:
        rows = pa.Table.from_pylist([d.metadata for d in documents])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:  # one key, values of several types
        raise ApiError(
            422,
            "metadata_type",
            "the documents' metadata give one key values of "
            f"different types ({e}): an index keeps one type per column",
        ) from None
    try:
        fitted_schema(schema, rows)
    except SourceError as e:
        raise ApiError(422, "metadata_type", str(e)) from None


def _app_name() -> str:
    """The Serve application this replica belongs to ("" outside a replica)."""
    try:
        return serve.get_replica_context().app_name
    except RayServeException:
        return ""


def _batch_matrix(c: ServedCollection, body: VectorBatchRequest) -> np.ndarray:
    """The batch's query vectors as an (n, dim) float32 matrix."""
    if isinstance(body.vectors, list):
        return c.searcher.vector_rows(body.vectors)
    try:
        raw = base64.b64decode(body.vectors, validate=True)
    except ValueError as e:  # binascii.Error, or a character outside ASCII
        raise QueryError(f"vectors is not valid base64: {e}") from None
    dim = c.manifest.dim
    row_bytes = 4 * dim
    if not raw or len(raw) % row_bytes:
        raise QueryError(
            f"vectors holds {len(raw)} bytes, not a whole number of {dim}-d float32 "
            f"rows ({row_bytes} bytes each): send little-endian float32 values, row after row"
        )
    rows = len(raw) // row_bytes
    if rows > MAX_BATCH_VECTORS:
        raise QueryError(f"at most {MAX_BATCH_VECTORS} vectors per request, got {rows}")
    check_hits([(rows, body.k, "vector" in body.include)])
    check_work([(rows, body.work)])
    return np.frombuffer(raw, dtype="<f4").reshape(-1, dim)


# The routes above become methods of the deployment (Serve's class-based views), in the
# driver and in every replica alike.
GatewayIngress = serve.ingress(api)(Gateway)
