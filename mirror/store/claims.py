"""Per-object claims between processes that share one cache_dir (`sync --shard K/N`).

Shards split a plan by content, but a shard that has finished its own part goes on with
the objects of the others that nobody is fetching (a shard that died, or has not started
yet): so two processes may reach for the same object, and the claim decides. A claim is a
write lock on one byte of `.vbo-mirror/claims`, at an offset taken from the object's hash:
one file for every object, nothing to create or clean up per object, and the kernel drops
the locks of a process that dies, even by kill -9, so a dead shard never blocks the others.

Open-file-description locks (Linux >= 3.15) belong to our descriptor: two Sessions in one
process exclude each other too, and closing an unrelated descriptor of the file does not
drop them (classic POSIX locks would do both wrong). Elsewhere, `lockf` locks stand in;
a process then claims each object at most once at a time itself (the engine never fetches
one hash twice in a run).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
from pathlib import Path

from ..errors import StoreError

_OFD = getattr(fcntl, "F_OFD_SETLK", None)


def _offset(file_hash: str) -> int:
    return int(file_hash[:15], 16)  # 60 bits of a BLAKE2b: below off_t's limit, collisions negligible


class Claims:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._mu = threading.Lock()

    def _open(self) -> int:
        if self._fd < 0:
            try:
                # O_NOFOLLOW: a symlink planted at this name is refused, never written through
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise StoreError(f"{self.path} is a symlink: refusing to follow it",
                                     hint="remove that symlink; vbo-mirror recreates the file") from exc
                raise StoreError(f"cannot open {self.path}: {exc.strerror}") from exc
        return self._fd

    def _lock(self, file_hash: str, kind: int) -> bool:
        off = _offset(file_hash)
        with self._mu:
            fd = self._open()
            try:
                if _OFD is not None:
                    fcntl.fcntl(fd, _OFD, struct.pack("hhqqi4x", kind, os.SEEK_SET, off, 1, 0))
                else:
                    op = fcntl.LOCK_UN if kind == fcntl.F_UNLCK else fcntl.LOCK_EX | fcntl.LOCK_NB
                    fcntl.lockf(fd, op, 1, off, os.SEEK_SET)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return False
                raise StoreError(f"cannot lock {self.path}: {exc.strerror}",
                                 hint="put cache_dir on a filesystem with POSIX locks (for --shard)") from exc
        return True

    def try_claim(self, file_hash: str) -> bool:
        """True: this process now fetches `file_hash`; False: another one is fetching it."""
        return self._lock(file_hash, fcntl.F_WRLCK)

    def release(self, file_hash: str) -> None:
        self._lock(file_hash, fcntl.F_UNLCK)

    def close(self) -> None:
        with self._mu:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
