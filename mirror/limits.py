"""`Limits`: the one object that sizes a run's concurrency and memory.

The connection pool, the request semaphore, the receive buffers and the I/O threads are all
derived from it, so they cannot disagree (a request semaphore wider than the pool once made
requests queue for a connection inside the connect timeout and stop a run as "unreachable").
"""

from __future__ import annotations

import os
from dataclasses import dataclass

KiB = 1 << 10
MiB = 1 << 20
PART_ALIGN = 4 * KiB  # parts are written with O_DIRECT: whole 4 KiB blocks


@dataclass(frozen=True)
class Limits:
    """Memory stays near `memory` (receive buffers and the reorder window) whatever the object
    sizes and however many connections there are."""

    jobs: int = 16  # GETs in flight across all files
    # Objects larger than this are fetched as ranged parts of this size. One default for the
    # CLI, the API and bench (the default `make bench` measures: benchmarks/RESULTS.md).
    part_size: int = 32 * MiB
    connections: int | None = None  # the pool; default `jobs`. Fewer means requests wait for one
    memory: int = 96 * MiB  # receive buffers + parts held for in-order hashing
    buffer_size: int | None = None  # one receive buffer; default derived from `memory`
    threads: int | None = None  # writer/hasher threads; default cores + 1
    parts_per_file: int = 4  # ranged parts of one object in flight at once
    direct_io: bool = True  # write bodies with O_DIRECT where the filesystem allows it
    bwlimit: float | None = None  # bytes/s over every connection of the process (--bwlimit)

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError("jobs must be at least 1")
        if self.connections is not None and self.connections < 1:
            raise ValueError("connections must be at least 1")
        if self.part_size < 64 * KiB or self.part_size % PART_ALIGN:
            raise ValueError("part size must be a multiple of 4 KiB, at least 64 KiB (e.g. 8MiB)")
        if self.buffer_size is not None and self.buffer_size < 16 * KiB:
            raise ValueError("buffer size must be at least 16 KiB")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1")
        if self.parts_per_file < 1:
            raise ValueError("parts per file must be at least 1")
        if self.bwlimit is not None and self.bwlimit < KiB:
            raise ValueError("the bandwidth limit must be at least 1 KiB/s")
        if self.memory < 4 * MiB:
            raise ValueError("memory must be at least 4 MiB")

    @property
    def pool_size(self) -> int:
        """Connections in the pool."""
        return self.connections or self.jobs

    @property
    def io_threads(self) -> int:
        # Hashing wants a core per thread, but direct writes and fsync block without using
        # one: two threads per core (plus two) keep the cores busy while some wait on the disk
        # (measured on 2 cores: 6 beat 3 by ~15% on the replica; benchmarks/RESULTS.md).
        return self.threads or 2 * (os.cpu_count() or 2) + 2

    @property
    def held_buffers(self) -> int:
        """Buffers that may wait in memory for the hash frontier of their file."""
        return max(2, self.pool_size // 2)

    @property
    def buffers(self) -> int:
        """Receive buffers in all: one per connection receiving, one per thread writing, and
        the reorder window."""
        return self.pool_size + self.io_threads + self.held_buffers

    @property
    def receive_buffer(self) -> int:
        """Bytes per receive buffer: the memory budget shared out, a power of two between
        256 KiB and 8 MiB (big enough that a hand-off per buffer costs nothing, small enough
        to stay in cache between the write and the hash)."""
        if self.buffer_size:
            return self.buffer_size
        share = self.memory // self.buffers
        size = 256 * KiB
        while size * 2 <= min(share, 8 * MiB):
            size *= 2
        return size
