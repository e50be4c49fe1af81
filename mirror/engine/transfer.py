"""One object from S3 into the store: ranged parts written at their offsets into a
`.partial`, hashed in order off the event loop, verified, then published; or, for a small
object, its whole body held in memory and then hashed, written and published in one go.

Every GET names the object's VersionId; every ranged GET also sends If-Match with the ETag,
so bytes of two different objects can never be stitched together. A broken part resumes
from the byte where it stopped; a hash mismatch discards the whole partial and starts over;
an object that changed on the server fails this one file.
"""

from __future__ import annotations

import asyncio
import contextlib
import concurrent.futures
import functools
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import IntegrityError, MirrorError, ObjectChanged, ObjectNotFound, TransferError
from ..hashing import Digests, MultiHasher
from ..limits import Limits
from ..model import ObjectRef, multipart_count
from ..store.fsutil import store_error
from ..store.objects import Partial, ResumeState, missing_ranges
from ..policy import Pacer, RetryPolicy, call_with_retries
from .verify import Verify
from .writer import CHECKPOINT_BYTES, CHECKPOINT_SECONDS, FileWriter, HoldBudget

if TYPE_CHECKING:
    from ..remote.client import Remote
    from ..store.facade import Store


PROGRESS_BYTES = 1 << 20  # what an attempt must move to count as progress (see `_fetch`)
MakeViews = Callable[[int], None]  # makes an object's views, given its directory's descriptor


@dataclass
class Job:
    file_hash: str
    ref: ObjectRef
    size: int
    etag: str | None


class Reporter:
    """What a transfer tells the engine: bytes as they land, retries, resumed bytes."""

    def __init__(self, on_bytes: Callable[[int], None], on_retry: Callable[[str, MirrorError, int, float], None]) -> None:
        self.on_bytes = on_bytes
        self.on_retry = on_retry


