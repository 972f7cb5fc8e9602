"""Ray helpers shared by every distributed job: connecting to (or starting) Ray and
stopping it, running a function over many calls as Ray tasks (or in this process),
sizing work to the cluster, and checking that every node can reach a storage location.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psutil
import ray
from fsspec.core import url_to_fs
from ray._common.utils import get_ray_address_file  # where `ray start` records a cluster
from ray.exceptions import RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm.auto import tqdm

from embedlib.exceptions import StorageError
from embedlib.options import RunOptions

log = logging.getLogger(__name__)

# Workers never download: the default model ships in a package, others must be local.
# Set by each model-holding process itself (not as a Ray runtime env: a task or actor
# with one cannot use the workers Ray prestarts, and waits ~0.6 s for a fresh one).
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
STOP_WAIT_S = 10.0  # how long a command's end waits for its Ray processes before killing them


def use_worker_env() -> None:
    """Set `WORKER_ENV` in this process (before a model's libraries are imported)."""
    for name, value in WORKER_ENV.items():
        os.environ.setdefault(name, value)


def ensure_ray(address: str | None, *, dashboard: bool = False, **init_options: Any) -> None:
    """Connect to the Ray cluster at `address`, or to a running one, or start a local one
    (with Ray's dashboard only when asked: it costs 0.6 s of every job's start; the
    `init_options` go to `ray.init`).

    Without an address Ray joins the cluster recorded in its temp folder; when that cluster
    is gone (stopped without `ray stop`) Ray would wait for it forever, so a local instance
    is started instead, with a warning naming the dead address."""
    if ray.is_initialized():
        return
    if address is None and not os.environ.get("RAY_ADDRESS"):
        recorded = get_ray_address_file(None)
        dead = dead_recorded_cluster(recorded)
        if dead is not None:
            log.warning(
                "the Ray cluster recorded at %s does not answer (stopped without `ray stop`?); "
                "starting a local Ray instance. Pass --address to join a cluster.",
                dead,
            )
            address = "local"
        elif not os.path.exists(recorded):
            address = "local"  # nothing to join: Ray would start one anyway
    if address == "local":
        init_options = {"include_dashboard": dashboard, **init_options}
    else:  # options of a new instance only
        init_options.pop("_system_config", None)
    if "runtime_env" in init_options:
        init_options["runtime_env"] = _beside_job_env(init_options["runtime_env"])
    ray.init(address=address, **{"log_to_driver": True, **init_options})


def choose_runner(
    run: RunOptions, *, small: bool, work: str, urls: tuple[str, ...] = ()
) -> tuple[RunOptions, str]:
    """`run` with "auto" resolved, and why. In this process when no cluster is given or
    running and the work is `small`: starting and stopping a local Ray instance (~3-4 s)
    would cost more than its workers save on the same cores (one process uses them too:
    the encoders and FAISS run multi-threaded); also when `urls` name memory://, which Ray
    workers cannot see. On Ray otherwise."""
    if run.runner == "local":
        return run, "in this process, as asked (--local)"
    if run.runner == "ray":
        return run, "on Ray, as asked"
    if any(u.startswith("memory://") for u in urls):
        return replace(run, runner="local"), "in this process: memory:// lives in it"
    if ray.is_initialized():
        why = "on Ray: this process is connected to a Ray instance"
    elif run.address or os.environ.get("RAY_ADDRESS"):
        why = "on Ray: a cluster address was given"
    elif _live_recorded_cluster():
        why = "on Ray: a Ray cluster runs on this machine (`ray start`)"
    elif not small:
        why = f"on Ray: {work} is large enough to spread over workers"
    else:
        local = replace(run, runner="local")
        return local, (
            f"in this process: {work} is small, and starting Ray would cost more than its "
            "workers save on this machine's cores (--ray runs it on Ray)"
        )
    return replace(run, runner="ray"), why


def _live_recorded_cluster() -> bool:
    recorded = get_ray_address_file(None)
    return os.path.exists(recorded) and dead_recorded_cluster(recorded) is None


def ray_connected() -> bool:
    """Whether this process is connected to Ray."""
    return bool(ray.is_initialized())


def stop_ray() -> None:
    """Disconnect from Ray, stopping the local instance this process started, now rather
    than in Ray's exit hook, which first sleeps 0.5 s for worker logs to print. For the
    end of a command that connected to Ray itself: a caller's Ray is left alone.

    The local instance's autoscaler monitor (a child of this process) is killed first:
    `ray.shutdown` stops the GCS before it, and the monitor's SIGTERM handler then waits
    on the dead GCS until Ray kills it a second later (1.0 of shutdown's 1.3 s). Then it
    waits for the instance's processes (workers leave once they see their raylet gone,
    seconds later on a busy machine) and kills any still there after STOP_WAIT_S: the
    command ends with nothing of its Ray left running."""
    if not ray_connected():
        return
    ours = psutil.Process().children(recursive=True)  # raylet, GCS, workers, monitors
    for child in psutil.Process().children():
        try:
            if any(part.endswith("autoscaler/_private/monitor.py") for part in child.cmdline()):
                child.kill()
        except psutil.NoSuchProcess:
            continue  # gone already
    ray.shutdown()
    _, alive = psutil.wait_procs(ours, timeout=STOP_WAIT_S)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=STOP_WAIT_S)


