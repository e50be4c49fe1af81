"""How downloads are checked: a small enum, importable without the engine."""

from __future__ import annotations

import enum


class Verify(enum.Enum):
    """What a download is checked against before it is published."""

    MANIFEST = "manifest"  # BLAKE2b of the manifest (authoritative)
    ETAG = "etag"  # the S3 ETag only (MD5, or MD5 of part MD5s)
    ALL = "all"  # both
    NONE = "none"  # size only (the content-addressed name is then taken on trust)

    @property
    def blake2b(self) -> bool:
        return self in (Verify.MANIFEST, Verify.ALL)

    @property
    def etag(self) -> bool:
        return self in (Verify.ETAG, Verify.ALL)