class Transfer:
    """Download one object version into the store. `run` returns its digests once it is
    published, or raises (a MirrorError whose action says what the run does next)."""

    def __init__(self, job: Job, *, remote: Remote, store: Store, limits: Limits, policy: RetryPolicy,
                 pacer: Pacer, gets: asyncio.Semaphore, executor: Executor, verify: Verify,
                 report: Reporter, budget: HoldBudget, width: Callable[[], int] | None = None,
                 fresh: bool = False) -> None:
        self.job = job
        self.remote = remote
        self.store = store
        self.limits = limits
        self.policy = policy
        self.pacer = pacer
        self.gets = gets
        self.executor = executor
        self.verify = verify
        self.report = report
        self.budget = budget
        # Parts of this object in flight at once, asked again as each part ends: one while other
        # files wait for a worker (their GETs keep the connections busy, and parts of one object
        # landing out of order would overflow the reorder window), more at the tail of a run.
        self.width = width or (lambda: limits.parts_per_file)
        # No resume state on disk for this object (as far as the engine looked): a small one
        # may then be fetched whole into memory (`_run_whole`); otherwise its partial resumes.
        self.fresh = fresh
        self.resumed_bytes = 0
        self.read_back = 0
        self.etag_unverifiable = False
        self.link_error: MirrorError | None = None
        self._pending: set[concurrent.futures.Future] = set()
        self._saving: concurrent.futures.Future | None = None  # (small, slow body) the save in flight
        self._saved = False  # (small body) a partial of its first bytes was saved

    async def _thread(self, fn, *args):
        """Run blocking file work in the I/O pool (`_submit`) and wait for it."""
        return await asyncio.wrap_future(self._submit(fn, *args))

    def _submit(self, fn, *args) -> concurrent.futures.Future:
        """Blocking file work for the I/O pool. The futures are tracked: a cancelled await
        does not stop a thread, so cleanup waits for them before it closes the descriptor they
        write to (a closed fd number can be reused by another file)."""
        fut = self.executor.submit(fn, *args)
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        return fut

    def _settle(self) -> None:
        concurrent.futures.wait(list(self._pending))

    async def run(self, *, link: MakeViews | None = None) -> Digests:
        """Fetch, verify, publish; then `link` (the views) in the same worker-thread call, so a
        small file costs few hand-offs. A view that cannot be made leaves the object published
        and its error in `link_error`, for the caller to record the object and then fail the file."""
        job = self.job
        etag_part_size = await self._etag_part_size() if self.verify.etag else None
        buffers = self.remote.buffers
        # (at most CHECKPOINT_BYTES: a kill -9 costs no more of it than of a part streaming in)
        if self.fresh and 0 < job.size <= min(buffers.size, self.limits.part_size, CHECKPOINT_BYTES):
            return await self._run_whole(etag_part_size, link)
        last: MirrorError | None = None
        for attempt in range(self.policy.integrity_attempts):
            partial = await self._open_partial()
            keep = True
            writer = FileWriter(partial, self._hasher(etag_part_size),
                                executor=self.executor, release=buffers.give_threadsafe, release_here=buffers.give,
                                budget=self.budget, on_bytes=self.report.on_bytes)
            try:
                if attempt == 0:
                    self.resumed_bytes = partial.resumed_bytes
                todo = [(s, min(end, s + self.limits.part_size))
                        for start, end in missing_ranges(partial.state.done, job.size)
                        for s in range(start, end, self.limits.part_size)]
                await _in_order(self.width, [lambda s=s, e=e: self._part(writer, s, e) for s, e in todo])
                digests, problem = await self._thread(self._complete, writer, partial, link)
                if problem is None:
                    return digests
                keep = False
                last = self._mismatch(problem, attempt)
            except (ObjectChanged, ObjectNotFound):
                keep = False  # these bytes belong to an object (version) that no longer exists
                raise
            finally:
                # Cleanup runs even when cancelled: let in-flight writes land, record what they
                # wrote (an interrupted attempt keeps the bytes that arrived), then close.
                writer.close()
                self._settle()
                if keep:
                    with contextlib.suppress(MirrorError):
                        partial.checkpoint(writer.written())
                    partial.close()
                else:
                    partial.discard()
        assert last is not None
        raise last

    async def _run_whole(self, etag_part_size: int | None, link: MakeViews | None) -> Digests:
        """A small object (one receive buffer, one part, 4 MiB at most): its body is held in
        memory, then one worker-thread call hashes, checks, writes, syncs, publishes and links
        it. One hand-off per file instead of one per step: with many small files each hand-off
        is a GIL hand-over between the event loop and the I/O threads, and those, more than
        the bytes, bound the rate (RESULTS.md). A body that arrives slowly is saved as a
        partial with its resume state as it comes, as a part's bytes are (`_save`), and one
        cut short keeps what arrived (`_keep`): a later run resumes it like any other."""
        job = self.job
        last: MirrorError | None = None
        for attempt in range(self.policy.integrity_attempts):
            body = _Body(job.size, self.remote.buffers, self.report.on_bytes, self._save)
            handed = False
            try:
                await self._fetch(body, 0, job.size)
                if self._saving is not None:  # a save of the slow body's first bytes, still going
                    await asyncio.wrap_future(self._saving)
                handed = True
                digests, problem = await self._thread(self._publish_whole, body.view(), etag_part_size, link)
            except BaseException as exc:
                self._settle()  # (cancelled) a save, or the thread, may still be reading the body
                if isinstance(exc, (ObjectChanged, ObjectNotFound)):
                    if self._saved:  # its bytes belong to an object (version) that no longer exists
                        self._discard_saved()
                elif not handed and body.pos:
                    self._keep(body.view())
                raise
            finally:
                body.release()
            if problem is None:
                return digests
            last = self._mismatch(problem, attempt)
        assert last is not None
        raise last

    def _mismatch(self, problem: str, attempt: int) -> IntegrityError:
        """The error of an attempt whose bytes did not check out, reported as a retry when
        another attempt follows."""
        ref = self.job.ref
        err = IntegrityError(f"s3://{ref.bucket}/{ref.key} (version {ref.version_id}): {problem}")
        if attempt + 1 < self.policy.integrity_attempts:
            self.report.on_retry(ref.key, err, attempt + 1, 0.0)
        return err

    def _resume_state(self) -> ResumeState:
        """What this object's partial is for (a new one each time: `open_partial` fills it in)."""
        job = self.job
        return ResumeState(job.ref.key, job.ref.version_id, job.etag, job.size)

    def _save(self, snapshot: bytes) -> None:
        """(event loop) A slow small body's bytes so far, saved in a worker thread, one save at
        a time (a save due while one runs is skipped: the next buffer asks again)."""
        if self._saving is not None and not self._saving.done():
            return
        try:
            self._saving = self._submit(self._keep, snapshot)
        except RuntimeError:
            pass  # the pool is shutting down: the cleanup's `_keep` covers it

    def _keep(self, data: bytes | memoryview) -> None:
        """Save `data`, a small body's first bytes, as its partial with the resume state that
        says so: a later run (or a later attempt) continues from there. From a worker thread
        (`_save`) or from cleanup on the event loop (as `run`'s final checkpoint is); a disk
        that refuses only costs those bytes again."""
        with contextlib.suppress(MirrorError, OSError):
            partial = self.store.open_partial(self.job.file_hash, self._resume_state())
            self._saved = True
            try:
                partial.write(0, memoryview(data))
                partial.checkpoint([(0, len(data))])
            finally:
                partial.close()

    def _discard_saved(self) -> None:
        """Remove what `_keep` saved (its bytes turned out not to be this object's)."""
        with contextlib.suppress(MirrorError, OSError):
            self.store.open_partial(self.job.file_hash, self._resume_state()).discard()
        self._saved = False

    def _publish_whole(self, body: memoryview, etag_part_size: int | None, link: MakeViews | None):
        """In a worker thread: hash and check the whole body, then write, publish and link it.
        Returns (digests, problem); a problem means nothing was written."""
        job = self.job
        hasher = self._hasher(etag_part_size)
        hasher.update(body)
        digests = hasher.digests()
        problem = self._check(digests, len(body))
        if problem is not None:
            if self._saved:
                self._discard_saved()  # the saved prefix is of these very bytes
            return digests, problem
        partial = self.store.open_partial(job.file_hash, self._resume_state(), direct=self.limits.direct_io,
                                          whole=True)
        try:
            partial.write(0, body)
        except OSError as exc:
            partial.discard()
            raise store_error(exc, f"writing {partial.path.name}") from exc
        except BaseException:
            partial.discard()
            raise
        self._publish_and_link(partial, link)
        return digests, None

    def _publish_and_link(self, partial: Partial, link: MakeViews | None) -> None:
        """Publish, then make the views from the object's directory as publishing reached it."""
        self.store.publish(self.job.file_hash, partial, verified=self.verify.blake2b, keep_dir=link is not None)
        if link is None:
            return
        try:
            link(partial.dirfd)
        except MirrorError as exc:
            self.link_error = exc
        finally:
            partial.close()

    def _complete(self, writer: FileWriter, partial: Partial, link: MakeViews | None):
        """In a worker thread, once every byte has landed: hash what is left, check, publish,
        link. Returns (digests, problem); a problem means nothing was published."""
        try:
            hashed = writer.ordered.finish()
        except OSError as exc:
            raise store_error(exc, f"reading back {partial.path.name}") from exc
        self.read_back += writer.ordered.read_back
        digests = writer.ordered.hasher.digests()
        problem = self._check(digests, hashed)
        if problem is None:
            self._publish_and_link(partial, link)
        return digests, problem

    async def _open_partial(self) -> Partial:
        """Open the partial in the I/O pool; if we are cancelled meanwhile, the thread still
        opens it, so wait for it and close what it opened."""
        job = self.job
        fut = self.executor.submit(functools.partial(
            self.store.open_partial, job.file_hash, self._resume_state(),
            direct=self.limits.direct_io))
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            concurrent.futures.wait([fut])
            if not fut.cancelled() and fut.exception() is None:
                fut.result().close()
            raise

    def _hasher(self, etag_part_size: int | None) -> MultiHasher:
        """The digests this run checks (and the xxh3 fingerprint, always): no BLAKE2b unless
        it is checked, no MD5 unless an ETag is."""
        return MultiHasher(etag_part_size=etag_part_size, want_etag=self.verify.etag and self.job.etag is not None,
                           blake2b=self.verify.blake2b)

    def _check(self, d: Digests, hashed: int) -> str | None:
        job = self.job
        if hashed != job.size or d.size != job.size:
            return f"hashed {d.size} of {job.size} bytes"
        if self.verify.blake2b and d.blake2b != job.file_hash:
            return "BLAKE2b of the downloaded bytes does not match the manifest"
        if self.verify.etag and job.etag and d.etag and d.etag != job.etag:
            if multipart_count(d.etag) != multipart_count(job.etag):
                # Parts of unequal sizes: part 1's size does not tell where the others start,
                # so this ETag cannot be recomputed (BLAKE2b, when asked for, still decided).
                self.etag_unverifiable = True
                return None
            return f"downloaded bytes give ETag {d.etag}, S3 says {job.etag}"
        return None

    async def _etag_part_size(self) -> int | None:
        """The real part size behind a multipart ETag, from `HEAD ?partNumber=1`."""
        if multipart_count(self.job.etag) is None:
            return None
        async with self.gets:
            info = await call_with_retries(
                lambda: self.remote.head(self.job.ref, part_number=1), policy=self.policy, pacer=self.pacer,
                on_retry=lambda exc, n, delay: self.report.on_retry(self.job.ref.key, exc, n, delay))
        return info.part_size

    async def _part(self, writer: FileWriter, start: int, end: int) -> None:
        """Fetch [start, end) into the partial."""
        sink = writer.sink(start)
        await self._fetch(sink, start, end)
        await writer.wait(sink.futures)
        if not (start == 0 and end == self.job.size):  # a whole object is published right away
            await self._thread(writer.partial.checkpoint, [(start, end)])

    async def _fetch(self, sink, start: int, end: int) -> None:
        """GET [start, end) into `sink` (its `pos`: where the next byte goes); a broken stream
        resumes at the byte it reached, and only failures that made no progress count against
        the retry budget."""
        ref = self.job.ref
        whole = start == 0 and end == self.job.size
        reached = sink.pos

        async def attempt() -> None:
            async with self.gets:
                ranged = not (whole and sink.pos == 0)
                await self.remote.get_into(ref, sink, start=sink.pos, end=end if ranged else None,
                                           size=self.job.size, if_match=self.job.etag)
            if sink.pos < end:
                raise TransferError(f"GET s3://{ref.bucket}/{ref.key}: stream ended at byte {sink.pos} of {end}")

        def progressed() -> bool:
            # Real progress (a MiB, or the rest of the part) forgives earlier failures; a server
            # that drips a few bytes before each break must not be retried forever.
            nonlocal reached
            moved, reached = sink.pos - reached >= min(PROGRESS_BYTES, end - reached), sink.pos
            return moved

        await call_with_retries(attempt, policy=self.policy, pacer=self.pacer, progressed=progressed,
                                on_retry=lambda exc, n, delay: self.report.on_retry(ref.key, exc, n, delay))


