"""`Client`: a small Python client of an embedlib server's HTTP API (the standard library's
HTTP, the search contract's `Query` and `Hit`)."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from embedlib.exceptions import ClientError
from embedlib.search.query import Hit, Query, VectorBatch


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib would send the API key (Authorization) on to
    whatever host the redirect names. A redirect answers as the HTTP error it is."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class Client:
    """Talk to `embedlib serve` at `url` (e.g. http://127.0.0.1:8000); searches and writes
    address `collection` (None: the server's default collection)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        collection: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.collection = collection

    def _at(self, route: str) -> str:
        """`/v1/ROUTE` of the collection addressed."""
        if self.collection is None:
            return f"/v1/{route}"
        return f"/v1/collections/{urllib.parse.quote(self.collection, safe='')}/{route}"

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with _OPENER.open(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                error = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                error = {"code": "http_error", "message": raw.decode(errors="replace")[:500]}
            raise ClientError(e.code, error.get("code", ""), error.get("message", "")) from None

    def search(self, query: Query | str | None = None, /, **fields: Any) -> list[Hit]:
        """Top-k hits, best first, of one `Query`, or of text with the query's fields as
        keywords (`client.search("cheap shoes", k=3, filter={"lang": "en"})`; `vector=`
        or `positive=` / `negative=` without text). Fields left out take the server's
        defaults."""
        if isinstance(query, Query):
            if fields:
                raise TypeError("give a Query, or its fields as keywords, not both")
            q = query
        else:
            q = Query(text=query, **fields) if query is not None else Query(**fields)
        answer = self._call(self._at("search"), _body(q))
        return [Hit.from_json(h) for h in answer["results"]]

    def search_batch(self, queries: Sequence[Query]) -> list[list[Hit]]:
        """Several searches in one request, each with its own fields."""
        answer = self._call(self._at("search/batch"), {"queries": [_body(q) for q in queries]})
        return [[Hit.from_json(h) for h in hits] for hits in answer["results"]]

    def search_vectors(self, vectors: np.ndarray, **options: Any) -> list[list[Hit]]:
        """One search for every row of `vectors` (n, dim), sent as base64 float32, with
        one set of `SearchOptions` (`k=`, `filter=`, `include=`, ...)."""
        x = np.ascontiguousarray(np.atleast_2d(vectors), dtype="<f4")
        batch = VectorBatch(
            vectors=base64.b64encode(x.tobytes()).decode("ascii"),
            encoding_format="base64",
            **options,
        )
        answer = self._call(self._at("search/batch"), _body(batch))
        return [[Hit.from_json(h) for h in hits] for hits in answer["results"]]

    def embed(self, texts: str | Sequence[str], model: str | None = None) -> np.ndarray:
        """Vectors of `texts` from the served model, shape (n, d)."""
        body: dict[str, Any] = {"input": [texts] if isinstance(texts, str) else list(texts)}
        if model:
            body["model"] = model
        data = self._call("/v1/embeddings", body)["data"]
        return np.array(
            [d["embedding"] for d in sorted(data, key=lambda d: d["index"])], dtype=np.float32
        )

    def recommend(self, user: str, k: int = 10) -> dict[str, Any]:
        """Items for `user` from a served recommender: results, and `fallback` ("popular",
        with a `reason`) for a user it has never seen."""
        return dict(self._call("/v1/recommend", {"user": user, "k": k}))

    def upsert(
        self, documents: Sequence[dict[str, Any]], *, wait: bool = True, wait_s: float = 600.0
    ) -> dict[str, Any]:
        """Add or replace documents ({"id", "text", "metadata"}); with `wait`, return the
        finished write (ClientError if it failed), else the accepted one (`write_id`)."""
        accepted = self._call(self._at("upsert"), {"documents": list(documents)})
        return self.wait_for_write(accepted["write_id"], wait_s) if wait else dict(accepted)

    def delete(
        self, ids: Sequence[str], *, wait: bool = True, wait_s: float = 600.0
    ) -> dict[str, Any]:
        """Remove documents by id; `wait` as `upsert` takes it."""
        accepted = self._call(self._at("delete"), {"ids": list(ids)})
        return self.wait_for_write(accepted["write_id"], wait_s) if wait else dict(accepted)

    def write(self, write_id: str) -> dict[str, Any]:
        """A write's state (GET /v1/writes/{id})."""
        return dict(self._call(f"/v1/writes/{write_id}"))

    def wait_for_write(self, write_id: str, wait_s: float = 600.0) -> dict[str, Any]:
        """Poll a write until it is done (the app serves its version, or it changed
        nothing); ClientError when it failed or took longer than `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            record = self.write(write_id)
            if record["status"] == "done":
                return record
            if record["status"] == "failed":
                error = record.get("error") or {}
                raise ClientError(422, error.get("code", "write_failed"), error.get("message", ""))
            if time.monotonic() > deadline:
                raise ClientError(504, "timeout", f"write {write_id} not done after {wait_s:g}s")
            time.sleep(0.25)

    def info(self) -> dict[str, Any]:
        """What the server serves: model, dim, metric, ntotal, shards, recall at build."""
        return dict(self._call("/v1/indexes"))

    def collections(self) -> list[dict[str, Any]]:
        """The served collections, the default first (GET /v1/collections)."""
        return list(self._call("/v1/collections")["collections"])


def _body(value: BaseModel) -> dict[str, Any]:
    """A contract value as the HTTP API takes it: the fields given, by their JSON names."""
    return dict(value.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True))
