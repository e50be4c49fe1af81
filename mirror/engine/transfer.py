"""One object from S3 into the store: ranged parts written at their offsets into a
`.partial`, hashed in order off the event loop, verified, then published.

Every GET names the object's VersionId; every ranged GET also sends If-Match with the ETag,
so bytes of two different objects can never be stitched together. A broken part resumes
from the byte where it stopped; a hash mismatch discards the whole partial and starts over;
an object that changed on the server fails this one file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import threading
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Callable

from ..errors import (
    Action,
    IntegrityError,
    MirrorError,
    ObjectChanged,
    ProtocolError,
    TransferError,
)
from ..hashing import Digests, MultiHasher
from ..remote import Remote
from ..remote.types import ObjectRef, multipart_count
from ..store.fsutil import pwrite_all, store_error
from ..store.objects import ObjectStore, Partial, ResumeState, merge_ranges, missing_ranges
from .policy import Limits, Pacer, RetryPolicy, action_for, call_with_retries


class Verify(enum.Enum):
    """What a download is checked against before it is published."""

    MANIFEST = "manifest"  # BLAKE2b of the manifest (authoritative)
    ETAG = "etag"  # the S3 ETag only (MD5, or MD5 of part MD5s)
    ALL = "all"  # both
    NONE = "none"  # size only (the content-addressed name is then taken on trust)

    @property
    def blake2b(self) -> bool:
        return self in (Verify.MANIFEST, Verify.ALL)

    @property
    def etag(self) -> bool:
        return self in (Verify.ETAG, Verify.ALL)


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


class _OrderedHasher:
    """Hashes a file in byte order while its parts land out of order.

    A write at the hash frontier is hashed from the buffer just written; anything else is
    hashed later by reading it back (from the page cache) once the gap before it closes.
    Runs in worker threads; hashlib releases the GIL, so hashing uses a core of its own.
    """

    def __init__(self, fd: int, hasher: MultiHasher, done: list[list[int]]) -> None:
        self.fd = fd
        self.hasher = hasher
        self.frontier = 0
        self._done = merge_ranges([list(r) for r in done])
        self._state = threading.Lock()  # guards _done
        self._hashing = threading.Lock()  # one thread hashes at a time; it alone moves frontier

    def wrote(self, start: int, buffers: list[bytes]) -> None:
        n = sum(len(b) for b in buffers)
        if not self._hashing.acquire(blocking=False):
            self._mark(start, start + n)
            return
        try:
            if start == self.frontier:
                for b in buffers:
                    self.hasher.update(b)
                self.frontier += n
            self._mark(start, start + n)
            self._catch_up()
        finally:
            self._hashing.release()

    def finish(self) -> int:
        with self._hashing:
            self._catch_up()
            return self.frontier

    def _mark(self, start: int, end: int) -> None:
        with self._state:
            self._done = merge_ranges([*self._done, [start, end]])

    def _catch_up(self) -> None:
        while True:
            with self._state:
                end = next((e for s, e in self._done if s <= self.frontier < e), self.frontier)
            if end <= self.frontier:
                return
            self.hasher.update_from_fd(self.fd, self.frontier, end)
            self.frontier = end


class Transfer:
    """Download one object version into the store. `run` returns its digests once it is
    published, or raises (a MirrorError whose action says what the run does next)."""

    def __init__(self, job: Job, *, remote: Remote, store: ObjectStore, limits: Limits, policy: RetryPolicy,
                 pacer: Pacer, gets: asyncio.Semaphore, executor: Executor, verify: Verify,
                 report: Reporter) -> None:
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
        self.resumed_bytes = 0
        self.etag_unverifiable = False
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

    async def run(self) -> Digests:
        job = self.job
        etag_part_size = await self._etag_part_size() if self.verify.etag else None
        last: MirrorError | None = None
        for attempt in range(self.policy.integrity_attempts):
            partial = await self._open_partial()
            keep = True
            try:
                if attempt == 0:
                    self.resumed_bytes = partial.resumed_bytes
                hasher = _OrderedHasher(partial.fd, MultiHasher(etag_part_size=etag_part_size,
                                                                want_etag=self.verify.etag and job.etag is not None),
                                        partial.state.done)
                todo = missing_ranges(partial.state.done, job.size)
                await _all_parts([self._part(partial, hasher, s, min(end, s + self.limits.part_size))
                                  for start, end in todo for s in range(start, end, self.limits.part_size)])
                hashed = await self._thread(_disk_errors(hasher.finish, f"reading back {partial.path.name}"))
                digests = hasher.hasher.digests()
                problem = self._check(digests, hashed)
                if problem is None:
                    await self._thread(self.store.publish, job.file_hash, partial)
                    return digests
                keep = False
                last = IntegrityError(f"s3://{job.ref.bucket}/{job.ref.key} (version {job.ref.version_id}): {problem}")
                if attempt + 1 < self.policy.integrity_attempts:
                    self.report.on_retry(job.ref.key, last, attempt + 1, 0.0)
            except ObjectChanged:
                keep = False  # these bytes belong to an object that no longer exists
                raise
            finally:
                # Cleanup runs even when cancelled: let in-flight writes land, then close.
                self._settle()
                if keep:
                    partial.close()
                else:
                    partial.discard()
        assert last is not None
        raise last

    async def _open_partial(self) -> Partial:
        """Open the partial in the I/O pool; if we are cancelled meanwhile, the thread still
        opens it, so wait for it and close what it opened."""
        job = self.job
        fut = self.executor.submit(self.store.open_partial, job.file_hash,
                                   ResumeState(job.ref.key, job.ref.version_id, job.etag, job.size))
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

    async def _part(self, partial: Partial, hasher: _OrderedHasher, start: int, end: int) -> None:
        """Fetch [start, end) into the partial; a broken stream resumes at the byte it reached,
        and only failures that made no progress count against the retry budget."""
        ref = self.job.ref
        whole = start == 0 and end == self.job.size
        pos = start
        durable = start  # bytes [start, durable) are fsynced and recorded in the sidecar
        failures = 0
        while pos < end:
            tried_from = pos
            await self.pacer.wait()
            try:
                async with self.gets:
                    ranged = not (whole and pos == 0)
                    async with self.remote.open_range(ref, start=pos, end=end if ranged else None,
                                                      if_match=self.job.etag) as chunks:
                        batch: list[bytes] = []
                        batch_len = 0
                        try:
                            async for chunk in chunks:
                                if pos + batch_len + len(chunk) > end:
                                    raise ProtocolError(f"GET s3://{ref.bucket}/{ref.key}: server sent more than "
                                                        f"the {end - tried_from} bytes asked for")
                                batch.append(chunk)
                                batch_len += len(chunk)
                                if batch_len >= self.limits.write_batch:
                                    await self._write(partial, hasher, pos, batch)
                                    pos += batch_len
                                    batch, batch_len = [], 0
                                    if pos - durable >= self.limits.checkpoint_bytes:
                                        await self._thread(partial.checkpoint, [(durable, pos)])
                                        durable = pos
                        except TransferError:
                            # The bytes that did arrive are the right object's (VersionId, If-Match):
                            # keep them, and the retry asks only for the rest.
                            if batch:
                                await self._write(partial, hasher, pos, batch)
                                pos += batch_len
                            raise
                        if batch:
                            await self._write(partial, hasher, pos, batch)
                            pos += batch_len
                if pos < end:
                    raise TransferError(f"GET s3://{ref.bucket}/{ref.key}: stream ended at byte {pos} of {end}")
                self.pacer.success()
            except MirrorError as exc:
                self.pacer.observe(exc)
                if action_for(exc) is not Action.RETRY:
                    raise
                failures = 1 if pos > tried_from else failures + 1
                if failures >= self.policy.attempts:
                    raise
                delay = self.policy.delay(failures - 1)
                self.report.on_retry(ref.key, exc, failures, delay)
                await asyncio.sleep(delay)
        await self._thread(partial.checkpoint, [(durable, end)])

    async def _write(self, partial: Partial, hasher: _OrderedHasher, offset: int, batch: list[bytes]) -> None:
        def work() -> None:
            try:
                pwrite_all(partial.fd, batch, offset)
                hasher.wrote(offset, batch)  # may read earlier ranges back from the file
            except OSError as exc:
                raise store_error(exc, f"writing {partial.path.name}") from exc

        await self._thread(work)
        self.report.on_bytes(sum(len(b) for b in batch))


def _disk_errors(fn, what: str):
    def wrapped():
        try:
            return fn()
        except OSError as exc:
            raise store_error(exc, what) from exc

    return wrapped


async def _all_parts(coros: list) -> None:
    """Run the parts of one object concurrently; the first failure cancels the others and is
    raised. Unlike a TaskGroup on Python 3.11, a cancellation of the caller is never turned
    into (or lost behind) a part's error: cancelled, the caller stops the parts, waits for
    them, and re-raises the cancellation itself."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        await _stop(tasks)
        raise
    failed = next((t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None), None)
    if failed is not None:
        if await _stop(tasks):
            raise asyncio.CancelledError()
        raise failed.exception()


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
    return cancelled