class _Body:
    """The sink of a small object's whole body, kept in memory. Its one receive buffer is
    held as it is (no copy). Should the body come in several (a slow server's part-full
    buffers, handed over by the watchdog), it is copied into memory of its own and the
    buffers go back at once, so a small object never holds more than one buffer of the
    pool; and every CHECKPOINT_SECONDS a copy of what came so far goes to `save`."""

    __slots__ = ("size", "pool", "on_bytes", "save", "pos", "buf", "n", "copy", "saved_at")

    def __init__(self, size: int, pool, on_bytes: Callable[[int], None], save: Callable[[bytes], None]) -> None:
        self.size = size
        self.pool = pool
        self.on_bytes = on_bytes
        self.save = save
        self.pos = 0
        self.buf = None
        self.n = 0
        self.copy: bytearray | None = None
        self.saved_at = time.monotonic()

    def __call__(self, buf, n: int) -> None:
        self.pos += n
        self.on_bytes(n)
        if self.buf is None and self.copy is None:
            self.buf, self.n = buf, n
            self._save_if_due()
            return
        try:
            if self.copy is None:
                self.copy = bytearray(memoryview(self.buf)[:self.n])
                self.release()
            self.copy += memoryview(buf)[:n]
        finally:
            self.pool.give(buf)
        self._save_if_due()

    def _save_if_due(self) -> None:
        if self.pos >= self.size:
            return  # whole: published next
        now = time.monotonic()
        if now - self.saved_at >= CHECKPOINT_SECONDS:
            self.saved_at = now
            self.save(bytes(self.view()))  # a copy: the body goes on growing meanwhile

    def view(self) -> memoryview:
        if self.copy is not None:
            return memoryview(self.copy)
        return memoryview(self.buf)[:self.n] if self.buf is not None else memoryview(b"")

    def release(self) -> None:
        """The held buffer back to the pool (event-loop thread)."""
        if self.buf is not None:
            buf, self.buf = self.buf, None
            self.pool.give(buf)


