"""Typed configuration of a served application: how to build it, and what its gateway
replicas are told."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from embedlib.exceptions import EmbedlibError

Placement = Literal["gateway", "grouped", "per-shard"]
PLACEMENTS: tuple[Placement, ...] = get_args(Placement)
Ingress = Literal["haproxy", "proxy"]
INGRESSES: tuple[Ingress, ...] = get_args(Ingress)
APP_NAME = "embedlib"
MAX_BODY_BYTES = 16 * 1024 * 1024


def api_key_from_env() -> str | None:
    """EMBEDLIB_API_KEY: None when unset; refused when set but blank (auth would be off
    without anyone having asked for that)."""
    key = os.environ.get("EMBEDLIB_API_KEY")
    if key is None:
        return None
    if not key.strip():
        raise EmbedlibError(
            "EMBEDLIB_API_KEY is set but empty: set a key, or unset it to serve without one"
        )
    return key


@dataclass(frozen=True, kw_only=True)
class AppOptions:
    """Everything `build_app` needs to build the application for an index again (for a
    reload, a write, or a new version under `--watch`).

    `placement` "gateway" (the default) searches every shard inside the gateway replicas,
    one hop per query; "grouped" puts all shards in one `ShardSearcher` deployment behind
    a single gateway on the head node, so a lost worker node drops no request;
    "per-shard" gives each shard a deployment of its own."""

    index: str
    replicas: int = 1
    placement: Placement = "gateway"
    api_key: str | None = None
    request_timeout_s: float = 30.0
    max_body_bytes: int = MAX_BODY_BYTES
    searcher_cpus: float = 0.25
    encoder_cpus: float = 0.5
    storage_options: dict[str, Any] = field(default_factory=dict)
    recommender: str | None = None  # a folder `embedlib recommend train` wrote
    app_name: str = APP_NAME
    route_prefix: str = "/"

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class GatewayConfig:
    """What a gateway replica serves: the application's options and the index version
    it was built for."""

    options: AppOptions
    version: str  # e.g. v-00002
    version_url: str  # the version folder, with its protocol
