"""Parse and validate dataset manifests into an immutable model; turn keys into safe paths;
compare two manifests.

A manifest is untrusted input: every URL must point into the dataset's own bucket and
prefix, every key must map to a path that stays inside the version directory, every hash
must be a BLAKE2b-512 hex digest. One violation rejects the whole manifest before anything
is written, with a message naming the file and the entry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Iterator, Mapping, NamedTuple
from urllib.parse import unquote, urlsplit

from .config import DatasetConfig
from .errors import ManifestError
from .gcpause import gc_paused
from .semver import Version

HASH_RE = re.compile(r"[0-9a-f]{128}")  # used with fullmatch: `$` would let a trailing newline in
_REQUIRED_KEYS = ("project_name", "manifest_version", "metadata_file_id_column_name", "metadata_files", "data_files")
_ENTRY_KEYS = {"url", "version_id", "file_hash"}
# Host forms S3 uses for a bucket: virtual-hosted (dot or dash region) and path style.
_VHOST = re.compile(r"^(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])\.s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com$")
_PATHSTYLE = re.compile(r"^s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com$")
_MAX_KEY = 1024
_MAX_NAME = 255  # bytes in one path segment: NAME_MAX of Linux filesystems


class FileEntry(NamedTuple):
    """One file of a manifest (a NamedTuple: a release has thousands, a stress test a million)."""

    kind: str  # "metadata" or "data"
    name: str  # table name for metadata, str(file_id) for data
    url: str
    bucket: str
    key: str
    version_id: str
    file_hash: str

    @property
    def relative_path(self) -> str:
        """The key without its first segment: AllenSDK's path under the version directory."""
        return self.key.split("/", 1)[1]


@dataclass(frozen=True)
class Manifest:
    name: str  # file name, e.g. visual-behavior-ophys_project_manifest_v1.0.1.json
    project_name: str
    manifest_version: str
    id_column: str
    data_pipeline: tuple[Mapping[str, str], ...]
    metadata_files: Mapping[str, FileEntry]
    data_files: Mapping[str, FileEntry]

    def __repr__(self) -> str:  # short: see Plan.__repr__
        return f"Manifest({self.name}: {len(self.metadata_files)} metadata files, {len(self.data_files)} data files)"

    @property
    def version(self) -> Version:
        return Version(self.manifest_version)

    @property
    def view_dir(self) -> str:
        """AllenSDK's directory for this version: `{project_name}-{manifest_version}`."""
        return f"{self.project_name}-{self.manifest_version}"

    @property
    def in_columns(self) -> bool:
        """Whether data_files was read into columns (columnar.py: a big manifest)."""
        return not isinstance(self.data_files, MappingProxyType)

    def entries(self) -> Iterator[FileEntry]:
        yield from self.metadata_files.values()
        yield from self.data_files.values()

    def __len__(self) -> int:
        return len(self.metadata_files) + len(self.data_files)


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key) of an S3 object URL in any of AWS's forms; the key is unquoted."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        return parts.netloc, unquote(parts.path.lstrip("/"))
    if parts.scheme not in ("https", "http"):
        raise ValueError(f"not an S3 URL: {url!r}")
    host = (parts.hostname or "").lower()
    path = unquote(parts.path)
    if m := _VHOST.match(host):
        return m.group("bucket"), path[1:] if path.startswith("/") else path
    if _PATHSTYLE.match(host):
        bucket, _, key = path.lstrip("/").partition("/")
        return bucket, key
    raise ValueError(f"not an AWS S3 URL (host {host!r}): {url!r}")


def check_key(key: str, *, prefix: str) -> str | None:
    """Why `key` is unsafe to turn into a local path, or None when it is safe."""
    if not key:
        return "empty key"
    if len(key) > _MAX_KEY:
        return "key longer than 1024 characters"
    if "\x00" in key or "\\" in key:
        return "key contains a NUL or a backslash"
    if key.startswith("/"):
        return "key is an absolute path"
    segments = key.split("/")
    if any(s in ("", ".", "..") for s in segments):
        return "key has an empty, '.' or '..' segment"
    if any(len(s.encode("utf-8", "surrogatepass")) > _MAX_NAME for s in segments):
        return f"key has a path segment longer than {_MAX_NAME} bytes (the limit of a file name)"
    if not key.startswith(prefix):
        return f"key is outside the dataset prefix {prefix!r}"
    if len(segments) < 2:
        return "key has no path below its first segment"
    return None