async def _in_order(width: Callable[[], int], parts: list) -> None:
    """Run the parts of one object, at most `width()` at once and lowest offsets first (so
    the hash frontier follows close behind); the first failure stops the others and is raised.
    Unlike a TaskGroup on Python 3.11, a cancellation of the caller is never turned into (or
    lost behind) a part's error: cancelled, the caller stops the parts, waits for them, and
    re-raises the cancellation itself."""
    queue = list(reversed(parts))
    running: set[asyncio.Task] = set()
    try:
        while queue or running:
            limit = max(1, width())
            while queue and len(running) < limit:
                running.add(asyncio.ensure_future(queue.pop()()))
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            errors = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
            if errors:
                if await _stop(list(running)):
                    raise asyncio.CancelledError()
                raise errors[0]
    except asyncio.CancelledError:
        await _stop(list(running))
        raise


async def _stop(tasks: list[asyncio.Future]) -> bool:
    """Cancel `tasks` and wait until every one has finished, even if we are cancelled
    meanwhile (the parts write into a file that is closed next). True if we were."""
    for t in tasks:
        t.cancel()
    cancelled = False
    while not all(t.done() for t in tasks):
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            cancelled = True
    for t in tasks:  # their errors are the first one's consequence: retrieved, not reported
        if not t.cancelled():
            t.exception()
    return cancelled
