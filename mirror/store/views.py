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
import shutil
import threading
from pathlib import Path

from ..errors import LinkFallbackWarning, ViewBlocked
from .fsutil import store_error


FICLONE = 0x40049409  # linux/fs.h
_FALLBACK_ERRNOS = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL, errno.ENOTTY,
                    errno.EPERM, errno.EMLINK, errno.ENOSYS, errno.EBADF}


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

    def link(self, src: Path, dst: Path) -> LinkMode:
        """Make `dst` a view of `src`, replacing whatever is at `dst`, atomically. Called from
        several I/O threads: the first link decides the mode, under a lock, once."""
        if self.mode is None:
            with self._deciding:
                if self.mode is None:
                    return self._link(src, dst)
        return self._link(src, dst)

    def _link(self, src: Path, dst: Path) -> LinkMode:
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise ViewBlocked(f"cannot make view {dst}: a file stands where a directory of its path belongs",
                              hint="move that file away and sync again") from exc
        except OSError as exc:
            raise store_error(exc, f"creating {dst.parent}") from exc
        if dst.is_dir() and not dst.is_symlink():
            raise ViewBlocked(f"cannot make view {dst}: a directory is in its place",
                              hint="move that directory away and sync again")
        # Short and unique (not derived from dst's name: a 250-byte name has no room for a suffix).
        tmp = dst.with_name(f".vbo-link-{os.getpid()}-{secrets.token_hex(4)}")
        modes = (self.mode,) if self.mode else self.chain
        last_exc: OSError | None = None
        for mode in modes:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            try:
                _make(mode, src, tmp)
            except OSError as exc:
                if exc.errno not in _FALLBACK_ERRNOS or mode is LinkMode.COPY:
                    raise store_error(exc, f"linking {dst}") from exc
                last_exc = exc
                continue
            try:
                os.replace(tmp, dst)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise store_error(exc, f"linking {dst}") from exc
            if mode is LinkMode.HARDLINK:
                # rename() between two links of one inode does nothing and succeeds: when dst
                # already was this view (another shard made it meanwhile), tmp is still there.
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            if self.mode is None:
                self.mode = mode
                if mode is LinkMode.COPY and len(self.chain) > 1 and not self.warned:
                    self.warned = True
                    reason = os.strerror(last_exc.errno) if last_exc else "unsupported"
                    warnings.warn(f"links are not possible under {dst.parent} ({reason}): views are full copies "
                                  "and use extra disk space", LinkFallbackWarning, stacklevel=2)
            return mode
        raise store_error(last_exc or OSError(errno.EIO, "no link mode worked"), f"linking {dst}")


    def ensure(self, src: Path, dst: Path) -> bool:
        """Make `dst` a view of `src` unless it already is one; True when it had to link."""
        if view_matches(dst, src):
            return False
        self.link(src, dst)
        return True


def _make(mode: LinkMode, src: Path, dst: Path) -> None:
    if mode is LinkMode.HARDLINK:
        os.link(src, dst)
    elif mode is LinkMode.REFLINK:
        with open(src, "rb") as s, open(dst, "wb") as d:
            try:
                fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
            except OSError:
                d.close()
                os.unlink(dst)
                raise
        _stamp(src, dst)
    else:
        shutil.copyfile(src, dst)
        _stamp(src, dst)


def _stamp(src: Path, dst: Path) -> None:
    """Read-only, with the object's mtime: how an unlinked view is recognised later."""
    st = os.stat(src)
    os.chmod(dst, 0o444)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


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
