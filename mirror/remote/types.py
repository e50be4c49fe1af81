from __future__ import annotations

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
    parts_count: int | None = None  # from HEAD ?partNumber=1
    part_size: int | None = None  # the size of part 1, when asked for


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