# The fast path: an entry in the form every real manifest uses (a virtual-hosted https URL
# without %-escapes, query or fragment) is validated by three regexes, which accept exactly
# what the checks of `_entry_checked` accept for that form (a test compares the two on random
# entries). Anything else takes the checked path, which also words the error.
_FAST_URL = re.compile(
    r"https://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])\.s3[.-][a-z0-9-]+\.amazonaws\.com/([^%?#\x00-\x20\x7f\\]{1,1024})")
_FAST_VERSION = re.compile(r"[^\x00/\\&?# ]{1,1024}")
_KEY_SEGMENTS = r"(?:(?!\.\.?(?:/|\Z))[^/]{1,255}/)*(?!\.\.?\Z)[^/]{1,255}"  # ASCII keys: chars = bytes


_NEVER = re.compile(r"(?!)")


def _key_pattern(prefix: str) -> re.Pattern:
    """A key under `prefix` whose every segment is non-empty and not '.' or '..': what
    check_key accepts, for keys free of NUL and backslash. A prefix of another shape (not
    ending in '/', or unsafe itself) sends every entry the checked way."""
    if not prefix.endswith("/") or check_key(prefix + "x", prefix=prefix) is not None:
        return _NEVER
    return re.compile(re.escape(prefix) + _KEY_SEGMENTS)


def _entry(source: str, kind: str, name: str, raw: object, ds: DatasetConfig, key_ok: re.Pattern) -> FileEntry:
    if type(raw) is dict and len(raw) == 3:
        url, version_id, file_hash = raw.get("url"), raw.get("version_id"), raw.get("file_hash")
        if (type(url) is str and type(version_id) is str and type(file_hash) is str
                and HASH_RE.fullmatch(file_hash) and _FAST_VERSION.fullmatch(version_id) and url.isascii()
                and (m := _FAST_URL.fullmatch(url)) and m.group(1) == ds.bucket and key_ok.fullmatch(m.group(2))):
            return FileEntry(kind, name, url, ds.bucket, m.group(2), version_id, file_hash)
    return _entry_checked(source, kind, name, raw, ds)


def _entry_checked(source: str, kind: str, name: str, raw: object, ds: DatasetConfig) -> FileEntry:
    where = f"{kind}_files[{name!r}]"
    if not isinstance(raw, dict):
        raise ManifestError(source, f"{where} is not an object")
    if set(raw) != _ENTRY_KEYS:
        missing, extra = _ENTRY_KEYS - set(raw), set(raw) - _ENTRY_KEYS
        raise ManifestError(source, f"{where} must have exactly url, version_id, file_hash"
                            + (f"; missing {sorted(missing)}" if missing else "")
                            + (f"; unexpected {sorted(extra)}" if extra else ""))
    url, version_id, file_hash = raw["url"], raw["version_id"], raw["file_hash"]
    if not all(isinstance(v, str) for v in (url, version_id, file_hash)):
        raise ManifestError(source, f"{where}: url, version_id and file_hash must be strings")
    if not HASH_RE.fullmatch(file_hash):
        raise ManifestError(source, f"{where}: file_hash is not 128 lowercase hex characters (BLAKE2b-512)")
    if not version_id or len(version_id) > 1024 or any(c in version_id for c in "\x00/\\&?# "):
        raise ManifestError(source, f"{where}: version_id {version_id!r} is not a valid S3 version id")
    try:
        bucket, key = parse_s3_url(url)
    except ValueError as exc:
        raise ManifestError(source, f"{where}: {exc}") from None
    if bucket != ds.bucket:
        raise ManifestError(source, f"{where}: URL points outside the dataset bucket {ds.bucket!r} (got {bucket!r})")
    if problem := check_key(key, prefix=ds.prefix):
        raise ManifestError(source, f"{where}: unsafe key {key!r}: {problem}")
    return FileEntry(kind, name, url, bucket, key, version_id, file_hash)


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return d


