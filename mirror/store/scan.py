"""Read what is on disk into the plain data the planner takes (`LocalState`).

The object store is the ground truth: an object exists under its hash only once verified.
A view counts as present when it is a view of the object its manifest wants (same inode,
or a stamped copy); anything else at a view path is replaced.

One directory walk per version directory gives every existing file with its inode number
(scandir's d_ino, no stat), so a view is matched to its object without a system call per
file, and a wanted view that does not exist costs nothing: on a 6,000-file version a no-op
resync stats only the store.
"""

from __future__ import annotations

import os
from typing import Iterable

from ..plan import LocalState, Target
from .layout import CacheLayout
from .objects import ObjectStore
from .views import view_matches


def _walk(layout: CacheLayout, top: str) -> dict[str, tuple[int, int]]:
    """Every file (not directory) under cache_dir/top, by path relative to cache_dir →
    (device, inode). Symlinked directories are not followed."""
    out: dict[str, tuple[int, int]] = {}
    root = os.path.join(layout.root, top)
    try:
        dev = os.stat(root, follow_symlinks=False).st_dev
    except (FileNotFoundError, NotADirectoryError):
        return out
    stack = [(root, top)]
    while stack:
        path, rel = stack.pop()
        try:
            with os.scandir(path) as it:
                for e in it:
                    r = f"{rel}/{e.name}"
                    if e.is_dir(follow_symlinks=False):
                        stack.append((e.path, r))
                    else:
                        out[r] = (dev, e.inode())
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
    return out


def scan_local(layout: CacheLayout, targets: Iterable[Target], *, stray_dirs: Iterable[str] = ()) -> LocalState:
    """`stray_dirs`: version directories (relative to cache_dir) in which files that are
    views of store objects but wanted by no target are reported for removal. Files that are
    not views of ours (a user's notes, say) are never touched."""
    store = ObjectStore(layout)
    objects: dict[str, int] = {}
    inode_of: dict[str, tuple[int, int]] = {}
    for h, size, ino in store.iter_objects():
        objects[h] = size
        inode_of[h] = ino
    targets = list(targets)
    tops = {t.view.split("/", 1)[0] for t in targets} | set(stray_dirs)
    existing: dict[str, tuple[int, int]] = {}
    for top in tops:
        existing.update(_walk(layout, top))
    views: dict[str, str | None] = {}
    wanted: set[str] = set()
    for t in targets:
        wanted.add(t.view)
        found = existing.get(t.view)
        if found is None:
            continue
        h = t.entry.file_hash
        if h in objects and (found == inode_of[h] or view_matches(layout.view_path(t.view), store.path(h))):
            views[t.view] = h  # a hard link (same inode), or a stamped copy where links are not possible
        else:
            views[t.view] = None
    inodes = set(inode_of.values())
    extra: set[str] = set()
    for d in stray_dirs:
        prefix = d.rstrip("/") + "/"
        for rel, ino in existing.items():
            if rel.startswith(prefix) and rel not in wanted and ino in inodes:
                extra.add(rel)
    return LocalState(objects=objects, views=views, extra_files=frozenset(extra))
