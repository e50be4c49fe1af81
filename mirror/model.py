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
    """What a sync, a plan or a `get` is about: today a version (None: the current one;
    'latest'; 'all'; a version) and, optionally, some of its files by key; metadata queries
    and id lists come next. `strays`: remove files of those versions that no manifest wants
    (a whole-version sync does; picking single files does not)."""

    version: str | None = None
    keys: frozenset[str] | None = None  # None: every file of the version(s)
    strays: bool = True

    @classmethod
    def files(cls, version: str | None, keys) -> "Selection":
        return cls(version, frozenset(keys), strays=False)


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
