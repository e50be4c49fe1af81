"""Read what is on disk into the plain data the planner takes (`LocalState`).

The object store is the ground truth: an object exists under its hash only once verified.
A view counts as present when it is a view of the object its manifest wants (same inode,
or a stamped copy); anything else at a view path is replaced.
"""

from __future__ import annotations

import os
from typing import Iterable

from ..plan import LocalState, Target
from .layout import CacheLayout
from .objects import ObjectStore
from .views import view_matches


def scan_local(layout: CacheLayout, targets: Iterable[Target], *, stray_dirs: Iterable[str] = ()) -> LocalState:
    """`stray_dirs`: version directories (relative to cache_dir) in which files that are
    views of store objects but wanted by no target are reported for removal. Files that are
    not views of ours (a user's notes, say) are never touched."""
    store = ObjectStore(layout)
    objects: dict[str, int] = {}
    inodes: set[tuple[int, int]] = set()
    for h, size, ino in store.iter_objects():
        objects[h] = size
        inodes.add(ino)
    views: dict[str, str | None] = {}
    wanted: set[str] = set()
    for t in targets:
        wanted.add(t.view)
        path = layout.view_path(t.view)
        if not os.path.lexists(path):
            continue
        h = t.entry.file_hash
        views[t.view] = h if h in objects and view_matches(path, store.path(h)) else None
    extra: set[str] = set()
    for d in stray_dirs:
        root = layout.view_path(d)
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, layout.root)
                if rel in wanted:
                    continue
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if (st.st_dev, st.st_ino) in inodes:
                    extra.add(rel)
    return LocalState(objects=objects, views=views, extra_files=frozenset(extra))
