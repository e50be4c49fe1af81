"""S3 access: listing and HEAD through aiobotocore, data GETs through aiohttp (anonymous URL +
`?versionId=`) or aiobotocore when signing is asked for."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import AsyncIterator
from urllib.parse import quote

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import UNSIGNED

from ..errors import ProtocolError
from .translate import from_exception, from_status
from .types import ObjectInfo, ObjectRef, strip_etag

CHUNK = 1 << 20  # bytes handed up per read: large enough to keep per-chunk overhead small


@dataclass(frozen=True)
class Timeouts:
    """Every timeout is configurable: AllenSDK's fixed ones are a known pain on slow links."""

    connect: float = 10.0
    read: float = 60.0  # between two reads of a response body


@dataclass(frozen=True)
class RemoteSettings:
    bucket: str
    region: str
    endpoint_url: str | None = None  # overrides the host; bucket and key are kept
    signed: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_connections: int = 16

    @property
    def base_url(self) -> str:
        if self.endpoint_url:
            return self.endpoint_url.rstrip("/")
        return f"https://{self.bucket}.s3.{self.region}.amazonaws.com"

    def object_url(self, ref: ObjectRef) -> str:
        """The object's URL with its version. AWS gets the virtual-hosted form the manifests
        use; a user-given endpoint keeps bucket and key, path-style, under its own host."""
        key = quote(ref.key, safe="/~-._")
        if self.endpoint_url:
            url = f"{self.base_url}/{ref.bucket}/{key}"
        else:
            url = f"https://{ref.bucket}.s3.{self.region}.amazonaws.com/{key}"
        if ref.version_id:
            url += f"?versionId={quote(ref.version_id, safe='')}"
        return url


