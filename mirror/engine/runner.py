"""Carry out a Plan: link what the store already holds, fetch the rest with a bounded pool
of workers under one TaskGroup, remove stray views, and keep the index in step.

Structured concurrency: one TaskGroup is the root of every task; nothing is fire-and-forget.
A disk error (or a dead endpoint) stops the whole run; any other failure fails one file and
the run goes on. Whatever happens, open partials are closed (their resume state kept) and
the index records what was published.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .. import events as ev
from ..errors import Action, MirrorError, OfflineError, ViewBlocked
from ..hashing import Digests
from ..plan import Fetch, Plan
from ..store.index import IndexRecord, StateIndex
from ..store.claims import Claims
from ..store.facade import Store
from ..limits import Limits
from ..policy import Pacer, RetryPolicy, call_with_retries, first_error
from .transfer import Job, Reporter, Transfer, Verify
from .writer import HoldBudget

if TYPE_CHECKING:
    from ..remote.client import Remote

Event = ev.Event

@dataclass(frozen=True)
class Failure:
    """One file that could not be mirrored, with the error itself (its type is what a caller
    catches: `get_file_path` raises it again)."""

    key: str
    version_id: str | None
    error: MirrorError
    views: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"key": self.key, "version_id": self.version_id, "error": type(self.error).__name__,
                "message": str(self.error), "views": list(self.views)}


@dataclass(frozen=True)
class Snapshot:
    """The counters a progress display shows, copied on the loop thread (Stats.publish): a
    display in another thread reads this, never the live Stats the loop is changing."""

    bytes_done: int = 0
    bytes_total: int = 0
    bytes_resumed: int = 0
    files_done: int = 0
    files_linked: int = 0
    in_flight: int = 0
    retries: int = 0
    failed: int = 0
    seconds: float = 0.0


@dataclass
class Stats:
    """A run's counters, changed on the loop thread only; other threads read `published`."""

    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0  # fetched over the network by this run
    bytes_resumed: int = 0  # already on disk in partials from an earlier run
    bytes_read_back: int = 0  # hashed from disk: parts that landed ahead of the reorder window
    files_linked: int = 0
    bytes_linked: int = 0
    files_present: int = 0
    bytes_present: int = 0
    removed: int = 0
    retries: int = 0
    files_elsewhere: int = 0  # (--shard) another process was fetching them: its run makes their views
    # (--shard) counts that add up, for one shard's log:
    #   its part (objects it was given to fetch): part_views = part_fetched_views + views_by_others + failed
    #   the rest of the selection: linked from the store + present (every shard makes sure of them)
    #   other shards' parts: helped_views (fetched here) + helped_linked (their objects, views made
    #   here) + elsewhere_views (left to the shard fetching them)
    part_views: int = 0
    part_fetched_views: int = 0
    views_by_others: int = 0  # views of its part made from objects another shard fetched
    store_linked: int = 0  # views linked from content already in the store
    helped_files: int = 0  # of files_done: objects of other shards' parts (nobody had claimed them)
    helped_bytes: int = 0
    helped_views: int = 0
    helped_linked: int = 0
    elsewhere_views: int = 0
    shard: str | None = None
    procs: list[dict] | None = None  # (sync --procs) each process: its shard, exit status, what it fetched
    in_flight: set[str] = field(default_factory=set)
    failures: list[Failure] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    published: Snapshot = field(default_factory=Snapshot)

    def publish(self) -> None:
        """A new `published` snapshot (one attribute swapped: a reader sees the old or the new)."""
        self.published = Snapshot(self.bytes_done, self.bytes_total, self.bytes_resumed, self.files_done,
                                  self.files_linked, len(self.in_flight), self.retries, len(self.failures),
                                  self.seconds)

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def summary(self) -> dict:
        secs = self.seconds
        return {
            "files": self.files_total,
            "files_fetched": self.files_done,
            "bytes_fetched": self.bytes_done,
            "bytes_resumed": self.bytes_resumed,
            "bytes_read_back": self.bytes_read_back,
            "files_linked": self.files_linked,
            "bytes_linked": self.bytes_linked,
            "files_present": self.files_present,
            "bytes_present": self.bytes_present,
            "removed": self.removed,
            "seconds": round(secs, 3),
            "mb_per_s": round(self.bytes_done / secs / 1e6, 2) if secs > 0 else 0.0,
            "retries": self.retries,
            **({"shard": self.shard, "files_elsewhere": self.files_elsewhere,
                "part": {"views": self.part_views, "fetched_objects": self.files_done - self.helped_files,
                         "fetched_bytes": self.bytes_done - self.helped_bytes, "fetched_views": self.part_fetched_views,
                         "by_others": self.views_by_others},
                "store_linked": self.store_linked,
                "others": {"fetched_objects": self.helped_files, "fetched_bytes": self.helped_bytes,
                           "fetched_views": self.helped_views, "linked_views": self.helped_linked,
                           "left_objects": self.files_elsewhere, "left_views": self.elsewhere_views}}
               if self.shard else {}),
            **({"procs": self.procs} if self.procs else {}),
            "failures": [f.to_dict() for f in self.failures],
            "ok": not self.failures,
        }


