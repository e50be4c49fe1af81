"""Where everything lives under cache_dir.

    cache_dir/
      visual-behavior-ophys_project_manifest_v1.0.1.json   manifests at the top (AllenSDK)
      _manifest_last_used.txt                              the current version (AllenSDK)
      visual-behavior-ophys-1.0.1/behavior_sessions/…      views: hard links into the store
      .vbo-mirror/
        objects-v1/blake2b/ab/cd/abcd…                     verified objects, read-only
        objects-v1/blake2b/ab/cd/abcd….partial(.json)      downloads in progress + resume state
        index-v1.parquet                                   the state index (a summary of the store)
        lock                                               one writer per cache_dir

On-disk formats carry a version in their names so a later layout can live beside this one.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

META = ".vbo-mirror"
LAST_USED = "_manifest_last_used.txt"


class CacheLayout:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().absolute()
        self.meta = self.root / META
        self.objects = self.meta / "objects-v1" / "blake2b"
        self._objects = str(self.objects)
        self.index_path = self.meta / "index-v1.parquet"
        self.lock_path = self.meta / "lock"
        self.last_used = self.root / LAST_USED

    def object_path(self, file_hash: str) -> Path:
        return Path(self.object_file(file_hash))

    def object_file(self, file_hash: str) -> str:
        """The object's path as a string: scans do thousands of these, and pathlib's joins
        cost more than the stat they lead to."""
        return f"{self._objects}/{file_hash[:2]}/{file_hash[2:4]}/{file_hash}"

    def partial_path(self, file_hash: str) -> Path:
        return self.object_path(file_hash).with_name(file_hash + ".partial")

    def manifest_path(self, name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise InputError(f"refusing manifest file name {name!r}")
        return self.root / name

    def view_path(self, rel: str) -> Path:
        path = self.root / rel
        # The manifest parser already refused '..' and absolute keys; this is the last line.
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise InputError(f"view path {rel!r} escapes cache_dir")
        return path