class Remote:
    """One connection pool to one S3 endpoint, used as an async context manager."""

    def __init__(self, settings: RemoteSettings) -> None:
        self.settings = settings
        self._stack = contextlib.AsyncExitStack()
        self._http: aiohttp.ClientSession | None = None
        self._s3 = None

    async def __aenter__(self) -> "Remote":
        s = self.settings
        connector = aiohttp.TCPConnector(limit=s.max_connections, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=None, connect=s.timeouts.connect, sock_read=s.timeouts.read)
        self._http = await self._stack.enter_async_context(
            aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
        )
        config = AioConfig(
            signature_version=None if s.signed else UNSIGNED,
            connect_timeout=s.timeouts.connect,
            read_timeout=s.timeouts.read,
            retries={"max_attempts": 1, "mode": "standard"},  # retries are ours (engine/retry.py)
            max_pool_connections=s.max_connections,
            s3={"addressing_style": "path"},
        )
        self._s3 = await self._stack.enter_async_context(
            get_session().create_client("s3", region_name=s.region, endpoint_url=s.endpoint_url or None, config=config)
        )
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._stack.aclose()

    def _translate(self, exc: BaseException, what: str):
        t = self.settings.timeouts
        return from_exception(exc, what=what, url=self.settings.base_url, connect_timeout=t.connect, read_timeout=t.read)

    # --- listing and metadata (aiobotocore) ----------------------------------------------

    async def list_keys(self, prefix: str) -> list[ObjectInfo]:
        """Current objects under `prefix` (ListObjectsV2)."""
        out: list[ObjectInfo] = []
        what = f"list s3://{self.settings.bucket}/{prefix}"
        try:
            paginator = self._s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.settings.bucket, Prefix=prefix):
                for o in page.get("Contents", []):
                    out.append(ObjectInfo(o["Key"], None, int(o["Size"]), strip_etag(o.get("ETag"))))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._translate(exc, what) from exc
        return out

    async def list_versions(self, prefix: str) -> dict[tuple[str, str], ObjectInfo]:
        """Every object version under `prefix`, keyed by (key, version_id).

        Sizes and ETags of a whole dataset come from one listing rather than a HEAD per
        file; callers list once per run.
        """
        out: dict[tuple[str, str], ObjectInfo] = {}
        what = f"list versions of s3://{self.settings.bucket}/{prefix}"
        try:
            paginator = self._s3.get_paginator("list_object_versions")
            async for page in paginator.paginate(Bucket=self.settings.bucket, Prefix=prefix):
                for v in page.get("Versions", []):
                    info = ObjectInfo(v["Key"], v["VersionId"], int(v["Size"]), strip_etag(v.get("ETag")))
                    out[(info.key, info.version_id)] = info
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._translate(exc, what) from exc
        return out

    async def head(self, ref: ObjectRef, *, part_number: int | None = None) -> ObjectInfo:
        """HEAD one version; with `part_number`, S3 answers the size of that part and the part
        count, which is how the real part size of a multipart ETag is learned."""
        kwargs = {"Bucket": ref.bucket, "Key": ref.key}
        if ref.version_id:
            kwargs["VersionId"] = ref.version_id
        if part_number is not None:
            kwargs["PartNumber"] = part_number
        try:
            r = await self._s3.head_object(**kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._translate(exc, f"HEAD s3://{ref.bucket}/{ref.key}") from exc
        size = int(r["ContentLength"])
        return ObjectInfo(
            ref.key,
            r.get("VersionId", ref.version_id),
            size if part_number is None else -1,
            strip_etag(r.get("ETag")),
            parts_count=r.get("PartsCount"),
            part_size=size if part_number is not None else None,
        )

    # --- data ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open_range(
        self, ref: ObjectRef, *, start: int = 0, end: int | None = None, if_match: str | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream bytes [start, end) of one object version.

        A ranged request checks that the server answered 206 with exactly the range asked
        for; `if_match` makes S3 refuse (412) rather than serve another object's bytes.
        """
        ranged = start > 0 or end is not None
        headers = {}
        if ranged:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if if_match:
            headers["If-Match"] = f'"{if_match}"'
        url = self.settings.object_url(ref)
        what = f"GET s3://{ref.bucket}/{ref.key}" + (f" [{start}-{end})" if ranged else "")
        if self.settings.signed:
            async with self._signed_get(ref, headers, what, ranged, start, end) as chunks:
                yield chunks
            return
        try:
            resp = await self._http.get(url, headers=headers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._translate(exc, what) from exc
        try:
            if resp.status not in (200, 206):
                code = None
                with contextlib.suppress(Exception):
                    body = await resp.content.read(4096)
                    if b"<Code>" in body:
                        code = body.split(b"<Code>", 1)[1].split(b"</Code>", 1)[0].decode()
                raise from_status(resp.status, what=what, code=code)
            _check_range(resp.status, resp.headers.get("Content-Range"), resp.headers.get("Content-Length"),
                         ranged=ranged, start=start, end=end, what=what)
            if ref.version_id and resp.headers.get("x-amz-version-id") not in (None, ref.version_id):
                raise ProtocolError(f"{what}: server answered version {resp.headers['x-amz-version-id']}, not {ref.version_id}")
            yield self._iter_aiohttp(resp, what)
        finally:
            resp.release()

    async def _iter_aiohttp(self, resp: aiohttp.ClientResponse, what: str) -> AsyncIterator[bytes]:
        try:
            # readchunk hands over the buffers as they came off the socket, without the join
            # that read(n) does; the engine gathers them into its own write batches.
            content = resp.content
            while True:
                chunk, _ = await content.readchunk()
                if not chunk:
                    if content.at_eof():
                        return
                    continue
                yield chunk
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._translate(exc, what) from exc

    @contextlib.asynccontextmanager
    async def _signed_get(self, ref, headers, what, ranged, start, end):
        kwargs = {"Bucket": ref.bucket, "Key": ref.key}
        if ref.version_id:
            kwargs["VersionId"] = ref.version_id
        if "Range" in headers:
            kwargs["Range"] = headers["Range"]
        if "If-Match" in headers:
            kwargs["IfMatch"] = headers["If-Match"]
        try:
            r = await self._s3.get_object(**kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._translate(exc, what) from exc
        status = r["ResponseMetadata"]["HTTPStatusCode"]
        body = r["Body"]
        try:
            _check_range(status, r.get("ContentRange"), r.get("ContentLength"), ranged=ranged, start=start, end=end, what=what)

            async def chunks():
                try:
                    while chunk := await body.read(CHUNK):
                        yield chunk
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise self._translate(exc, what) from exc

            yield chunks()
        finally:
            body.close()

    async def read_all(self, ref: ObjectRef, *, limit: int = 512 << 20) -> bytes:
        """A whole small object (a manifest, a metadata table) in memory."""
        buf = bytearray()
        async with self.open_range(ref) as chunks:
            async for chunk in chunks:
                buf += chunk
                if len(buf) > limit:
                    raise ProtocolError(f"s3://{ref.bucket}/{ref.key} is larger than {limit} bytes")
        return bytes(buf)


def _check_range(status, content_range, content_length, *, ranged, start, end, what) -> None:
    if not ranged:
        if status != 200:
            raise ProtocolError(f"{what}: expected HTTP 200, got {status}")
        return
    if status != 206 or not content_range:
        raise ProtocolError(f"{what}: expected 206 with Content-Range, got {status} {content_range!r}")
    try:
        unit, _, rest = content_range.partition(" ")
        span, _, _total = rest.partition("/")
        first, _, last = span.partition("-")
        first, last = int(first), int(last)
    except ValueError:
        raise ProtocolError(f"{what}: malformed Content-Range {content_range!r}") from None
    if unit != "bytes" or first != start or (end is not None and last != end - 1):
        raise ProtocolError(f"{what}: server sent range {content_range!r}, asked for {start}-{'' if end is None else end - 1}")
    if content_length is not None and int(content_length) != last - first + 1:
        raise ProtocolError(f"{what}: Content-Length {content_length} does not match Content-Range {content_range!r}")
