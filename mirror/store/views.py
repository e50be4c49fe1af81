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
import logging
import os
import shutil
from pathlib import Path

from .fsutil import store_error

log = logging.getLogger("vbo_mirror")

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

    def link(self, src: Path, dst: Path) -> LinkMode:
        """Make `dst` a view of `src`, replacing whatever is at `dst`, atomically."""
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise store_error(exc, f"creating {dst.parent}") from exc
        tmp = dst.with_name(f".{dst.name}.vbo-link{os.getpid()}")
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
            if self.mode is None:
                self.mode = mode
                if mode is LinkMode.COPY and len(self.chain) > 1 and not self.warned:
                    self.warned = True
                    log.warning("links are not possible under %s (%s): views are full copies and use extra disk space",
                                dst.parent, os.strerror(last_exc.errno) if last_exc else "unsupported")
            return mode
        raise store_error(last_exc or OSError(errno.EIO, "no link mode worked"), f"linking {dst}")


    @property
    def copies(self) -> bool:
        """Views are (or will be) plain copies, not links."""
        return self.mode is LinkMode.COPY or self.chain == (LinkMode.COPY,)

    def ensure(self, src: Path, dst: Path) -> bool:
        """Make `dst` a view of `src` unless it already is one; True when it had to link."""
        if view_matches(dst, src, allow_copy=self.copies):
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
        os.chmod(dst, 0o444)
    else:
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o444)


def view_matches(view: Path, obj: Path, *, allow_copy: bool = False) -> bool:
    """True when `view` is a link to `obj` (same inode). With `allow_copy` (links are not
    possible here), an unlinked file of the right size counts too; `verify` checks its bytes."""
    try:
        vs = os.stat(view)
        ob = os.stat(obj)
    except FileNotFoundError:
        return False
    if (vs.st_dev, vs.st_ino) == (ob.st_dev, ob.st_ino):
        return True
    return allow_copy and vs.st_nlink == 1 and vs.st_size == ob.st_size
