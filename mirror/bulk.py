"""A big manifest taken whole, planned as columns.

`plan.make_plan` makes a Python object or three per wanted view; on a 1,000,000-entry manifest
that loop and its objects took a quarter of a 12-26 s plan and most of its 1.5 GB. When a
selection takes one manifest whole and its data_files were read as columns
(`columnar.EntryColumns`), `gather` hands the planner a `TargetTable` instead of a list, and
the plan's decisions are the same rules as `plan.make_plan`'s, applied column-wise:

- a view is present when a view of its object exists there and the store holds the object;
- else it is replaced when something else is there, then linked when the store holds the
  object, else fetched: one fetch per content, biggest first, then by key.

The fetches stay columns (`FetchColumns`, a sequence of `plan.Fetch` made when read), so a
plan of a million fetches is a few arrays until the engine takes them one by one.
tests/test_bulk.py checks that both planners give the same plan for the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .columnar import EntryColumns
from .manifest import Manifest
from .model import ObjectInfo, ObjectRef
from .plan import Fetch, Link, LocalState, Plan, Target, make_plan

_CHUNK = 65536


class TargetTable:
    """The targets of one manifest taken whole: its metadata files as `Target`s (a few), its
    data files as columns. Iterating it gives every `Target`, metadata first, as a list of
    them would (for the code that does not read columns)."""

    bulk = True  # (how upkeep/scan.py tells it from a list without importing this module)

    def __init__(self, manifest: Manifest, top: str):
        cols = manifest.data_files
        if not isinstance(cols, EntryColumns) or not len(cols):
            raise TypeError(f"{manifest.name}: data_files not read as columns")
        self.top, self.cols = top, cols
        self.small = [Target(f"{top}/{e.relative_path}", e) for e in manifest.metadata_files.values()]
        # Every key begins with the dataset prefix (columnar.py checked it), so with its first segment.
        self._first = len(cols.object_keys[0].as_py().split("/", 1)[0])
        self.hashes = cols.file_hashes

    @cached_property
    def views(self) -> pa.Array:
        """Each data row's view: the key with its first segment replaced by the top directory
        (made when first asked for: a plan of a new cache_dir needs none until it runs)."""
        return pc.utf8_replace_slice(self.cols.object_keys, 0, self._first, self.top)

    def __len__(self) -> int:
        return len(self.small) + len(self.cols)

    def __iter__(self) -> Iterator[Target]:
        yield from self.small
        entries = self.cols.entries()
        for i in range(0, len(self.views), _CHUNK):
            for view in self.views.slice(i, _CHUNK).to_pylist():
                yield Target(view, next(entries))

    def target(self, row: int) -> Target:
        """Data row `row` as a Target."""
        return Target(self.views[row].as_py(), self.cols.entry(row))

    def make_plan(self, local: LocalState, remote: Mapping[tuple[str, str], ObjectInfo], *,
                  manifests: tuple[str, ...]) -> Plan:
        """`plan.make_plan(list(self), local, remote, manifests=manifests)`, column-wise."""
        meta = make_plan(self.small, local, remote, manifests=manifests)
        n = len(self.cols)
        hashes = self.hashes
        has = (pc.is_in(hashes, value_set=pa.array(list(local.objects), pa.string())).to_numpy(zero_copy_only=False)
               if local.objects else np.zeros(n, bool))
        at = np.full(n, -1, np.int64)
        if local.views:
            at = pc.fill_null(pc.index_in(self.views, value_set=pa.array(list(local.views), pa.string())), -1) \
                .to_numpy(zero_copy_only=False).astype(np.int64)
        exists = at >= 0
        present = np.zeros(n, bool)
        if exists.any():  # a view there: of the right content? (as many rows as files on disk)
            of = list(local.views.values())
            rows = np.flatnonzero(exists)
            for r, h, i in zip(rows.tolist(), hashes.take(pa.array(rows)).to_pylist(), at[rows].tolist()):
                present[r] = of[i] == h and h in local.objects
        link = ~present & has
        fetch = ~present & ~has
        if meta.fetch and pc.any(pc.is_in(hashes.filter(pa.array(fetch)),
                                          value_set=pa.array([f.file_hash for f in meta.fetch]))).as_py():
            # A metadata file with the content of a data file to fetch: one fetch for both, as
            # the list planner makes it. Rare enough to take the list planner for.
            return make_plan(list(self), local, remote, manifests=manifests)

        def texts(col: pa.Array, mask: np.ndarray) -> list[str]:
            return col.filter(pa.array(mask)).to_pylist() if mask.any() else []

        p_views, p_hashes = texts(self.views, present), texts(hashes, present)
        sizes = dict(local.objects)
        p_bytes = sum(sizes[h] for h in p_hashes)
        links = [Link(h, v, sizes[h]) for h, v in zip(texts(hashes, link), texts(self.views, link))]
        replace = texts(self.views, exists & ~present)
        fetches = FetchColumns.group(self, np.flatnonzero(fetch), remote, extra=meta.fetch)
        remove: list[str] = []
        if local.extra_files:  # files in the version directories that no target wants
            extra = pa.array(sorted(local.extra_files), pa.string())
            small = {t.view for t in self.small}
            remove = [p for p in extra.filter(pc.invert(pc.is_in(extra, value_set=self.views))).to_pylist()
                      if p not in small]
        return Plan(tuple(manifests), fetches, meta.link + tuple(links), meta.present + tuple(p_views),
                    meta.present_bytes + p_bytes, tuple(sorted(meta.replace + tuple(replace))), tuple(remove),
                    present_hashes=meta.present_hashes + tuple(p_hashes))


class FetchColumns(Sequence):
    """A plan's fetches as columns: each a content hash of a `TargetTable`'s rows (its first
    row's entry, all its rows' views), in the plan's order; `plan.Fetch` objects are made
    when read. `extra`: fetches from elsewhere (the metadata files), sorted in with them."""

    def __init__(self, table: TargetTable, first: np.ndarray, sizes: np.ndarray, etags: list | None,
                 views: dict[int, tuple[str, ...]], extra: tuple[Fetch, ...]):
        self.table, self.first, self.sizes, self.etags = table, first, sizes, etags
        self.views, self.extra = views, extra

    @classmethod
    def group(cls, table: TargetTable, rows: np.ndarray, remote: Mapping[tuple[str, str], ObjectInfo],
              extra: tuple[Fetch, ...]) -> FetchColumns:
        """One fetch per content among data rows `rows` (ascending): its first row and, where
        several rows share it, all their views."""
        first, views = _by_content(table, rows)
        sizes = np.full(len(first), -1, np.int64)
        etags = None
        if remote:
            etags = [None] * len(first)
            keys = table.cols.object_keys.take(pa.array(first)).to_pylist()
            vids = table.cols.version_ids.take(pa.array(first)).to_pylist()
            for i, (k, v) in enumerate(zip(keys, vids)):
                info = remote.get((k, v))
                if info is not None:
                    sizes[i], etags[i] = info.size, info.etag
        return cls(table, first, sizes, etags, views, tuple(extra))

    @cached_property
    def order(self) -> np.ndarray:
        """The plan's order (positions in `first`, then in `extra`): biggest first (unknown
        counts as 0), then by key, so that large objects start early. Sorted when first read."""
        n = len(self.first)
        keys = self.table.cols.object_keys
        if n != len(keys):  # (n == len(keys): every row, in row order)
            keys = keys.take(pa.array(self.first))
        all_keys = pa.concat_arrays([keys, pa.array([f.ref.key for f in self.extra], pa.string())])
        all_sizes = np.concatenate((np.maximum(self.sizes, 0), np.array([f.size or 0 for f in self.extra], np.int64)))
        if not len(all_sizes) or (all_sizes == all_sizes[0]).all():
            return pc.sort_indices(all_keys).to_numpy()
        return pc.sort_indices(pa.table({"s": pa.array(-all_sizes), "k": all_keys}),
                               sort_keys=[("s", "ascending"), ("k", "ascending")]).to_numpy()

    def __len__(self) -> int:
        return len(self.first) + len(self.extra)

    def _made(self, js: np.ndarray) -> Iterator[Fetch]:
        """The fetches at positions `js` (of `first`, then of `extra`), their columns read at once."""
        cols, n = self.table.cols, len(self.first)
        rows = pa.array(self.first[js[js < n]])
        got = iter(zip(cols.object_keys.take(rows).to_pylist(), cols.version_ids.take(rows).to_pylist(),
                       cols.file_hashes.take(rows).to_pylist(), self.table.views.take(rows).to_pylist()))
        for j in js.tolist():
            if j >= n:
                yield self.extra[j - n]
                continue
            key, vid, h, view = next(got)
            size = int(self.sizes[j])
            yield Fetch(h, ObjectRef(cols.bucket, key, vid), None if size < 0 else size,
                        self.etags[j] if self.etags else None, self.views.get(j, (view,)))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(self._made(self.order[i]))
        return next(self._made(np.atleast_1d(self.order[i])))

    def __iter__(self) -> Iterator[Fetch]:
        for a in range(0, len(self.order), _CHUNK):
            yield from self._made(self.order[a:a + _CHUNK])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (tuple, FetchColumns)) and tuple(self) == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FetchColumns({len(self)} fetches)"

    # What Plan's summary needs, without making a Fetch per row.
    def total_bytes(self) -> int:
        return int(np.maximum(self.sizes, 0).sum()) + sum(f.size or 0 for f in self.extra)

    def unknown_sizes(self) -> int:
        return int((self.sizes < 0).sum()) + sum(1 for f in self.extra if f.size is None)

    def view_count(self) -> int:
        return len(self.first) + sum(len(v) - 1 for v in self.views.values()) + sum(len(f.views) for f in self.extra)

    def linked_bytes(self) -> int:
        """Bytes of the views after the first of each fetch (made as links to it)."""
        return (sum(max(int(self.sizes[j]), 0) * (len(v) - 1) for j, v in self.views.items())
                + sum((f.size or 0) * (len(f.views) - 1) for f in self.extra))


def _by_content(table: TargetTable, rows: np.ndarray) -> tuple[np.ndarray, dict[int, tuple[str, ...]]]:
    """The first row of each content hash among `rows`, in row order, and for the contents
    that several rows share, the views of all of them (by position in the first array)."""
    if not len(rows):
        return np.empty(0, np.int64), {}
    # A 64-bit fingerprint of each hash (its first 32 hex characters, 128 bits, as 4 words),
    # then rows whose fingerprints agree are compared whole: equal fingerprints of different
    # hashes are merely slower, never merged.
    col = table.hashes
    offsets = np.frombuffer(col.buffers()[1], np.int32, len(col) + 1, col.offset * 4)
    words = np.frombuffer(col.buffers()[2], np.uint64, 16 * len(col), int(offsets[0])).reshape(len(col), 16)
    if len(rows) != len(col):
        words = words[rows]
    fp = words[:, 0].copy()
    mix = np.uint64(0x9E3779B97F4A7C15)
    for k in range(1, 4):
        fp *= mix
        fp ^= words[:, k]
    sfp = np.sort(fp)
    if not (sfp[1:] == sfp[:-1]).any():  # every content once: the common case
        return rows, {}
    order = np.argsort(fp, kind="stable")  # stable: within a group, rows stay in row order
    sfp = fp[order]
    starts = np.flatnonzero(np.concatenate(([True], sfp[1:] != sfp[:-1])))
    # Groups of equal fingerprints, split by the whole hash, in Python (they are few).
    group_of: dict[str, list[int]] = {}
    ends = np.append(starts[1:], len(order))
    singles = np.ones(len(rows), bool)
    for a, b in zip(starts.tolist(), ends.tolist()):
        if b - a == 1:
            continue
        for i in order[a:b].tolist():
            singles[i] = False
            group_of.setdefault(words[i].tobytes().decode("ascii"), []).append(i)
    firsts = [g[0] for g in group_of.values()]
    keep = np.sort(np.concatenate((np.flatnonzero(singles), np.array(firsts, np.int64))))
    views_of = {g[0]: tuple(table.views.take(pa.array(rows[g])).to_pylist()) for g in group_of.values() if len(g) > 1}
    position = {int(i): p for p, i in enumerate(keep.tolist())}
    return rows[keep], {position[i]: v for i, v in views_of.items()}
