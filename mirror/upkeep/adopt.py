"""`adopt`: take a cache_dir that AllenSDK filled into the store, in place, without copying.

AllenSDK leaves each file it downloaded at `<project>-<version>/<relative path>`, and for a
file identical to one it already has, an ABSOLUTE symlink to that one (which breaks when the
tree is moved or copied). Adopting keeps every path where it is: a file whose BLAKE2b is
the manifest's becomes, by a hard link, the store object itself (no byte copied); a symlink,
and a second copy of content already stored, become hard-linked views of the object. Nothing
is fetched: what cannot be adopted is reported, and the next sync fetches or replaces it.

What is read is never trusted because of where it is. cache_dir may be writable by others:
every path is reached from an open descriptor of cache_dir, one directory at a time with
O_NOFOLLOW, so no symlinked directory (and no symlink at all, except the AllenSDK symlinks
resolved on purpose below) leads the reads out of it. A symlink's target must be a regular
file inside a version directory of cache_dir, directly or, for a tree that was moved or copied
(its symlinks name the old place), found again under cache_dir by its `<project>-<version>/...`
tail; a target outside cache_dir is never read ("foreign"). An object enters the store only
under the hash of the bytes of that very inode, hashed after it was made read-only.

Crash safety: an AllenSDK file's bytes are never written. Its inode is hard-linked to a
temporary name in the store, made read-only, hashed, synced, and only then renamed to its
object name; a path is replaced (atomically, by the Linker) only by a view of an object
whose hash is that path's manifest hash. Killed at any moment, every path still holds its
own bytes or a verified view of them; what is left is a `.vbo-tmp-` link in the store (gc
removes it) and, at worst, an un-adopted file that the next adopt or sync handles.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import MirrorError, StoreError
from ..hashing import READ_CHUNK, Digests, MultiHasher
from ..manifest import FileEntry, Manifest
from ..reports import AdoptReport, Amount
from ..store.facade import Store
from ..store.fsutil import store_error
from ..store.index import IndexRecord, StateIndex
from ..store.layout import CacheLayout
from ..store.objects import VERIFIED_MODE, is_unverified
from ..store.views import view_matches

EXAMPLES = 20  # examples listed per category in the report
MAX_HOPS = 4  # symlinks followed in a chain (AllenSDK makes chains of one)
# Errors that end the whole adoption: nothing else could succeed either.
_FATAL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
# A hard link into the store is not possible here: the bytes are copied into it instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}

if TYPE_CHECKING:
    from ..versions import Versions

CATEGORIES = ("adopted", "present", "mismatch", "missing", "foreign", "failed")


@dataclass
class _Source:
    """The regular file found for an entry: its own path, or where its symlink leads."""

    rel: str  # relative to cache_dir
    dev: int
    ino: int
    size: int


@dataclass
class _Item:
    """One view path of one manifest entry, and what was found there."""

    rel: str
    entry: FileEntry
    symlink: str | None = None  # the symlink's text, when the path is one
    rerooted: bool = False  # the symlink named a place outside cache_dir, found again inside it
    source: _Source | None = None


@dataclass
class _Group:
    """Items whose bytes are one inode: hashed once."""

    source: _Source
    items: list[_Item] = field(default_factory=list)


@dataclass
class _Outcome:
    item: _Item
    category: str
    size: int = 0
    detail: dict | None = None
    freed: int = 0  # bytes of a separate copy given back (replaced by a link to the object)


class _Dirs:
    """Directories of cache_dir opened one component at a time without following symlinks."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.fds: dict[tuple[str, ...], int] = {}

    def open(self, parts: tuple[str, ...]) -> int:
        fd = self.fds.get(parts)
        if fd is not None:
            return fd
        if not parts:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # cache_dir itself may be a symlink
        else:
            parent = self.open(parts[:-1])
            fd = os.open(parts[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        self.fds[parts] = fd
        return fd

    def locate(self, rel: str) -> tuple[int, str]:
        """(descriptor of the directory holding `rel`, its last component)."""
        parts = rel.split("/")
        return self.open(tuple(parts[:-1])), parts[-1]

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()

    def __enter__(self) -> _Dirs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _lstat(dirs: _Dirs, rel: str) -> tuple[str, os.stat_result | None, str | None]:
    """('reg' | 'lnk' | 'other' | 'absent' | 'blocked', lstat, symlink text)."""
    try:
        dfd, name = dirs.locate(rel)
    except FileNotFoundError:
        return "absent", None, None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return "blocked", None, None
        raise
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return "absent", None, None
    if stat.S_ISREG(st.st_mode):
        return "reg", st, None
    if stat.S_ISLNK(st.st_mode):
        return "lnk", st, os.readlink(name, dir_fd=dfd)
    return "other", st, None


class _Adopter:
    def __init__(self, layout: CacheLayout, store: Store, manifests: list[Manifest], *, dry_run: bool,
                 jobs: int) -> None:
        self.layout = layout
        self.store = store
        self.manifests = manifests
        self.dry_run = dry_run
        self.jobs = max(1, jobs)
        self.root = str(layout.root)
        self.real_root = os.path.realpath(layout.root)
        self.view_dirs = {m.view_dir for m in manifests}
        projects = sorted({m.project_name for m in manifests}) or ["-"]
        self.version_dir = re.compile("(?:" + "|".join(map(re.escape, projects)) + r")-[0-9]+\.[0-9]+\.[0-9]+[0-9A-Za-z.+-]*")
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self.euid = os.geteuid()
        self.copied: list[tuple[str, int]] = []  # objects that had to be copied in (list.append: thread-safe)

    # --- the store ------------------------------------------------------------------------------

    def object_stat(self, file_hash: str) -> os.stat_result | None:
        """The published, verified object of `file_hash`, or None (absent, unverified, or behind
        a symlinked directory of the store, which is not trusted)."""
        path = self.layout.object_path(file_hash)
        try:
            self.layout.real_parents(path)
            st = os.stat(path, follow_symlinks=False)
        except (OSError, StoreError):
            return None
        if not stat.S_ISREG(st.st_mode) or is_unverified(st.st_mode):
            return None
        return st

    def lock_for(self, file_hash: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(file_hash, threading.Lock())

    # --- phase 1: what is at each path ------------------------------------------------------------

    def is_version_dir(self, name: str) -> bool:
        return name in self.view_dirs or bool(self.version_dir.fullmatch(name))

    def inside(self, path: str) -> str | None:
        """`path` (absolute, normalised) relative to cache_dir, or None when outside it."""
        for base in (self.root, self.real_root):
            if path.startswith(base.rstrip("/") + "/"):
                return path[len(base.rstrip("/")) + 1:]
        return None

    def follow(self, dirs: _Dirs, rel: str, text: str, hops: int = 0) -> tuple:
        """Where the symlink at `rel` (whose text is `text`) leads, without leaving cache_dir:
        ('file', rel, lstat, rerooted) or ('missing' | 'foreign', reason)."""
        lexical = posixpath.normpath(posixpath.join(self.root, posixpath.dirname(rel), text))
        inside = self.inside(lexical)
        candidates: list[tuple[str, bool]] = []
        if inside is not None:
            candidates.append((inside, False))
        else:
            # A moved or copied tree: the same <project>-<version>/... under this cache_dir.
            parts = lexical.split("/")
            for i in range(len(parts) - 2, 0, -1):
                if self.is_version_dir(parts[i]):
                    candidates.append(("/".join(parts[i:]), True))
        found: tuple | None = None
        for cand, rerooted in candidates:
            if not self.is_version_dir(cand.split("/", 1)[0]) or "/" not in cand:
                found = found or ("foreign", f"symlink to {text}: not inside a version directory of cache_dir")
                continue
            kind, st, link = _lstat(dirs, cand)
            if kind == "reg":
                return "file", cand, st, rerooted
            if kind == "lnk":
                if hops >= MAX_HOPS:
                    found = found or ("foreign", f"symlink to {text}: too many levels of symlinks")
                    continue
                got = self.follow(dirs, cand, link, hops + 1)
                if got[0] == "file":
                    return "file", got[1], got[2], got[3] or rerooted
                found = found or got
            elif kind == "blocked":
                found = found or ("foreign", f"symlink to {text}: a directory on the way is a symlink or a file")
            elif kind == "other":
                found = found or ("foreign", f"symlink to {text}: not a regular file")
        if found is not None:
            return found
        if inside is None and os.path.lexists(lexical):  # an lstat outside; nothing there is read
            return "foreign", f"symlink to {text}: outside cache_dir"
        return "missing", f"broken symlink to {text}"

    def survey(self) -> tuple[list[_Outcome], list[_Group], int]:
        """Every entry's path looked at (no hashing): outcomes known already, the rest grouped
        by the inode that holds their bytes, and how many entries there are."""
        done: list[_Outcome] = []
        groups: dict[tuple[int, int], _Group] = {}
        seen: set[str] = set()
        total = 0
        with _Dirs(self.root) as dirs:
            for m in self.manifests:
                for e in m.entries():
                    rel = f"{m.view_dir}/{e.relative_path}"
                    if rel in seen:
                        continue
                    seen.add(rel)
                    total += 1
                    self.layout.view_path(rel)  # refuses a path that escapes cache_dir
                    item = _Item(rel, e)
                    try:
                        kind, st, text = _lstat(dirs, rel)
                    except OSError as exc:
                        done.append(_Outcome(item, "failed", detail={"path": rel, "error": str(exc)}))
                        continue
                    if kind == "absent":
                        done.append(_Outcome(item, "missing", detail={"path": rel, "reason": "not there"}))
                        continue
                    if kind == "blocked":
                        done.append(_Outcome(item, "foreign", detail={
                            "path": rel, "reason": "a directory on its path is a symlink or a file"}))
                        continue
                    if kind == "other":
                        done.append(_Outcome(item, "foreign", detail={"path": rel, "reason": "not a regular file"}))
                        continue
                    if kind == "reg":
                        obj = self.object_stat(e.file_hash)
                        if obj is not None and view_matches(self.layout.view_path(rel), self.layout.object_path(e.file_hash)):
                            done.append(_Outcome(item, "present", obj.st_size))
                            continue
                        src_rel = rel
                    else:
                        item.symlink = text
                        try:
                            got = self.follow(dirs, rel, text)
                        except OSError as exc:
                            done.append(_Outcome(item, "failed", detail={"path": rel, "error": str(exc)}))
                            continue
                        if got[0] != "file":
                            done.append(_Outcome(item, got[0], detail={"path": rel, "target": text, "reason": got[1]}))
                            continue
                        _, src_rel, st, item.rerooted = got
                    item.source = _Source(src_rel, st.st_dev, st.st_ino, st.st_size)
                    groups.setdefault((st.st_dev, st.st_ino), _Group(item.source)).items.append(item)
        return done, list(groups.values()), total

    # --- phase 2: hash each inode once, take it in --------------------------------------------------

    def settle(self, group: _Group) -> tuple[list[_Outcome], list[IndexRecord], int]:
        """(outcomes of the group's items, index records of objects added, bytes hashed)."""
        hashes = sorted({it.entry.file_hash for it in group.items})
        locks = [self.lock_for(h) for h in hashes]  # one taker per object, in a fixed order
        for lk in locks:
            lk.acquire()
        try:
            return self._settle(group, hashes)
        except OSError as exc:
            if exc.errno in _FATAL:
                raise store_error(exc, f"adopting {group.source.rel}") from exc
            return [_Outcome(it, "failed", detail={"path": it.rel, "error": str(exc)}) for it in group.items], [], 0
        except StoreError as exc:  # a symlinked directory of the store, say: this group only
            return [_Outcome(it, "failed", detail={"path": it.rel, "error": exc.message}) for it in group.items], [], 0
        finally:
            for lk in reversed(locks):
                lk.release()

    def _settle(self, group: _Group, hashes: list[str]) -> tuple[list[_Outcome], list[IndexRecord], int]:
        src = group.source
        have = {h: st for h in hashes if (st := self.object_stat(h)) is not None}
        for h, st in have.items():  # the bytes already are that object (a symlink to a view of it)
            if (st.st_dev, st.st_ino) == (src.dev, src.ino):
                return self._finish(group, h), [], 0
        with _Dirs(self.root) as dirs:
            dfd, name = dirs.locate(src.rel)
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (src.dev, src.ino) or not stat.S_ISREG(st.st_mode):
                    raise OSError(errno.ESTALE, f"{src.rel} changed while adopting (looked at again by the next adopt)")
                if self.dry_run or len(have) == len(hashes):
                    d = _hash_fd(fd, st.st_size)  # read only: nothing of this file enters the store
                    return self._finish(group, d.blake2b), [], d.size
                if st.st_uid == self.euid:
                    got = self._link_in(fd, st, dfd, name, hashes)
                    if got is not None:
                        d, taken = got
                        recs = [self._record(group, d)] if taken else []
                        return self._finish(group, d.blake2b), recs, d.size
                d, taken = self._copy_in(fd, st, hashes)  # not ours, or no hard link possible here
                recs = [self._record(group, d)] if taken else []
                if taken:
                    self.copied.append((d.blake2b, d.size))
                return self._finish(group, d.blake2b, copied=taken), recs, d.size
            finally:
                os.close(fd)

    def _link_in(self, fd: int, st: os.stat_result, dfd: int, name: str,
                 hashes: list[str]) -> tuple[Digests, bool] | None:
        """The file's own inode into the store: hard-linked under a staging name (the store's,
        in a directory it holds open), made read-only (so the bytes hashed are the bytes kept),
        hashed, synced, published under its object name by the store. None when no hard link
        is possible here (the caller copies)."""
        with self.store.staging(hashes[0]) as (sfd, tmp):
            try:
                # From the directory we hold open, not following a symlink planted at the name;
                # then checked to be the very inode we opened.
                os.link(name, tmp, src_dir_fd=dfd, dst_dir_fd=sfd, follow_symlinks=False)
            except OSError as exc:
                if exc.errno in _NO_LINK:
                    return None
                raise
            mode = stat.S_IMODE(st.st_mode)
            try:
                lst = os.stat(tmp, dir_fd=sfd, follow_symlinks=False)
                if (lst.st_dev, lst.st_ino) != (st.st_dev, st.st_ino):
                    raise OSError(errno.ESTALE, "the file was replaced while adopting")
                try:
                    os.fchmod(fd, VERIFIED_MODE)
                except OSError as exc:
                    if exc.errno in (errno.EPERM, errno.EACCES):
                        return None
                    raise
                before = os.fstat(fd)
                d = _hash_fd(fd, before.st_size)
                after = os.fstat(fd)
                if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or d.size != before.st_size:
                    raise OSError(errno.ESTALE, "the file changed while it was hashed")
                if d.blake2b not in hashes:
                    os.fchmod(fd, mode)  # left as it was: the next sync replaces it
                    return d, False
                os.fsync(fd)  # the bytes durable before a name says they are verified
                published = self.store.publish_staged(sfd, tmp, d.blake2b)
            except BaseException:
                with contextlib.suppress(OSError):
                    now = os.fstat(fd)
                    if stat.S_IMODE(now.st_mode) != mode and not any(
                            (o.st_dev, o.st_ino) == (now.st_dev, now.st_ino)
                            for h in hashes if (o := self.object_stat(h)) is not None):
                        os.fchmod(fd, mode)  # not (yet) an object: the file as it was
                raise
            return d, published

    def _copy_in(self, fd: int, st: os.stat_result, hashes: list[str]) -> tuple[Digests, bool]:
        """The bytes copied into the store under a staging name, hashed as they are copied (the
        copy is what is verified and kept); published only when they match."""
        with self.store.staging(hashes[0]) as (sfd, tmp):
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                          dir_fd=sfd)
            try:
                h = MultiHasher()
                pos = 0
                while pos < st.st_size:
                    data = os.pread(fd, min(READ_CHUNK, st.st_size - pos), pos)
                    if not data:
                        raise OSError(errno.ESTALE, "the file shrank while it was copied")
                    h.update(data)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(out, view):]
                    pos += len(data)
                d = h.digests()
                if d.blake2b not in hashes:
                    return d, False
                os.fdatasync(out)
                os.fchmod(out, VERIFIED_MODE)
            finally:
                os.close(out)
            return d, self.store.publish_staged(sfd, tmp, d.blake2b)

    def _record(self, group: _Group, d: Digests) -> IndexRecord:
        e = next(it.entry for it in group.items if it.entry.file_hash == d.blake2b)
        return IndexRecord(d.blake2b, d.size, d.xxh3, e.key, e.version_id, None, StateIndex.now())

    def _finish(self, group: _Group, actual: str, *, copied: bool = False) -> list[_Outcome]:
        """Each item's outcome once the inode's hash is known: a path that is not yet the
        object's inode (a symlink, a separate copy, a file copied in) becomes a view of it."""
        src = group.source
        out: list[_Outcome] = []
        obj = None if self.dry_run else self.object_stat(actual)
        for it in group.items:
            if it.entry.file_hash != actual:
                out.append(_Outcome(it, "mismatch", src.size, {"path": it.rel, "expected": it.entry.file_hash,
                                                               "got": actual}))
                continue
            freed = 0
            if not self.dry_run:
                if obj is None:  # the store changed under us (it is locked: not by vbo-mirror)
                    out.append(_Outcome(it, "failed", detail={"path": it.rel, "error": "the object is not in the store"}))
                    continue
                try:
                    now = os.lstat(self.layout.view_path(it.rel))
                except OSError:
                    now = None
                if now is None or not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (obj.st_dev, obj.st_ino):
                    if (it.symlink is None and not copied and now is not None and stat.S_ISREG(now.st_mode)
                            and now.st_nlink == 1):
                        freed = src.size  # a separate copy of stored bytes, given back once it is a link
                    try:
                        self.store.link(actual, [it.rel])
                    except MirrorError as exc:
                        out.append(_Outcome(it, "failed", detail={"path": it.rel, "error": exc.message}))
                        continue
            out.append(_Outcome(it, "adopted", src.size, freed=freed))
        return out


def _hash_fd(fd: int, size: int) -> Digests:
    h = MultiHasher()
    h.update_from_fd(fd, 0, size)
    return h.digests()


def adopt_cache(layout: CacheLayout, store: Store, versions: Versions, **kw) -> AdoptReport:
    """`adopt`: every manifest in cache_dir that parses (one that does not is skipped, with a
    warning); none at all is an error."""
    import warnings

    from ..errors import InputError, OfflineWarning

    def skip(name: str, exc: MirrorError) -> None:
        warnings.warn(f"{name} is skipped: {exc}", OfflineWarning, stacklevel=2)

    manifests = list(versions.local(on_unreadable=skip).values())
    if not manifests:
        raise InputError(f"no manifest in {layout.root}: nothing to adopt",
                         hint="adopt works on a cache_dir that AllenSDK filled (its manifests are at the top)")
    return adopt_tree(layout, store, manifests, **kw)


def adopt_tree(layout: CacheLayout, store: Store, manifests: list[Manifest], *, dry_run: bool = False,
               jobs: int = 2, on_progress: Callable[[int, int], None] | None = None) -> AdoptReport:
    """Adopt the files of `manifests` that AllenSDK left in cache_dir (see the module's doc).

    The caller holds the exclusive cache lock. `on_progress(done, total)` counts entries (view
    paths), from the calling thread. Returns the report: per category (adopted, present,
    mismatch, missing, foreign, failed) `files`, `bytes` (on disk at that path; 0 where nothing
    readable is) and up to EXAMPLES `examples`; `objects_added`, `copied` (objects that had to
    be copied: the file was not ours or not linkable), `symlinks` and `rerooted` (views that were
    AllenSDK symlinks, now hard links), `duplicates_freed` (separate copies of stored content
    replaced by links), `logical_bytes` / `stored_bytes` (what the adopted and present views
    hold, and the distinct objects behind them), `hashed_bytes`, `seconds`; `entries` (view
    paths looked at), `ok` (no mismatch, nothing failed), `dry_run`, `cache_dir`, and after a
    real run `allensdk_record` (what became of AllenSDK's `_downloaded_data.json`).
    Examples: a view path for adopted / present; {path, expected, got} for a mismatch;
    {path, reason[, target]} for missing / foreign; {path, error} for failed.
    """
    started = time.monotonic()
    a = _Adopter(layout, store, manifests, dry_run=dry_run, jobs=jobs)
    outcomes, groups, total = a.survey()
    done = len(outcomes)
    if on_progress is not None:
        on_progress(done, total)
    index = None if dry_run else store.new_index()
    if index is not None:
        index.load()
    hashed = 0
    added: list[IndexRecord] = []
    last_commit = time.monotonic()
    try:
        with ThreadPoolExecutor(a.jobs, thread_name_prefix="vbo-adopt") as pool:
            futures = [pool.submit(a.settle, g) for g in sorted(groups, key=lambda g: g.source.rel)]
            try:
                for fut in as_completed(futures):
                    outs, recs, nbytes = fut.result()
                    outcomes += outs
                    hashed += nbytes
                    for r in recs:  # none in a dry run
                        added.append(r)
                        if index is not None:
                            index.put(r)
                    done += len(outs)
                    if on_progress is not None:
                        on_progress(done, total)
                    if index is not None and index.dirty and time.monotonic() - last_commit > 30:
                        store.commit_index(index)  # what is adopted stays known if the run dies
                        last_commit = time.monotonic()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    except BaseException:
        if index is not None:
            with contextlib.suppress(MirrorError, OSError):
                store.commit_index(index)  # what was adopted before the error stays recorded
        raise
    if index is not None:
        _fill_index(a, index, outcomes)
        store.commit_index(index)
    report = _report(layout, outcomes, added, dry_run=dry_run, hashed=hashed, total=total, copied_objects=a.copied)
    if not dry_run:
        report.allensdk_record = _record_for_allensdk(layout, outcomes)
        _record_wanted(layout, outcomes)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _fill_index(a: _Adopter, index: StateIndex, outcomes: list[_Outcome]) -> None:
    """Records for objects found without one (an adopt or sync killed between publishing and
    saving the index): their fingerprint is left for the next full verify."""
    for o in outcomes:
        if o.category not in ("adopted", "present"):
            continue
        h = o.item.entry.file_hash
        if index.get(h) is None and (st := a.object_stat(h)) is not None:
            index.put(IndexRecord(h, st.st_size, None, o.item.entry.key, o.item.entry.version_id, None, st.st_mtime))


def _report(layout: CacheLayout, outcomes: list[_Outcome], added: list[IndexRecord], *, dry_run: bool,
            hashed: int, total: int, copied_objects: list[tuple[str, int]]) -> AdoptReport:
    rep = AdoptReport(str(layout.root), dry_run, total)
    stored: dict[str, int] = {}
    for o in sorted(outcomes, key=lambda o: o.item.rel):
        c = rep.tally(o.category)
        c.files += 1
        c.bytes += o.size
        if len(c.examples) < EXAMPLES:
            c.examples.append(o.item.rel if o.category in ("adopted", "present") else o.detail)
        if o.category in ("adopted", "present"):
            stored[o.item.entry.file_hash] = o.size
        if o.category == "adopted":
            for amount, counts, size in ((rep.symlinks, o.item.symlink is not None, o.size),
                                         (rep.rerooted, o.item.rerooted, o.size), (rep.duplicates_freed, o.freed, o.freed)):
                if counts:
                    amount.files += 1
                    amount.bytes += size
    rep.copied = Amount(len(copied_objects), sum(size for _, size in copied_objects))
    rep.objects_added = Amount(len(added), sum(r.size for r in added))
    rep.logical_bytes = rep.adopted.bytes + rep.present.bytes
    rep.stored_bytes = sum(stored.values())
    rep.hashed_bytes = hashed
    rep.ok = rep.mismatch.files == 0 and rep.failed.files == 0
    return rep


def _record_for_allensdk(layout: CacheLayout, outcomes: list[_Outcome]) -> str:
    """AllenSDK's `_downloaded_data.json` gains (or keeps) an entry for each adopted or present
    path, with its manifest hash: the files are where they were, so what AllenSDK recorded
    stays true, and a moved tree's record names the paths it has now."""
    from ..store.allensdk import record_downloaded

    pairs = [(o.item.rel, o.item.entry.file_hash) for o in outcomes if o.category in ("adopted", "present")]
    try:
        return f"{record_downloaded(layout, pairs)} entries added"
    except StoreError as exc:
        return f"not updated: {exc.message}"


def _record_wanted(layout: CacheLayout, outcomes: list[_Outcome]) -> None:
    """What verify expects from now on: the paths AllenSDK had something at (a file, a link,
    even a broken one), not the files it never downloaded."""
    from ..store import wanted

    by_dir: dict[str, list[str]] = {}
    for o in outcomes:
        if o.category == "missing" and o.item.symlink is None:
            continue  # nothing was there
        by_dir.setdefault(o.item.rel.split("/", 1)[0], []).append(o.item.rel)
    for d, views in by_dir.items():
        wanted.add(layout, d, sorted(views))
