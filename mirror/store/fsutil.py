"""Small durable-filesystem helpers. OSErrors become StoreError here, once."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import secrets
import sys
from pathlib import Path

from ..errors import StoreError


def store_error(exc: OSError, what: str) -> StoreError:
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return StoreError(f"disk full while {what}", hint="free space under cache_dir (nothing verified was lost; "
                          "partial downloads resume on the next sync)")
    if exc.errno == errno.EROFS:
        return StoreError(f"cache_dir is on a read-only filesystem (while {what})",
                          hint="reading commands (status, tables, manifests list/show/current/compare, plan, urls, verify) work on a "
                               "read-only mirror; anything that writes needs a writable cache_dir")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoreError(f"permission denied while {what}: {exc.strerror}", hint="check the permissions of cache_dir")
    return StoreError(f"I/O error while {what}: {exc.strerror or exc}")


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Write, fsync, rename over `path`, fsync the directory: readers see old or new, never
    half. The temporary name is unique, so concurrent writers (threads or processes) of the
    same path never share one; the last rename wins, whole. `durable=False` skips both
    fsyncs, for state that only saves work (after a power cut it may be old or empty)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise store_error(exc, f"writing {path}") from exc
    try:
        atomic_write_at(dfd, path.name, data, shown=path, mode=mode, durable=durable)
    finally:
        os.close(dfd)


@contextlib.contextmanager
def flocked(path: Path, what: str):
    """Hold an exclusive flock on `path` (created, never through a symlink) for a short
    read-merge-write that several processes do (shards, AllenSDK's record beside ours)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise store_error(exc, what) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def atomic_write_at(dfd: int, name: str, data: bytes, *, shown: Path | str, mode: int = 0o644,
                    durable: bool = False) -> None:
    """`atomic_write` of `name` in the directory `dfd` (openat/renameat: no symlink on the way
    is followed); `durable` syncs the file and the directory, otherwise neither (for state
    that only saves work)."""
    # Short, whatever the final name: a name near the 255-byte limit must still have a temporary one.
    tmp = f".vbo-tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        if durable:
            os.fsync(dfd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise store_error(exc, f"writing {shown}") from exc


def read_at(dfd: int, name: str, *, limit: int) -> bytes:
    """The bytes of `name` in `dfd`, refusing a symlink (ELOOP) and anything over `limit`."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(errno.EFBIG, "larger than expected")
    return data


def pwrite_all(fd: int, buffers: list[bytes], offset: int) -> int:
    """Write every buffer at `offset` (a short write continues where it stopped)."""
    total = sum(len(b) for b in buffers)
    written = os.pwritev(fd, buffers, offset)
    if written < total:
        rest = b"".join(buffers)[written:]
        view = memoryview(rest)
        pos = offset + written
        while view:
            n = os.pwrite(fd, view, pos)
            view, pos = view[n:], pos + n
    return total


def read_no_follow(path: Path, what: str, *, limit: int = -1) -> bytes:
    """A file of cache_dir, read without following a symlink planted at its name (cache_dir may
    be writable by others): FileNotFoundError if absent, StoreError if a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"{path} is a symlink: vbo-mirror does not read {what} through a symlink",
                             hint="remove the symlink; vbo-mirror writes the file again") from None
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


# --- openat2(2): a whole relative path opened in one call, refusing every symlink on the way -----

_RESOLVE_NO_MAGICLINKS, _RESOLVE_NO_SYMLINKS, _RESOLVE_BENEATH = 0x02, 0x04, 0x08
_SYS_OPENAT2 = 437  # one number on every architecture that has the generic syscall table (Linux 5.6+)
_OPENAT2_MACHINES = {"x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x", "loongarch64"}


class _Beneath:
    """`open_dir_beneath`'s ctypes binding, made on first use; `ok` turns False for good where
    the kernel (or a seccomp filter: old container runtimes answer EPERM) has no openat2."""

    def __init__(self) -> None:
        import ctypes

        class OpenHow(ctypes.Structure):
            _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

        self.ctypes = ctypes
        self.how = OpenHow(os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0,
                           _RESOLVE_NO_SYMLINKS | _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
        self.size = ctypes.c_size_t(ctypes.sizeof(OpenHow))
        self.syscall = ctypes.CDLL(None, use_errno=True).syscall  # the GIL is released during the call
        self.syscall.restype = ctypes.c_long
        self.ok = True


_beneath: _Beneath | None = None


def open_dir_beneath(dirfd: int, rel: str) -> int:
    """The directory `rel` below `dirfd`, opened by one openat2 call that follows no symlink in
    any component and cannot leave `dirfd` (RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH): what a walk
    of one O_NOFOLLOW openat per component guarantees, in one system call instead of one per
    component (each of which gives the GIL up and must take it back). -1 when it cannot say:
    no openat2 here, or the path fails (missing, a symlink, a file in the way), for which the
    caller's walk makes the directories or words the error."""
    global _beneath
    b = _beneath
    if b is None:
        if sys.platform != "linux" or os.uname().machine not in _OPENAT2_MACHINES:
            return -1
        try:
            b = _beneath = _Beneath()
        except (OSError, AttributeError):
            return -1
    if not b.ok:
        return -1
    fd = b.syscall(_SYS_OPENAT2, dirfd, os.fsencode(rel), b.ctypes.byref(b.how), b.size)
    if fd >= 0:
        return fd
    if b.ctypes.get_errno() in (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG):
        b.ok = False
    return -1
