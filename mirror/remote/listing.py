"""S3 listing pages (ListObjectsV2, ListObjectVersions) → our ObjectInfo, with ElementTree.

About 15 µs per entry, where botocore's generic parser took ~10x more: the listing of a
release (~6,000 files x 6 versions) is parsed in well under a second.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from ..errors import ProtocolError
from ..model import ObjectInfo, strip_etag


@dataclass
class Page:
    objects: list[ObjectInfo] = field(default_factory=list)
    truncated: bool = False
    continuation_token: str | None = None  # ListObjectsV2
    next_key: str | None = None  # ListObjectVersions
    next_version_id: str | None = None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse(data: bytes, *, what: str) -> Page:
    """One page of either listing. Keys are URL-decoded when the server says it encoded them
    (we ask for `encoding-type=url`: keys may hold characters XML cannot carry). Form-style, as
    botocore decodes them: a space may come as `+` (SeaweedFS's ListObjectsV2 does so) or
    `%20`, and a real `+` always comes as `%2B`."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ProtocolError(f"{what}: the listing is not well-formed XML ({exc})") from None
    kind = _local(root.tag)
    if kind not in ("ListBucketResult", "ListVersionsResult"):
        raise ProtocolError(f"{what}: unexpected listing document <{kind}>")
    ns = root.tag[:-len(kind)]
    encoded = (root.findtext(f"{ns}EncodingType") or "").lower() == "url"
    key_of = unquote_plus if encoded else (lambda k: k)
    page = Page(truncated=(root.findtext(f"{ns}IsTruncated") or "").strip().lower() == "true")
    entry_tag = f"{ns}Contents" if kind == "ListBucketResult" else f"{ns}Version"
    k_tag, v_tag, s_tag, e_tag = f"{ns}Key", f"{ns}VersionId", f"{ns}Size", f"{ns}ETag"
    try:
        for el in root.iter(entry_tag):
            key = el.findtext(k_tag)
            if key is None:
                raise ProtocolError(f"{what}: a listing entry without a Key")
            vid = el.findtext(v_tag) if kind == "ListVersionsResult" else None
            page.objects.append(ObjectInfo(key_of(key), vid, int(el.findtext(s_tag) or "x"),
                                           strip_etag(el.findtext(e_tag))))
    except ValueError:
        raise ProtocolError(f"{what}: a listing entry with a bad Size") from None
    if kind == "ListBucketResult":
        page.continuation_token = root.findtext(f"{ns}NextContinuationToken") or None
    else:
        nk = root.findtext(f"{ns}NextKeyMarker")
        page.next_key = key_of(nk) if nk else None
        page.next_version_id = root.findtext(f"{ns}NextVersionIdMarker") or None
    return page
