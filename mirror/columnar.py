"""A big manifest's `data_files` read straight into Arrow columns, with no Python object per entry.

A million-entry manifest is 330 MB of JSON; `json.loads` alone takes 2.4 s on the benchmark
machine and the objects it makes (five per entry) hold 1.4 GB (benchmarks/RESULTS.md). No
library reads a JSON object of a million keys into columns: pyarrow's JSON reader wants one
record per line and refuses map types, and msgspec/orjson make the same Python objects.

So this module reads only one strict shape, the one manifests are written in (by json.dumps,
with or without indentation), and says None for anything else; the caller then parses the
whole document with the standard library, which stays the judge of what JSON means and
words every error:

- the string `"data_files"`, followed by `:` and `{`, and in it entries
  `"<digits>": {"url": "…", "version_id": "…", "file_hash": "…"}`: the three fields in the
  first entry's order, and every entry written with the first entry's bytes around its four
  values (so the field names, the punctuation and the whitespace between them are checked
  by comparing bytes, once a regular expression has read the first entry);
- the values themselves checked column-wise with the rules of manifest.py's per-entry
  checks (bucket, host, key safety, version id, BLAKE2b hex), on printable ASCII only: a
  backslash (an escape), a control character or a byte above 0x7e sends the document the
  plain way; names unique, keys unique.

The positions of the quotes give every string: with no backslash in a value or between
them, every `"` opens or closes one. The document outside `data_files` (a few KB) is then
parsed by the standard parser with `data_files` emptied, and must name `data_files` once:
the bytes cut out are a complete JSON object value in its place, so the two readings
together are the reading of the whole document. tests/test_columnar.py compares the two
paths on documents as json.dumps writes them, on one-rule mutations of them and on random
byte edits.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from collections.abc import ItemsView, ValuesView
from typing import TYPE_CHECKING, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from .manifest import FileEntry


_OPEN = re.compile(rb'"data_files"[ \t\n\r]*:[ \t\n\r]*\{')
_CLOSE = re.compile(rb'[ \t\n\r]*\}[ \t\n\r]*\}')
_WS_ONLY = re.compile(rb'[ \t\n\r]*')
_W = rb'[ \t\n\r]*'
_FIRST = re.compile(rb'"[0-9]+(?P<a>"' + _W + rb':' + _W + rb'\{' + _W + rb'"(?P<f1>url|version_id|file_hash)"' + _W
                    + rb':' + _W + rb'")[^"]*(?P<b>"' + _W + rb',' + _W + rb'"(?P<f2>url|version_id|file_hash)"' + _W
                    + rb':' + _W + rb'")[^"]*(?P<c>"' + _W + rb',' + _W + rb'"(?P<f3>url|version_id|file_hash)"' + _W
                    + rb':' + _W + rb'")[^"]*(?P<d>"' + _W + rb'\}' + _W + rb'(?:,' + _W + rb'"|\}))')
_FIELDS = {"url", "version_id", "file_hash"}
# Printable ASCII but for what manifest.py refuses in each: `"` cannot occur (it ends a string)
_VERSION_CHARS = ((0x21, 0x22), (0x24, 0x25), (0x27, 0x2E), (0x30, 0x3E), (0x40, 0x5B), (0x5D, 0x7E))  # no # & / ? \\
_KEY_CHARS = ((0x21, 0x22), (0x24, 0x24), (0x26, 0x3E), (0x40, 0x5B), (0x5D, 0x7E))  # no # % ? \\
_BAD_SEGMENT = r"//|/\.\.?(/|$)|/$"
_SCAN = 1 << 20  # bytes per numpy pass over the document (stays in cache; the buffers are reused)
_CHUNK = 65536  # entries turned into Python objects at a time


class EntryColumns(Mapping[str, "FileEntry"]):
    """`data_files` as columns: a read-only mapping name -> FileEntry like the dict the plain
    parser makes (same order, same entries, equal to it), whose entries are made only when
    asked for. Planning reads the columns themselves (`names`, `object_keys`, `version_ids`,
    `file_hashes`: pyarrow string arrays; not `keys`, which is the mapping's method)."""

    def __init__(self, entry: type, kind: str, bucket: str, url_prefix: str, names: pa.Array, keys: pa.Array,
                 version_ids: pa.Array, file_hashes: pa.Array):
        self.make, self.kind, self.bucket, self.url_prefix = entry, kind, bucket, url_prefix
        self.names, self.object_keys, self.version_ids, self.file_hashes = names, keys, version_ids, file_hashes
        self._rows: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        for i in range(0, len(self.names), _CHUNK):
            yield from self.names.slice(i, _CHUNK).to_pylist()

    def _index(self) -> dict[str, int]:
        if self._rows is None:
            self._rows = {name: i for i, name in enumerate(self)}
        return self._rows

    def __contains__(self, name: object) -> bool:
        return name in self._index()

    def __getitem__(self, name: str) -> FileEntry:
        return self.entry(self._index()[name])

    def entry(self, i: int) -> FileEntry:
        key = self.object_keys[i].as_py()
        return self.make(self.kind, self.names[i].as_py(), self.url_prefix + key, self.bucket, key,
                         self.version_ids[i].as_py(), self.file_hashes[i].as_py())

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[FileEntry]:
        """Rows `start`..`stop` as FileEntry, made a chunk at a time."""
        stop = len(self) if stop is None else stop
        make, kind, bucket, prefix = self.make, self.kind, self.bucket, self.url_prefix
        for i in range(start, stop, _CHUNK):
            n = min(_CHUNK, stop - i)
            cols = [c.slice(i, n).to_pylist() for c in (self.names, self.object_keys, self.version_ids, self.file_hashes)]
            for name, key, vid, h in zip(*cols):
                yield make(kind, name, prefix + key, bucket, key, vid, h)

    def values(self) -> ValuesView:
        return _Values(self)

    def items(self) -> ItemsView:
        return _Items(self)

    def __repr__(self) -> str:
        return f"EntryColumns({self.kind}: {len(self)} entries)"


class _Values(ValuesView):
    def __iter__(self):
        return self._mapping.entries()


class _Items(ItemsView):
    def __iter__(self):
        return ((e.name, e) for e in self._mapping.entries())


def _quotes_in(arr: np.ndarray, start: int, stop: int) -> np.ndarray:
    found = [np.empty(0, np.int32)]
    eq = np.empty(_SCAN, bool)
    for lo in range(start, stop, _SCAN):
        chunk = arr[lo:min(lo + _SCAN, stop)]
        np.equal(chunk, 0x22, out=eq[:len(chunk)])
        found.append((np.flatnonzero(eq[:len(chunk)]) + lo).astype(np.int32))  # the document is < 2 GiB
    return np.concatenate(found)


def _quotes(arr: np.ndarray, start: int) -> np.ndarray:
    """Positions of every `"` from `start` on (each half of the document in its own thread)."""
    mid = start + (len(arr) - start) // 2
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(_quotes_in, arr, mid, len(arr))
        return np.concatenate((_quotes_in(arr, start, mid), second.result()))


class _Windows:
    """The document's bytes at any offset: `width` of them as one integer or one opaque
    value (numpy views with a stride of one byte, no copy)."""

    def __init__(self, data: bytes):
        self.data, self.size = data, len(data)
        self.views = {w: np.ndarray((len(data) - w + 1,), f"<u{w}", data, 0, (1,)) for w in (4, 8)}

    def bytes_at(self, starts: np.ndarray, width: int) -> np.ndarray:
        """(len(starts), width) uint8: the bytes from each offset; every read must fit."""
        rows = np.ndarray((self.size - width + 1,), f"V{width}", self.data, 0, (1,))[starts]
        return rows.view(np.uint8).reshape(len(starts), width)

    def match(self, starts: np.ndarray, ref: bytes) -> np.ndarray:
        """For each offset in `starts`: whether the bytes there begin with `ref` (which must
        fit in the document from each offset)."""
        rows = np.ndarray((self.size - len(ref) + 1,), f"V{len(ref)}", self.data, 0, (1,))
        return rows[starts] == np.frombuffer(ref, f"V{len(ref)}")[0]

    def same(self, starts: np.ndarray, ref: bytes) -> bool:
        return bool(self.match(starts, ref).all())

    def word(self, w: int, offsets: np.ndarray) -> np.ndarray:
        return self.views[w][offsets]


def _strings(buf: pa.Buffer, win: _Windows, starts: np.ndarray, lens: np.ndarray) -> pa.Array:
    """The strings at (`starts`, `lens`) of the document as one contiguous string array: a
    string_view array over the document's own bytes (no copy), then cast (one copy)."""
    n = len(starts)
    width = int(lens[0]) if n else 0
    if n and width > 12 and (lens == width).all() and int(starts.max()) + width <= win.size:
        # One width (hashes; S3's version ids): the characters gathered row by row, as they
        # will lie in the array, instead of viewed then copied by a cast.
        chars = win.bytes_at(starts, width)
        offsets = np.arange(0, width * (n + 1), width, dtype=np.int32)
        return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(chars)])
    views = np.zeros((n, 4), "<u4")
    views[:, 0] = lens
    short = np.flatnonzero(lens <= 12)
    if len(short):  # the bytes inline, zero-padded to 12
        at = starts[short]
        inline = np.zeros((len(short), 12), np.uint8)
        near_end = at + 12 > win.size
        inline[~near_end] = win.bytes_at(at[~near_end], 12)
        for i in np.flatnonzero(near_end).tolist():  # (the last few strings of a document, if any)
            piece = win.data[int(at[i]):int(at[i]) + 12]
            inline[i, :len(piece)] = np.frombuffer(piece, np.uint8)
        inline[np.arange(12) >= lens[short][:, None]] = 0
        if len(short) == n:
            views.view(np.uint8).reshape(n, 16)[:, 4:] = inline
        else:
            views.view(np.uint8).reshape(n, 16)[short, 4:] = inline
    long_ = lens > 12
    if long_.any():  # a 4-byte prefix, buffer 0, the offset
        views[long_, 1] = win.word(4, starts[long_])
        views[long_, 3] = starts[long_]
    return pa.Array.from_buffers(pa.string_view(), n, [None, pa.py_buffer(views), buf]).cast(pa.string())


