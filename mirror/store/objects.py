"""The content-addressed object store: verified files named by their BLAKE2b-512.

Verify, then publish: a download streams into `<hash>.partial` beside its final name, is
hashed, checked for size and hash, fsynced, renamed into place, made read-only (views share
its inode), and the directory is fsynced. Nothing half-written is ever visible under a final
name. A `.partial.json` sidecar records which byte ranges are durably written, for which
object version and ETag, so a later run resumes only the bytes it still needs, and only
when the remote object is still the same one.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IntegrityError, StoreError
from .fsutil import atomic_write, atomic_write_at, pwrite_all, read_at, store_error
from .layout import SIDECAR_SUFFIX, CacheLayout, sidecar_of

SIDECAR_VERSION = 1


@dataclass
class ResumeState:
    key: str
    version_id: str | None
    etag: str | None
    size: int
    done: list[list[int]] = field(default_factory=list)  # sorted, merged [start, end) ranges

    def matches(self, other: "ResumeState") -> bool:
        return (self.key, self.version_id, self.etag, self.size) == (other.key, other.version_id, other.etag, other.size)


def open_direct(path: Path, fd: int | None = None) -> int:
    """A second descriptor with O_DIRECT, or -1 where the filesystem (tmpfs, some network
    filesystems) or the platform has none. Given the first descriptor, the same inode is
    reopened through /proc/self/fd, so a name swapped meanwhile cannot redirect the writes."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return -1
    try:
        if fd is not None and os.path.isdir("/proc/self/fd"):
            return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | flag | os.O_CLOEXEC)
        return os.open(path, os.O_WRONLY | flag | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return -1
        raise


def merge_ranges(ranges: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for s, e in sorted(ranges):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def missing_ranges(done: list[list[int]], size: int) -> list[tuple[int, int]]:
    out, pos = [], 0
    for s, e in merge_ranges(done):
        if s > pos:
            out.append((pos, s))
        pos = max(pos, e)
    if pos < size:
        out.append((pos, size))
    return out


# Direct I/O wants offsets and lengths in multiples of the device's logical block; 4 KiB is a
# multiple of every common one. Receive buffers are page-aligned mmaps of at least 16 KiB.
DIRECT_ALIGN = 4096


class Partial:
    """An open `.partial` file and its resume state.

    Bodies are written with O_DIRECT where the filesystem allows it (`dfd`): the bytes go
    from our buffer to the device without the page-cache copy, which was the largest CPU cost
    of a sync (perf: ~1 CPU-s per GB, several on a VM whose memory is touched for the first
    time), and a mirror of a terabyte does not push everything else out of the page cache.
    Writes that are not block-aligned (an object's tail, a part resumed mid-buffer) go through
    `fd` into the page cache; the two never share a page (see `write`).

    Several parts of one object write and checkpoint concurrently from worker threads, so
    the resume state is guarded by a lock.
    """

    def __init__(self, path: Path, state: ResumeState, fd: int, resumed_bytes: int, dfd: int = -1,
                 dirfd: int = -1) -> None:
        self.path = path
        # The fan-out directory, reached without following symlinks (layout.open_parent): the
        # sidecar, the publication and the removal name their files relative to it.
        self.dirfd = dirfd
        self.state = state
        self.fd = fd
        self.dfd = dfd
        self.direct = dfd >= 0
        self.resumed_bytes = resumed_bytes
        self.checkpointed = False
        self._lock = threading.Lock()

    @functools.cached_property
    def sidecar(self) -> Path:
        return sidecar_of(self.path)

    def write(self, offset: int, view: memoryview) -> None:
        """Write `view` at `offset` (from a worker thread): its whole blocks directly, an
        unaligned tail through the page cache. Direct writes cover whole blocks of their own,
        so no page written directly is ever dirty in the page cache too."""
        n = len(view)
        aligned = n - n % DIRECT_ALIGN
        if self.direct and offset % DIRECT_ALIGN == 0 and aligned:
            try:
                done = os.pwritev(self.dfd, [view[:aligned]], offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = False  # this filesystem refuses direct I/O after all
                done = 0
            if done == n:
                return
            # The unaligned tail (or the rest of a short direct write) starts on a block
            # boundary: it goes through the page cache without sharing a page with the rest.
            view, offset = view[done:], offset + done
        pwrite_all(self.fd, [view], offset)

    def checkpoint(self, ranges: list[tuple[int, int]]) -> None:
        """Record `ranges` as written. No fsync: the state only saves work. If a power cut
        loses bytes it claims, the whole-file BLAKE2b check fails on resume and the object
        is fetched again from scratch; a resume never publishes unverified bytes."""
        ranges = [(s, e) for s, e in ranges if e > s]
        if not ranges:
            return
        with self._lock:
            if self.fd < 0:
                return  # closed (published or discarded): a late checkpoint must not bring a sidecar back
            try:
                self.state.done = merge_ranges([*self.state.done, *([s, e] for s, e in ranges)])
                data = json.dumps({"v": SIDECAR_VERSION, **self.state.__dict__}).encode()
                if self.dirfd >= 0:
                    atomic_write_at(self.dirfd, self.sidecar.name, data, shown=self.sidecar)
                else:
                    atomic_write(self.sidecar, data, durable=False)
                self.checkpointed = True
            except OSError as exc:
                raise store_error(exc, f"saving resume state of {self.path.name}") from exc

    def close(self, *, keep_dir: bool = False) -> None:
        with self._lock:
            for name in ("fd", "dfd") if keep_dir else ("fd", "dfd", "dirfd"):
                fd = getattr(self, name)
                if fd >= 0:
                    os.close(fd)
                    setattr(self, name, -1)
            self.direct = False

    def unlink(self, name: str) -> None:
        """Remove `name` from the partial's directory (a symlink there is removed, not followed)."""
        with contextlib.suppress(FileNotFoundError):
            if self.dirfd >= 0:
                os.unlink(name, dir_fd=self.dirfd)
            else:
                (self.path.parent / name).unlink()

    def discard(self) -> None:
        self.close(keep_dir=True)
        try:
            for p in (self.path, self.sidecar):
                self.unlink(p.name)
        finally:
            self.close()


# Store objects are read-only. One published without its BLAKE2b checked (`--verify none`, or
# an ETag-only check) carries the owner-execute bit as its mark, on the inode itself (no
# second file to fall out of step, and the stat a scan does anyway reads it): no default-mode
# operation trusts it until its BLAKE2b has been computed (then the mark is cleared).
VERIFIED_MODE = 0o444
UNVERIFIED_MODE = 0o544


def is_unverified(mode: int) -> bool:
    return bool(mode & stat.S_IXUSR)


def mark_verified(path: Path) -> None:
    os.chmod(path, VERIFIED_MODE)


def _open_own(dirfd: int, name: str) -> int:
    """Open (creating) a file of ours in `dirfd` for writing without following a symlink at
    its name: a symlink planted there (cache_dir may be writable by others) is removed, never
    written through; a file left read-only by an older run is made writable again."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(3):
        try:
            return os.open(name, flags, 0o644, dir_fd=dirfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink: remove the link itself, then create ours
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dirfd)
                continue
            if exc.errno == errno.EACCES and stat.S_ISREG(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
                try:
                    os.fchmod(fd, 0o644)  # a regular file we left read-only
                finally:
                    os.close(fd)
                continue
            raise
    raise OSError(errno.ELOOP, "a symlink keeps reappearing", name)


def _direct_or_close(path: Path, fd: int, direct: bool) -> int:
    """`open_direct` for a partial just opened as `fd`, which is closed if that fails."""
    if not direct:
        return -1
    try:
        return open_direct(path, fd)
    except BaseException:
        os.close(fd)
        raise


class ObjectStore:
    def __init__(self, layout: CacheLayout) -> None:
        self.layout = layout

    def path(self, file_hash: str) -> Path:
        return self.layout.object_path(file_hash)

    def open_partial(self, file_hash: str, want: ResumeState, *, direct: bool = False,
                     whole: bool = False) -> Partial:
        """Open (or resume) the partial download of `file_hash` for the object in `want`.

        The recorded ranges are kept only if the sidecar names the same key, version, ETag
        and size; otherwise the partial starts from nothing. `whole`: the caller writes every
        byte at once (a small body held in memory), so a new partial needs neither resume
        state nor a space reservation: created in one call, and only a partial left there
        by an earlier run takes the usual way.
        """
        path = self.layout.partial_path(file_hash)
        sidecar = path.name + SIDECAR_SUFFIX
        dirfd = -1
        try:
            dirfd, _ = self.layout.open_parent(path, create=True)  # no symlinked directory followed
            if whole:
                try:
                    fd = os.open(path.name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                                 dir_fd=dirfd)
                except FileExistsError:
                    pass  # (or a symlink planted there: _open_own removes it)
                else:
                    want.done = []
                    return Partial(path, want, fd, 0, _direct_or_close(path, fd, direct), dirfd)
            fd = _open_own(dirfd, path.name)
            state = want
            try:
                raw = json.loads(read_at(dirfd, sidecar, limit=1 << 20))
                old = ResumeState(raw["key"], raw["version_id"], raw["etag"], int(raw["size"]),
                                  merge_ranges([[int(s), int(e)] for s, e in raw["done"]]))
                if raw.get("v") == SIDECAR_VERSION and old.matches(want):
                    # Trust only ranges that lie inside the file as it is on disk now.
                    on_disk = os.fstat(fd).st_size
                    state = ResumeState(want.key, want.version_id, want.etag, want.size,
                                        [[s, min(e, on_disk)] for s, e in old.done if s < on_disk])
            except (OSError, StoreError, ValueError, KeyError, TypeError):
                pass  # no usable resume state (missing, a planted symlink, malformed): start afresh
            if state is want:
                want.done = []
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(sidecar, dir_fd=dirfd)
                os.ftruncate(fd, 0)
            try:
                if want.size > 0:
                    # Reserve the space now: a full disk is found before any transfer, not midway.
                    os.posix_fallocate(fd, 0, want.size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    os.close(fd)
                    raise
            if whole:
                os.ftruncate(fd, want.size)  # every byte is written next: none of an older file may stay
            dfd = _direct_or_close(path, fd, direct)
        except BaseException as exc:
            if dirfd >= 0:
                os.close(dirfd)
            if isinstance(exc, OSError):
                raise store_error(exc, f"opening {path}") from exc
            raise
        return Partial(path, state, fd, sum(e - s for s, e in state.done), dfd, dirfd)

    def publish(self, file_hash: str, partial: Partial, *, verified: bool = True, keep_dir: bool = False) -> None:
        """Make the bytes durable, then give them their final name, read-only; drop the sidecar.

        The data is synced before the rename, so a name never points at bytes a crash could
        lose. The directory is not synced: a rename lost to a crash leaves a `.partial` that
        the next run resumes and verifies, and views already linked share the synced inode,
        so durability of the name buys nothing worth a second fsync per file (py-spy, 3,000
        small files: the I/O threads spent about as long in it as in the data's own sync).
        `keep_dir`: the object's directory stays open (`partial.dirfd`, the caller closes it
        with `partial.close()`), for its views to be linked from."""
        published = False
        try:
            os.fdatasync(partial.fd)
            partial.close(keep_dir=True)
            d = partial.dirfd  # the rename and the chmod name both files relative to their directory
            os.replace(partial.path.name, file_hash, src_dir_fd=d, dst_dir_fd=d)
            # Read-only only once it has its final name: a .partial always stays writable, so
            # a crash here can never leave one that the next run cannot reopen.
            os.chmod(file_hash, VERIFIED_MODE if verified else UNVERIFIED_MODE, dir_fd=d)
            if partial.state.done or partial.checkpointed:
                partial.unlink(partial.sidecar.name)
            published = True
        except OSError as exc:
            raise store_error(exc, f"publishing {self.path(file_hash)}") from exc
        finally:
            if not (published and keep_dir):
                partial.close()

    def put_bytes(self, file_hash: str, data: bytes) -> Path:
        """Publish a small object held in memory (a metadata table), verified first.

        A concurrent writer of the same content uses another temporary name; both renames
        put identical bytes in place.
        """
        if hashlib.blake2b(data).hexdigest() != file_hash:
            raise IntegrityError(f"refusing to store content whose BLAKE2b is not {file_hash[:16]}…")
        final = self.path(file_hash)
        dfd, name = self._object_dir(final, f"writing {final}")
        try:
            atomic_write_at(dfd, name, data, shown=final, mode=0o444, durable=True)
        finally:
            os.close(dfd)
        return final

    # --- an inode of elsewhere taken in (adopt): one staging name, one publish ------------------

    @contextlib.contextmanager
    def staging(self, file_hash: str):
        """A temporary name in the directory `file_hash`'s object goes to, that directory
        reached from cache_dir without following a symlink and held open: yields
        (directory fd, name). Whatever is still under the name at the end is removed; every
        operation on it names it relative to the descriptor, so a directory swapped for a
        symlink meanwhile cannot redirect it."""
        import secrets

        final = self.path(file_hash)
        dfd, _ = self._object_dir(final, f"opening the store's directory of {final}")
        tmp = f".vbo-tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            yield dfd, tmp
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            os.close(dfd)

    def publish_staged(self, stage_fd: int, tmp: str, file_hash: str) -> bool:
        """Rename a verified, synced, read-only inode staged as `tmp` (in the directory
        `stage_fd`) to `file_hash`'s object name, in that object's directory reached without
        following a symlink. False when a verified object is there already: the staged name
        goes, the object stays (True if it was this very inode: an object published unverified
        whose view this was, verified now)."""
        final = self.path(file_hash)
        dfd, name = self._object_dir(final, f"publishing {final}")
        try:
            try:
                obj = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                obj = None
            if obj is not None and stat.S_ISREG(obj.st_mode) and not is_unverified(obj.st_mode):
                mine = os.stat(tmp, dir_fd=stage_fd, follow_symlinks=False)
                os.unlink(tmp, dir_fd=stage_fd)
                return (obj.st_dev, obj.st_ino) == (mine.st_dev, mine.st_ino)
            os.replace(tmp, name, src_dir_fd=stage_fd, dst_dir_fd=dfd)  # over an unverified object too
            # rename() between two links of one inode does nothing: the staged name may still be there
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=stage_fd)
            return True
        finally:
            os.close(dfd)

    def _object_dir(self, final: Path, what: str) -> tuple[int, str]:
        """The directory `final` goes in, made if needed and reached from cache_dir without
        following a symlink (layout.open_parent), held open; an OS error is the store's."""
        try:
            return self.layout.open_parent(final, create=True)
        except OSError as exc:
            raise store_error(exc, what) from exc

    def remove(self, file_hash: str) -> None:
        path = self.path(file_hash)
        try:
            dfd, name = self.layout.open_parent(path)
        except FileNotFoundError:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)

    def iter_objects(self):
        """(hash, size, inode) of every published object."""
        root = self.layout.objects
        if not root.is_dir():
            return
        for a in sorted(os.scandir(root), key=lambda e: e.name):
            if not a.is_dir():
                continue
            for b in sorted(os.scandir(a.path), key=lambda e: e.name):
                if not b.is_dir():
                    continue
                for e in os.scandir(b.path):
                    name = e.name
                    if len(name) == 128 and "." not in name:
                        st = e.stat()
                        if stat.S_ISREG(st.st_mode):
                            yield name, st.st_size, (st.st_dev, st.st_ino)

    def unverified(self) -> list[str]:
        """Hashes of objects that carry the unverified mark."""
        return [h for h, _, _ in self.iter_objects() if is_unverified(os.stat(self.path(h)).st_mode)]

    def partials(self) -> list[Path]:
        root = self.layout.objects
        return sorted(root.glob("*/*/*.partial")) if root.is_dir() else []

