"""Views: the AllenSDK layout, made of links to store objects.

Link modes form a chain, reflink → hardlink → copy. The first file decides: the first mode
that works there is used for the rest of the run, and falling back to a full copy (which
costs disk space) is warned about once. Hard links survive moving or copying the whole tree
(AllenSDK's absolute symlinks do not) and cost no space; that is why store objects are
read-only: a view and its object are one inode.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import warnings
import os
import secrets
import stat
import threading
from pathlib import Path

from ..errors import LinkFallbackWarning, ViewBlocked
from .fsutil import store_error


FICLONE = 0x40049409  # linux/fs.h
_FALLBACK_ERRNOS = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL, errno.ENOTTY,
                    errno.EPERM, errno.EMLINK, errno.ENOSYS, errno.EBADF}


Source = tuple[int, str]  # the object a view is made of: its directory's descriptor, its name


class LinkMode(enum.Enum):
    REFLINK = "reflink"
    HARDLINK = "hardlink"
    COPY = "copy"


CHAINS = {
    "auto": (LinkMode.REFLINK, LinkMode.HARDLINK, LinkMode.COPY),
    "reflink": (LinkMode.REFLINK, LinkMode.COPY),
    "hardlink": (LinkMode.HARDLINK, LinkMode.COPY),
    "copy": (LinkMode.COPY,),
}


class Linker:
    def __init__(self, chain: str = "hardlink") -> None:
        self.chain = CHAINS[chain]
        self.mode: LinkMode | None = None  # decided by the first file
        self.warned = False
        self._deciding = threading.Lock()

    def link_at(self, src: Source, dfd: int, name: str, shown: Path | str) -> LinkMode:
        """Make `name` in the directory `dfd` a view of `src` (the object: its directory's
        descriptor and its name), replacing whatever is there, atomically (`shown`: its path,
        for messages). Every step names the entry relative to a directory descriptor (linkat,
        openat, renameat, unlinkat), so nothing follows a symlink planted in the view's place,
        in the object's, or on the way to either. Called from several I/O threads: the first link
        decides the mode, under a lock, once."""
        if self.mode is None:
            with self._deciding:
                if self.mode is None:
                    return self._link_at(src, dfd, name, shown)
        return self._link_at(src, dfd, name, shown)

    def _link_at(self, src: Source, dfd: int, name: str, shown: Path | str) -> LinkMode:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                raise ViewBlocked(f"cannot make view {shown}: a directory is in its place",
                                  hint="move that directory away and sync again")
        # Short and unique (not derived from the name: a 250-byte name has no room for a suffix).
        tmp = f".vbo-link-{os.getpid()}-{secrets.token_hex(4)}"
        modes = (self.mode,) if self.mode else self.chain
        last_exc: OSError | None = None
        for mode in modes:
            try:
                try:
                    _make_at(mode, src, dfd, tmp)
                except FileExistsError:  # a leftover of that very name (a killed run's): ours now
                    os.unlink(tmp, dir_fd=dfd)
                    _make_at(mode, src, dfd, tmp)
            except OSError as exc:
                if exc.errno not in _FALLBACK_ERRNOS or mode is LinkMode.COPY:
                    raise store_error(exc, f"linking {shown}") from exc
                last_exc = exc
                continue
            try:
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise store_error(exc, f"linking {shown}") from exc
            if mode is LinkMode.HARDLINK:
                # rename() between two links of one inode does nothing and succeeds: when the
                # view already was this link (another shard made it meanwhile), tmp is still there.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dfd)
            if self.mode is None:
                self.mode = mode
                if mode is LinkMode.COPY and len(self.chain) > 1 and not self.warned:
                    self.warned = True
                    reason = os.strerror(last_exc.errno) if last_exc else "unsupported"
                    warnings.warn(f"links are not possible under {os.path.dirname(shown)} ({reason}): views are full copies "
                                  "and use extra disk space", LinkFallbackWarning, stacklevel=2)
            return mode
        raise store_error(last_exc or OSError(errno.EIO, "no link mode worked"), f"linking {shown}")

    def ensure_at(self, src: Source, dfd: int, name: str, shown: Path | str) -> bool:
        """Make `name` a view of `src` unless it already is one; True when it had to link."""
        try:
            vs = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            vs = None
        if vs is not None and stat.S_ISREG(vs.st_mode) and _matches(vs, os.stat(src[1], dir_fd=src[0],
                                                                                follow_symlinks=False)):
            return False
        self.link_at(src, dfd, name, shown)
        return True


def _make_at(mode: LinkMode, src: Source, dfd: int, tmp: str) -> None:
    """Create `tmp` in `dfd` as a link, reflink or copy of `src` (never through a symlink)."""
    sdfd, sname = src
    if mode is LinkMode.HARDLINK:
        os.link(sname, tmp, src_dir_fd=sdfd, dst_dir_fd=dfd, follow_symlinks=False)
        return
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
    try:
        with os.fdopen(os.open(sname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sdfd), "rb") as s:
            if mode is LinkMode.REFLINK:
                fcntl.ioctl(out, FICLONE, s.fileno())
            else:
                while chunk := s.read(1 << 20):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view):]
            st = os.fstat(s.fileno())
        # Read-only, with the object's mtime: how an unlinked view is recognised later.
        os.fchmod(out, 0o444)
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    except BaseException:
        os.close(out)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    os.close(out)


def _matches(vs: os.stat_result, ob: os.stat_result) -> bool:
    if (vs.st_dev, vs.st_ino) == (ob.st_dev, ob.st_ino):
        return True
    return vs.st_nlink == 1 and vs.st_size == ob.st_size and vs.st_mtime_ns == ob.st_mtime_ns


def view_matches(view: Path, obj: Path) -> bool:
    """True when `view` is a view of `obj`: the same inode (a hard link), or, where links
    are not possible, an unlinked copy with the object's size and modification time (copies
    are stamped with it when made; `verify` checks their bytes)."""
    try:
        vs = os.stat(view)
        ob = os.stat(obj)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if (vs.st_dev, vs.st_ino) == (ob.st_dev, ob.st_ino):
        return True
    return vs.st_nlink == 1 and vs.st_size == ob.st_size and vs.st_mtime_ns == ob.st_mtime_ns
