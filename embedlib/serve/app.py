"""Assembling the Serve application for an index (running it is `run.py`).

`build_app` binds the deployments for an `AppOptions`: a `Gateway` ingress, the shard
searchers of its placement ("gateway", the default, searches every shard inside the
gateway replicas, one hop per query; "grouped" puts all shards in one `ShardSearcher`
deployment behind a single gateway on the head node, so a lost worker node drops no
request; "per-shard" gives each shard a deployment of its own), and an `Encoder` when
the index has a text model. The gateway is handed `redeploy` (bound to its options) to
switch versions; it never imports this module. `app_builder` lets `serve run` /
`serve deploy` start the same application from a config file.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.schema import ApplicationStatus

from embedlib.exceptions import SwitchError
from embedlib.index.store.version import IndexVersion
from embedlib.serve.config import (
    AppOptions,
    CollectionSpec,
    GatewayConfig,
    ServedVersion,
    api_key_from_env,
    read_key_from_env,
)
from embedlib.serve.deployments import Encoder, ShardSearcher
from embedlib.serve.gateway import GatewayIngress

log = logging.getLogger(__name__)
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray gives this resource to the head only
# Serve's default (5) queues the 6th concurrent request at the proxy with back-off: at 16
# clients that cut throughput to ~50 q/s. Our replicas are async and batch, so let them in.
MAX_ONGOING_REQUESTS = 256
# A switch starts each deployment's new replicas before its old ones stop (Serve's default,
# 0, stopped them first: a new version that failed to start left nothing serving).
SURGE_PERCENT = 100
SWITCH_TIMEOUT_S = 600.0  # a switch whose replicas are not all ready by then has failed
SWITCH_POLL_S = 0.5


def build_app(index: str = "", *, version: str | None = None, **options: Any) -> Application:
    """The Serve application for an index (`AppOptions` says how): the version named
    (under the index root), else the version CURRENT names, or a version folder given as
    `index`; or for several named indexes (`collections=`, each at CURRENT). With
    `recommender` (a folder `embedlib recommend train` wrote; `index` is its item index)
    the app also answers POST /v1/recommend."""
    app_options = AppOptions(index=index, **options)
    return build_versions(app_options, {app_options.default: version} if version else {})


def build_versions(options: AppOptions, versions: Mapping[str, str | None]) -> Application:
    """The application serving each collection at the version named in `versions` (else
    at CURRENT's). Collections whose model fingerprints agree share one Encoder."""
    deployment_options: dict[str, Any] = {
        "num_replicas": options.replicas,
        "max_ongoing_requests": MAX_ONGOING_REQUESTS,
        "max_surge_percent": SURGE_PERCENT,
        "ray_actor_options": {"num_cpus": options.searcher_cpus},
    }
    searcher = serve.deployment()(ShardSearcher)
    encoders: dict[str, Any] = {}  # model fingerprint -> its bound Encoder
    served, parts = [], {}
    for spec in options.collections:
        opened = IndexVersion(
            spec.index, version=versions.get(spec.name), storage_options=options.storage_options
        )
        served.append(ServedVersion(spec.name, opened.name, opened.url))
        n_shards = len(opened.manifest.shards)
        prefix = "" if len(options.collections) == 1 else f"{spec.name}-"
        groups: list[tuple[str, list[int]]] = []
        if options.placement == "per-shard":
            groups = [(f"{prefix}ShardSearcher{s}", [s]) for s in range(n_shards)]
        elif options.placement == "grouped":
            groups = [(f"{prefix}ShardSearcher", list(range(n_shards)))]
        searchers = [
            searcher.options(name=name, **deployment_options).bind(
                opened.url, shards, options.storage_options
            )
            for name, shards in groups
        ]
        encoder = None
        model = opened.manifest.model
        # "gateway" holds the models in the gateway replicas (one per fingerprint)
        if opened.manifest.text_model and model is not None and options.placement != "gateway":
            key = json.dumps(model.to_dict(), sort_keys=True)
            if key not in encoders:
                encoders[key] = (
                    serve.deployment()(Encoder)
                    .options(
                        name="Encoder" if not encoders else f"Encoder{len(encoders)}",
                        num_replicas=1,
                        max_ongoing_requests=MAX_ONGOING_REQUESTS,
                        max_surge_percent=SURGE_PERCENT,
                        ray_actor_options={"num_cpus": options.encoder_cpus},
                    )
                    .bind(model)
                )
            encoder = encoders[key]
        parts[spec.name] = (searchers, encoder)
    if options.placement == "gateway":
        # The gateway searches the shards itself: one hop per query. Its replicas are the
        # searchers, so they are as many as asked and may run on any node.
        gateway_options = deployment_options
    else:
        # One gateway, on the head node next to Serve's HTTP proxy: a lost worker node takes
        # searcher replicas (which the gateway retries elsewhere), never a request in flight
        # in the gateway, and /metrics counts every request. Zero CPUs: the head may offer none.
        gateway_options = {
            "max_ongoing_requests": MAX_ONGOING_REQUESTS,
            "max_surge_percent": SURGE_PERCENT,
            "ray_actor_options": {"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}},
        }
    config = GatewayConfig(options, tuple(served))
    gateway = serve.deployment()(GatewayIngress).options(name="Gateway", **gateway_options)
    return gateway.bind(config, parts, partial(redeploy, options))


def redeploy(
    options: AppOptions, versions: Mapping[str, str], timeout_s: float = SWITCH_TIMEOUT_S
) -> None:
    """Deploy the application again for `versions` (each collection's; under its name and
    route prefix) and wait until it runs. Serve replaces each deployment's replicas with
    new ones started first (SURGE_PERCENT), so the old ones serve until the new are
    ready. SwitchError when the new replicas fail to start (Serve gives up after 3 tries
    per replica; the old ones still serve) or are not ready within `timeout_s`."""
    # serve.run waits without a bound; its non-blocking twin returns once deployed
    serve._run(
        build_versions(options, versions), _blocking=False, name=options.app_name,
        route_prefix=options.route_prefix,
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(options.app_name)
        if app is None:
            raise SwitchError(f"application {options.app_name!r} is gone")
        if app.status == ApplicationStatus.RUNNING:
            return
        if app.status == ApplicationStatus.DEPLOY_FAILED:
            raise SwitchError(f"its replicas failed to start: {_first_line(app.message)}")
        if time.monotonic() > deadline:
            raise SwitchError(f"its replicas were not ready after {timeout_s:.0f} s "
                              f"({app.status.value}: {_first_line(app.message)})")  # fmt: skip
        time.sleep(SWITCH_POLL_S)


def _first_line(message: str) -> str:
    """A Serve status message's gist (it carries whole tracebacks)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors[-1] if errors else lines[0] if lines else "no reason given")[:500]


def app_builder(args: dict[str, Any]) -> Application:
    """For Serve config files: `import_path: embedlib.serve.app:app_builder` with
    `args: {index: PATH, replicas: 1, placement: gateway}`, or `collections: {docs: PATH,
    words: PATH}` (the first is the default) in place of `index`; the API key comes from
    EMBEDLIB_API_KEY."""
    named = args.get("collections") or {}
    return build_app(
        str(args.get("index", "")),
        collections=tuple(CollectionSpec(str(k), str(v)) for k, v in named.items()),
        replicas=int(args.get("replicas", 1)),
        placement=args.get("placement", "gateway"),
        api_key=args.get("api_key") or api_key_from_env(),
        read_key=args.get("read_key") or read_key_from_env(),
    )
