"""`vbo-mirror bench`: how fast can this machine pull from this endpoint, and with what -j and
part size? Users pick concurrency by measuring rather than guessing; this measures GETs of
real objects of the dataset over a matrix of concurrency x part size, to disk or discarded.

Each cell fetches the same objects (the largest of the version first, up to a byte budget)
with a fresh connection pool, through the same transport a sync uses: ranged parts of
`part_size`, `jobs` requests in flight, every GET naming its version. Bytes are counted, not
verified (a sync verifies; this measures the pipe): `--to-disk` writes them as a sync would
(O_DIRECT where it can) into a scratch directory that is removed afterwards.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .limits import Limits
from .remote.settings import RemoteSettings
from .model import ObjectRef
from .store.objects import DIRECT_ALIGN, open_direct


@dataclass(frozen=True)
class Target:
    ref: ObjectRef
    size: int
    etag: str | None


@dataclass
class Cell:
    jobs: int
    part_size: int
    repeat: int
    bytes: int
    objects: int
    requests: int
    seconds: float
    cpu_seconds: float  # this process, user + system, over the cell

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def cpu_per_gb(self) -> float:
        return self.cpu_seconds / (self.bytes / 1e9) if self.bytes else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "mb_per_s": round(self.mb_per_s, 1), "cpu_s_per_gb": round(self.cpu_per_gb, 2),
                "seconds": round(self.seconds, 3), "cpu_seconds": round(self.cpu_seconds, 3)}


def choose(targets: list[Target], budget: int) -> list[Target]:
    """The largest objects first, until `budget` bytes (at least one object)."""
    out, total = [], 0
    for t in sorted(targets, key=lambda t: (-t.size, t.ref.key)):
        if out and total >= budget:
            break
        out.append(t)
        total += t.size
    return out


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure_cell(settings: RemoteSettings, targets: list[Target], *, jobs: int, part_size: int,
                       scratch: Path | None, repeat: int = 0) -> Cell:
    """One cell of the matrix: fetch every target once with `jobs` GETs in flight."""
    from .remote.client import Remote

    limits = Limits(jobs=jobs, part_size=part_size)
    parts = [(t, s, min(t.size, s + part_size)) for t in targets for s in range(0, t.size, part_size)]
    counted = 0
    fds: dict[str, tuple[int, int]] = {}
    writes: list[asyncio.Future] = []
    async with Remote(settings, limits) as remote:
        pool = remote.buffers
        gets = asyncio.Semaphore(jobs)
        loop = asyncio.get_running_loop()
        if scratch is not None:
            for i, t in enumerate(targets):
                path = scratch / f"object-{i}"
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                fds[t.ref.key] = (fd, open_direct(path))

        def sink_for(t: Target, start: int):
            pos = start

            def sink(buf, n: int) -> None:
                nonlocal pos, counted
                counted += n
                if scratch is None:
                    pool.give(buf)
                    return
                offset, pos = pos, pos + n
                fd, dfd = fds[t.ref.key]

                def write() -> None:
                    try:
                        view = memoryview(buf)[:n]
                        if dfd >= 0 and offset % DIRECT_ALIGN == 0 and n % DIRECT_ALIGN == 0:
                            os.pwritev(dfd, [view], offset)
                        else:
                            os.pwritev(fd, [view], offset)
                    finally:
                        pool.give_threadsafe(buf)

                writes.append(loop.run_in_executor(None, write))

            return sink

        async def get(t: Target, start: int, end: int) -> None:
            async with gets:
                whole = start == 0 and end == t.size
                await remote.get_into(t.ref, sink_for(t, start), start=start, end=None if whole else end,
                                      size=t.size, if_match=t.etag)

        cpu0, t0 = _cpu(), time.perf_counter()
        try:
            await asyncio.gather(*(get(t, s, e) for t, s, e in parts))
            await asyncio.gather(*writes)  # the writes in flight belong to the cell's time
            seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
        finally:
            await asyncio.gather(*writes, return_exceptions=True)
            for fd, dfd in fds.values():
                os.close(fd)
                if dfd >= 0:
                    os.close(dfd)
    return Cell(jobs, part_size, repeat, counted, len(targets), len(parts), seconds, cpu)


async def run_matrix(settings: RemoteSettings, targets: list[Target], *, jobs: list[int], part_sizes: list[int],
                     repeat: int = 1, to_disk: Path | None = None,
                     on_cell: Callable[[Cell], None] = lambda c: None) -> list[Cell]:
    cells = []
    for r in range(repeat):
        for p in part_sizes:
            for j in jobs:
                scratch = Path(tempfile.mkdtemp(prefix="vbo-bench-", dir=to_disk)) if to_disk else None
                try:
                    cell = await measure_cell(settings, targets, jobs=j, part_size=p, scratch=scratch, repeat=r)
                finally:
                    if scratch is not None:
                        shutil.rmtree(scratch, ignore_errors=True)
                cells.append(cell)
                on_cell(cell)
    return cells


def best_of(cells: list[Cell]) -> list[Cell]:
    """Per (jobs, part size): the repeat with the median throughput."""
    groups: dict[tuple[int, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.jobs, c.part_size), []).append(c)
    out = []
    for key in sorted(groups):
        g = sorted(groups[key], key=lambda c: c.mb_per_s)
        out.append(g[len(g) // 2])
    return out


def plot(cells: list[Cell], path: Path, *, title: str) -> None:
    """MB/s against concurrency, one line per part size (matplotlib: the `plot` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        from .errors import InputError

        raise InputError("--plot needs matplotlib", hint="pip install 'vbo-mirror[plot]'") from exc
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for p in sorted({c.part_size for c in cells}):
        row = sorted((c for c in cells if c.part_size == p), key=lambda c: c.jobs)
        ax.plot([c.jobs for c in row], [c.mb_per_s for c in row], marker="o", label=f"part {p >> 20} MiB")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("requests in flight (-j)")
    ax.set_ylabel("MB/s")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
