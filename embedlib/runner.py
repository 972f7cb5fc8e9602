"""Where shard work runs: in this process, or on a Ray cluster.

The Ray runner keeps one model per worker actor (loaded once, not per shard), hands each
idle actor the next shard, and re-runs a shard elsewhere when its actor or node dies.
An error raised by the work itself (a corrupt file) stops new work, lets shards already
running finish (so they can be committed), and is then raised.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, Protocol

from embedlib.corpus.plan import Shard
from embedlib.encode import TextEncoder, resolve_backend
from embedlib.exceptions import StorageError
from embedlib.models import ModelFingerprint
from embedlib.openvino_backend import converted_model
from embedlib.options import EmbedOptions, RunOptions
from embedlib.shard_work import ShardContext, ShardResult, ShardScan, embed_shard, scan_shard

log = logging.getLogger(__name__)

# Workers never download: the default model ships in a package, others must be local.
# set by each model-holding actor in its own process (not as a Ray runtime env: a task or
# actor with one cannot use the workers Ray prestarts, and waits ~0.6 s for a fresh one)
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


class Runner(Protocol):
    def scan(self, shards: list[Shard], ctx: ShardContext) -> Iterator[ShardScan]: ...

    def start_encoders(self, options: EmbedOptions, n_shards: int) -> ModelFingerprint: ...

    def embed(
        self, shards: list[Shard], ctx: ShardContext, drop_rows: Mapping[int, Collection[int]]
    ) -> Iterator[ShardResult]: ...

    def close(self) -> None: ...


def _encoder_args(options: EmbedOptions, run: RunOptions) -> dict[str, Any]:
    return {
        "model": options.model,
        "normalize": options.normalize,
        "max_seq_length": options.max_seq_length,
        "batch_size": run.batch_size,
        "device": "cuda" if run.gpus_per_worker > 0 else "cpu",
        "backend": options.backend,
    }


class LocalRunner:
    """Runs every shard in this process, one after another (no Ray needed)."""

    def __init__(self, run: RunOptions) -> None:
        self.run = run
        self.encoder: TextEncoder | None = None

    def scan(self, shards: list[Shard], ctx: ShardContext) -> Iterator[ShardScan]:
        for shard in shards:
            yield scan_shard(shard, ctx)

    def start_encoders(self, options: EmbedOptions, n_shards: int) -> ModelFingerprint:
        self.encoder = TextEncoder(**_encoder_args(options, self.run))
        return self.encoder.fingerprint

    def embed(
        self, shards: list[Shard], ctx: ShardContext, drop_rows: Mapping[int, Collection[int]]
    ) -> Iterator[ShardResult]:
        assert self.encoder is not None, "start_encoders first"
        for shard in shards:
            yield embed_shard(shard, ctx, self.encoder, drop_rows=drop_rows.get(shard.index, ()))

    def close(self) -> None:
        self.encoder = None


def ensure_ray(address: str | None, *, dashboard: bool = False, **init_options: Any) -> None:
    """Connect to the Ray cluster at `address`, or to a running one, or start a local one
    (with Ray's dashboard only when asked: it costs 0.6 s of every job's start; the
    `init_options` go to `ray.init`).

    Without an address Ray joins the cluster recorded in its temp folder; when that cluster
    is gone (stopped without `ray stop`) Ray would wait for it forever, so a local instance
    is started instead, with a warning naming the dead address."""
    import ray

    if ray.is_initialized():
        return
    if address is None and not os.environ.get("RAY_ADDRESS"):
        from ray._common.utils import get_ray_address_file  # where `ray start` records it

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
    if "runtime_env" in init_options:
        init_options["runtime_env"] = _beside_job_env(init_options["runtime_env"])
    ray.init(address=address, **{"log_to_driver": True, **init_options})


def ray_connected() -> bool:
    """Whether this process is connected to Ray (without importing Ray)."""
    return "ray" in sys.modules and bool(sys.modules["ray"].is_initialized())


def stop_ray() -> None:
    """Disconnect from Ray, stopping the local instance this process started, now rather
    than in Ray's exit hook, which first sleeps 0.5 s for worker logs to print. For the
    end of a command that connected to Ray itself: a caller's Ray is left alone.

    The local instance's autoscaler monitor (a child of this process) is killed first:
    `ray.shutdown` stops the GCS before it, and the monitor's SIGTERM handler then waits
    on the dead GCS until Ray kills it a second later (1.0 of shutdown's 1.3 s)."""
    if not ray_connected():
        return
    import psutil
    import ray

    for child in psutil.Process().children():
        try:
            if any(part.endswith("autoscaler/_private/monitor.py") for part in child.cmdline()):
                child.kill()
        except psutil.NoSuchProcess:
            continue  # gone already
    ray.shutdown()


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
    import psutil

    return any(p.info["name"] == "raylet" for p in psutil.process_iter(["name"]))


def current_node() -> str:
    """The Ray node this code runs on (its node id), or the host name outside Ray."""
    import ray

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


class _EmbedActor:
    """One model per worker process; `embed` runs one shard."""

    def __init__(self, encoder_args: dict[str, Any], num_threads: int) -> None:
        for name, value in WORKER_ENV.items():  # before the model's libraries are imported
            os.environ.setdefault(name, value)
        self.encoder = TextEncoder(**encoder_args, num_threads=num_threads)
        self.node = current_node()

    def fingerprint(self) -> tuple[ModelFingerprint, str]:
        return self.encoder.fingerprint, self.node

    def embed(
        self,
        shard: Shard,
        ctx: ShardContext,
        drop_rows: Collection[int],
        expected: ModelFingerprint,
    ) -> ShardResult:
        expected.require_compatible(
            self.encoder.fingerprint, what="the job", other_what=f"the worker on node {self.node}"
        )
        return embed_shard(shard, ctx, self.encoder, drop_rows=drop_rows, node=self.node)


class RayRunner:
    """Runs scans as Ray tasks and embedding on a pool of model-holding actors."""

    def __init__(self, run: RunOptions) -> None:
        import ray

        ensure_ray(run.address)
        self.ray = ray
        self.run = run
        self.actors: list[Any] = []
        self._make_actor: Callable[[], Any] | None = None
        self.fingerprint: ModelFingerprint | None = None

    def scan(self, shards: list[Shard], ctx: ShardContext) -> Iterator[ShardScan]:
        task = self.ray.remote(scan_shard).options(
            num_cpus=min(1.0, self.run.cpus_per_worker),
        )
        ctx_ref = self.ray.put(ctx)
        pending = [task.remote(s, ctx_ref) for s in shards]
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            yield self.ray.get(done[0])

    def start_encoders(self, options: EmbedOptions, n_shards: int) -> ModelFingerprint:
        workers = max(1, min(worker_slots(self.run), n_shards))
        actor_cls = self.ray.remote(_EmbedActor).options(
            num_cpus=self.run.cpus_per_worker,
            num_gpus=self.run.gpus_per_worker,
        )
        args = _encoder_args(options, self.run)
        backend = resolve_backend(options.backend, args["device"])
        if backend != "torch":  # convert once here, not in every actor at the same time
            converted_model(options.model, "int8" if backend == "openvino" else "fp32")
        threads = max(1, round(self.run.cpus_per_worker))
        self._make_actor = lambda: actor_cls.remote(args, threads)
        self.actors = [self._make_actor() for _ in range(workers)]
        answers = self.ray.get([a.fingerprint.remote() for a in self.actors])
        first = answers[0][0]
        for fp, node in answers[1:]:
            first.require_compatible(fp, what="the model on one worker", other_what=f"node {node}")
        self.fingerprint = first
        return first

    def _room_for_another(self, busy: int, remaining: int) -> bool:
        """Whether the pool may grow: a node joined or one came back, and work is left."""
        target = worker_slots(self.run)
        free = float(self.ray.available_resources().get("CPU", 0.0))
        return busy < min(target, remaining) and free >= self.run.cpus_per_worker

    def embed(
        self, shards: list[Shard], ctx: ShardContext, drop_rows: Mapping[int, Collection[int]]
    ) -> Iterator[ShardResult]:
        """Each idle actor takes the next shard. An actor that dies (its node lost) is dropped
        and its shard re-queued; the pool grows again when the cluster has room (a node
        joining mid-job takes work), and never shrinks to nothing."""
        from ray.exceptions import RayActorError, RayTaskError

        assert self._make_actor is not None, "start_encoders first"
        ctx_ref = self.ray.put(ctx)
        pending = deque(shards)
        idle = deque(self.actors)
        inflight: dict[Any, tuple[Shard, Any]] = {}
        failures: dict[int, int] = {}
        # actors added mid-job get work only once they are up: one that Ray cannot place
        # (resources that vanished with a lost node) must not hold a shard forever
        starting: dict[Any, Any] = {}
        error: BaseException | None = None
        while pending or inflight:
            if error is None and pending:
                if not self.actors or self._room_for_another(
                    len(self.actors), len(pending) + len(inflight)
                ):
                    actor = self._make_actor()
                    self.actors.append(actor)
                    starting[actor.fingerprint.remote()] = actor
                while pending and idle:
                    actor, shard = idle.popleft(), pending.popleft()
                    rows = list(drop_rows.get(shard.index, ()))
                    ref = actor.embed.remote(shard, ctx_ref, rows, self.fingerprint)
                    inflight[ref] = (shard, actor)
            if not inflight and not (starting and pending and error is None):
                break
            done, _ = self.ray.wait([*inflight, *starting], num_returns=1, timeout=5.0)
            if not done:
                continue  # nothing finished yet: look again for room to grow
            if done[0] in starting:
                actor = starting.pop(done[0])
                try:
                    self.ray.get(done[0])
                    idle.append(actor)
                except RayActorError:
                    self.actors.remove(actor)
                continue
            shard, actor = inflight.pop(done[0])
            try:
                result = self.ray.get(done[0])
            except RayTaskError as e:  # the work raised: stop, finish what runs, re-raise
                error = error or (e.cause if e.cause is not None else e)
                idle.append(actor)
                continue
            except RayActorError as e:  # the worker or its node died: retry elsewhere
                failures[shard.index] = failures.get(shard.index, 0) + 1
                log.warning("worker for %s died (%s); retrying on the others", shard.describe(), e)
                if failures[shard.index] > self.run.max_task_retries:
                    error = error or e
                else:
                    pending.appendleft(shard)
                self.actors.remove(actor)
                continue
            idle.append(actor)
            yield result
        if error is not None:
            raise error

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []


def make_runner(run: RunOptions) -> Runner:
    return RayRunner(run) if run.runner == "ray" else LocalRunner(run)


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
    from tqdm.auto import tqdm

    results: list[Any] = [None] * len(calls)
    with tqdm(total=len(calls), desc=desc, unit="task", disable=not run.progress) as bar:
        if run.runner == "local":
            for i, args in enumerate(calls):
                results[i] = fn(*args)
                bar.update(1)
            return results
        import ray

        ensure_ray(run.address)
        task = ray.remote(fn).options(
            num_cpus=num_cpus if num_cpus is not None else run.cpus_per_worker,
            max_retries=run.max_task_retries,
        )
        from ray.exceptions import RayTaskError

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
    import ray

    ensure_ray(run.address)
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    return max(1, int(cpus // run.cpus_per_worker))


def largest_node_cpus(run: RunOptions) -> float:
    """CPUs of the biggest node (for a task that should use one whole machine)."""
    if run.runner == "local":
        return 1.0
    import ray

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
    import uuid

    import ray
    from fsspec.core import url_to_fs
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

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
