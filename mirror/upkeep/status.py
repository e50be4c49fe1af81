"""Looking at a mirror without the network: status, verify, and rebuilding the index."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

from ..events import Corrupt, Event, ViewDamaged
from ..hashing import hash_file, xxh3_file
from ..manifest import Manifest
from ..reports import CacheStatus, Corruption, IndexRebuilt, VerifyReport, VersionStatus
from ..store.index import IndexRecord, StateIndex
from ..store import wanted as wanted_views
from ..store.layout import CacheLayout, sidecar_of
from ..store.objects import ObjectStore, is_unverified, mark_verified
from ..store.views import view_matches


def cache_status(layout: CacheLayout, manifests: Iterable[Manifest], *, current: str | None) -> CacheStatus:
    store = ObjectStore(layout)
    objects = {h: (size, ino) for h, size, ino in store.iter_objects()}
    versions = []
    manifests = list(manifests)
    places = [(m, m.view_dir, "allensdk") for m in manifests]
    places += [(m, m.project_name, "bucket") for m in manifests
               if os.path.isfile(layout.view_path(f"{m.project_name}/manifests/{m.name}"))]
    for m, top, kind in places:
        present = missing = wrong = 0
        logical = 0
        unique: set[str] = set()
        for e in m.entries():
            view = layout.view_path(f"{top}/{e.relative_path}")
            obj = objects.get(e.file_hash)
            if obj is not None and view_matches(view, store.path(e.file_hash)):
                present += 1
                logical += obj[0]
                unique.add(e.file_hash)
            elif os.path.lexists(view):
                wrong += 1
            else:
                missing += 1
        versions.append(VersionStatus(m.name, m.manifest_version, m.name == current, kind, top, len(m), present,
                                      missing, wrong, present == len(m), logical,
                                      sum(objects[h][0] for h in unique)))
    partials = store.partials()
    return CacheStatus(str(layout.root), versions, objects=len(objects), unverified_objects=len(store.unverified()),
                       bytes_on_disk=sum(size for size, _ in objects.values()),
                       logical_bytes=sum(v.logical_bytes for v in versions), partials=len(partials),
                       partial_bytes=sum(_saved(p) for p in partials))


def _saved(partial) -> int:
    """Bytes a partial download has saved: the ranges its resume state records."""
    import json

    from ..store.fsutil import read_no_follow

    try:
        state = json.loads(read_no_follow(sidecar_of(partial), "resume state", limit=16 << 20))
        return sum(max(0, int(e) - int(s)) for s, e in state.get("done", []))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0  # no (readable) resume state: the next sync starts that object over


def _size(path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def verify_store(layout: CacheLayout, manifests: list[Manifest], *, fast: bool, jobs: int = 2,
                 on_event: Callable[[Event], None] | None = None, read_only: bool = False) -> VerifyReport:
    """Hash every object (full BLAKE2b, or xxh3 against the index with `fast`); a damaged
    object is removed from the store (its views keep the bad bytes until repaired, and are
    listed). Views of the downloaded versions are checked against the objects they want."""
    emit = on_event or (lambda e: None)
    store = ObjectStore(layout)
    index = StateIndex(layout)
    index.load()
    objects = [(h, size) for h, size, _ in store.iter_objects()]

    def check(item: tuple[str, int]) -> tuple[str, int, str | None, str | None, str]:
        h, size = item
        rec = index.get(h)
        path = store.path(h)
        unverified = is_unverified(os.stat(path).st_mode)
        if fast and rec is not None and rec.xxh3 and not unverified:  # a fingerprint of unchecked bytes proves nothing
            got = xxh3_file(path)
            return h, size, None if got == rec.xxh3 else f"xxh3 {got} != {rec.xxh3} in the index", got, "xxh3"
        d = hash_file(path)
        if d.size != size:
            return h, size, f"size changed while reading ({d.size} != {size})", d.xxh3, "blake2b"
        return h, size, None if d.blake2b == h else "BLAKE2b does not match the object's name", d.xxh3, "blake2b"

    corrupt = []
    checked_bytes = 0
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for h, size, problem, xxh3, how in pool.map(check, objects):
            checked_bytes += size
            if problem:
                corrupt.append(Corruption(h, str(store.path(h)), problem, how))
                emit(Corrupt(h, problem))
                if read_only:
                    continue  # reported only: nothing can be removed from a read-only mirror
                with contextlib.suppress(FileNotFoundError):
                    store.remove(h)
                index.drop(h)
            elif not read_only:
                if how == "blake2b":
                    with contextlib.suppress(FileNotFoundError):
                        mark_verified(store.path(h))  # an object published unverified is verified now
                rec = index.get(h)
                index.put(IndexRecord(h, size, xxh3 if how == "blake2b" else rec.xxh3, rec.key if rec else None,
                                      rec.version_id if rec else None, rec.etag if rec else None, StateIndex.now()))
    if not read_only:
        index.commit()
    # Partials no downloaded version wants any more (their version was deleted on S3, or the
    # manifest that wanted them was removed): nothing will ever finish them.
    wanted = {e.file_hash for m in manifests for e in m.entries()}
    orphans = []
    for p in ([] if read_only else store.partials()):
        if p.name.removesuffix(".partial") not in wanted:
            for f in (p, sidecar_of(p)):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
            orphans.append(p.name)
    bad = {c.file_hash for c in corrupt}
    # AllenSDK's version directories, and the bucket layout of the version whose manifest its
    # `<project>/manifests/` holds (sync --layout bucket).
    places = [(m, m.view_dir) for m in manifests]
    places += [(m, m.project_name) for m in manifests
               if os.path.isfile(layout.view_path(f"{m.project_name}/manifests/{m.name}"))]
    want = {d: wanted_views.expected(layout, d) for _, d in places}
    stored = {h for h, _ in objects} - bad
    views_wrong, views_missing_content, views_missing, copies = [], [], [], []
    unstored: set[str] = set()  # missing views whose content is not in the store: a repair fetches it
    for m, d in places:
        for e in m.entries():
            rel = f"{d}/{e.relative_path}"
            view = layout.view_path(rel)
            if not os.path.lexists(view):
                if want[d](rel):  # asked for by a sync (store/wanted.py), and gone
                    views_missing.append(rel)
                    if e.file_hash not in stored:
                        unstored.add(rel)
                continue
            if e.file_hash in bad:
                views_missing_content.append(rel)
            elif not view_matches(view, store.path(e.file_hash)):
                views_wrong.append(rel)
            elif not _same_inode(view, store.path(e.file_hash)):
                copies.append((rel, view, e.file_hash))  # a copy or reflink: its own bytes to check
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        checked = pool.map(lambda c: (xxh3_file(c[1]) if fast else hash_file(c[1]).blake2b), copies)
        for (rel, _view, h), got in zip(copies, checked):
            rec = index.get(h)
            want = (rec.xxh3 if rec is not None else None) if fast else h
            if want is not None and got != want:
                views_wrong.append(rel)
                emit(ViewDamaged(rel))
    return VerifyReport(len(objects), checked_bytes, "fast" if fast else "full", corrupt, sorted(views_wrong),
                        sorted(views_missing_content), sorted(set(views_missing)), sorted(unstored), sorted(orphans),
                        ok=not corrupt and not views_wrong and not views_missing, read_only=read_only)


def _same_inode(a, b) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def rebuild_index(layout: CacheLayout, manifests: list[Manifest], *, jobs: int = 2) -> IndexRebuilt:
    """A new index from the store alone: each object is read, checked against its name, and
    fingerprinted; key and version come from the downloaded manifests where they know it."""
    store = ObjectStore(layout)
    by_hash = {e.file_hash: e for m in manifests for e in m.entries()}
    old = StateIndex(layout)
    old.load()
    objects = [(h, size) for h, size, _ in store.iter_objects()]
    fresh = StateIndex(layout)
    removed = []
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for (h, size), d in zip(objects, pool.map(lambda o: hash_file(store.path(o[0])), objects)):
            if d.blake2b != h:
                removed.append(h)
                store.remove(h)
                continue
            e = by_hash.get(h)
            prev = old.get(h)
            fresh.records[h] = IndexRecord(h, size, d.xxh3, e.key if e else (prev.key if prev else None),
                                           e.version_id if e else (prev.version_id if prev else None),
                                           prev.etag if prev else None, StateIndex.now())
    fresh.commit(replace_all=True)
    return IndexRebuilt(len(fresh.records), sum(r.size for r in fresh.records.values()), removed)
