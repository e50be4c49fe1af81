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
import hashlib
import json
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IntegrityError
from .fsutil import atomic_write, fsync_dir, store_error
from .layout import CacheLayout

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


class Partial:
    """An open `.partial` file and its durable resume state.

    Several parts of one object write and checkpoint concurrently from worker threads, so
    the resume state is guarded by a lock.
    """

    def __init__(self, path: Path, state: ResumeState, fd: int, resumed_bytes: int) -> None:
        self.path = path
        self.sidecar = path.with_name(path.name + ".json")
        self.state = state
        self.fd = fd
        self.resumed_bytes = resumed_bytes
        self._lock = threading.Lock()

    def checkpoint(self, ranges: list[tuple[int, int]]) -> None:
        """Record `ranges` as durable: fsync the data *before* the state that points at it."""
        ranges = [(s, e) for s, e in ranges if e > s]
        if not ranges:
            return
        with self._lock:
            try:
                os.fsync(self.fd)
                self.state.done = merge_ranges([*self.state.done, *([s, e] for s, e in ranges)])
                atomic_write(self.sidecar, json.dumps({"v": SIDECAR_VERSION, **self.state.__dict__}).encode())
            except OSError as exc:
                raise store_error(exc, f"saving resume state of {self.path.name}") from exc

    def close(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def discard(self) -> None:
        self.close()
        for p in (self.path, self.sidecar):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


class ObjectStore:
    def __init__(self, layout: CacheLayout) -> None:
        self.layout = layout

    def path(self, file_hash: str) -> Path:
        return self.layout.object_path(file_hash)

    def size_of(self, file_hash: str) -> int | None:
        try:
            return self.path(file_hash).stat().st_size
        except FileNotFoundError:
            return None

    def open_partial(self, file_hash: str, want: ResumeState) -> Partial:
        """Open (or resume) the partial download of `file_hash` for the object in `want`.

        The recorded ranges are kept only if the sidecar names the same key, version, ETag
        and size; otherwise the partial starts from nothing.
        """
        path = self.layout.partial_path(file_hash)
        sidecar = path.with_name(path.name + ".json")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            state = want
            try:
                raw = json.loads(sidecar.read_bytes())
                old = ResumeState(raw["key"], raw["version_id"], raw["etag"], int(raw["size"]),
                                  merge_ranges([[int(s), int(e)] for s, e in raw["done"]]))
                if raw.get("v") == SIDECAR_VERSION and old.matches(want) and path.exists():
                    # Trust only ranges that lie inside the file as it is on disk now.
                    on_disk = path.stat().st_size
                    state = ResumeState(want.key, want.version_id, want.etag, want.size,
                                        [[s, min(e, on_disk)] for s, e in old.done if s < on_disk])
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                pass
            if state is want:
                want.done = []
                with contextlib.suppress(FileNotFoundError):
                    sidecar.unlink()
            flags = os.O_RDWR | os.O_CREAT | (0 if state.done else os.O_TRUNC)
            try:
                fd = os.open(path, flags, 0o644)
            except PermissionError:  # left read-only by an older run: it is ours to write
                os.chmod(path, 0o644)
                fd = os.open(path, flags, 0o644)
            try:
                if want.size > 0:
                    # Reserve the space now: a full disk is found before any transfer, not midway.
                    os.posix_fallocate(fd, 0, want.size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    os.close(fd)
                    raise
        except OSError as exc:
            raise store_error(exc, f"opening {path}") from exc
        return Partial(path, state, fd, sum(e - s for s, e in state.done))

    def publish(self, file_hash: str, partial: Partial) -> Path:
        """fsync, rename into place, make read-only, fsync the directory; drop the sidecar."""
        final = self.path(file_hash)
        try:
            os.fsync(partial.fd)
            partial.close()
            os.replace(partial.path, final)
            # Read-only only once it has its final name: a .partial always stays writable, so
            # a crash here can never leave one that the next run cannot reopen.
            os.chmod(final, 0o444)
            fsync_dir(final.parent)
            with contextlib.suppress(FileNotFoundError):
                partial.sidecar.unlink()
        except OSError as exc:
            raise store_error(exc, f"publishing {final}") from exc
        return final

    def put_bytes(self, file_hash: str, data: bytes) -> Path:
        """Publish a small object held in memory (a metadata table), verified first.

        A concurrent writer of the same content uses another temporary name; both renames
        put identical bytes in place.
        """
        if hashlib.blake2b(data).hexdigest() != file_hash:
            raise IntegrityError(f"refusing to store content whose BLAKE2b is not {file_hash[:16]}…")
        final = self.path(file_hash)
        atomic_write(final, data, mode=0o444)
        return final

    def remove(self, file_hash: str) -> None:
        path = self.path(file_hash)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

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

    def partials(self) -> list[Path]:
        root = self.layout.objects
        return sorted(root.glob("*/*/*.partial")) if root.is_dir() else []

