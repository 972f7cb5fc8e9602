"""The gateway's OpenAPI document: generated from the contract's classes, then made to
state what this server enforces beyond them (`ServedFacts`), so that a request the
document calls valid is one the server answers, and one it refuses is refused for a
rule the document states.

What the classes state (search/query.py, serve/schemas.py): one kind of query, lexical
ranking for text only, bounds, vectors float32 can hold, base64, the filter's shape.
What only the served indexes know: their collections, models, dimension and metric,
metadata columns and types, whether any takes image queries or ranks lexically,
whether a recommender is served.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from embedlib.search.query import FILTER_SCALAR, filter_condition

OPEN_ROUTES = frozenset({"/", "/search.js", "/healthz", "/readyz"})  # the page holds no data
NOT_ZERO: dict[str, Any] = {"not": {"items": {"const": 0}}}  # a cosine query has a direction


def openapi_with_key(app: FastAPI, served: ServedFacts | None = None) -> dict[str, Any]:
    """The app's OpenAPI document, declaring the API key (bearer) on every route but the
    open ones, so /docs offers to send it. Declared here rather than as a dependency of
    each route: `GatewayRoute` checks the key before the body is read, and a dependency
    would cost its solving on every request."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            "HTTPBearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "the server's EMBEDLIB_API_KEY",
            }
        }
        for path, operations in schema.get("paths", {}).items():
            if path not in OPEN_ROUTES:
                for operation in operations.values():
                    operation["security"] = [{"HTTPBearer": []}]
        if served is not None:
            served.state(schema)
        app.openapi_schema = schema
    return app.openapi_schema


def declared_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON body of `model` for a route that reads the request
    itself (the hot search route: FastAPI's body dependency costs ~0.1 ms a request). The
    model is in the document's components through the routes that take it as a body."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def json_scalar(kind: pa.DataType) -> dict[str, Any]:
    """The JSON schema of the values a column of `kind` takes exactly."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return {"type": "string"}
    if pa.types.is_boolean(kind):
        return {"type": "boolean"}
    if pa.types.is_integer(kind):
        bits, signed = kind.bit_width, pa.types.is_signed_integer(kind)
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        return {"type": "integer", "minimum": low, "maximum": high}
    if pa.types.is_floating(kind):
        return {"type": "number"}
    return dict(FILTER_SCALAR)


@dataclass(frozen=True)
class ServedFacts:
    """What a server's OpenAPI document states beyond the classes (see the module)."""

    collections: tuple[str, ...]
    models: tuple[str, ...]
    dim: int | None  # when every collection has the same
    metadata: Mapping[str, pa.DataType] = field(default_factory=dict)  # column -> type
    reserved: frozenset[str] = frozenset()  # names metadata may not take
    cosine: bool = False  # every collection compares by cosine: no zero query vectors
    image_queries: bool = False  # some collection embeds image queries
    lexical: bool = False  # some collection ranks text lexically
    recommender: bool = False

    def state(self, schema: dict[str, Any]) -> None:
        paths = schema.get("paths", {})
        if not self.recommender:  # the route answers 404 no_recommender: not offered
            paths.pop("/v1/recommend", None)
        for operations in paths.values():
            for operation in operations.values():
                for param in operation.get("parameters", []):
                    if param.get("name") == "collection":  # the path's and ?collection=
                        names = {"type": "string", "enum": list(self.collections)}
                        param["schema"] = (
                            names
                            if param.get("in") == "path"
                            else {"anyOf": [names, {"type": "null"}]}
                        )
        bodies = schema.get("components", {}).get("schemas", {})
        self._embeddings(bodies.get("EmbeddingsRequest", {}).get("properties", {}))
        self._metadata(bodies.get("UpsertDocument", {}).get("properties", {}))
        for name in ("Query", "VectorBatchRequest", "VectorBatch", "SearchOptions"):
            self._search(bodies.get(name, {}))
        self._vectors(bodies)

    def _embeddings(self, embeddings: dict[str, Any]) -> None:
        if "model" in embeddings:
            names = {"type": "string", "enum": list(self.models)}
            embeddings["model"] = (
                {"anyOf": [names, {"type": "null"}]} if self.models else {"type": "null"}
            )
        if self.dim is not None and "dimensions" in embeddings:
            embeddings["dimensions"] = {"anyOf": [{"type": "integer", "enum": [self.dim]},
                                                  {"type": "null"}]}  # fmt: skip

    def _metadata(self, document: dict[str, Any]) -> None:
        """An upserted document's metadata: the index's columns keep their types; a new
        key takes any plain value; names the index uses itself are refused."""
        metadata = document.get("metadata")
        if metadata is None:
            return
        metadata["properties"] = {
            c: {"anyOf": [json_scalar(t), {"type": "null"}]} for c, t in self.metadata.items()
        }
        names = metadata.setdefault("propertyNames", {})
        names["not"] = {"enum": sorted(self.reserved)}

    def _search(self, body: dict[str, Any]) -> None:
        properties = body.get("properties", {})
        if "filter" in properties:
            columns = {"type": "object", "additionalProperties": False,
                       "properties": {c: filter_condition(json_scalar(t))
                                      for c, t in self.metadata.items()}}  # fmt: skip
            properties["filter"] = {"anyOf": [columns, {"type": "null"}],
                                    "description": properties["filter"].get("description", "")}  # fmt: skip
        mode = properties.get("mode")
        if mode is not None and not self.lexical:
            properties["mode"] = {"enum": ["dense", None], "description": "dense: the index "
                                  "has no lexical part"}  # fmt: skip
        if "image" in properties and not self.image_queries:  # no image tower: not offered
            del properties["image"]
            body["oneOf"] = [k for k in body.get("oneOf", []) if k.get("required") != ["image"]]

    def _vectors(self, bodies: dict[str, Any]) -> None:
        """Query vectors: the dimension, and (cosine) a direction."""
        sized: dict[str, Any] = {}
        if self.dim is not None:
            sized = {"minItems": self.dim, "maxItems": self.dim}
        if self.cosine:
            sized |= NOT_ZERO
        if not sized:
            return
        for name in ("Query", "VectorItem"):
            vector = bodies.get(name, {}).get("properties", {}).get("vector", {})
            for option in _arrays(vector):
                option.update(sized)
        for name in ("VectorBatchRequest", "VectorBatch"):
            vectors = bodies.get(name, {}).get("properties", {}).get("vectors", {})
            for option in _arrays(vectors):
                option["items"].update(sized)


def _arrays(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The array options of a property's schema."""
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "array":
            yield option
