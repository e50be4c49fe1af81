"""Which views of a version were asked for: what `verify` expects to find.

A whole-version sync wants every file of it; `sync --where/--ids/--tables-only` and `get`
want some. Each sync adds what it wanted to `.vbo-mirror/wanted-v1/<version dir>` (one view
path per line, or `*` for every file), so `verify` reports a view that was made and is gone
(and `--repair` makes it again), but not the files a narrower selection never fetched.
A version with no record whose directory exists is taken as wholly wanted (a cache synced
before records were kept); one with neither (a manifest fetched to compare) is not checked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .fsutil import atomic_write, flocked, read_no_follow
from .layout import CacheLayout

ALL = "*"
MAX_RECORD = 256 << 20


def _path(layout: CacheLayout, view_dir: str) -> Path:
    return layout.meta / "wanted-v1" / view_dir


def read(layout: CacheLayout, view_dir: str) -> frozenset[str] | None:
    """The recorded views (ALL among them: every file), or None when nothing is recorded."""
    try:
        data = read_no_follow(_path(layout, view_dir), "a record of wanted views", limit=MAX_RECORD)
    except FileNotFoundError:
        return None
    return frozenset(line for line in data.decode("utf-8", "replace").splitlines() if line)


def add(layout: CacheLayout, view_dir: str, views: list[str] | None) -> None:
    """Add `views` (None: every file of the version) to the record, under a lock: shards of
    one selection add at the same time."""
    path = _path(layout, view_dir)
    with flocked(path.parent / ".lock", f"recording the views wanted in {view_dir}"):
        have = read(layout, view_dir) or frozenset()
        if ALL in have:
            return
        new = {ALL} if views is None else set(views) - have
        if not new:
            return
        lines = [ALL] if ALL in new else sorted(have | new)
        atomic_write(path, ("\n".join(lines) + "\n").encode(), durable=False)


def remove(layout: CacheLayout, view_dir: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(layout, view_dir))


def expected(layout: CacheLayout, view_dir: str):
    """A predicate over view paths of that version: does verify expect to find it?"""
    rec = read(layout, view_dir)
    if rec is None:
        whole = os.path.isdir(layout.view_path(view_dir)) and not os.path.islink(layout.view_path(view_dir))
        return lambda rel: whole
    if ALL in rec:
        return lambda rel: True
    return rec.__contains__
