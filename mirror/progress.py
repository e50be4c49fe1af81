"""Showing a run: a rich live display on a terminal, JSON lines with --json, and plain
lines (failures and the summary) otherwise. All three consume the same typed events
(mirror/events.py)."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .events import Event, FileFailed, Progress, Started, Warned

if TYPE_CHECKING:
    from .engine.runner import Stats


class StatusLines:
    """Lines about long steps before a transfer (listing, HEADs, adopt), to `on_status` (the CLI
    prints them on stderr; None: nowhere). `counter(what)` says done/total at most every
    `every()` seconds, and once at the end."""

    def __init__(self, on_status: Callable[[str], None] | None, every: Callable[[], float]) -> None:
        self.on_status = on_status
        self._every = every

    def __call__(self, line: str) -> None:
        if self.on_status is not None:
            self.on_status(line)

    def counter(self, what: str) -> Callable[[int, int], None]:
        last = [time.monotonic()]

        def report(done: int, total: int) -> None:
            now = time.monotonic()
            if done == total or now - last[0] >= self._every():
                last[0] = now
                self(f"{what} {done:,}/{total:,}")

        return report


def json_lines(stream=None) -> Callable[[Event], None]:
    out = stream or sys.stdout

    def emit(event: Event) -> None:
        out.write(json.dumps({"t": round(time.time(), 3), **event.to_dict()}, default=str) + "\n")
        out.flush()

    return emit


_VERSION = re.compile(r"_v([0-9]+\.[0-9]+\.[0-9]+)\.json$")


def versions_of(summary: dict) -> str:
    """'1.0.1' (or '1.0.1+1.1.0') from a plan summary's manifest names."""
    names = summary.get("manifests") or []
    return "+".join(m.group(1) if (m := _VERSION.search(n)) else n for n in names) or "sync"


def mb(n: float) -> str:
    """One unit style everywhere: decimal, B / kB / MB / GB / TB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def mbps(rate: float) -> str:
    """A rate, always in MB/s as the summary gives it."""
    return f"{rate / 1e6:.1f} MB/s"


def _eta(left: float, rate: float) -> str:
    if rate <= 0 or left <= 0:
        return "-"
    secs = int(left / rate)
    return f"{secs // 3600}:{secs // 60 % 60:02d}:{secs % 60:02d}"


class PlainEvents:
    """Without a terminal and without --json, on stderr: one line per failure or warning, and
    a progress line every `every` seconds (as rclone's --stats): version, files n/N, bytes,
    rate, ETA. 0: no progress lines."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic, stream=None) -> None:
        self.every = every
        self.clock = clock
        self.out = stream
        self.version = "sync"
        self.files_total = 0
        self._last = clock()

    def _print(self, line: str) -> None:
        print(line, file=self.out or sys.stderr, flush=True)

    def __call__(self, event: Event) -> None:
        if isinstance(event, FileFailed):
            self._print(f"vbo-mirror: failed: {event.key}: {event.message}")
        elif isinstance(event, Warned):
            self._print(f"vbo-mirror: warning: {event.message}")
        elif isinstance(event, Started):
            self.version = versions_of(event.plan)
            self.files_total = event.plan.get("fetch", {}).get("files", 0)
            self._last = self.clock()
        elif isinstance(event, Progress) and self.every > 0 and self.clock() - self._last >= self.every:
            self._last = self.clock()
            rate = event.mb_per_s * 1e6
            pct = f" ({100 * event.bytes_done / event.bytes_total:.0f}%)" if event.bytes_total else ""
            self._print(f"vbo-mirror: {self.version}: files {event.files_done}/{self.files_total}, "
                        f"{mb(event.bytes_done)} of {mb(event.bytes_total)}{pct}, {mbps(rate)}, "
                        f"ETA {_eta(event.bytes_total - event.bytes_done, rate)}"
                        + (f", {event.retries} retries" if event.retries else ""))


class LiveProgress:
    """A rich progress bar fed from the snapshots the engine publishes (Stats.published, every
    0.25 s): bytes, rate, ETA, files in flight, retries. Events print failures above the bar."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        # Our own byte and rate columns: one unit style (decimal, MB/s as in the summary),
        # where rich's own switch between kB/s and MB/s.
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[bytes]}"),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), TextColumn("{task.fields[files]}"),
            console=self.console, transient=False, refresh_per_second=4,
        )
        self.task = None
        self.stats: Stats | None = None
        self.files_total = 0

    def __enter__(self) -> "LiveProgress":
        self.progress.start()
        self.task = self.progress.add_task("sync", total=None, files="", bytes="", rate="")
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="vbo-progress", daemon=True)
        self._poller.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._poller.join()
        self.refresh()
        self.progress.stop()

    def _poll(self) -> None:
        """Bytes move between events (a large file is one event); read the counters often."""
        while not self._stop.wait(0.25):
            self.refresh()

    def attach(self, stats: Stats) -> None:
        self.stats = stats

    def refresh(self) -> None:
        if self.stats is None or self.task is None:
            return
        st = self.stats.published  # a copy the loop thread made: this runs in the poller thread too
        files = (f"files {st.files_done}/{self.files_total}, {st.files_linked} linked, {st.in_flight} in flight"
                 + (f", {st.retries} retries" if st.retries else "")
                 + (f", [red]{st.failed} failed[/]" if st.failed else ""))
        total = max(st.bytes_total - st.bytes_resumed, st.bytes_done)
        secs = st.seconds
        self.progress.update(self.task, total=total or None, completed=st.bytes_done, files=files,
                             bytes=f"{mb(st.bytes_done)}/{mb(total)}",
                             rate=mbps(st.bytes_done / secs if secs > 0 else 0))

    def __call__(self, event: Event) -> None:
        if isinstance(event, Started) and self.task is not None:
            self.files_total = event.plan.get("fetch", {}).get("files", 0)
            self.progress.update(self.task, description=versions_of(event.plan))
        if isinstance(event, FileFailed):
            self.console.print(f"[red]failed[/] {event.key}: {event.message}")
        elif isinstance(event, Warned):
            self.console.print(f"[yellow]warning[/] {event.message}")
        self.refresh()
