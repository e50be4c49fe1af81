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
    largest: int = 0  # the largest object fetched (a part size at least this fetches it whole)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def cpu_per_gb(self) -> float:
        return self.cpu_seconds / (self.bytes / 1e9) if self.bytes else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "mb_per_s": round(self.mb_per_s, 1), "cpu_s_per_gb": round(self.cpu_per_gb, 2),
                "seconds": round(self.seconds, 3), "cpu_seconds": round(self.cpu_seconds, 3)}


def targets_of(m, infos) -> list[Target]:
    """The data files of manifest `m` (its tables when it has none) whose size S3 gave."""
    entries = list(m.data_files.values()) or list(m.metadata_files.values())
    targets = [Target(ObjectRef(e.bucket, e.key, e.version_id), info.size, info.etag)
               for e in entries if (info := infos.get((e.key, e.version_id))) is not None and info.size > 0]
    if not targets:
        from .errors import OfflineError

        raise OfflineError(f"no object of {m.name} has a known size to measure with")
    return targets


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
    return Cell(jobs, part_size, repeat, counted, len(targets), len(parts), seconds, cpu,
                max((t.size for t in targets), default=0))


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
    return [row.median for row in summarize(cells)]


@dataclass
class Row:
    """One (jobs, part size) over its repeats: the median run, and the spread."""

    median: Cell
    low: float  # MB/s of the slowest repeat
    high: float  # MB/s of the fastest

    @property
    def jobs(self) -> int:
        return self.median.jobs

    @property
    def part_size(self) -> int:
        return self.median.part_size

    def to_dict(self) -> dict:
        return {**self.median.to_dict(), "mb_per_s_min": round(self.low, 1), "mb_per_s_max": round(self.high, 1)}


def summarize(cells: list[Cell]) -> list[Row]:
    groups: dict[tuple[int, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.jobs, c.part_size), []).append(c)
    rows = []
    for key in sorted(groups):
        g = sorted(groups[key], key=lambda c: c.mb_per_s)
        rows.append(Row(g[len(g) // 2], g[0].mb_per_s, g[-1].mb_per_s))
    return rows


MIN_SECONDS = 1.0  # a cell shorter than this measures start-up, not throughput
DEFAULT_JOBS, DEFAULT_PART = Limits().jobs, Limits().part_size  # what `sync` does without flags


@dataclass
class Verdict:
    best: Row | None  # the setting recommended, or None: nothing measured beyond noise
    notes: list[str]

    def to_dict(self) -> dict:
        return {"jobs": self.best.jobs if self.best else None,
                "part_size": self.best.part_size if self.best else None, "notes": self.notes}


def judge(rows: list[Row], *, repeat: int, budget: int) -> Verdict:
    """What the matrix can tell: a setting is recommended only when its slowest repeat beat
    the fastest repeat of every setting it is preferred to (the ranges do not overlap), and
    only when the measurement can carry that (several repeats, cells long enough, data as
    large as asked for)."""
    notes: list[str] = []
    bytes_per_cell = rows[0].median.bytes if rows else 0
    largest_object = rows[0].median.largest if rows else 0
    if bytes_per_cell < budget:
        notes.append(f"the version's largest objects hold only {bytes_per_cell / 1e6:.1f} MB, under --bytes "
                     f"{budget / 1e6:.0f} MB: every cell measured that")
    big_parts = sorted({r.part_size for r in rows if r.part_size >= largest_object})
    if len(big_parts) > 1:
        notes.append(f"part sizes of {', '.join(f'{p >> 20} MiB' if p % (1 << 20) == 0 else str(p) for p in big_parts)} "
                     f"are all at least the largest object ({largest_object / 1e6:.1f} MB): they fetch alike")
    short = [r for r in rows if r.median.seconds < MIN_SECONDS]
    if short:
        notes.append(f"{len(short)} of {len(rows)} cells took under {MIN_SECONDS:g} s: too short to measure "
                     "throughput (raise --bytes)")
    if repeat < 2:
        notes.append("one run per cell shows no spread: --repeat 3 (or more) to tell a difference from noise")
        return Verdict(None, notes)
    if short or not rows:
        return Verdict(None, notes)
    best = max(rows, key=lambda r: r.median.mb_per_s)
    rivals = [r for r in rows if r is not best and r.high >= best.low]  # ranges overlap: not told apart
    default = next((r for r in rows if (r.jobs, r.part_size) == (DEFAULT_JOBS, DEFAULT_PART)), None)
    if len(rivals) == len(rows) - 1:
        notes.append("no setting was faster than the others beyond the spread between runs")
        return Verdict(None, notes)
    if default is not None and (default is best or default in rivals):
        notes.append(f"the defaults (-j {DEFAULT_JOBS}, {DEFAULT_PART >> 20} MiB parts) are as fast as any setting "
                     "measured, within the spread")
        return Verdict(None, notes)
    if rivals:
        notes.append(f"{len(rivals)} other setting(s) were within the spread of the best; the fastest median is shown")
    return Verdict(best, notes)


def plot(rows: list[Row], path: Path, *, title: str) -> None:
    """MB/s against concurrency, one line per part size, the spread of the repeats as error
    bars, from zero (matplotlib: the `plot` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        from .errors import InputError

        raise InputError("--plot needs matplotlib", hint="pip install 'vbo-mirror[plot]'") from exc
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for p in sorted({r.part_size for r in rows}):
        line = sorted((r for r in rows if r.part_size == p), key=lambda r: r.jobs)
        mid = [r.median.mb_per_s for r in line]
        ax.errorbar([r.jobs for r in line], mid, yerr=[[m - r.low for m, r in zip(mid, line)],
                                                      [r.high - m for m, r in zip(mid, line)]],
                    marker="o", capsize=3, label=f"part {p / (1 << 20):.3g} MiB")
    ax.set_ylim(bottom=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("requests in flight (-j)")
    ax.set_ylabel("MB/s")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
