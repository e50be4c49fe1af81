"""`sync --procs N`: one selection fetched by N processes into one cache_dir.

Why: a process moves at most 1 ÷ (GIL-held seconds per GB) GB per second however many cores
the node has (its loop thread holds the GIL for every response it reads; RESULTS.md gives the
figure). N processes lift that ceiling N times where the cores, the disk and the network allow.

How: each process is `vbo-mirror --json sync --shard K/N` of the same selection, so the shard
machinery does the rest: a size-balanced split by content that every process computes alike,
the shared cache lock, a claim (flock) per object so that no object is fetched twice, and a
process whose own part is done taking on the objects nobody has claimed (a process that died,
or has not started). The parent reads their JSON lines and shows one progress display and one
summary. A child that ends abnormally (killed, a disk error) is reported; if the selection is
then not complete, the parent finishes it itself, in process, as a plain sync would.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from . import errors as errs
from . import events as ev
from .engine.runner import Failure, Snapshot, Stats
from .model import Selection, Shard

if TYPE_CHECKING:
    from .api import Mirror
    from .plan import Plan

PROCS_MAX = 8
PROGRESS_SECONDS = 1.0


def default_procs(cpus: int | None = None) -> int:
    """What a node's cores and the one-process ceiling call for. One process moves up to
    ~2.5 GB/s (~20 Gbit/s: RESULTS.md's GIL-held figure), more than most links, and at that
    rate keeps about two cores busy (its loop thread, BLAKE2b in a worker). A second process
    only pays where the link can outrun one, which the cores of the node hint at: one process
    per 8 cores, at most PROCS_MAX. One (no child processes) below 16 cores."""
    cpus = cpus if cpus is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                          else os.cpu_count() or 1)
    return max(1, min(PROCS_MAX, cpus // 8))


@dataclass
class Child:
    shard: Shard
    proc: subprocess.Popen
    progress: dict = field(default_factory=dict)
    summary: dict | None = None
    stderr: list[str] = field(default_factory=list)

    @property
    def died(self) -> bool:
        """Ended without its summary: killed, or stopped by an error before the end."""
        return self.summary is None or self.proc.returncode not in (0, 5)

    def how(self) -> str:
        rc = self.proc.returncode
        if rc is not None and rc < 0:
            return f"killed by {signal.Signals(-rc).name}"
        said = [line.strip() for line in self.stderr if line.strip()]
        last = next((line for line in reversed(said) if "error" in line), said[-1] if said else "")
        return f"exit {rc}" + (f" ({last[:200]})" if last else "")


def sync_procs(mirror: Mirror, selection: Selection, n: int, argv_of: Callable[[Shard, str | None], list[str]], *,
               sync: Callable[[Selection, Callable[[ev.Event], None]], Stats], on_event: Callable[[ev.Event], None],
               on_start: Callable[[Stats], None] | None = None, env: dict[str, str] | None = None,
               on_stderr: Callable[[Shard, str], None] | None = None, wait: bool = False) -> Stats:
    """Sync `selection` with `n` processes, each started as `argv_of(shard, version)` (a
    `vbo-mirror --json sync --shard K/N` command line; `version`: the manifest this run
    resolved, so that every child syncs the same one, or None for several). `sync(selection,
    on_event)` is the plain in-process sync, used when there is nothing to fetch (a resync
    costs no processes) and to finish what a child that died left.

    Locks: the cache lock, shared, for the whole run (children share it; a plain sync, prune or
    gc waits or is refused, as beside shards), and `procs-lock`, exclusive, so that a second
    `--procs` run waits or is refused as a second plain sync would be."""
    from .store.lock import CacheLock

    plan = mirror.plan(selection)  # (`selection` has no shard: cli/sync.py's _procs refuses --procs with --shard)
    n = min(n, len(plan.fetch))  # never more processes than objects to fetch (none: a plain resync)
    if n <= 1:
        return sync(selection, on_event)
    lock = mirror.need_layout().lock_path
    version = plan.manifests[0] if len(plan.manifests) == 1 else None
    say = mirror.session.on_status
    with CacheLock(lock.with_name("procs-lock"), wait=wait, on_wait=say, command="vbo-mirror sync --procs"), \
            CacheLock(lock, wait=wait, on_wait=say, shared=True, command="vbo-mirror sync --procs"):
        started = time.monotonic()
        stats, children = _run(lambda shard: argv_of(shard, version), n, plan, on_event=on_event,
                               on_start=on_start, env=env, on_stderr=on_stderr)
        dead = [c for c in children if c.died]
        for c in dead:
            on_event(ev.Warned(f"process {c.shard} of {n} {c.how()}"))
        again = mirror.plan(selection) if dead else None
        if again is not None and (again.fetch or again.link or again.replace):
            on_event(ev.Warned(f"{len(again.fetch)} objects and {len(again.link) + len(again.replace)} views are "
                               "still to be made: finishing them in this process"))
            # As shard 0 of 1: the whole selection, under the shared lock this run holds.
            rest = sync(dataclasses.replace(selection, shard=Shard(0, 1)),
                        lambda e: None if isinstance(e, (ev.Started, ev.Summary)) else on_event(e))
            _add(stats, rest)
        elif dead and not stats.failures:
            on_event(ev.Warned("the other processes finished its part: the selection is complete"))
    failed_views = sum(len(f.views) for f in stats.failures)
    stats.files_linked = max(0, stats.files_total - stats.files_present - stats.files_done - failed_views)
    stats.bytes_linked = plan.link_bytes if not stats.failures else 0
    stats.started = started
    stats.finished = time.monotonic()
    stats.procs = [{"shard": str(c.shard), "exit": c.proc.returncode, "files_fetched": (c.summary or {}).get(
        "files_fetched", 0), "bytes_fetched": (c.summary or {}).get("bytes_fetched", 0)} for c in children]
    stats.publish()
    on_event(ev.Summary(stats.summary()))
    return stats


def _run(argv_of: Callable[[Shard], list[str]], n: int, plan: Plan, *, on_event, on_start, env, on_stderr
         ) -> tuple[Stats, list[Child]]:
    stats = Stats(files_total=plan.views_total, bytes_total=plan.fetch_bytes, files_present=len(plan.present),
                  bytes_present=plan.present_bytes)
    stats.publish()
    if on_start is not None:
        on_start(stats)
    on_event(ev.Started({**plan.summary(), "procs": n}))
    lines: queue.Queue = queue.Queue()
    children: list[Child] = []
    try:
        for k in range(n):
            shard = Shard(k, n)
            proc = subprocess.Popen(argv_of(shard), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    errors="replace", env=env, bufsize=1)
            child = Child(shard, proc)
            children.append(child)
            for stream, kind in ((proc.stdout, "out"), (proc.stderr, "err")):
                threading.Thread(target=_pump, args=(child, stream, kind, lines), daemon=True,
                                 name=f"vbo-procs-{k}-{kind}").start()
        _follow(children, lines, stats, on_event, on_stderr)
        for c in children:
            c.proc.wait()
    except BaseException:
        _stop(children)
        raise
    _combine(stats, children)
    return stats, children


def _pump(child: Child, stream, kind: str, lines: queue.Queue) -> None:
    try:
        for line in stream:
            lines.put((child, kind, line))
    finally:
        lines.put((child, "eof", None))  # whatever happened: the parent must not wait for it forever


def _follow(children: list[Child], lines: queue.Queue, stats: Stats, on_event, on_stderr) -> None:
    """Until every child's output has ended: their events, re-emitted as ours; their progress,
    summed into `stats.published` (and a Progress event at most every second)."""
    open_streams = 2 * len(children)
    last = 0.0

    def progress() -> None:
        p = stats.published
        on_event(ev.Progress(p.bytes_done, p.bytes_total, p.files_done, p.in_flight, p.retries,
                             round(p.bytes_done / max(p.seconds, 1e-9) / 1e6, 2)))

    while open_streams:
        child, kind, line = lines.get()
        if kind == "eof":
            open_streams -= 1
            continue
        if kind == "err":
            child.stderr.append(line)
            del child.stderr[:-50]
            if on_stderr is not None:
                on_stderr(child.shard, line.rstrip("\n"))
            continue
        try:
            d = json.loads(line)
        except ValueError:
            continue  # not an event line (nothing else is printed with --json)
        name = d.get("event")
        if name == "progress":
            child.progress = d
            _publish(stats, children)
            if time.monotonic() - last >= PROGRESS_SECONDS:
                last = time.monotonic()
                progress()
        elif name == "summary":
            child.summary = d
            child.progress = {"bytes_done": d.get("bytes_fetched", 0), "files_done": d.get("files_fetched", 0),
                              "in_flight": 0, "retries": d.get("retries", 0)}
            _publish(stats, children)
            if any(c.summary is None for c in children):
                # A child is done and others go on: the sum jumped; say so now rather than at the
                # next child tick (which, on a loaded machine, may not come before the end).
                last = time.monotonic()
                progress()
        elif name in ("file_start", "file_done", "file_failed", "retry", "warning"):
            on_event(ev.from_dict(d))


def _publish(stats: Stats, children: list[Child]) -> None:
    total = {k: sum(c.progress.get(k, 0) for c in children) for k in ("bytes_done", "files_done", "in_flight",
                                                                        "retries")}
    stats.bytes_done, stats.files_done, stats.retries = total["bytes_done"], total["files_done"], total["retries"]
    stats.published = Snapshot(total["bytes_done"], stats.bytes_total, 0, total["files_done"], 0,
                               total["in_flight"], total["retries"], len(stats.failures), stats.seconds)


def _combine(stats: Stats, children: list[Child]) -> None:
    """One summary from the children's: what was fetched (each object once: claims) adds up;
    failures once each (by key). Views are counted over the whole selection by the caller."""
    sums = [c.summary for c in children if c.summary is not None]
    for ours, theirs in (("files_done", "files_fetched"), ("bytes_done", "bytes_fetched"),
                         ("bytes_resumed", "bytes_resumed"), ("bytes_read_back", "bytes_read_back"),
                         ("retries", "retries"), ("removed", "removed")):
        setattr(stats, ours, sum(s.get(theirs, 0) for s in sums))
    seen: set[str] = set()
    for s in sums:
        for f in s.get("failures", []):
            if f["key"] not in seen:
                seen.add(f["key"])
                stats.failures.append(Failure(f["key"], f.get("version_id"), _error(f), tuple(f.get("views", ()))))


def _add(stats: Stats, more: Stats) -> None:
    for name in ("files_done", "bytes_done", "bytes_resumed", "bytes_read_back", "retries", "removed"):
        setattr(stats, name, getattr(stats, name) + getattr(more, name))
    stats.failures = list(more.failures)  # what is still failing after the finish is what failed


def _error(f: dict) -> errs.MirrorError:
    """A child's failure, as the error kind it was (its name is in the JSON)."""
    cls = getattr(errs, f.get("error", ""), None)
    if isinstance(cls, type) and issubclass(cls, errs.MirrorError):
        try:
            return cls(f.get("message", ""))
        except TypeError:
            pass
    return errs.MirrorError(f.get("message", ""))


def _stop(children: list[Child]) -> None:
    """The parent is interrupted: its children stop too (SIGTERM: each checkpoints its partials
    and saves its index), and are waited for."""
    for c in children:
        if c.proc.poll() is None:
            try:
                c.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 30
    for c in children:
        try:
            c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()
