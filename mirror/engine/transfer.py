"""One object from S3 into the store: ranged parts written at their offsets into a
`.partial`, hashed in order off the event loop, verified, then published.

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
from .writer import FileWriter, HoldBudget

if TYPE_CHECKING:
    from ..remote.client import Remote
    from ..store.facade import Store


PROGRESS_BYTES = 1 << 20  # what an attempt must move to count as progress (see `_part`)


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
                 report: Reporter, budget: HoldBudget, width: Callable[[], int] | None = None) -> None:
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
        self.resumed_bytes = 0
        self.read_back = 0
        self.etag_unverifiable = False
        self.link_error: MirrorError | None = None
        self._pending: set[concurrent.futures.Future] = set()

    async def _thread(self, fn, *args):
        """Run blocking file work in the I/O pool. The futures are tracked: a cancelled await
        does not stop a thread, so cleanup waits for them before it closes the descriptor they
        write to (a closed fd number can be reused by another file)."""
        fut = self.executor.submit(fn, *args)
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        return await asyncio.wrap_future(fut)

    def _settle(self) -> None:
        concurrent.futures.wait(list(self._pending))

    async def run(self, *, link: Callable[[], None] | None = None) -> Digests:
        """Fetch, verify, publish; then `link` (the views) in the same worker-thread call, so a
        small file costs few hand-offs. A view that cannot be made leaves the object published
        and its error in `link_error`, for the caller to record the object and then fail the file."""
        job = self.job
        etag_part_size = await self._etag_part_size() if self.verify.etag else None
        last: MirrorError | None = None
        buffers = self.remote.buffers
        for attempt in range(self.policy.integrity_attempts):
            partial = await self._open_partial()
            keep = True
            writer = FileWriter(partial, MultiHasher(etag_part_size=etag_part_size,
                                                     want_etag=self.verify.etag and job.etag is not None),
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
                last = IntegrityError(f"s3://{job.ref.bucket}/{job.ref.key} (version {job.ref.version_id}): {problem}")
                if attempt + 1 < self.policy.integrity_attempts:
                    self.report.on_retry(job.ref.key, last, attempt + 1, 0.0)
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

    def _complete(self, writer: FileWriter, partial: Partial, link: Callable[[], None] | None):
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
            self.store.publish(self.job.file_hash, partial, verified=self.verify.blake2b)
            if link is not None:
                try:
                    link()
                except MirrorError as exc:
                    self.link_error = exc
        return digests, problem

    async def _open_partial(self) -> Partial:
        """Open the partial in the I/O pool; if we are cancelled meanwhile, the thread still
        opens it, so wait for it and close what it opened."""
        job = self.job
        fut = self.executor.submit(functools.partial(
            self.store.open_partial, job.file_hash, ResumeState(job.ref.key, job.ref.version_id, job.etag, job.size),
            direct=self.limits.direct_io))
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            concurrent.futures.wait([fut])
            if not fut.cancelled() and fut.exception() is None:
                fut.result().close()
            raise

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
        """Fetch [start, end) into the partial; a broken stream resumes at the byte it reached,
        and only failures that made no progress count against the retry budget."""
        ref = self.job.ref
        whole = start == 0 and end == self.job.size
        sink = writer.sink(start)
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
        await writer.wait(sink.futures)
        if not whole:  # a whole object is published right away: resume state would be thrown away
            await self._thread(writer.partial.checkpoint, [(start, end)])


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
