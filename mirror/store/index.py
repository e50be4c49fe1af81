"""The state index: a fast summary of the object store, saved as Parquet by atomic replace.

The store is the ground truth; the index can always be rebuilt from it. It remembers what
is expensive to learn again: the xxh3 fingerprint (for `verify --fast` at disk speed), the
S3 key, version and ETag the object came from, and when it was last verified.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import time
from pathlib import Path
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from .fsutil import atomic_write, store_error
from .layout import CacheLayout

SCHEMA = pa.schema([
    ("file_hash", pa.string()),
    ("size", pa.int64()),
    ("xxh3", pa.string()),
    ("key", pa.string()),
    ("version_id", pa.string()),
    ("etag", pa.string()),
    ("verified_at", pa.timestamp("ms", tz="UTC")),  # Parquet keeps ms, not s
])


@dataclass(frozen=True, slots=True)
class IndexRecord:
    file_hash: str
    size: int
    xxh3: str | None  # None until a full verify has read the object
    key: str | None
    version_id: str | None
    etag: str | None
    verified_at: float  # unix seconds


class StateIndex:
    """Several processes may publish into one cache_dir (a sync and a `tables` call, or HPC
    shards), so changes are kept as a delta and merged into what is on disk at commit time,
    under a short lock, instead of overwriting another writer's records."""

    def __init__(self, layout: CacheLayout) -> None:
        self.layout = layout
        self.records: dict[str, IndexRecord] = {}
        self._put: dict[str, IndexRecord] = {}
        self._dropped: set[str] = set()

    @property
    def dirty(self) -> bool:
        return bool(self._put or self._dropped)

    def load(self) -> bool:
        """Read the index; False when it is missing or unreadable (then rebuild)."""
        records = self._read()
        if records is None:
            return False
        self.records = records
        return True

    def _read(self) -> dict[str, IndexRecord] | None:
        try:
            table = pq.read_table(self.layout.index_path)
        except (FileNotFoundError, OSError, pa.ArrowInvalid):
            return None
        if table.schema.names != SCHEMA.names:
            return None
        try:
            table = table.cast(SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        cols = table.to_pydict()
        return {
            h: IndexRecord(h, s, x, k, v, e, t.timestamp() if t is not None else 0.0)
            for h, s, x, k, v, e, t in zip(cols["file_hash"], cols["size"], cols["xxh3"], cols["key"],
                                           cols["version_id"], cols["etag"], cols["verified_at"])
        }

    def commit(self, *, replace_all: bool = False) -> None:
        """Merge this process's changes into the index on disk and replace it atomically.

        `replace_all` writes `records` as the whole truth (after a rebuild from the store).
        """
        if not (self.dirty or replace_all):
            return
        self.layout.meta.mkdir(parents=True, exist_ok=True)
        with _flock(self.layout.meta / "index.lock"):
            if replace_all:
                merged = dict(self.records)
            else:
                merged = self._read() or {}
                for h in self._dropped:
                    merged.pop(h, None)
                merged.update(self._put)
            rows = sorted(merged.values(), key=lambda r: r.file_hash)
            table = pa.table({
                "file_hash": [r.file_hash for r in rows],
                "size": [r.size for r in rows],
                "xxh3": [r.xxh3 for r in rows],
                "key": [r.key for r in rows],
                "version_id": [r.version_id for r in rows],
                "etag": [r.etag for r in rows],
                "verified_at": pa.array([int(r.verified_at * 1000) for r in rows], pa.timestamp("ms", tz="UTC")),
            }, schema=SCHEMA)
            buf = io.BytesIO()
            pq.write_table(table, buf)
            atomic_write(self.layout.index_path, buf.getvalue())
        self.records = merged
        self._put.clear()
        self._dropped.clear()

    def put(self, record: IndexRecord) -> None:
        self.records[record.file_hash] = record
        self._put[record.file_hash] = record
        self._dropped.discard(record.file_hash)

    def drop(self, file_hash: str) -> None:
        self.records.pop(file_hash, None)
        self._put.pop(file_hash, None)
        self._dropped.add(file_hash)

    def get(self, file_hash: str) -> IndexRecord | None:
        return self.records.get(file_hash)

    @staticmethod
    def now() -> float:
        return time.time()


@contextlib.contextmanager
def _flock(path: Path):
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise store_error(exc, f"opening {path}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def reconcile(index: StateIndex, objects: dict[str, int], *, mtime_of=None) -> tuple[int, int]:
    """Bring the index in step with the store (the ground truth): records for objects it
    lacks (their fingerprint left empty until the next full verify), none for objects gone.
    Returns (added, dropped)."""
    added = dropped = 0
    for h, size in objects.items():
        rec = index.get(h)
        if rec is None or rec.size != size:
            index.put(IndexRecord(h, size, None, rec.key if rec else None, rec.version_id if rec else None,
                                  rec.etag if rec else None, mtime_of(h) if mtime_of else 0.0))
            added += 1
    for h in [h for h in index.records if h not in objects]:
        index.drop(h)
        dropped += 1
    return added, dropped
