"""One writer per cache_dir, with a lock that says who holds it; or several shards at once.

Exclusive for a sync, `get`, `verify`, `prune` and `index rebuild`; shared by the shards of
a `sync --shard K/N` (they keep out of each other's way with per-object claims, see
claims.py), so an exclusive holder waits for every shard and every shard for it."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import LockHeldError, StoreError


class CacheLock:
    """An flock on `.vbo-mirror/lock`; the holder writes who it is into the file.

    flock is released by the kernel when the process dies (even by kill -9), so a crashed
    run never leaves a stale lock behind.
    """

    def __init__(self, path: Path, *, wait: bool = False, timeout: float | None = None, command: str = "",
                 shared: bool = False, on_wait=None) -> None:
        self.path = path
        self.shared = shared
        self.on_wait = on_wait  # told once, with the holder, when this acquire has to wait
        self.wait = wait
        self.timeout = timeout
        self.command = command or " ".join(["vbo-mirror", *sys.argv[1:2]])
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.parent.is_symlink():
                raise StoreError(f"{self.path.parent} is a symlink: refusing to follow it out of the cache",
                                 hint="remove that symlink; vbo-mirror recreates the directory")
            # O_NOFOLLOW: a symlink planted at the lock's name is refused, never truncated through
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreError(f"the lock file {self.path} is a symlink: refusing to follow it",
                                 hint="remove that symlink; vbo-mirror recreates the lock file") from exc
            if exc.errno == errno.EROFS:
                raise StoreError(f"{self.path.parent.parent} is on a read-only filesystem, and "
                                 f"`{self.command}` writes into cache_dir",
                                 hint="reading commands (status, tables, manifests list/show/current/compare, plan, urls, verify) work on a "
                                      "read-only mirror; sync into a writable cache_dir") from exc
            raise StoreError(f"cannot create the lock file {self.path}: {exc.strerror}") from exc
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if self.wait and self.on_wait is not None:
                    self.on_wait(f"waiting for {self._holder(fd)} to finish (--wait)")
                    self.on_wait = None
                if not self.wait or (deadline is not None and time.monotonic() > deadline):
                    holder = self._holder(fd)
                    os.close(fd)
                    raise LockHeldError(
                        f"{self.path.parent.parent} is in use by {holder}",
                        hint="wait for that run to finish, or pass --wait to queue behind it",
                    ) from None
                time.sleep(0.2)
            except OSError as exc:  # e.g. a filesystem without flock
                os.close(fd)
                raise StoreError(f"cannot lock {self.path}: {exc.strerror}",
                                 hint="put cache_dir on a filesystem that supports flock") from exc
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": self.command}
        try:  # shards overwrite each other's line: any one of them names the holders well enough
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:
            pass  # who holds the lock is a courtesy; the flock itself is what excludes
        self._fd = fd

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {info['pid']} on {info['host']} ({info['command']}, since {info['since']})"
        except (ValueError, KeyError, OSError):
            return "another vbo-mirror process"

    def release(self) -> None:
        if self._fd is not None:
            if not self.shared:  # other shards may still hold it: their holder line stays
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "CacheLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
