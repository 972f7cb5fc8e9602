"""Index writes asked over HTTP (/v1/upsert, /v1/delete) and version switches, kept
outside the serving replicas.

A `VersionKeeper` (one detached Ray actor per served application, zero CPUs) owns both:
- **writes**: `submit` records a write under an id and returns at once (the route
  answers 202 with it; GET /v1/writes/{id} reports it). The keeper runs the writes one
  after another, each as a Ray task (`apply_write`: the update embeds the new documents
  and rewrites the shards it touches, heavier than any search), and switches the app to
  the version a write published, whether or not its client is still there;
- **switches**: every deploy of another version (a write's, a reload's, `--watch`'s)
  goes through `switch`, one at a time. A write's switch goes only forward: a slower
  write that published v-5 never replaces v-6 already served. A version is verified
  before it is deployed; new replicas start before old ones stop, and when they fail to
  start the served version is deployed again (rolled back) and the failure reported:
  in the write's or reload's record, the `switch_failed` / `rolled_back` counts, the log.
A replica that is replaced mid-write (the switch itself replaces them) loses nothing:
the keeper is not a replica. The keeper itself is restarted by Ray when it dies
(`max_restarts=-1`); the restarted keeper first reconciles: a collection whose CURRENT
is newer than what it was started to serve (a write published, then the keeper died
before switching) is switched forward. Every accepted write is recorded under the index
(journal.py) before its 202 and forgotten once finished, so writes that were queued or
running in a keeper that died (or a server that was stopped) run again, under the same
id, when the next keeper first answers; at most MAX_PENDING_WRITES wait at once
(beyond, 429).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import pyarrow as pa
import ray
from ray.exceptions import RayError, RayTaskError

from embedlib.distributed import use_worker_env
from embedlib.exceptions import EmbedlibError, IndexLockedError, SourceError, SwitchError
from embedlib.index.store.layout import published_version
from embedlib.index.store.version import IndexVersion
from embedlib.index.update.upsert import UpdateReport, update_index
from embedlib.options import RunOptions
from embedlib.serve.config import AppOptions
from embedlib.serve.journal import PendingWrite, WriteJournal
from embedlib.serve.metrics import VersionEvents

log = logging.getLogger(__name__)
WRITE_CPUS = 1.0  # the update task embeds: one CPU of the cluster's
WRITE_LOCK_WAIT_S = 600.0  # a write waits this long for another writer of the index
WRITES_KEPT = 1000  # finished writes remembered for GET /v1/writes/{id}
MAX_PENDING_WRITES = 64  # queued or running writes at once; beyond, a write is refused
NAMESPACE = "embedlib"


def apply_write(
    index: str,
    storage_options: dict[str, Any],
    documents: list[dict[str, Any]],
    deletes: list[str],
    text_column: str,
    wait_s: float,
) -> UpdateReport:
    """The update of `index`: `documents` (id, text, metadata) upserted and
    `deletes` removed, through the versioned update path (its lock included)."""
    use_worker_env()
    table = (
        pa.Table.from_pylist(
            [{"id": d["id"], text_column: d["text"], **d["metadata"]} for d in documents]
        )
        if documents
        else None
    )
    return update_index(
        index, upserts=table, delete_ids=deletes, delta=True, wait_s=wait_s,
        run=RunOptions(runner="local", progress=False, storage_options=storage_options),
    )  # fmt: skip


def keeper_name(options: AppOptions) -> str:
    """The keeper's actor name: the application's name and its collections."""
    what = "\n".join(f"{c.name}={c.index}" for c in options.collections)
    return f"keeper-{options.app_name}-{hashlib.sha256(what.encode()).hexdigest()[:12]}"


def version_number(name: str) -> int:
    return int(name.rsplit("-", 1)[-1])


class VersionKeeper:
    """The writes and version switches of one served application (see the module)."""

    def __init__(
        self,
        options: AppOptions,
        served: Mapping[str, str],
        switch: Callable[[Mapping[str, str]], None],
    ) -> None:
        self.options, self.served, self._switch = options, dict(served), switch
        self.writes: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.counts: Counter[str] = Counter()
        self.events = VersionEvents(keeper_name(options))  # the same counts, as Ray metrics
        self._write_lock = asyncio.Lock()
        self._switch_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconciled = False
        name = keeper_name(options)
        self._journals = {
            c.name: WriteJournal(c.index, name, options.storage_options)
            for c in options.collections
        }

    async def _reconcile(self) -> None:
        """On the first call (in the background: the call answers at once): after a
        restart, switch each collection forward to its CURRENT when that is newer than
        the version this keeper was started with; and run again the writes the journal
        holds (accepted by a keeper that died or was stopped before they finished), whose
        records answer from now on."""
        if self._reconciled:
            return
        self._reconciled = True
        if _restarted():
            self._count("keeper_restarted")
            self._start(self._switch_forward())
        for journal in self._journals.values():
            for write in await asyncio.to_thread(journal.pending):
                record = {**write.record, "status": "queued", "resumed": True}
                if record["write_id"] in self.writes:
                    continue
                self.writes[record["write_id"]] = record
                self._count("write_resumed")
                self._start(self._run(record, write.documents, write.deletes, write.text_column))

    async def _switch_forward(self) -> None:
        """Switch each collection to its CURRENT when that is newer than the served one."""
        so = self.options.storage_options
        for c in self.options.collections:
            current = await asyncio.to_thread(published_version, c.index, so)
            try:
                await self.switch(c.name, current, forward_only=True)
            except Exception as e:  # noqa: BLE001  counted and logged: the served one stays
                log.error("reconciling %s with CURRENT %s failed: %s", c.name, current, e)

    async def pending(self) -> int:
        return sum(r["status"] in ("queued", "running") for r in self.writes.values())

    async def submit(
        self,
        collection: str,
        documents: list[dict[str, Any]],
        deletes: list[str],
        text_column: str,
    ) -> dict[str, Any] | None:
        """Record a write to `collection` and start it; its record (status "queued"), or
        None when MAX_PENDING_WRITES wait already."""
        await self._reconcile()
        if await self.pending() >= MAX_PENDING_WRITES:
            self._count("write_refused")
            return None
        record = self._record(collection, kind="write", documents=len(documents),
                              deletes=len(deletes))  # fmt: skip
        write = PendingWrite(dict(record), documents, deletes, text_column)
        try:  # recorded before it is acknowledged: a restarted keeper runs it
            await asyncio.to_thread(self._journals[collection].save, write)
        except OSError as e:
            del self.writes[record["write_id"]]
            raise SourceError(f"the write could not be recorded under the index: {e}") from e
        self._start(self._run(record, documents, deletes, text_column))
        return dict(record)

    def _record(self, collection: str, **fields: Any) -> dict[str, Any]:
        """A new write or reload record, kept (the oldest finished ones forgotten beyond
        WRITES_KEPT)."""
        write_id = uuid.uuid4().hex
        record: dict[str, Any] = {"write_id": write_id, "collection": collection,
                                  "status": "queued", "submitted_at": time.time(),
                                  **fields}  # fmt: skip
        self.writes[write_id] = record
        while len(self.writes) > WRITES_KEPT:
            oldest = next(iter(self.writes))
            if self.writes[oldest]["status"] in ("queued", "running"):
                break
            del self.writes[oldest]
        return record

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self, collection: str, version: str) -> dict[str, Any]:
        """Switch `collection` to `version` (verified by the caller) in the background; its
        record, kept and reported like a write's (kind "reload"): done once the new
        replicas serve, failed (error code "switch_failed") when they did not start and
        the served version was deployed again."""
        await self._reconcile()
        record = self._record(collection, kind="reload", documents=0, deletes=0)
        record.update(previous=self.served[collection], version=version)
        self._start(self._run_reload(record))
        return dict(record)

    async def _run_reload(self, record: dict[str, Any]) -> None:
        record["status"] = "running"
        try:
            record["switched"] = await self.switch(
                record["collection"], record["version"], forward_only=False, verify=False
            )
        except (SwitchError, SourceError) as e:
            record.update(status="failed", finished_at=time.time(),
                          error={"code": "switch_failed", "message": str(e)})  # fmt: skip
            return
        record.update(status="done", finished_at=time.time())

    async def status(self, write_id: str) -> dict[str, Any] | None:
        await self._reconcile()
        record = self.writes.get(write_id)
        return None if record is None else dict(record)

    async def verify(self, collection: str, version: str) -> str | None:
        """Why `version` of `collection` cannot be served (None: it can): see
        `IndexVersion.verify`; a refusal is counted and logged."""
        index = self.options.collection(collection).index
        so = self.options.storage_options
        try:
            await asyncio.to_thread(
                lambda: IndexVersion(index, version=version, storage_options=so).verify()
            )
        except (SourceError, OSError, ValueError) as e:
            self._count("switch_refused")
            log.error("not switching %s to %s: %s", collection, version, e)
            return str(e)
        return None

    async def switch(
        self, collection: str, version: str, forward_only: bool = True, verify: bool = True
    ) -> bool:
        """Deploy `version` of `collection` (one switch at a time) once it is verified
        (`verify`: else the caller did); with `forward_only`, only if it is newer than the
        served one. Whether it deployed; SourceError when the version cannot serve."""
        async with self._switch_lock:
            served = self.served[collection]
            if version == served or (
                forward_only and version_number(version) < version_number(served)
            ):
                return False
            wanted = {**self.served, collection: version}
            if verify and (problem := await self.verify(collection, version)) is not None:
                raise SourceError(problem)  # never switch to a version that cannot serve
            try:
                await asyncio.to_thread(self._switch, wanted)
            except Exception as e:
                raise await self._roll_back(collection, version, e) from e
            self.served = wanted
            self._count("switched")
            return True

    async def _roll_back(self, collection: str, version: str, error: Exception) -> SwitchError:
        """After a failed switch of `collection` to `version`: deploy what was served
        before again (its replicas still serve: new ones start before old ones stop); the
        error saying what happened, for the caller to raise."""
        self._count("switch_failed")
        served = self.served[collection]
        log.error("switching %s to %s failed: %s; deploying %s again", collection, version,
                  error, served)  # fmt: skip
        try:
            await asyncio.to_thread(self._switch, self.served)
        except Exception as again:  # noqa: BLE001  counted, logged and reported
            self._count("rollback_failed")
            log.error("deploying %s of %s again failed: %s", served, collection, again)
            return SwitchError(f"switching {collection} to {version} failed ({error}); "
                               f"deploying {served} again failed too ({again})")  # fmt: skip
        self._count("rolled_back")
        return SwitchError(f"switching {collection} to {version} failed ({error}); "
                           f"rolled back: {served} is served")  # fmt: skip

    async def note(self, event: str) -> None:
        """Count an event of the application's version keeping (e.g. a --watch failure)."""
        self._count(event)

    def _count(self, event: str) -> None:
        self.counts[event] += 1
        self.events.count(event)

    async def stats(self) -> dict[str, Any]:
        """The served version and the keeper's counters."""
        return {"served": self.served, "counts": dict(self.counts)}

    async def _run(
        self,
        record: dict[str, Any],
        documents: list[dict[str, Any]],
        deletes: list[str],
        text_column: str,
    ) -> None:
        """Apply a write, then forget it in the journal (done or failed; a keeper that dies
        first leaves it there, to be run again)."""
        try:
            await self._apply(record, documents, deletes, text_column)
        finally:
            journal = self._journals[record["collection"]]
            await asyncio.to_thread(journal.remove, record["write_id"])

    async def _apply(
        self,
        record: dict[str, Any],
        documents: list[dict[str, Any]],
        deletes: list[str],
        text_column: str,
    ) -> None:
        async with self._write_lock:
            record["status"] = "running"
            task = ray.remote(apply_write).options(num_cpus=WRITE_CPUS, max_retries=0)
            try:
                index = self.options.collection(record["collection"]).index
                report: UpdateReport = await task.remote(
                    index, self.options.storage_options, documents, deletes, text_column,
                    WRITE_LOCK_WAIT_S,
                )  # fmt: skip
            except RayTaskError as e:
                self._failed(record, e.cause if e.cause is not None else e)
                return
            except RayError as e:  # its worker or node died
                self._failed(record, e)
                return
        record.update(
            version=report.version, previous=report.previous, added=report.added,
            changed=report.changed, deleted=report.deleted, warnings=report.warnings,
            switched=False,
        )  # fmt: skip
        if report.version is not None:
            try:
                record["switched"] = await self.switch(
                    record["collection"], report.version, forward_only=True
                )
            except (SwitchError, SourceError) as e:  # published; the app could not switch
                record["switch_error"] = str(e)
            except Exception as e:
                error_id = uuid.uuid4().hex[:16]
                log.exception("switching to %s failed: error id %s", report.version, error_id)
                record["switch_error"] = f"{type(e).__name__}; the log holds it as {error_id}"
        record.update(status="done", finished_at=time.time())  # a waiting client reads on
        self._count("write_done")

    def _failed(self, record: dict[str, Any], error: BaseException) -> None:
        if isinstance(error, IndexLockedError):
            code, message = "locked", str(error)
        elif isinstance(error, EmbedlibError):
            code, message = "invalid_update", str(error)
        else:
            error_id = uuid.uuid4().hex[:16]
            log.error("write %s failed: error id %s", record["write_id"], error_id,
                      exc_info=error)  # fmt: skip
            code, message = "internal_error", f"the write failed; the log holds it as {error_id}"
        record.update(status="failed", finished_at=time.time(),
                      error={"code": code, "message": message})  # fmt: skip
        self._count("write_failed")


def _restarted() -> bool:
    """Whether this keeper is a restart of one that died (False outside an actor)."""
    try:
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except (AttributeError, RuntimeError):
        return False


KeeperActor = ray.remote(num_cpus=0, max_restarts=-1)(VersionKeeper)


def keeper(
    options: AppOptions, served: Mapping[str, str], switch: Callable[[Mapping[str, str]], None]
) -> Any:
    """The application's keeper, started (detached) if it is not running."""
    return KeeperActor.options(
        name=keeper_name(options), namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(options, served, switch)


def stop_keeper(options: AppOptions) -> None:
    """Stop the application's keeper, if one runs."""
    with contextlib.suppress(ValueError):  # none runs
        ray.kill(ray.get_actor(keeper_name(options), namespace=NAMESPACE))
