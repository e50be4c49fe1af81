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
import stat
from typing import Iterable

from ..plan import LocalState, Target
from ..store.layout import CacheLayout
from ..store.objects import ObjectStore, is_unverified
from ..store.views import view_matches


def _walk(layout: CacheLayout, top: str) -> dict[str, tuple[int, int]]:
    """Every file (not directory) under cache_dir/top, by path relative to cache_dir →
    (device, inode). Symlinked directories are not followed."""
    out: dict[str, tuple[int, int]] = {}
    root = os.path.join(layout.root, top)
    try:
        st = os.stat(root, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return out
    if not stat.S_ISDIR(st.st_mode):
        return out  # a symlinked version directory is not walked (nothing in it is ours to remove)
    dev = st.st_dev
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


class _FanOut:
    """Which `ab/cd` fan-out directories of the store exist, listed lazily (one scandir of the
    root, one of each first-level directory asked about)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.first = self._names(root)
        self.second: dict[str, set[str]] = {}

    @staticmethod
    def _names(path: str) -> set[str]:
        try:
            with os.scandir(path) as it:
                return {e.name for e in it if e.is_dir(follow_symlinks=False)}
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def exists(self, file_hash: str) -> bool:
        a = file_hash[:2]
        if a not in self.first:
            return False
        if (names := self.second.get(a)) is None:
            names = self.second[a] = self._names(f"{self.root}/{a}")
        return file_hash[2:4] in names


def _objects(layout: CacheLayout, hashes: Iterable[str], leaves: _FanOut | None, trust_unverified: bool
             ) -> tuple[dict[str, int], dict[str, int], dict[str, tuple[int, int]]]:
    """The store objects of `hashes`: verified ones (hash -> size), unverified ones (unless
    trusted), and each verified one's (device, inode)."""
    objects: dict[str, int] = {}
    unverified: dict[str, int] = {}
    inode_of: dict[str, tuple[int, int]] = {}
    for h in hashes:
        if leaves is not None and not leaves.exists(h):
            continue
        try:
            st = os.stat(layout.object_file(h), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISREG(st.st_mode):
            if is_unverified(st.st_mode) and not trust_unverified:
                unverified[h] = st.st_size  # not trusted: the caller checks it (or fetches it again)
                continue
            objects[h] = st.st_size
            inode_of[h] = (st.st_dev, st.st_ino)
    return objects, unverified, inode_of


def _strays(layout: CacheLayout, existing: dict[str, tuple[int, int]], stray_dirs: Iterable[str],
            wanted) -> frozenset[str]:
    """Files in `stray_dirs` that are views of store objects and that no target wants
    (`wanted(paths)`: which of them are wanted)."""
    prefixes = tuple(d.rstrip("/") + "/" for d in stray_dirs)
    if not prefixes:
        return frozenset()
    candidates = [(rel, ino) for rel, ino in existing.items() if rel.startswith(prefixes)]
    taken = wanted([rel for rel, _ in candidates])
    unwanted = [(rel, ino) for (rel, ino), w in zip(candidates, taken) if not w]
    if not unwanted:
        return frozenset()
    inodes = {ino for _, _, ino in ObjectStore(layout).iter_objects()}
    return frozenset(rel for rel, ino in unwanted if ino in inodes)


def _view_of(layout: CacheLayout, store: ObjectStore, view: str, h: str, found: tuple[int, int],
             objects: dict[str, int], inode_of: dict[str, tuple[int, int]]) -> str | None:
    if h in objects and (found == inode_of[h] or view_matches(layout.view_path(view), store.path(h))):
        return h  # a hard link (same inode), or a stamped copy where links are not possible
    return None


def scan_local(layout: CacheLayout, targets: Iterable[Target], *, stray_dirs: Iterable[str] = (),
               trust_unverified: bool = False) -> LocalState:
    """`stray_dirs`: version directories (relative to cache_dir) in which files that are
    views of store objects but wanted by no target are reported for removal. Files that are
    not views of ours (a user's notes, say) are never touched.

    `objects` holds the store objects the targets want (found by their names: one stat each,
    instead of a walk of the store's fan-out directories, which took a no-op resync of 6,000
    files 0.15 s); the whole store is walked only when a version directory holds files no
    target wants."""
    if getattr(targets, "bulk", False):  # a bulk.TargetTable: a big manifest as columns
        return _scan_table(layout, targets, stray_dirs=stray_dirs, trust_unverified=trust_unverified)
    store = ObjectStore(layout)
    targets = list(targets)
    hashes = {t.entry.file_hash for t in targets}
    # Many wanted objects: list the fan-out directories first and skip the names in missing
    # ones (a million ENOENT stats took 4 s). Few: stat each (the listing would cost 10-25 ms
    # of a 6,000-file no-op resync against a full store).
    leaves = _FanOut(str(layout.objects)) if len(hashes) > 20_000 else None
    objects, unverified, inode_of = _objects(layout, hashes, leaves, trust_unverified)
    tops = {t.view.split("/", 1)[0] for t in targets} | set(stray_dirs)
    existing: dict[str, tuple[int, int]] = {}
    for top in tops:
        existing.update(_walk(layout, top))
    views: dict[str, str | None] = {}
    wanted: set[str] = set()
    for t in targets:
        wanted.add(t.view)
        found = existing.get(t.view)
        if found is not None:
            views[t.view] = _view_of(layout, store, t.view, t.entry.file_hash, found, objects, inode_of)
    extra = _strays(layout, existing, stray_dirs, lambda paths: [p in wanted for p in paths])
    return LocalState(objects=objects, views=views, extra_files=extra, unverified=unverified)


def _scan_table(layout: CacheLayout, table, *, stray_dirs: Iterable[str], trust_unverified: bool) -> LocalState:
    """`scan_local` of a `bulk.TargetTable`: the same state, with the per-row work done only
    for rows whose fan-out directory exists (none in a new cache_dir) or whose view exists."""
    import pyarrow as pa
    import pyarrow.compute as pc

    store = ObjectStore(layout)
    leaves = _FanOut(str(layout.objects))
    hashes = {t.entry.file_hash for t in table.small}
    if leaves.first:
        lead = pc.utf8_slice_codeunits(table.hashes, 0, 2)
        hashes.update(table.hashes.filter(pc.is_in(lead, value_set=pa.array(sorted(leaves.first)))).to_pylist())
    objects, unverified, inode_of = _objects(layout, hashes, leaves, trust_unverified)
    tops = {table.top} | {t.view.split("/", 1)[0] for t in table.small} | set(stray_dirs)
    existing: dict[str, tuple[int, int]] = {}
    for top in tops:
        existing.update(_walk(layout, top))
    views: dict[str, str | None] = {}
    small = {t.view: t for t in table.small}
    if existing:
        there = pa.array(list(existing), pa.string())
        rows = pc.index_in(there, value_set=table.views)
        hit = pc.is_valid(rows)
        for view, h in zip(there.filter(hit).to_pylist(), table.hashes.take(rows.filter(hit)).to_pylist()):
            views[view] = _view_of(layout, store, view, h, existing[view], objects, inode_of)
    for view, t in small.items():
        found = existing.get(view)
        if found is not None:
            views[view] = _view_of(layout, store, view, t.entry.file_hash, found, objects, inode_of)

    def wanted(paths: list[str]) -> list[bool]:
        if not paths:
            return []
        big = pc.is_in(pa.array(paths, pa.string()), value_set=table.views).to_pylist()
        return [b or p in small for p, b in zip(paths, big)]

    extra = _strays(layout, existing, stray_dirs, wanted)
    return LocalState(objects=objects, views=views, extra_files=extra, unverified=unverified)