def _chars(col: pa.Array) -> np.ndarray:
    """A string array's characters, concatenated (a view of its buffer)."""
    offsets = np.frombuffer(col.buffers()[1], np.int32, len(col) + 1, col.offset * 4)
    return np.frombuffer(col.buffers()[2], np.uint8, int(offsets[-1] - offsets[0]), int(offsets[0]))


def _all_in(chars: np.ndarray, ranges: tuple[tuple[int, int], ...]) -> bool:
    """Whether every byte is in one of the inclusive `ranges`."""
    t = np.empty(_SCAN, np.uint8)
    ok, any_ = np.empty(_SCAN, bool), np.empty(_SCAN, bool)
    for a in range(0, len(chars), _SCAN):
        c = chars[a:a + _SCAN]
        n = len(c)
        ok[:n] = False
        for first, last in ranges:
            np.subtract(c, first, out=t[:n])
            np.less_equal(t[:n], last - first, out=any_[:n])
            np.logical_or(ok[:n], any_[:n], out=ok[:n])
        if not ok[:n].all():
            return False
    return True


def _distinct_at(win: _Windows, col: pa.Array, starts: np.ndarray, lens: np.ndarray) -> bool:
    """Whether the strings of `col` all differ, given where in the document the part of each
    that can differ lies (`starts`, `lens`: after a prefix they all share): one 64-bit
    fingerprint of that part, sorted; rows whose fingerprints agree are compared whole.
    (Sorting the strings themselves took twice as long.)"""
    n = len(starts)
    if n < 2:
        return True
    fp = lens.astype(np.uint64)
    mix = np.uint64(0x9E3779B97F4A7C15)
    for at in range(0, int(lens.max()), 8):
        if int(lens.min()) >= at + 8:  # a whole word of every string
            fp *= mix
            fp ^= win.word(8, starts + at)
            continue
        rows = np.flatnonzero(lens > at)
        word = win.word(8, starts[rows] + at)
        left = (lens[rows] - at).astype(np.uint64)
        part = left < 8
        word[part] &= (np.uint64(1) << (left[part] * np.uint64(8))) - np.uint64(1)
        fp[rows] = (fp[rows] * mix) ^ word
    order = np.argsort(fp)
    same = np.flatnonzero(fp[order][1:] == fp[order][:-1])
    seen: dict[str, int] = {}
    for i in np.unique(np.concatenate((order[same], order[same + 1]))):
        if seen.setdefault(col[int(i)].as_py(), int(i)) != i:
            return False
    return True