class Engine:
    INDEX_COMMIT_SECONDS = 30.0
    PROGRESS_SECONDS = 1.0  # a Progress event
    SNAPSHOT_SECONDS = 0.25  # Stats.published, for a display in another thread

    def __init__(self, *, store: Store, remote: Remote | None, index: StateIndex,
                 limits: Limits = Limits(), policy: RetryPolicy | None = None, verify: Verify = Verify.MANIFEST,
                 on_event: Callable[[Event], None] = lambda e: None, pacer: Pacer | None = None,
                 prepare_index: Callable[[], dict] | None = None, claims: Claims | None = None) -> None:
        """`prepare_index` loads the index and brings it in step with the store; it runs in a
        thread of its own while the transfers start (reading Parquet means importing pyarrow),
        and the engine records into the index only once it is done. None: the index is left
        alone (a run with nothing to do). `claims` (shards sharing cache_dir): each object is
        fetched under its claim, so two processes never fetch the same one."""
        self.store = store  # every write to cache_dir goes through it
        self.remote = remote
        self.index = index
        self.limits = limits
        self.policy = policy or RetryPolicy()
        self.verify = verify
        self.emit = on_event
        self.pacer = pacer or Pacer()
        self.stats = Stats()
        self.budget = HoldBudget(limits.held_buffers)
        self._last_commit = time.monotonic()
        self._prepare_index = prepare_index
        self._index_ready: concurrent.futures.Future | None = None
        self._early: list[IndexRecord] = []  # recorded before the index was ready
        self._committing: tuple[concurrent.futures.Future, tuple] | None = None
        self._index_pool: ThreadPoolExecutor | None = None
        self._waiting = 0  # files not yet taken by a worker
        self.claims = claims
        self._deferred: list[Fetch] = []  # our own objects another process held: waited for at the end
        self._resumable: set[str] = set()  # objects with resume state on disk, as the files were handed out

    async def run(self, plan: Plan) -> Stats:
        st = self.stats
        st.files_total = plan.views_total
        st.bytes_total = plan.fetch_bytes
        st.files_present, st.bytes_present = len(plan.present), plan.present_bytes
        st.shard = str(plan.shard) if plan.shard else None
        st.part_views = sum(len(f.views) for f in plan.fetch)
        st.publish()
        self.emit(ev.Started(plan.summary()))
        executor = ThreadPoolExecutor(max_workers=self.limits.io_threads, thread_name_prefix="vbo-io")
        self._index_pool = index_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vbo-index")
        if self._prepare_index is not None:
            self._index_ready = index_pool.submit(self._load_index)
        try:
            loop = asyncio.get_running_loop()
            # Content already in the store: views only (cheap, done first).
            for link in plan.link:
                try:
                    await loop.run_in_executor(executor, self._link, link.file_hash, [link.view])
                except ViewBlocked as exc:
                    self._failed(link.view, None, exc, [link.view])
                    continue
                st.files_linked += 1
                st.bytes_linked += link.size
                st.store_linked += 1
                if st.files_linked % 256 == 0:  # (the ticker runs only while fetching)
                    st.publish()
            st.publish()
            if plan.fetch:
                if self.remote is None:
                    raise OfflineError(f"{len(plan.fetch)} files ({plan.fetch_bytes} bytes) need fetching "
                                       "and vbo-mirror is offline", hint="drop --offline to fetch them")
                await self._fetch_all(plan.fetch, executor)
            if plan.steal and self.remote is not None:
                await self._fetch_all(plan.steal, executor, mode="steal")
            if self._deferred:
                deferred, self._deferred = tuple(self._deferred), []
                await self._fetch_all(deferred, executor, mode="wait")
            for rel in plan.remove:
                try:
                    self.store.remove_view(rel)
                except ViewBlocked as exc:
                    self._failed(rel, None, exc, [rel])
                    continue
                st.removed += 1
            st.publish()
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            st.finished = time.monotonic()
            st.publish()
            try:
                self._final_commit()  # synchronous on purpose: it must happen even when cancelled
            finally:
                index_pool.shutdown(wait=True)
        self.emit(ev.Summary(st.summary()))
        return st

    async def _fetch_all(self, items: tuple[Fetch, ...], executor: ThreadPoolExecutor, mode: str = "own") -> None:
        """`mode` (with claims): "own" defers an object another process holds to the end,
        "steal" leaves it to that process, "wait" waits for the claim."""
        gets = asyncio.Semaphore(self.limits.jobs)
        queue: asyncio.Queue[Fetch | None] = asyncio.Queue(maxsize=self.limits.jobs * 2)
        workers = min(self.limits.jobs, len(items))

        loop = asyncio.get_running_loop()

        async def produce() -> None:
            chunk: list[Fetch] = []
            for item in items:
                chunk.append(item)
                if len(chunk) == self.HINT_CHUNK:
                    await hand_out(chunk)
                    chunk = []
            await hand_out(chunk)
            for _ in range(workers):
                await queue.put(None)

        async def hand_out(chunk: list[Fetch]) -> None:
            # Which of these have resume state on disk: one worker-thread call per chunk, not a
            # system call on the event loop per file (see Transfer's `fresh`).
            if chunk:
                self._resumable |= await loop.run_in_executor(executor, self.store.resumable,
                                                              [f.file_hash for f in chunk])
            for f in chunk:
                await queue.put(f)

        self._waiting = len(items)

        async def work() -> None:
            while (item := await queue.get()) is not None:
                self._waiting -= 1
                if self.claims is None:
                    await self._fetch_one(item, gets, executor)
                else:
                    await self._fetch_claimed(item, gets, executor, mode)

        async def tick() -> None:
            st = self.stats
            last = time.monotonic()
            while True:
                await asyncio.sleep(self.SNAPSHOT_SECONDS)
                st.publish()
                if time.monotonic() - last >= self.PROGRESS_SECONDS:
                    last = time.monotonic()
                    self.emit(ev.Progress(st.bytes_done, st.bytes_total, st.files_done, len(st.in_flight),
                                          st.retries, round(st.bytes_done / max(st.seconds, 1e-9) / 1e6, 2)))

        try:
            async with asyncio.TaskGroup() as outer:
                ticker = outer.create_task(tick())
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(produce())
                        for _ in range(workers):
                            tg.create_task(work())
                finally:
                    ticker.cancel()
        except BaseExceptionGroup as eg:
            inner = first_error(eg)
            raise inner from eg

    CLAIM_POLL_SECONDS = 0.25
    HINT_CHUNK = 64  # files whose resume state is looked up in one worker-thread call

    async def _fetch_claimed(self, item: Fetch, gets: asyncio.Semaphore, executor: ThreadPoolExecutor,
                             mode: str) -> None:
        claims, h = self.claims, item.file_hash
        while not claims.try_claim(h):
            if mode == "steal":
                self.stats.files_elsewhere += 1
                self.stats.elsewhere_views += len(item.views)
                return
            if mode == "own":
                self._deferred.append(item)
                return
            await asyncio.sleep(self.CLAIM_POLL_SECONDS)  # its holder is fetching it: not for long
        try:
            if self.store.has_object(h):  # published by another process since we planned
                if await asyncio.get_running_loop().run_in_executor(executor, self._link_fetched, item,
                                                                    mode != "steal"):
                    return
            if mode == "steal":
                self.stats.bytes_total += item.size or 0
                self.stats.files_total += len(item.views)
            await self._fetch_one(item, gets, executor, own=mode != "steal")
        finally:
            claims.release(h)

    def _link_fetched(self, item: Fetch, counted: bool) -> bool:
        """In a worker thread: views of an object another process has just published (checked
        first if it was published unverified and this run checks BLAKE2b). False: it was not
        right after all (removed): fetch it."""
        h = item.file_hash
        if self.verify.blake2b and self.store.is_unverified(h):
            self.store.verify_unverified([h])
            if not self.store.has_object(h):
                return False
        try:
            self._link(h, list(item.views))
        except ViewBlocked as exc:
            self._failed(item.ref.key, item.ref.version_id, exc, list(item.views))
            return True
        size = item.size or 0
        if counted:  # planned as a fetch of ours: another shard fetched it (a steal was never counted)
            self.stats.views_by_others += len(item.views)
            self.stats.bytes_total -= size
        else:
            self.stats.helped_linked += len(item.views)
        return True

    async def _fetch_one(self, item: Fetch, gets: asyncio.Semaphore, executor: ThreadPoolExecutor, *,
                         own: bool = True) -> None:
        """`own`: of this run's part (else another shard's part, nobody had claimed it)."""
        st = self.stats
        ref = item.ref
        st.in_flight.add(ref.key)
        started = time.monotonic()
        self.emit(ev.FileStarted(ref.key, ref.version_id, item.size))
        transfer: Transfer | None = None
        try:
            size, etag = item.size, item.etag
            if size is None:
                async with gets:
                    info = await call_with_retries(lambda: self.remote.head(ref), policy=self.policy, pacer=self.pacer)
                size, etag = info.size, info.etag
                st.bytes_total += size
            job = Job(item.file_hash, ref, size, etag)
            transfer = Transfer(job, remote=self.remote, store=self.store, limits=self.limits, policy=self.policy,
                                pacer=self.pacer, gets=gets, executor=executor, verify=self.verify,
                                report=Reporter(self._on_bytes, self._on_retry), budget=self.budget,
                                width=self._part_width, fresh=item.file_hash not in self._resumable)
            digests = await transfer.run(link=lambda src_dir: self.store.link(item.file_hash, item.views,
                                                                               src_dir=src_dir))
            st.bytes_resumed += transfer.resumed_bytes
            st.bytes_read_back += transfer.read_back
            self._record(item, job, digests)
            if transfer.link_error is not None:
                raise transfer.link_error
            st.files_done += 1  # every object this process fetched (progress counts them all)
            if own:
                st.files_linked += len(item.views) - 1
                st.bytes_linked += size * (len(item.views) - 1)
                st.part_fetched_views += len(item.views)
            else:
                st.helped_files += 1
                st.helped_bytes += size
                st.helped_views += len(item.views)
            self.emit(ev.FileDone(ref.key, size, transfer.resumed_bytes, round(time.monotonic() - started, 3),
                                  list(item.views), True if transfer.etag_unverifiable else None))
        except MirrorError as exc:
            if exc.outcome is Action.STOP_RUN:
                raise
            self._failed(ref.key, ref.version_id, exc, list(item.views))
        finally:
            st.in_flight.discard(ref.key)

    def _part_width(self) -> int:
        """Ranged parts of one object in flight: one while files still wait for a worker,
        parts_per_file once every file has started (the tail, where a few large objects
        would otherwise each go down one connection)."""
        return self.limits.parts_per_file if self._waiting <= 0 else 1

    def _failed(self, key: str, version_id: str | None, exc: MirrorError, views: list[str]) -> None:
        # Kept without tracebacks: their frames hold this engine (its index, its pools) alive
        # for as long as the caller keeps the stats.
        seen: set[int] = set()
        e: BaseException | None = exc
        while e is not None and id(e) not in seen:
            seen.add(id(e))
            e.__traceback__ = None
            e = e.__cause__ or e.__context__
        self.stats.failures.append(Failure(key, version_id, exc, tuple(views)))
        self.emit(ev.FileFailed(key, type(exc).__name__, str(exc)))

    def _link(self, file_hash: str, views: list[str]) -> None:
        self.store.link(file_hash, views)

    # --- the state index: loaded, recorded into and committed off the event loop ---------------

    def _load_index(self) -> dict:
        """In the index thread: load and reconcile (the caller's `prepare_index`), then import
        what the commits need, so that none of it waits on the run's critical path."""
        from ..store.index import warm_up

        info = self._prepare_index()
        warm_up()
        return info

    def _index_loaded(self) -> bool:
        return self._index_ready is None or self._index_ready.done()

    def _record(self, item: Fetch, job: Job, d: Digests) -> None:
        # verified_at 0: published without its BLAKE2b checked (the store's mark says so too)
        rec = IndexRecord(item.file_hash, job.size, d.xxh3, job.ref.key, job.ref.version_id, job.etag,
                          StateIndex.now() if self.verify.blake2b else 0.0)
        if not self._index_loaded():
            self._early.append(rec)
            return
        for early in self._early:
            self.index.put(early)
        self._early.clear()
        self.index.put(rec)
        if time.monotonic() - self._last_commit > self.INDEX_COMMIT_SECONDS:
            self._last_commit = time.monotonic()
            self._commit_in_background()

    def _commit_in_background(self) -> None:
        if self._committing is not None:
            fut, delta = self._committing
            if not fut.done():
                return  # one commit at a time; this one's changes go with the next
            self._committing = None
            if fut.exception() is not None:
                self.index.restore_delta(delta)
                self.emit(ev.Warned(f"index not saved: {fut.exception()}"))
        delta = self.index.take_delta()
        if delta is not None:
            self._committing = (self._index_pool.submit(self.index.write_delta, delta), delta)

    def _final_commit(self) -> None:
        """At the end of the run (or its cancellation): wait for the index to be ready and for
        a commit in flight, then write every change. The store is the truth; an index that
        cannot be saved is only a warning (it is rebuilt later)."""
        if self._index_ready is None:
            return
        try:
            info = self._index_ready.result()
            if info.get("added") or info.get("dropped"):
                self.emit(ev.IndexReconciled(info.get("added", 0), info.get("dropped", 0)))
        except Exception as exc:  # noqa: BLE001 - the index is a summary: a sync never fails over it
            self.emit(ev.Warned(f"index not read: {exc}"))
        for early in self._early:
            self.index.put(early)
        self._early.clear()
        if self._committing is not None:
            fut, delta = self._committing
            self._committing = None
            concurrent.futures.wait([fut])
            if fut.exception() is not None:
                self.index.restore_delta(delta)
        try:
            self.index.commit()
        except Exception as exc:  # noqa: BLE001 - the store is the truth; a stale index is rebuilt later
            self.emit(ev.Warned(f"index not saved: {exc}"))

    def _on_bytes(self, n: int) -> None:
        self.stats.bytes_done += n

    def _on_retry(self, key: str, exc: MirrorError, attempt: int, delay: float) -> None:
        self.stats.retries += 1
        self.emit(ev.Retry(key, attempt, round(delay, 3), type(exc).__name__, str(exc)))
