"""Assembling and running the Serve application for an index.

`build_app` binds the deployments: a `Gateway` ingress, the `ShardSearcher`s (all shards
in one deployment, or one deployment per shard: `placement`), and an `Encoder` when the
index has a text model. `serve_index` runs it until Ctrl-C or SIGTERM and then stops
everything it started. `app_builder` lets `serve run` / `serve deploy` start the same
application from a config file.
"""

from __future__ import annotations

import posixpath
import signal
import threading
from typing import Any, Literal

from fsspec.core import url_to_fs
from ray import serve
from ray.serve import Application

from embedlib.index.layout import resolve, versions_dir
from embedlib.serve.deployments import Encoder, ShardSearcher
from embedlib.serve.gateway import GatewayIngress
from embedlib.store import read_json

Placement = Literal["grouped", "per-shard"]
APP_NAME = "embedlib"
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray gives this resource to the head only


def build_app(
    index: str,
    *,
    replicas: int = 1,
    placement: Placement = "grouped",
    api_key: str | None = None,
    request_timeout_s: float = 30.0,
    searcher_cpus: float = 0.25,
    encoder_cpus: float = 0.5,
    storage_options: dict[str, Any] | None = None,
    version: str | None = None,
) -> Application:
    """The Serve application for an index: the version named (under the index root), else
    the version CURRENT names, or a version folder given as `index`."""
    fs, root = url_to_fs(index, **(storage_options or {}))
    version = (
        posixpath.join(versions_dir(root.rstrip("/")), version)
        if version
        else resolve(fs, root.rstrip("/"))
    )
    version_url = fs.unstrip_protocol(version)
    manifest = read_json(fs, posixpath.join(version, "manifest.json"))
    n_shards = len(manifest["shards"])
    searcher = serve.deployment()(ShardSearcher)
    options: dict[str, Any] = {
        "num_replicas": replicas,
        "ray_actor_options": {"num_cpus": searcher_cpus},
    }
    if placement == "per-shard":
        searchers = [
            searcher.options(name=f"ShardSearcher{s}", **options).bind(
                version_url, [s], storage_options
            )
            for s in range(n_shards)
        ]
    else:
        searchers = [
            searcher.options(name="ShardSearcher", **options).bind(
                version_url, list(range(n_shards)), storage_options
            )
        ]
    encoder = None
    if manifest.get("model"):
        encoder = (
            serve.deployment()(Encoder)
            .options(num_replicas=1, ray_actor_options={"num_cpus": encoder_cpus})
            .bind(manifest["model"])
        )
    config = {
        "api_key": api_key,
        "request_timeout_s": request_timeout_s,
        "storage_options": storage_options or {},
        "version": posixpath.basename(version.rstrip("/")),
        # how to build this app again, for /v1/admin/reload
        "app": {
            "index": index,
            "replicas": replicas,
            "placement": placement,
            "api_key": api_key,
            "request_timeout_s": request_timeout_s,
            "searcher_cpus": searcher_cpus,
            "encoder_cpus": encoder_cpus,
            "storage_options": storage_options,
        },
    }
    # One gateway, on the head node next to Serve's HTTP proxy: a lost worker node takes
    # searcher replicas (which the gateway retries elsewhere), never a request in flight in
    # the gateway, and /metrics counts every request. Zero CPUs: the head may offer none.
    gateway = serve.deployment()(GatewayIngress).options(
        name="Gateway",
        ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}},
    )
    return gateway.bind(version_url, searchers, encoder, config)


def current_version(index: str, storage_options: dict[str, Any] | None = None) -> str:
    """The version name an index path resolves to now."""
    fs, root = url_to_fs(index, **(storage_options or {}))
    return posixpath.basename(resolve(fs, root.rstrip("/")).rstrip("/"))


def redeploy(app_options: dict[str, Any], version: str, route_prefix: str = "/") -> None:
    """Deploy the application again for `version`. Serve replaces the replicas one by one
    (new ones ready before old ones go), so no request is dropped."""
    serve.run(
        build_app(**{**app_options, "version": version}), name=APP_NAME, route_prefix=route_prefix
    )


def app_builder(args: dict[str, Any]) -> Application:
    """For Serve config files: `import_path: embedlib.serve.app:app_builder` with
    `args: {index: PATH, replicas: 1, placement: grouped}`; the API key comes from
    EMBEDLIB_API_KEY."""
    import os

    return build_app(
        str(args["index"]),
        replicas=int(args.get("replicas", 1)),
        placement=args.get("placement", "grouped"),
        api_key=args.get("api_key") or os.environ.get("EMBEDLIB_API_KEY"),
    )


def _is_local_instance(ray: Any) -> bool:
    """Whether this process started the Ray instance it is connected to."""
    node = getattr(ray._private.worker.global_worker, "node", None)
    return bool(node is not None and node.is_head())


def serve_index(
    index: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    detach: bool = False,
    watch: bool = False,
    watch_interval_s: float = 5.0,
    on_ready: Any = print,
    after_ready: Any = None,
    **app_options: Any,
) -> None:
    """Deploy the index's application and serve until Ctrl-C / SIGTERM (or, with
    `detach`, return once it is ready and leave it running on the cluster). With `watch`,
    follow the index's CURRENT pointer: a new version is deployed without downtime.
    `after_ready` is called with the base URL once the application answers."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address=address,
            log_to_driver=False,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
        )
    started_ray = _is_local_instance(ray)
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        serve.start(http_options={"host": host, "port": port})
        served = current_version(index)
        serve.run(build_app(index, version=served, **app_options), name=APP_NAME, route_prefix="/")
        on_ready(f"serving {index} ({served}) at http://{host}:{port} (Ctrl-C to stop)")
        if after_ready is not None:
            after_ready(f"http://{host}:{port}")
        if detach:
            return
        while not stop.wait(watch_interval_s if watch else 0.5):
            if watch and (now := current_version(index)) != served:
                on_ready(f"CURRENT moved from {served} to {now}: switching without downtime")
                redeploy({"index": index, **app_options}, now)
                served = now
                on_ready(f"serving {index} ({served})")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not detach:
            if started_ray:  # our own local Ray: stop Serve and every Ray process
                serve.shutdown()
                ray.shutdown()
            else:  # someone else's cluster: remove only our application
                serve.delete(APP_NAME)
