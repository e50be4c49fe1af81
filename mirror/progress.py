"""Showing a run: a rich live display on a terminal, JSON lines with --json, and plain
lines (failures and the summary) otherwise. All three consume the same typed events
(mirror/events.py)."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .events import Event, FileFailed, Warned

if TYPE_CHECKING:
    from .engine.runner import Stats


def json_lines(stream=None) -> Callable[[Event], None]:
    out = stream or sys.stdout

    def emit(event: Event) -> None:
        out.write(json.dumps({"t": round(time.time(), 3), **event.to_dict()}, default=str) + "\n")
        out.flush()

    return emit


class PlainEvents:
    """Without a terminal and without --json: one line per failure or warning, on stderr."""

    def __call__(self, event: Event) -> None:
        if isinstance(event, FileFailed):
            print(f"vbo-mirror: failed: {event.key}: {event.message}", file=sys.stderr)
        elif isinstance(event, Warned):
            print(f"vbo-mirror: warning: {event.message}", file=sys.stderr)


class LiveProgress:
    """A rich progress bar fed from the engine's live Stats: bytes, rate, ETA, files in
    flight, retries. Events print failures above the bar."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[files]}"), console=self.console, transient=False,
            refresh_per_second=4,
        )
        self.task = None
        self.stats: Stats | None = None

    def __enter__(self) -> "LiveProgress":
        self.progress.start()
        self.task = self.progress.add_task("sync", total=None, files="")
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
        st = self.stats
        if st is None or self.task is None:
            return
        files = (f"{st.files_done} fetched, {st.files_linked} linked, {len(st.in_flight)} in flight"
                 + (f", {st.retries} retries" if st.retries else "")
                 + (f", [red]{len(st.failures)} failed[/]" if st.failures else ""))
        self.progress.update(self.task, total=max(st.bytes_total - st.bytes_resumed, st.bytes_done) or None,
                             completed=st.bytes_done, files=files)

    def __call__(self, event: Event) -> None:
        if isinstance(event, FileFailed):
            self.console.print(f"[red]failed[/] {event.key}: {event.message}")
        elif isinstance(event, Warned):
            self.console.print(f"[yellow]warning[/] {event.message}")
        self.refresh()