def _beside_job_env(runtime_env: dict[str, Any]) -> dict[str, Any]:
    """In the driver of a submitted job (`ray job submit`), leave out the environment
    variables the job's own runtime env sets: Ray refuses to merge one key twice, and the
    submitter's value wins."""
    injected = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray's job supervisor
    if not injected or "env_vars" not in runtime_env:
        return runtime_env
    job_env = (json.loads(injected).get("runtime_env") or {}).get("env_vars") or {}
    env_vars = {k: v for k, v in runtime_env["env_vars"].items() if k not in job_env}
    return {**runtime_env, "env_vars": env_vars}


def dead_recorded_cluster(address_file: str) -> str | None:
    """The address in Ray's `ray_current_cluster` file when that cluster cannot be joined
    from here: no raylet runs on this machine (a driver joins through its node's raylet),
    or nothing listens at the address."""
    try:
        with open(address_file) as f:
            recorded = f.read().strip()
    except FileNotFoundError:
        return None
    host, _, port = recorded.rpartition(":")
    if not host or not port.isdigit():
        return None
    if not raylet_running():  # answers at once; an unroutable address would take the timeout
        return recorded
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return recorded
    return None


def raylet_running() -> bool:
    """Whether a Ray node (its raylet process) runs on this machine."""

    return any(p.info["name"] == "raylet" for p in psutil.process_iter(["name"]))


def current_node() -> str:
    """The Ray node this code runs on (its node id), or the host name outside Ray."""
    if ray.is_initialized():
        return str(ray.get_runtime_context().get_node_id())
    return socket.gethostname()


def check_reachable_by_workers(*urls: str) -> None:
    """memory:// lives inside one process: Ray workers cannot see it."""
    for url in urls:
        if url.startswith("memory://"):
            raise StorageError(
                f"{url!r} is in-process memory, which Ray workers cannot see. Use storage "
                "every worker can reach (a local or shared path, s3://, gs://), or run "
                "in-process with --local."
            )


def map_tasks(
    fn: Callable[..., Any],
    calls: list[tuple[Any, ...]],
    run: RunOptions,
    *,
    desc: str,
    num_cpus: float | None = None,
) -> list[Any]:
    """`[fn(*args) for args in calls]`, on Ray tasks or in this process, in call order.

    Ray re-runs a task whose worker or node died (up to `max_task_retries` times), so a
    killed task changes nothing but the time taken; an error the task raises is re-raised.
    """
    results: list[Any] = [None] * len(calls)
    with tqdm(total=len(calls), desc=desc, unit="task", disable=not run.progress) as bar:
        if run.runner == "local":
            for i, args in enumerate(calls):
                results[i] = fn(*args)
                bar.update(1)
            return results
        ensure_ray(run.address)
        task = ray.remote(fn).options(
            num_cpus=num_cpus if num_cpus is not None else run.cpus_per_worker,
            max_retries=run.max_task_retries,
        )
        window = run.workers or len(calls)  # at most this many tasks in flight
        queue = list(enumerate(calls))[::-1]
        refs: dict[Any, int] = {}
        while queue or refs:
            while queue and len(refs) < window:
                i, args = queue.pop()
                refs[task.remote(*args)] = i
            done, _ = ray.wait(list(refs), num_returns=1)
            i = refs.pop(done[0])
            try:
                results[i] = ray.get(done[0])
            except RayTaskError as e:
                for ref in refs:
                    ray.cancel(ref)
                raise (e.cause if e.cause is not None else e) from None
            bar.update(1)
    return results


def worker_slots(run: RunOptions) -> int:
    """How many tasks or actors of `cpus_per_worker` run at once: `workers` if given, else
    as many as the cluster's CPUs hold (one in-process)."""
    if run.runner == "local":
        return 1
    if run.workers is not None:
        return run.workers
    ensure_ray(run.address)
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    return max(1, int(cpus // run.cpus_per_worker))


def largest_node_cpus(run: RunOptions) -> float:
    """CPUs of the biggest node (for a task that should use one whole machine)."""
    if run.runner == "local":
        return 1.0
    ensure_ray(run.address)
    return max(
        (float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=1.0
    )


def check_workers_reach(url: str, run: RunOptions) -> None:
    """Fail early when some node of the cluster cannot see `url` (e.g. a local path that
    exists only on the driver's machine): each node reads a marker the driver wrote."""
    if run.runner == "local":
        return
    check_reachable_by_workers(url)
    ensure_ray(run.address)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if [n["NodeID"] for n in nodes] == [ray.get_runtime_context().get_node_id()]:
        return  # the driver's own node is the whole cluster: what it sees, workers see
    fs, path = url_to_fs(url, **run.storage_options)
    marker = f"{path.rstrip('/')}/_reach/{uuid.uuid4().hex}"
    fs.makedirs(f"{path.rstrip('/')}/_reach", exist_ok=True)
    fs.pipe(marker, b"embedlib")

    def sees(p: str) -> bool:
        return bool(fs.exists(p))

    task = ray.remote(sees)
    refs = [
        task.options(
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
        ).remote(marker)
        for n in nodes
    ]
    try:
        blind = [
            f"{n['NodeManagerAddress']} (node {n['NodeID'][:12]})"
            for n, ok in zip(nodes, ray.get(refs, timeout=120), strict=True)
            if not ok
        ]
    finally:
        fs.rm(f"{path.rstrip('/')}/_reach", recursive=True)
    if blind:
        raise StorageError(
            f"nodes {', '.join(blind)} cannot see {url!r}: on a cluster the output must be storage "
            "every node reaches (s3://, gs://, or a path shared by NFS on every machine)"
        )
