"""Where everything lives under cache_dir.

    cache_dir/
      visual-behavior-ophys_project_manifest_v1.0.1.json   manifests at the top (AllenSDK)
      _manifest_last_used.txt                              the current version (AllenSDK)
      visual-behavior-ophys-1.0.1/behavior_sessions/…      views: hard links into the store
      .vbo-mirror/
        objects-v1/blake2b/ab/cd/abcd…                     verified objects, read-only
        objects-v1/blake2b/ab/cd/abcd….partial(.json)      downloads in progress + resume state
        index-v1.parquet                                   the state index (a summary of the store)
        lock                                               one writer per cache_dir (shards share it)
        claims                                             per-object locks between shards

On-disk formats carry a version in their names so a later layout can live beside this one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from ..errors import InputError, StoreError
from .fsutil import open_dir_beneath

META = ".vbo-mirror"
SIDECAR_SUFFIX = ".json"  # a partial's resume state: `<hash>.partial` + this
LAST_USED = "_manifest_last_used.txt"


def sidecar_of(partial: Path) -> Path:
    """The resume state beside the partial download `partial`."""
    return partial.with_name(partial.name + SIDECAR_SUFFIX)


def looks_like_manifest(name: str) -> bool:
    """A file name of the cloud-cache manifests (`<project>_manifest_v<semver>.json`), by shape:
    the store knows no dataset's exact pattern."""
    return name.endswith(".json") and "_manifest_v" in name


class CacheLayout:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().absolute()
        self.meta = self.root / META
        self.objects = self.meta / "objects-v1" / "blake2b"
        self._objects = str(self.objects)
        self._root = str(self.root)
        self._below = self._root.rstrip("/") + "/"
        self.index_path = self.meta / "index-v1.parquet"
        self.lock_path = self.meta / "lock"
        self.claims_path = self.meta / "claims"
        self.last_used = self.root / LAST_USED

    def holds_mirror(self) -> bool:
        """cache_dir holds something to report on: vbo-mirror's store, or a manifest at the
        top (AllenSDK's cache too). A mistyped --cache-dir holds neither."""
        if self.meta.is_dir():
            return True
        try:
            with os.scandir(self.root) as it:
                return any(looks_like_manifest(e.name) for e in it)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def read_only(self) -> bool:
        """cache_dir is on a read-only filesystem (a mirror mounted read-only for readers)."""
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            return bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
        except OSError:
            return False

    def object_path(self, file_hash: str) -> Path:
        return Path(self.object_file(file_hash))

    def object_file(self, file_hash: str) -> str:
        """The object's path as a string: scans do thousands of these, and pathlib's joins
        cost more than the stat they lead to."""
        return f"{self._objects}/{file_hash[:2]}/{file_hash[2:4]}/{file_hash}"

    def partial_path(self, file_hash: str) -> Path:
        return Path(self.partial_file(file_hash))

    def partial_file(self, file_hash: str) -> str:
        """The partial download's path as a string; its resume state is beside it, with
        SIDECAR_SUFFIX appended."""
        return self.object_file(file_hash) + ".partial"

    def manifest_path(self, name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise InputError(f"refusing manifest file name {name!r}")
        return self.root / name

    def real_parents(self, path: Path) -> None:
        """Refuse when a directory between cache_dir and `path` is a symlink: cache_dir may
        be writable by others (shared scratch), and nothing vbo-mirror creates, writes,
        renames, chmods or deletes may land outside it. cache_dir itself may be a symlink
        (that is the user's choice); what is below it is checked. Directories not there yet
        are fine (they will be made as real directories)."""
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            raise StoreError(f"{path} is outside cache_dir {self.root}") from None
        current = self.root
        for part in rel.parts[:-1]:
            current = current / part
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                return
            except NotADirectoryError:
                return  # a file in the way: the operation itself reports it
            if stat.S_ISLNK(st.st_mode):
                raise StoreError(f"{current} is a symlink: vbo-mirror does not follow symlinks out of cache_dir",
                                 hint="replace it by a real directory (or remove it; vbo-mirror recreates it)")

    def open_parent(self, path: Path | str, *, create: bool = False) -> tuple[int, str]:
        """(descriptor of the directory holding `path`, its last component), reached from
        cache_dir without following a symlink in any component (one openat2 call, or where
        there is none, one O_NOFOLLOW openat per component): a directory swapped for a symlink
        while a run goes on cannot redirect what is then done there, unlike a check of the
        path followed by its use. `create` makes missing directories (mkdirat). The
        caller closes the descriptor. A missing directory without `create`: FileNotFoundError."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        whole = os.fspath(path)
        if whole.startswith(self._below):  # the common case, without pathlib's joins
            parent, _, name = whole[len(self._below):].rpartition("/")
            if parent and name:
                fd = os.open(self._root, flags)  # cache_dir itself may be a symlink: the user's choice
                try:
                    nfd = open_dir_beneath(fd, parent)
                finally:
                    os.close(fd)
                if nfd >= 0:
                    return nfd, name
        # The walk: where openat2 is missing, and whenever it fails (it makes what is missing
        # and says which component is a symlink or a file).
        from ..errors import ViewBlocked

        path = Path(path)
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            raise StoreError(f"{path} is outside cache_dir {self.root}") from None
        fd = os.open(self.root, flags)  # cache_dir itself may be a symlink: the user's choice
        current = self.root
        try:
            for part in rel.parts[:-1]:
                current = current / part
                try:
                    nfd = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                    nfd = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno == errno.ENOTDIR:
                        st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                        if not stat.S_ISLNK(st.st_mode):
                            raise ViewBlocked(f"cannot make {path}: a file stands where the directory {current} "
                                              "belongs", hint="move that file away and sync again") from exc
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise StoreError(f"{current} is a symlink: vbo-mirror does not follow symlinks out of "
                                         "cache_dir", hint="replace it by a real directory (or remove it; "
                                                           "vbo-mirror recreates it)") from exc
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd, rel.parts[-1]

    def view_path(self, rel: str) -> Path:
        return Path(self.view_file(rel))

    def view_file(self, rel: str) -> str:
        """The view's path as a string (a sync makes one per file; pathlib costs more than
        the link)."""
        # The manifest parser already refused '..' and absolute keys; this is the last line.
        if rel.startswith("/") or ".." in rel.split("/"):
            raise InputError(f"view path {rel!r} escapes cache_dir")
        return self._below + rel
