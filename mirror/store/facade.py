"""`Store`: the one writer of cache_dir during syncs, fetches and table reads.

Everything those put into, change in or remove from cache_dir goes through here:
partial downloads and their publication, small verified objects held in memory (metadata
tables), views (made by one `Linker`, so tables and data files follow the same link mode),
stray views, manifests and the pin of the current one, and the state index (handed out by
`new_index`; the engine commits it off the event loop). The engine and the catalog are
handed a Store; neither builds its own. `verify --repair` and `index rebuild`
(store/status.py) work on the store directly, under the exclusive cache lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import stat
from pathlib import Path

from ..errors import StoreError, ViewBlocked
from .fsutil import atomic_write, atomic_write_at, store_error
from .index import IndexRecord, StateIndex
from .layout import SIDECAR_SUFFIX, CacheLayout, looks_like_manifest
from .objects import ObjectStore, Partial, ResumeState
from .views import Linker


class Store:
    def __init__(self, layout: CacheLayout, *, link_mode: str = "auto") -> None:
        self.layout = layout
        self.link_mode = link_mode
        self.objects = ObjectStore(layout)
        self.linker = Linker(link_mode)

    def with_link_mode(self, link_mode: str) -> "Store":
        """The same cache_dir with views made in another link mode (one run's --link-mode)."""
        return self if link_mode == self.link_mode else Store(self.layout, link_mode=link_mode)

    # --- objects --------------------------------------------------------------------------------

    def path(self, file_hash: str) -> Path:
        return self.objects.path(file_hash)

    def open_partial(self, file_hash: str, want: ResumeState, *, direct: bool = False,
                     whole: bool = False) -> Partial:
        return self.objects.open_partial(file_hash, want, direct=direct, whole=whole)

    def resumable(self, hashes: list[str]) -> set[str]:
        """Those of `hashes` whose partial download has resume state on disk (its sidecar): a
        hint, read by name, for choosing how to fetch; `open_partial` is what trusts it or not."""
        out = set()
        for h in hashes:
            try:
                os.lstat(self.layout.partial_file(h) + SIDECAR_SUFFIX)
            except OSError:
                continue
            out.add(h)
        return out

    def has_object(self, file_hash: str) -> bool:
        """A published object is there (verified or not: see `is_unverified`)."""
        try:
            return stat.S_ISREG(os.lstat(self.path(file_hash)).st_mode)
        except OSError:
            return False

    def is_unverified(self, file_hash: str) -> bool:
        from .objects import is_unverified

        try:
            return is_unverified(os.lstat(self.path(file_hash)).st_mode)
        except OSError:
            return False

    def publish(self, file_hash: str, partial: Partial, *, verified: bool = True, keep_dir: bool = False) -> None:
        self.objects.publish(file_hash, partial, verified=verified, keep_dir=keep_dir)

    def staging(self, file_hash: str):
        """(adopt) A temporary name in the store, in a directory held open: see ObjectStore."""
        return self.objects.staging(file_hash)

    def publish_staged(self, stage_fd: int, tmp: str, file_hash: str) -> bool:
        return self.objects.publish_staged(stage_fd, tmp, file_hash)

    def verify_unverified(self, hashes: list[str], *, index: StateIndex | None = None, jobs: int = 2) -> dict:
        """BLAKE2b of objects published unverified: the mark is cleared where the bytes match
        their name, the object removed (to be fetched again) where they do not."""
        from concurrent.futures import ThreadPoolExecutor

        from ..hashing import hash_file
        from .objects import mark_verified

        def check(h: str):
            try:
                return h, hash_file(self.path(h))
            except FileNotFoundError:
                return h, None

        good, bad = [], []
        with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="vbo-verify") as pool:
            for h, d in pool.map(check, hashes):
                if d is not None and d.blake2b == h:
                    mark_verified(self.path(h))
                    good.append(h)
                    if index is not None and (rec := index.get(h)) is not None:
                        index.put(dataclasses.replace(rec, xxh3=d.xxh3, verified_at=StateIndex.now()))
                else:
                    self.objects.remove(h)
                    bad.append(h)
                    if index is not None:
                        index.drop(h)
        return {"verified": good, "removed": bad}

    def read_verified(self, file_hash: str) -> bytes | None:
        """A small object's bytes if they are whole; a damaged one is removed (to be fetched
        again) and None returned."""
        try:
            data = self.path(file_hash).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise store_error(exc, f"reading {self.path(file_hash)}") from exc
        if hashlib.blake2b(data).hexdigest() != file_hash:
            self.objects.remove(file_hash)
            return None
        return data

    def put_bytes(self, file_hash: str, data: bytes, *, index: StateIndex | None = None, key: str = "",
                  version_id: str | None = None) -> Path:
        """Publish bytes held in memory (verified first) and record them in `index`."""
        from ..hashing import xxh3_bytes

        final = self.objects.put_bytes(file_hash, data)
        if index is not None:
            index.put(IndexRecord(file_hash, len(data), xxh3_bytes(data), key, version_id, None, StateIndex.now()))
        return final

    # --- views ----------------------------------------------------------------------------------

    def link(self, file_hash: str, views: list[str] | tuple[str, ...], *, src_dir: int | None = None) -> None:
        """Make each view (relative to cache_dir) a view of the object; atomically replaces
        what was there. A view blocked by something of the user's raises ViewBlocked. Both
        ends are reached without following symlinks (layout.open_parent): the view's
        directory, and the object's, whose descriptor the link is made from (linkat), so a
        store swapped for a symlink meanwhile cannot hand a view other bytes. `src_dir`: the
        object's directory, already open (a transfer that has just published there)."""
        with self._object_dir(file_hash, src_dir, views) as src:
            for rel in views:
                with self._view_dir(rel) as (dfd, name, dst):
                    self.linker.link_at(src, dfd, name, dst)

    def ensure_view(self, file_hash: str, view: str) -> bool:
        """Link `view` unless it already is a view of the object; True when it had to."""
        with self._object_dir(file_hash, None, [view]) as src, self._view_dir(view) as (dfd, name, dst):
            return self.linker.ensure_at(src, dfd, name, dst)

    @contextlib.contextmanager
    def _view_dir(self, rel: str):
        """(directory descriptor, name, path) of the view `rel`: its directory made where
        missing and reached without following symlinks, closed after."""
        dst = self.layout.view_file(rel)
        dfd, name = self._open_parent(dst, create=True)
        try:
            yield dfd, name, dst
        finally:
            os.close(dfd)

    @contextlib.contextmanager
    def _object_dir(self, file_hash: str, src_dir: int | None, views):
        """(directory descriptor, name) of the object, the directory reached without following
        symlinks and closed after, unless the caller gave it (`src_dir`, its to close)."""
        if src_dir is not None:
            yield src_dir, file_hash
            return
        try:
            dfd, name = self._open_parent(self.layout.object_file(file_hash))
        except FileNotFoundError as exc:
            raise store_error(exc, f"linking {views[0] if views else file_hash}") from exc
        try:
            yield dfd, name
        finally:
            os.close(dfd)

    def remove_view(self, rel: str) -> bool:
        """Remove one view; False when it was not there. A directory is never removed, and
        nothing is removed through a symlinked directory (unlinkat in a directory reached
        without following symlinks)."""
        path = self.layout.view_path(rel)
        try:
            dfd, name = self._open_parent(path)
        except FileNotFoundError:
            return False
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            return False
        except IsADirectoryError as exc:
            raise ViewBlocked(f"not removing {rel}: it is a directory") from exc
        except OSError as exc:
            if exc.errno == errno.EPERM and stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                raise ViewBlocked(f"not removing {rel}: it is a directory") from exc
            raise store_error(exc, f"removing the view {rel}") from exc
        finally:
            os.close(dfd)
        return True

    def _open_parent(self, path: Path | str, *, create: bool = False) -> tuple[int, str]:
        try:
            return self.layout.open_parent(path, create=create)
        except (StoreError, ViewBlocked, FileNotFoundError):
            raise
        except OSError as exc:
            raise store_error(exc, f"opening the directory of {path}") from exc

    # --- manifests, the current version, the index ------------------------------------------------

    def write_manifest(self, name: str, data: bytes) -> None:
        atomic_write(self.layout.manifest_path(name), data)

    def bucket_manifest(self, m) -> None:
        """The bucket layout's `{project}/manifests/`: this version's manifest alone (AllenSDK's
        static cache reads the newest there), the others' removed."""
        from .fsutil import read_no_follow

        data = read_no_follow(self.layout.manifest_path(m.name), "a manifest")
        with self._view_dir(f"{m.project_name}/manifests/{m.name}") as (dfd, name, target):
            atomic_write_at(dfd, name, data, shown=target, durable=True)
            for other in os.listdir(dfd):
                if other != name and looks_like_manifest(other):
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        os.unlink(other, dir_fd=dfd)  # unlinkat: a symlink there goes, never its target

    def pin(self, name: str) -> None:
        """Make `name` the version in use (AllenSDK's `_manifest_last_used.txt`)."""
        atomic_write(self.layout.last_used, name.encode())

    # --- the records kept beside the files (store/wanted.py, store/allensdk.py) --------------------

    def record_wanted(self, view_dir: str, views: list[str] | None) -> None:
        """What `verify` expects in `view_dir`: these views (None: every file of it)."""
        from . import wanted

        wanted.add(self.layout, view_dir, views)

    def record_downloaded(self, pairs) -> int:
        """AllenSDK's `_downloaded_data.json` gains (view, file_hash) pairs; returns how many were new."""
        from .allensdk import record_downloaded

        return record_downloaded(self.layout, pairs)

    def new_index(self) -> StateIndex:
        return StateIndex(self.layout)

    def commit_index(self, index: StateIndex) -> None:
        try:
            index.commit()
        except StoreError:
            raise
        except OSError as exc:
            raise store_error(exc, f"saving {self.layout.index_path}") from exc

    def iter_objects(self):
        return self.objects.iter_objects()

    def partial_exists(self, file_hash: str) -> bool:
        with contextlib.suppress(OSError):
            return self.layout.partial_path(file_hash).exists()
        return False