def parse_manifest(data: bytes, *, source: str, dataset: DatasetConfig) -> Manifest:
    """Validate `data` completely and return the model; raise ManifestError on the first problem."""
    with gc_paused():
        return _parse_manifest(data, source=source, dataset=dataset)


# From this size on, `data_files` is read into columns (columnar.py) when the document has
# the shape every manifest is written in: a 1,000,000-entry plan took 11.7-26 s, and numpy
# and pyarrow cost ~0.2 s to import, more than the plain parse of a release's manifest.
COLUMNAR_MIN_BYTES = 8 << 20


def _parse_manifest(data: bytes, *, source: str, dataset: DatasetConfig) -> Manifest:
    if len(data) >= COLUMNAR_MIN_BYTES and (fast := _parse_columnar(data, source=source, dataset=dataset)):
        return fast
    return _parse_plain(data, source=source, dataset=dataset)


def _parse_columnar(data: bytes, *, source: str, dataset: DatasetConfig) -> Manifest | None:
    """The manifest with data_files as columns, or None: then the plain parse reads the whole
    document and says what is wrong with it, if anything."""
    if _key_pattern(dataset.prefix) is _NEVER:
        return None
    from .columnar import read_data_files

    got = read_data_files(data, bucket=dataset.bucket, prefix=dataset.prefix, url=_FAST_URL, entry=FileEntry)
    if got is None:
        return None
    rest, columns = got
    try:
        m = _parse_plain(rest, source=source, dataset=dataset)
    except ManifestError:
        return None
    if m.data_files:
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    meta_keys = pa.array([e.key for e in m.metadata_files.values()], pa.string())
    if pc.any(pc.is_in(columns.object_keys, value_set=meta_keys)).as_py():
        return None  # a key in both sections: the plain parse decides whether that is allowed
    return replace(m, data_files=columns)