def _distinct(col: pa.Array) -> bool:
    if len(col) < 2:
        return True
    s = col.take(pc.sort_indices(col))
    return not pc.any(pc.equal(s.slice(1), s.slice(0, len(s) - 1))).as_py()


def read_data_files(data: bytes, *, bucket: str, prefix: str, url: re.Pattern, entry: type
                    ) -> tuple[bytes, EntryColumns] | None:
    """(`data` with its data_files object emptied to `{}`, data_files as columns) when `data`
    is in the shape described above and every entry passes manifest.py's checks; else None.
    `prefix` must end with '/' and be safe itself (manifest._key_pattern decides); `url`:
    manifest.py's pattern of a virtual-hosted URL (bucket, key); `entry`: its FileEntry."""
    if len(data) >= 1 << 31:
        return None
    at = data.find(b'"data_files"')
    if at < 0:
        return None
    opened = _OPEN.match(data, at)
    if opened is None:
        return None
    open_ = opened.end() - 1
    arr = np.frombuffer(data, np.uint8)
    q = _quotes(arr, open_ + 1)
    if len(q) < 14 or not _WS_ONLY.fullmatch(data, open_ + 1, int(q[0])):
        return None
    first = _FIRST.match(data, int(q[0]))
    if first is None or {first.group(f).decode() for f in ('f1', 'f2', 'f3')} != _FIELDS:
        return None
    seps = [first.group(s) for s in "abcd"]
    # Entry j's seven strings are between its quotes q[14j:14j+14]. Entries go on while the
    # bytes after one's last value are the first entry's separator d (`"}, "`, say); the one
    # after which they are not is the last, and `}` `}` must follow it.
    win = _Windows(data)
    entries = len(q) // 14
    more = np.zeros(entries, bool)
    if seps[3].endswith(b'"') and entries > 1:
        after = q[13:14 * (entries - 1):14]
        fits = np.flatnonzero(q[14:14 * entries:14] - after == len(seps[3]) - 1)
        more[fits] = win.match(after[fits], seps[3])
    n = int(np.argmin(more)) + 1
    closed = _CLOSE.match(data, int(q[14 * n - 1]) + 1)
    if closed is None:
        return None
    close = closed.end() - 1
    q = q[:14 * n].reshape(n, 14).T  # q[k]: the k-th quote of every entry
    del more
    order = {first.group(f).decode(): col for f, col in (("f1", 4), ("f2", 8), ("f3", 12))}
    u = order["url"]
    text = data[int(q[u][0]) + 1:int(q[u + 1][0])]
    url0 = url.fullmatch(text.decode("ascii")) if text.isascii() else None
    if url0 is None or url0.group(1) != bucket:
        return None
    host = url0.group(0)[:url0.start(2)]
    buf = pa.py_buffer(data)

    def column(col: int, skip: int = 0) -> tuple[pa.Array, np.ndarray]:
        starts = q[col] + 1 + skip
        lens = q[col + 1] - starts
        return _strings(buf, win, starts, lens), lens

    def values() -> tuple[pa.Array, pa.Array, pa.Array] | None:
        # file_hash: 128 lowercase hex characters
        hashes, lens = column(order["file_hash"])
        if not (lens == 128).all() or not _all_in(_chars(hashes), ((0x30, 0x39), (0x61, 0x66))):
            return None
        # version_id: 1 to 1024 characters, none of NUL / \\ & ? # or space (nor, on this path,
        # a control character or DEL)
        vids, lens = column(order["version_id"])
        if not ((lens >= 1) & (lens <= 1024)).all() or not _all_in(_chars(vids), _VERSION_CHARS):
            return None
        # names: file ids (ASCII digits; the first entry's pattern said so of the first only), each once
        names, lens = column(0)
        if not (lens >= 1).all() or not _all_in(_chars(names), ((0x30, 0x39),)):
            return None
        if int(lens.max()) <= 8:  # each name is its 8 bytes read as one number (zero-padded: digits are not 0)
            ids = win.word(8, q[0] + 1)
            short = lens < 8
            ids[short] &= (np.uint64(1) << (lens[short].astype(np.uint64) * np.uint64(8))) - np.uint64(1)
            ids.sort()
            if (ids[1:] == ids[:-1]).any():
                return None
        elif not _distinct(names):
            return None
        return hashes, vids, names

    def keys_() -> pa.Array | None:
        # Every entry has the first one's separators around its four strings, and its host.
        for (a, b), sep in zip(((1, 4), (5, 8), (9, 12)), seps[:3]):
            if not ((q[b] - q[a] == len(sep) - 1).all() and win.same(q[a], sep)):
                return None
        if not ((q[u + 1] - q[u] - 1 > len(host)).all() and win.same(q[u] + 1, host.encode("ascii"))):
            return None
        keys, klen = column(u, len(host))
        # key: under the prefix, something below it, at most 255 characters on this path (so no
        # segment is longer than a file name), none of % ? # \\ or space (nor, on this path, a
        # control character or DEL), no empty, '.' or '..' segment; each once
        if int(klen.max()) > 255 or not (klen > len(prefix)).all() or not _all_in(_chars(keys), _KEY_CHARS):
            return None
        if not pc.all(pc.starts_with(keys, prefix)).as_py() or pc.any(pc.match_substring_regex(keys, _BAD_SEGMENT)).as_py():
            return None
        inside = int(q[u + 1].max()) + 8 <= len(data)  # every 8-byte read, up to a key's end + 7, fits
        if not (_distinct_at(win, keys, q[u] + 1 + len(host) + len(prefix), klen - len(prefix)) if inside
                else _distinct(keys)):  # (after the prefix they all begin with)
            return None
        return keys

    # Two threads: numpy and pyarrow let go of the GIL in all of this, and the machine has cores.
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(values)
        keys = keys_()
        got = other.result()
    if keys is None or got is None:
        return None
    hashes, vids, names = got
    rest = data[:open_ + 1] + data[close:]
    if rest.count(b'"data_files"') != 1:
        return None  # then the one cut out might not be the top-level key's
    return rest, EntryColumns(entry, "data", bucket, host, names, keys, vids, hashes)
