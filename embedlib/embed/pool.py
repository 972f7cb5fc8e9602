"""Where the embed job's splits are encoded: in this process, or on a pool of Ray
actors holding one model each.

The Ray pool keeps one model per worker actor (loaded once, not per split), hands each
idle actor the next split, and re-runs a split elsewhere when its actor or node dies.
An error raised by the work itself (a corrupt file) stops new work, lets splits already
running finish (so they can be committed), and is then raised.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, Protocol

import ray
from ray.exceptions import RayActorError, RayTaskError

from embedlib.distributed import current_node, ensure_ray, use_worker_env, worker_slots
from embedlib.embed.corpus.plan import Split
from embedlib.embed.split import SplitContext, SplitResult, SplitScan, embed_split, scan_split
from embedlib.models.encoders import TextEncoder, resolve_backend
from embedlib.models.fingerprint import ModelFingerprint
from embedlib.models.openvino_backend import converted_model
from embedlib.options import EmbedOptions, RunOptions

log = logging.getLogger(__name__)


class Runner(Protocol):
    def scan(self, splits: list[Split], ctx: SplitContext) -> Iterator[SplitScan]: ...

    def start_encoders(self, options: EmbedOptions, n_splits: int) -> ModelFingerprint: ...

    def embed(
        self, splits: list[Split], ctx: SplitContext, drop_rows: Mapping[int, Collection[int]]
    ) -> Iterator[SplitResult]: ...

    def close(self) -> None: ...


def _encoder_args(options: EmbedOptions, run: RunOptions) -> dict[str, Any]:
    return {
        "model": options.model,
        "normalize": options.normalize,
        "max_seq_length": options.max_seq_length,
        "dims": options.dims,
        "batch_size": run.batch_size,
        "device": "cuda" if run.gpus_per_worker > 0 else "cpu",
        "backend": options.backend,
    }


class LocalRunner:
    """Runs every split in this process, one after another (no Ray needed)."""

    def __init__(self, run: RunOptions) -> None:
        self.run = run
        self.encoder: TextEncoder | None = None

    def scan(self, splits: list[Split], ctx: SplitContext) -> Iterator[SplitScan]:
        for split in splits:
            yield scan_split(split, ctx)

    def start_encoders(self, options: EmbedOptions, n_splits: int) -> ModelFingerprint:
        self.encoder = TextEncoder(**_encoder_args(options, self.run))
        return self.encoder.fingerprint

    def embed(
        self, splits: list[Split], ctx: SplitContext, drop_rows: Mapping[int, Collection[int]]
    ) -> Iterator[SplitResult]:
        assert self.encoder is not None, "start_encoders first"
        for split in splits:
            yield embed_split(split, ctx, self.encoder, drop_rows=drop_rows.get(split.index, ()))

    def close(self) -> None:
        self.encoder = None


class _EmbedActor:
    """One model per worker process; `embed` runs one split."""

    def __init__(self, encoder_args: dict[str, Any], num_threads: int) -> None:
        use_worker_env()  # before the model's libraries are imported
        self.encoder = TextEncoder(**encoder_args, num_threads=num_threads)
        self.node = current_node()

    def fingerprint(self) -> tuple[ModelFingerprint, str]:
        return self.encoder.fingerprint, self.node

    def embed(
        self,
        split: Split,
        ctx: SplitContext,
        drop_rows: Collection[int],
        expected: ModelFingerprint,
    ) -> SplitResult:
        expected.require_compatible(
            self.encoder.fingerprint, what="the job", other_what=f"the worker on node {self.node}"
        )
        return embed_split(split, ctx, self.encoder, drop_rows=drop_rows, node=self.node)


class RayRunner:
    """Runs scans as Ray tasks and embedding on a pool of model-holding actors."""

    def __init__(self, run: RunOptions) -> None:
        ensure_ray(run.address)
        self.run = run
        self.actors: list[Any] = []
        self._make_actor: Callable[[], Any] | None = None
        self.fingerprint: ModelFingerprint | None = None

    def scan(self, splits: list[Split], ctx: SplitContext) -> Iterator[SplitScan]:
        task = ray.remote(scan_split).options(
            num_cpus=min(1.0, self.run.cpus_per_worker),
        )
        ctx_ref = ray.put(ctx)
        pending = [task.remote(s, ctx_ref) for s in splits]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    def start_encoders(self, options: EmbedOptions, n_splits: int) -> ModelFingerprint:
        workers = max(1, min(worker_slots(self.run), n_splits))
        actor_cls = ray.remote(_EmbedActor).options(
            num_cpus=self.run.cpus_per_worker,
            num_gpus=self.run.gpus_per_worker,
        )
        args = _encoder_args(options, self.run)
        backend = resolve_backend(options.backend, args["device"], options.model)
        if backend != "torch":  # convert once here, not in every actor at the same time
            converted_model(options.model, "int8" if backend == "openvino" else "fp32")
        threads = max(1, round(self.run.cpus_per_worker))
        self._make_actor = lambda: actor_cls.remote(args, threads)
        self.actors = [self._make_actor() for _ in range(workers)]
        answers = ray.get([a.fingerprint.remote() for a in self.actors])
        first = answers[0][0]
        for fp, node in answers[1:]:
            first.require_compatible(fp, what="the model on one worker", other_what=f"node {node}")
        self.fingerprint = first
        return first

    def _room_for_another(self, busy: int, remaining: int) -> bool:
        """Whether the pool may grow: a node joined or one came back, and work is left."""
        target = worker_slots(self.run)
        free = float(ray.available_resources().get("CPU", 0.0))
        return busy < min(target, remaining) and free >= self.run.cpus_per_worker

    def embed(
        self, splits: list[Split], ctx: SplitContext, drop_rows: Mapping[int, Collection[int]]
    ) -> Iterator[SplitResult]:
        """Each idle actor takes the next split. An actor that dies (its node lost) is dropped
        and its split re-queued; the pool grows again when the cluster has room (a node
        joining mid-job takes work), and never shrinks to nothing."""
        assert self._make_actor is not None, "start_encoders first"
        ctx_ref = ray.put(ctx)
        pending = deque(splits)
        idle = deque(self.actors)
        inflight: dict[Any, tuple[Split, Any]] = {}
        failures: dict[int, int] = {}
        # actors added mid-job get work only once they are up: one that Ray cannot place
        # (resources that vanished with a lost node) must not hold a split forever
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
                    actor, split = idle.popleft(), pending.popleft()
                    rows = list(drop_rows.get(split.index, ()))
                    ref = actor.embed.remote(split, ctx_ref, rows, self.fingerprint)
                    inflight[ref] = (split, actor)
            if not inflight and not (starting and pending and error is None):
                break
            done, _ = ray.wait([*inflight, *starting], num_returns=1, timeout=5.0)
            if not done:
                continue  # nothing finished yet: look again for room to grow
            if done[0] in starting:
                actor = starting.pop(done[0])
                try:
                    ray.get(done[0])
                    idle.append(actor)
                except RayActorError:
                    self.actors.remove(actor)
                continue
            split, actor = inflight.pop(done[0])
            try:
                result = ray.get(done[0])
            except RayTaskError as e:  # the work raised: stop, finish what runs, re-raise
                error = error or (e.cause if e.cause is not None else e)
                idle.append(actor)
                continue
            except RayActorError as e:  # the worker or its node died: retry elsewhere
                failures[split.index] = failures.get(split.index, 0) + 1
                log.warning("worker for %s died (%s); retrying on the others", split.describe(), e)
                if failures[split.index] > self.run.max_task_retries:
                    error = error or e
                else:
                    pending.appendleft(split)
                self.actors.remove(actor)
                continue
            idle.append(actor)
            yield result
        if error is not None:
            raise error

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def make_runner(run: RunOptions) -> Runner:
    return RayRunner(run) if run.runner == "ray" else LocalRunner(run)
