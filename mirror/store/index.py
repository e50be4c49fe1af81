"""The state index: a fast summary of the object store, saved as Parquet by atomic replace.

The store is the ground truth; the index can always be rebuilt from it. It remembers what
is expensive to learn again: the xxh3 fingerprint (for `verify --fast` at disk speed), the
S3 key, version and ETag the object came from, and when it was last verified.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import time
from pathlib import Path
from dataclasses import dataclass

from .fsutil import atomic_write, store_error
from .layout import CacheLayout

COLUMNS = ("file_hash", "size", "xxh3", "key", "version_id", "etag", "verified_at")


def _schema():
    # pyarrow is imported on first use: it costs ~0.2 s that `--help` or a no-op resync need not pay.
    import pyarrow as pa

    return pa.schema([
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
        if not self.layout.index_path.exists():
            return None
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            # ParquetFile, not read_table: the latter imports pyarrow.dataset and pandas (~0.4 s).
            table = pq.ParquetFile(self.layout.index_path).read()
        except (FileNotFoundError, OSError, pa.ArrowInvalid):
            return None
        if tuple(table.schema.names) != COLUMNS:
            return None
        try:
            table = table.cast(_schema())
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
        if replace_all:
            self._write(None, replace_all=True)
            self._put.clear()
            self._dropped.clear()
            return
        delta = self.take_delta()
        if delta is None:
            return
        try:
            self.write_delta(delta)
        except BaseException:
            self.restore_delta(delta)
            raise

    def take_delta(self) -> tuple[dict[str, IndexRecord], set[str]] | None:
        """This process's changes since the last commit, handed over (on the caller's thread)
        so that `write_delta` can run in another while new changes accumulate."""
        if not self.dirty:
            return None
        delta = (self._put, self._dropped)
        self._put, self._dropped = {}, set()
        return delta

    def restore_delta(self, delta: tuple[dict[str, IndexRecord], set[str]]) -> None:
        """A delta whose write failed is kept for the next commit (newer changes win)."""
        put, dropped = delta
        for h, rec in put.items():
            if h not in self._put and h not in self._dropped:
                self._put[h] = rec
        self._dropped |= {h for h in dropped if h not in self._put}

    def write_delta(self, delta: tuple[dict[str, IndexRecord], set[str]]) -> None:
        """Merge `delta` into the index on disk (any thread)."""
        self._write(delta)

    def _write(self, delta, *, replace_all: bool = False) -> None:
        self.layout.meta.mkdir(parents=True, exist_ok=True)
        with _flock(self.layout.meta / "index.lock"):
            if replace_all:
                merged = dict(self.records)
            else:
                put, dropped = delta
                merged = self._read() or {}
                for h in dropped:
                    merged.pop(h, None)
                merged.update(put)
            atomic_write(self.layout.index_path, _to_parquet(sorted(merged.values(), key=lambda r: r.file_hash)))

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


def _to_parquet(rows: list[IndexRecord]) -> bytes:
    """The index file's bytes. Rows go to Arrow through pyarrow's NDJSON reader: building
    arrays from Python lists makes pyarrow import pandas (~0.45 s per process), this does not."""
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    lines = "".join(json.dumps({"file_hash": r.file_hash, "size": r.size, "xxh3": r.xxh3, "key": r.key,
                                "version_id": r.version_id, "etag": r.etag,
                                "verified_at": int(r.verified_at * 1000)}, separators=(",", ":")) + "\n"
                    for r in rows).encode()
    schema = _schema()
    if rows:
        import pyarrow as pa

        parsing = _schema_for_json()
        table = pj.read_json(io.BytesIO(lines), parse_options=pj.ParseOptions(explicit_schema=parsing),
                             read_options=pj.ReadOptions(block_size=max(1 << 20, len(lines) + 1)))
        table = table.set_column(6, "verified_at", table.column(6).cast(pa.timestamp("ms", tz="UTC")))
        table = table.cast(schema)
    else:
        table = schema.empty_table()
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _schema_for_json():
    import pyarrow as pa

    return pa.schema([(f.name, pa.int64() if f.name == "verified_at" else f.type) for f in _schema()])


def warm_up() -> None:
    """Import what a commit needs (from a worker thread while a sync transfers): the first
    commit then does not pay ~0.25 s of imports on the run's critical path."""
    import pyarrow.json  # noqa: F401
    import pyarrow.parquet  # noqa: F401


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
