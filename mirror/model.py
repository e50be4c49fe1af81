"""Plain data shared by every layer (planner, engine, store, remote): no I/O and no network
imports here, so `import mirror.plan` loads neither an HTTP client nor botocore."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class ObjectRef(NamedTuple):
    """One object version: every GET names its version, so a later upload cannot sneak in.
    (A NamedTuple, like the planner's types: a release has one per file, made in C.)"""

    bucket: str
    key: str
    version_id: str | None = None


class ObjectInfo(NamedTuple):
    key: str
    version_id: str | None
    size: int
    etag: str | None  # without quotes
    part_size: int | None = None  # the size of part 1, from HEAD ?partNumber=1


@dataclass(frozen=True)
class Selection:
    """What a sync, a plan or a `get` is about: a version (None: the current one; 'latest';
    'all'; a version) and, optionally, some of its files: by key, by metadata (`where`,
    `ids`, `tables_only`), one shard. `strays`: remove files of those versions that no
    manifest wants (a whole-version sync does; any narrower selection does not)."""

    version: str | None = None
    keys: frozenset[str] | None = None  # None: every file of the version(s)
    strays: bool = True
    shard: "Shard | None" = None
    # By metadata: data files picked by rows of the tables (the tables themselves always come
    # along); `tables_only`: the metadata tables and no data file.
    where: str | None = None
    ids: tuple[str | None, tuple[int, ...]] | None = None  # (id column or None, ids): see tables.select_files
    tables_only: bool = False
    # Where the views go: AllenSDK's `{project}-{version}/...` ("allensdk"), or the S3 keys,
    # `{project}/...` as on a mounted bucket ("bucket", one version at a time: AllenSDK's
    # from_local_cache(use_static_cache=True)).
    layout: str = "allensdk"

    @property
    def by_metadata(self) -> bool:
        return self.where is not None or self.ids is not None or self.tables_only

    @classmethod
    def files(cls, version: str | None, keys) -> "Selection":
        return cls(version, frozenset(keys), strays=False)


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based, as SLURM_ARRAY_TASK_ID with --array=0-N)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise ValueError(f"shard {self.index}/{self.count}: K/N needs 0 <= K < N")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        k, sep, n = text.partition("/")
        if not sep or not k.strip().isdigit() or not n.strip().isdigit():
            raise ValueError(f"--shard {text!r}: expected K/N, e.g. 0/4 (K counts from 0, as SLURM_ARRAY_TASK_ID)")
        return cls(int(k), int(n))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def strip_etag(etag: str | None) -> str | None:
    if etag is None:
        return None
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"') or None


def multipart_count(etag: str | None) -> int | None:
    """N for a multipart ETag `<md5 of md5s>-N`, None for a plain MD5 ETag."""
    if etag and "-" in etag:
        tail = etag.rsplit("-", 1)[1]
        if tail.isdigit():
            return int(tail)
    return None
