"""Typed configuration of a served application: how to build it, and what its gateway
replicas are told."""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from embedlib.exceptions import EmbedlibError

Placement = Literal["gateway", "grouped", "per-shard"]
PLACEMENTS: tuple[Placement, ...] = get_args(Placement)
Ingress = Literal["haproxy", "proxy"]
INGRESSES: tuple[Ingress, ...] = get_args(Ingress)
APP_NAME = "embedlib"
MAX_BODY_BYTES = 16 * 1024 * 1024


def api_key_from_env(name: str = "EMBEDLIB_API_KEY") -> str | None:
    """EMBEDLIB_API_KEY (the admin key: every route) or, with `name`, EMBEDLIB_READ_KEY
    (searches, embeddings, the page's API, /openapi.json): None when unset; refused when
    set but blank (auth would be off without anyone having asked for that)."""
    key = os.environ.get(name)
    if key is None:
        return None
    if not key.strip():
        raise EmbedlibError(f"{name} is set but empty: set a key, or unset it")
    return key


def read_key_from_env() -> str | None:
    return api_key_from_env("EMBEDLIB_READ_KEY")


COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class CollectionSpec:
    """A named index behind the server: `name` in /v1/collections/{name}/..., `index` its
    root (or version folder), on any fsspec URL."""

    name: str
    index: str

    def __post_init__(self) -> None:
        if not COLLECTION_NAME.match(self.name):
            raise EmbedlibError(
                f"collection name {self.name!r}: use letters, digits, '_', '.' or '-' "
                "(at most 64), starting with a letter or digit"
            )

    @classmethod
    def parse(cls, arg: str) -> CollectionSpec:
        """`NAME=PATH`, or a bare PATH named after its folder."""
        name, sep, path = arg.partition("=")
        if sep and COLLECTION_NAME.match(name) and path:
            return cls(name, path)
        path = arg
        return cls(posixpath.basename(path.rstrip("/")) or "index", path)


def collection_specs(args: list[str], default: str | None = None) -> tuple[CollectionSpec, ...]:
    """The collections of `embedlib serve A=PATH B=PATH`, the default first."""
    specs = [CollectionSpec.parse(a) for a in args]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise EmbedlibError(f"two collections share a name: {names}; name them: NAME=PATH")
    if default is not None:
        if default not in names:
            raise EmbedlibError(f"--default {default!r} is not among the collections {names}")
        specs.sort(key=lambda s: s.name != default)
    return tuple(specs)


@dataclass(frozen=True, kw_only=True)
class AppOptions:
    """Everything `build_app` needs to build the application for an index again (for a
    reload, a write, or a new version under `--watch`).

    `placement` "gateway" (the default) searches every shard inside the gateway replicas,
    one hop per query; "grouped" puts all shards in one `ShardSearcher` deployment behind
    a single gateway on the head node, so a lost worker node drops no request;
    "per-shard" gives each shard a deployment of its own.

    `collections` are the named indexes served, the default first; without them, `index`
    is served as one collection named after its folder. `index` is the default's."""

    index: str = ""
    collections: tuple[CollectionSpec, ...] = ()
    replicas: int = 1
    placement: Placement = "gateway"
    api_key: str | None = None  # admin: every route (writes, reloads included)
    read_key: str | None = None  # reads only; None: reads take the admin key (or none)
    request_timeout_s: float = 30.0
    max_body_bytes: int = MAX_BODY_BYTES
    searcher_cpus: float = 0.25
    encoder_cpus: float = 0.5
    storage_options: dict[str, Any] = field(default_factory=dict)
    recommender: str | None = None  # a folder `embedlib recommend train` wrote
    app_name: str = APP_NAME
    route_prefix: str = "/"

    def __post_init__(self) -> None:
        if not self.collections:
            if not self.index:
                raise ValueError("give an index, or collections")
            object.__setattr__(self, "collections", (CollectionSpec.parse(self.index),))
        object.__setattr__(self, "index", self.collections[0].index)
        if self.placement not in PLACEMENTS:
            raise ValueError(
                f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}"
            )
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")
        if self.searcher_cpus < 0 or self.encoder_cpus < 0:
            raise ValueError("searcher_cpus and encoder_cpus must be >= 0")

    @property
    def default(self) -> str:
        return self.collections[0].name

    def collection(self, name: str) -> CollectionSpec:
        for spec in self.collections:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass(frozen=True)
class ServedVersion:
    """The version of one collection an application is built for."""

    name: str  # the collection's
    version: str  # e.g. v-00002
    version_url: str  # the version folder, with its protocol


@dataclass(frozen=True)
class GatewayConfig:
    """What a gateway replica serves: the application's options and the version of each
    collection it was built for (the default first)."""

    options: AppOptions
    served: tuple[ServedVersion, ...]

    @property
    def versions(self) -> dict[str, str]:
        return {s.name: s.version for s in self.served}
