"""Where received buffers go: written at their offset into a `.partial`, hashed in byte order.

Each full receive buffer crosses to a worker thread once: `pwrite` puts it in the page cache
and, if it sits at the file's hash frontier, the same buffer is hashed straight away (hashlib
and xxhash release the GIL, so this runs beside the event loop on another core). Buffers that
land ahead of the frontier (parts of one object arrive out of order) wait in memory, within a
budget shared by the whole run; past that budget they are given back at once and read back
from the page cache when the frontier reaches them. Nothing on the event loop touches bytes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from typing import Callable

from ..errors import MirrorError
from ..hashing import READ_CHUNK, MultiHasher
from ..store.fsutil import store_error
from ..store.objects import Partial, merge_ranges

Release = Callable[[bytearray], None]


class HoldBudget:
    """How many buffers may wait for their file's hash frontier, across the whole run. The
    receive pool is sized with this many spare, so held buffers never starve a connection."""

    def __init__(self, buffers: int) -> None:
        self.free = buffers
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.free <= 0:
                return False
            self.free -= 1
            return True

    def give(self) -> None:
        with self._lock:
            self.free += 1


class OrderedHasher:
    """Feeds a `MultiHasher` the bytes of one file in order while they land out of order.

    `landed` is called (from any worker thread) after a buffer's bytes were written; at most
    one thread hashes at a time, and it alone moves the frontier. A thread that finds another
    one hashing leaves its buffer in the window (or on disk) and returns at once.
    """

    def __init__(self, fd: int, hasher: MultiHasher, done: list[list[int]], *, budget: HoldBudget,
                 release: Release) -> None:
        self.fd = fd
        self.hasher = hasher
        self.frontier = 0
        self._written = merge_ranges([list(r) for r in done])  # on disk (or in the window)
        self._held: dict[int, tuple[bytearray, int]] = {}
        self._budget = budget
        self._release = release
        self._lock = threading.Lock()
        self._busy = False
        self.read_back = 0  # bytes hashed from the page cache rather than from memory

    def landed(self, offset: int, buf: bytearray, n: int) -> None:
        with self._lock:
            self._written = _add_range(self._written, offset, offset + n)
            if not self._busy and offset == self.frontier:
                self._busy = True
                item = (offset, buf, n)
            else:
                if offset > self.frontier and self._budget.take():
                    self._held[offset] = (buf, n)
                else:
                    self._release(buf)
                if self._busy:
                    return  # the hashing thread will find it
                # Nobody hashes: the frontier may sit on bytes already on disk (a resumed
                # prefix, or a buffer that did not fit the window): catch up from there.
                item = self._next()
                if item is None:
                    return
                self._busy = True
        self._run(item)

    def finish(self) -> int:
        """Hash whatever is still behind the frontier (all writes have landed); the bytes
        hashed in order."""
        with self._lock:
            if self._busy:
                raise RuntimeError("finish() while a write is still hashing")
            item = self._next()
            if item is None:
                return self.frontier
            self._busy = True
        self._run(item)
        return self.frontier

    def drop(self) -> None:
        """Give back every held buffer (the attempt is over)."""
        with self._lock:
            held, self._held = self._held, {}
        for buf, _ in held.values():
            self._budget.give()
            self._release(buf)

    def _run(self, item: tuple[int, bytearray | None, int]) -> None:
        """Hash `item` and whatever follows it, until the frontier reaches a gap."""
        try:
            while True:
                offset, buf, n = item
                if buf is not None:
                    try:
                        self.hasher.update(memoryview(buf)[:n])
                    finally:
                        self._release(buf)
                else:
                    self._hash_from_disk(offset, offset + n)
                with self._lock:
                    self.frontier = offset + n
                    item = self._next()
                    if item is None:
                        self._busy = False
                        return
        except BaseException:
            with self._lock:
                self._busy = False
            raise

    def _next(self) -> tuple[int, bytearray | None, int] | None:
        """Under the lock: what follows the frontier, from memory or from disk; None at a gap."""
        f = self.frontier
        held = self._held.pop(f, None)
        if held is not None:
            self._budget.give()
            return f, held[0], held[1]
        for s, e in self._written:
            if s <= f < e:
                later = [o for o in self._held if f < o < e]
                return f, None, (min(later) if later else e) - f
        return None

    def _hash_from_disk(self, start: int, end: int) -> None:
        buf = bytearray(min(READ_CHUNK, end - start))
        view = memoryview(buf)
        pos = start
        while pos < end:
            want = min(len(buf), end - pos)
            got = os.preadv(self.fd, [view[:want]], pos)
            if got <= 0:
                raise OSError(f"unexpected end of file at {pos} (wanted up to {end})")
            self.hasher.update(view[:got])
            pos += got
        self.read_back += end - start


def _add_range(ranges: list[list[int]], start: int, end: int) -> list[list[int]]:
    """Insert [start, end) into sorted, merged `ranges` (the common case: appending at the end
    of a range, which merges in place)."""
    for r in ranges:
        if r[0] <= start <= r[1]:
            if end > r[1]:
                r[1] = end
                return merge_ranges(ranges)
            return ranges
    return merge_ranges([*ranges, [start, end]])


class FileWriter:
    """One attempt at one object: the sinks of its GETs, the writes in flight, the hasher."""

    def __init__(self, partial: Partial, hasher: MultiHasher, *, executor: concurrent.futures.Executor,
                 release: Release, release_here: Release, budget: HoldBudget,
                 on_bytes: Callable[[int], None]) -> None:
        self.partial = partial
        self.executor = executor
        self.ordered = OrderedHasher(partial.fd, hasher, partial.state.done, budget=budget, release=release)
        self._release = release  # from a worker thread
        self._release_here = release_here  # from the event loop
        self._on_bytes = on_bytes
        self.error: MirrorError | None = None
        self.closed = False
        self.sinks: list[PartSink] = []

    def sink(self, offset: int) -> "PartSink":
        sink = PartSink(self, offset)
        self.sinks.append(sink)
        return sink

    def written(self) -> list[tuple[int, int]]:
        """For each part, the prefix whose writes have all landed (after `settle`): what a
        checkpoint at the end of an interrupted attempt records, so a Ctrl-C, a SIGTERM or a
        failure keeps the bytes that arrived."""
        out = []
        for sink in self.sinks:
            landed = sink.start
            for fut, end in zip(sink.futures, sink.ends):
                if not fut.done() or fut.cancelled() or fut.exception() is not None:
                    break
                landed = end
            if landed > sink.start:
                out.append((sink.start, landed))
        return out

    def _submit(self, offset: int, buf: bytearray, n: int) -> concurrent.futures.Future:
        return self.executor.submit(self._land, offset, buf, n)

    def _land(self, offset: int, buf: bytearray, n: int) -> None:
        """In a worker thread: write, then hash (or hold) the buffer."""
        try:
            self.partial.write(offset, memoryview(buf)[:n])
        except OSError as exc:
            self._release(buf)
            err = store_error(exc, f"writing {self.partial.path.name}")
            self.error = self.error or err
            raise err from exc
        try:
            self.ordered.landed(offset, buf, n)
        except OSError as exc:
            err = store_error(exc, f"reading back {self.partial.path.name}")
            self.error = self.error or err
            raise err from exc

    async def wait(self, futures: list[concurrent.futures.Future]) -> None:
        """Until these writes have landed; raises the first write error."""
        for fut in futures:
            if not fut.done():
                await asyncio.wrap_future(fut)
        for fut in futures:
            exc = fut.exception()
            if exc is not None:
                raise exc

    def settle(self) -> None:
        """Block until every write in flight has landed (cleanup: the fd is closed next)."""
        concurrent.futures.wait([f for sink in self.sinks for f in sink.futures[sink.landed:] if not f.done()])

    def close(self) -> None:
        """No more writes (sinks refuse from now on); held buffers go back to the pool."""
        self.closed = True
        self.settle()
        self.ordered.drop()


# While a part streams in, its landed prefix is recorded every so many bytes, so that even a
# kill -9 (no cleanup at all) costs at most about this much per connection on the next run.
CHECKPOINT_BYTES = 4 << 20
# ... and at least this often while bytes keep coming: on a slow link 4 MiB can take minutes;
# more often for a slow response whose buffer the watchdog handed over part-full (a fast
# one, handing over full buffers, is not checkpointed more for it).
CHECKPOINT_SECONDS = 0.25
SLOW_CHECKPOINT_SECONDS = 0.1


class PartSink:
    """The sink of one ranged part: buffers land at consecutive offsets from `start`. `pos`
    is where the next byte goes, so a retry asks for [pos, end)."""

    __slots__ = ("writer", "start", "pos", "futures", "ends", "marked", "marked_at", "landed")

    def __init__(self, writer: FileWriter, start: int) -> None:
        self.writer = writer
        self.start = start
        self.pos = start
        self.futures: list[concurrent.futures.Future] = []
        self.ends: list[int] = []  # where each write's bytes end
        self.marked = start  # the last position a checkpoint was asked for
        self.marked_at = time.monotonic()  # ... and when
        self.landed = 0  # futures[:landed] are known to have landed without error

    def __call__(self, buf: bytearray, n: int) -> None:
        w = self.writer
        if w.closed or w.error is not None:
            w._release_here(buf)
            if w.error is not None:
                raise w.error
            return
        offset = self.pos
        self.pos += n
        self.futures.append(w._submit(offset, buf, n))
        self.ends.append(self.pos)
        w._on_bytes(n)
        now = time.monotonic()
        every = CHECKPOINT_SECONDS if n == len(buf) else SLOW_CHECKPOINT_SECONDS
        if self.pos - self.marked >= CHECKPOINT_BYTES or now - self.marked_at >= every:
            self.marked, self.marked_at = self.pos, now
            self._checkpoint_when_landed(self.pos, self._not_landed())

    def _not_landed(self) -> list[concurrent.futures.Future]:
        """The writes of this part not known to have landed yet: the ones a checkpoint up to here
        waits for (those before them landed already; each is looked at about once)."""
        fs, i = self.futures, self.landed
        while i < len(fs) and fs[i].done() and not fs[i].cancelled() and fs[i].exception() is None:
            i += 1
        self.landed = i
        return fs[i:]

    def _checkpoint_when_landed(self, upto: int, futures: list[concurrent.futures.Future]) -> None:
        """Once every write up to `upto` has landed, record [start, upto) (in a worker thread;
        nothing waits for it, and a partial closed meanwhile ignores it)."""
        w, start = self.writer, self.start
        if not futures:  # all landed already
            try:
                w.executor.submit(w.partial.checkpoint, [(start, upto)])
            except RuntimeError:
                pass  # the pool is shutting down: the end-of-attempt checkpoint covers it
            return
        left = [len(futures)]
        lock = threading.Lock()

        def one_done(_: concurrent.futures.Future) -> None:
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            if all(not f.cancelled() and f.exception() is None for f in futures) and not w.closed:
                try:
                    w.executor.submit(w.partial.checkpoint, [(start, upto)])
                except RuntimeError:
                    pass  # the pool is shutting down: the end-of-attempt checkpoint covers it

        for f in futures:
            f.add_done_callback(one_done)