def _parse_plain(data: bytes, *, source: str, dataset: DatasetConfig) -> Manifest:
    try:
        doc = json.loads(data, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise ManifestError(source, f"key {exc.args[0]!r} appears twice in one JSON object "
                            "(JSON parsers disagree on which one counts: refused)") from None
    except RecursionError:
        raise ManifestError(source, "not a manifest: JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(source, f"not valid JSON: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:  # JSONDecodeError, and numbers beyond Python's digit limit
        raise ManifestError(source, f"not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(doc, dict):
        raise ManifestError(source, "top level is not a JSON object")
    for key in _REQUIRED_KEYS:
        if key not in doc:
            raise ManifestError(source, f"missing required key {key!r}")
    project, version, id_col = doc["project_name"], doc["manifest_version"], doc["metadata_file_id_column_name"]
    for k, v in (("project_name", project), ("manifest_version", version), ("metadata_file_id_column_name", id_col)):
        if not isinstance(v, str) or not v:
            raise ManifestError(source, f"{k} must be a non-empty string")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", project) or project in (".", ".."):
        raise ManifestError(source, f"project_name {project!r} is not a safe directory name")
    if not Version.is_valid(version):
        raise ManifestError(source, f"manifest_version {version!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    name_version = dataset.version_of(source.rsplit("/", 1)[-1])
    if name_version is not None and Version(name_version) != Version(version):
        raise ManifestError(source, f"manifest_version {version!r} does not match the version in the file name ({name_version})")
    pipeline = doc.get("data_pipeline", [])
    if not isinstance(pipeline, list) or not all(isinstance(p, dict) for p in pipeline):
        raise ManifestError(source, "data_pipeline must be a list of objects")
    sections = {}
    for kind in ("metadata", "data"):
        section = doc[f"{kind}_files"]
        if not isinstance(section, dict):
            raise ManifestError(source, f"{kind}_files must be an object")
        key_ok = _key_pattern(dataset.prefix)
        sections[kind] = {str(name): _entry(source, kind, str(name), raw, dataset, key_ok)
                          for name, raw in section.items()}
    for name in sections["data"]:
        if not name.isdigit():
            raise ManifestError(source, f"data_files key {name!r} is not a file id (digits)")
    # Two entries may share a key only if they name the very same object version and content.
    seen: dict[str, FileEntry] = {}
    for e in (*sections["metadata"].values(), *sections["data"].values()):
        other = seen.setdefault(e.key, e)
        if other is not e and (other.version_id, other.file_hash) != (e.version_id, e.file_hash):
            raise ManifestError(source, f"key {e.key!r} appears twice with different versions or hashes")
    return Manifest(
        name=source.rsplit("/", 1)[-1],
        project_name=project,
        manifest_version=Version(version).text,
        id_column=id_col,
        data_pipeline=tuple(MappingProxyType(dict(p)) for p in pipeline),
        metadata_files=MappingProxyType(sections["metadata"]),
        data_files=MappingProxyType(sections["data"]),
    )


# --- comparison -------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    kind: str  # "metadata" or "data"
    change: str  # "changed", "created", "deleted", "renamed"
    path: str  # relative path in B (in A for deleted)
    old_path: str | None = None  # for renamed
    old_hash: str | None = None
    new_hash: str | None = None


@dataclass(frozen=True)
class ManifestDiff:
    a: str
    b: str
    changes: tuple[Change, ...]

    def by_kind(self, kind: str) -> list[Change]:
        return [c for c in self.changes if c.kind == kind]


def compare_manifests(a: Manifest, b: Manifest) -> ManifestDiff:
    """Differences from A to B, by relative path, per kind (metadata, data), with AllenSDK's
    rules so its users read the same verdicts:

    - a path in both with another hash is `changed`;
    - a path only in A whose content is somewhere in B is `renamed` to that path;
    - a path only in A whose content is nowhere in B is `deleted`;
    - a path only in B whose content is nowhere in A is `created` (content that merely
      appears under a second name is not reported, as in AllenSDK).

    Where several paths of B share one content, the rename names the first in sorted order
    (AllenSDK takes whichever its dict kept last; ours is deterministic).
    """
    changes: list[Change] = []
    for kind in ("metadata", "data"):
        old = {e.relative_path: e.file_hash for e in getattr(a, f"{kind}_files").values()}
        new = {e.relative_path: e.file_hash for e in getattr(b, f"{kind}_files").values()}
        old_hashes = set(old.values())
        new_by_hash: dict[str, str] = {}
        for path in sorted(new, reverse=True):
            new_by_hash[new[path]] = path
        for path in sorted(old):
            h = old[path]
            if path in new:
                if new[path] != h:
                    changes.append(Change(kind, "changed", path, old_hash=h, new_hash=new[path]))
            elif h in new_by_hash:
                changes.append(Change(kind, "renamed", new_by_hash[h], old_path=path, old_hash=h, new_hash=h))
            else:
                changes.append(Change(kind, "deleted", path, old_hash=h))
        for path in sorted(new):
            if path not in old and new[path] not in old_hashes:
                changes.append(Change(kind, "created", path, new_hash=new[path]))
    return ManifestDiff(a.name, b.name, tuple(changes))


def format_diff(diff: ManifestDiff) -> str:
    """The text AllenSDK's `compare_manifests` prints, so users' habits and scripts carry over:
    metadata lines first, then data lines, each block sorted by the (old) path."""
    if not diff.changes:
        return "The two manifests are equivalent"
    out = [f"Changes going from\n{diff.a}\nto\n{diff.b}\n\n"]
    for kind in ("metadata", "data"):
        lines = []
        for c in diff.by_kind(kind):
            if c.change == "renamed":
                lines.append((c.old_path, f"{c.old_path} renamed {c.path}"))
            else:
                lines.append((c.path, f"{c.path} {c.change}"))
        out.extend(f"{text}\n" for _, text in sorted(lines))
    return "".join(out)
