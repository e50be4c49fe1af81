"""What a run tells its watchers, as typed events.

The engine and verify emit these; the renderers (the rich progress bar, plain lines, JSON
lines) and a caller's `on_event` consume them, reading attributes (`e.name` is the kind).
`to_dict()` is the JSON form, one object per line with its `"event"` name first.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    name: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.name}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict) and f.metadata.get("flatten"):
                out.update(value)
            elif value is not None or not f.metadata.get("optional"):
                out[f.name] = value
        return out


def _flat() -> Any:
    return field(default_factory=dict, metadata={"flatten": True})


def _optional() -> Any:
    return field(default=None, metadata={"optional": True})


@dataclass(frozen=True)
class Started(Event):
    """A run begins: its plan's summary (manifests, fetch, link, present, replace, remove)."""

    name: ClassVar[str] = "start"
    plan: dict = _flat()


@dataclass(frozen=True)
class FileStarted(Event):
    name: ClassVar[str] = "file_start"
    key: str
    version_id: str | None
    bytes: int | None


@dataclass(frozen=True)
class FileDone(Event):
    name: ClassVar[str] = "file_done"
    key: str
    bytes: int
    resumed_bytes: int
    seconds: float
    views: list
    etag_unverifiable: bool | None = _optional()


@dataclass(frozen=True)
class FileFailed(Event):
    name: ClassVar[str] = "file_failed"
    key: str
    error: str
    message: str


@dataclass(frozen=True)
class Retry(Event):
    name: ClassVar[str] = "retry"
    key: str
    attempt: int
    delay: float
    error: str
    message: str
    action: str = "retry"  # kept for readers of the JSON lines before error kinds carried their decisions


@dataclass(frozen=True)
class Progress(Event):
    name: ClassVar[str] = "progress"
    bytes_done: int
    bytes_total: int
    files_done: int
    in_flight: int
    retries: int
    mb_per_s: float


@dataclass(frozen=True)
class Warned(Event):
    name: ClassVar[str] = "warning"
    message: str


@dataclass(frozen=True)
class IndexReconciled(Event):
    """The state index was brought in step with the store (records added, dropped)."""

    name: ClassVar[str] = "index"
    added: int
    dropped: int


@dataclass(frozen=True)
class Summary(Event):
    """A run ended: the counters of `Stats.summary()`."""

    name: ClassVar[str] = "summary"
    stats: dict = _flat()


@dataclass(frozen=True)
class Corrupt(Event):
    """verify: a stored object whose bytes are wrong."""

    name: ClassVar[str] = "corrupt"
    file_hash: str
    problem: str


@dataclass(frozen=True)
class ViewDamaged(Event):
    """verify: a view that is not a view of its object."""

    name: ClassVar[str] = "view_damaged"
    view: str


def from_dict(d: dict[str, Any]) -> Event:
    """The event a JSON line (`to_dict()`, as `--json` prints it) stands for: how `sync --procs`
    re-emits what its child processes said. Keys it does not know (the line's "t") are dropped."""
    cls = next(c for c in _kinds() if c.name == d["event"])
    known = {f.name for f in fields(cls)}
    kw = {k: v for k, v in d.items() if k in known}
    for f in fields(cls):
        if f.metadata.get("flatten"):
            kw[f.name] = {k: v for k, v in d.items() if k not in known and k not in ("event", "t")}
    return cls(**kw)


def _kinds() -> list[type[Event]]:
    out, todo = [], [Event]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.append(sub)
            todo.append(sub)
    return out
