"""S3 access. Object bodies and listings travel by the lean transport (`http.py`: straight
into our buffers) or, with `--transport aiohttp`, by aiohttp; listings are parsed by
`listing.py`. HEAD goes through aiobotocore, created on first use (importing and configuring
botocore costs about half a second that most runs need not pay). Signed requests are signed
by botocore's SigV4 and sent by the same transport as anonymous ones."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import quote, urlencode

from ..errors import MirrorError, ProtocolError
from ..limits import Limits
from . import listing
from .http import BufferPool, HttpClient, Sink
from .ratelimit import TokenBucket
from .translate import from_exception, from_status
from .settings import TRANSPORTS, RemoteSettings, Timeouts  # noqa: F401 (re-exported)
from ..model import ObjectInfo, ObjectRef, strip_etag

class Remote:
    """One endpoint: a pool of connections for object bodies sized by `limits`, receive
    buffers shared by every GET, and (on first use) an aiobotocore client for the rest.
    Used as an async context manager."""

    LIST_PAGE_SIZE = 1000  # S3's maximum; tests make it small to walk many pages

    def __init__(self, settings: RemoteSettings, limits: Limits = Limits()) -> None:
        if settings.transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {settings.transport!r}")
        self.settings = settings
        self.limits = limits
        self.buffers = BufferPool(limits.receive_buffer, limits.buffers)
        self.bucket = TokenBucket(limits.bwlimit) if limits.bwlimit else None
        self._stack = contextlib.AsyncExitStack()
        self._http: HttpClient | None = None
        self._aiohttp = None
        self._s3 = None
        self._s3_lock: asyncio.Lock | None = None
        self._session = None
        self._credentials = None

    async def __aenter__(self) -> "Remote":
        self.open()
        return self

    def open(self) -> None:
        """Set up inside the running loop (nothing here awaits: it may also be done on first
        use, see remote.OnDemand)."""
        s, t = self.settings, self.settings.timeouts
        self.buffers.bind(asyncio.get_running_loop())
        self._s3_lock = asyncio.Lock()
        if s.transport == "lean":
            self._http = HttpClient(max_connections=self.limits.pool_size, connect_timeout=t.connect,
                                    read_timeout=t.read, min_rate=t.min_rate, rate_window=t.rate_window,
                                    straggler_factor=t.straggler_factor, straggler_window=t.straggler_window,
                                    bucket=self.bucket)
            self._http.start()
            self._stack.push_async_callback(self._http.close)
        else:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self.limits.pool_size, ttl_dns_cache=300)
            # sock_connect, not connect: aiohttp's `connect` also counts the wait for a free
            # connection of the pool, which is not the server's fault.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=t.read)
            self._aiohttp = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
            self._stack.push_async_callback(self._aiohttp.close)

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stack.aclose()

    def _translate(self, exc: BaseException, what: str):
        t = self.settings.timeouts
        return from_exception(exc, what=what, url=self.settings.base_url, connect_timeout=t.connect, read_timeout=t.read)

    # --- aiobotocore, on first use ----------------------------------------------------------

    def _botocore_session(self):
        if self._session is None:
            from aiobotocore.session import get_session

            self._session = get_session()
        return self._session

    async def _client(self):
        async with self._s3_lock:
            if self._s3 is None:
                from aiobotocore.config import AioConfig
                from botocore import UNSIGNED

                s, t = self.settings, self.settings.timeouts
                config = AioConfig(
                    signature_version=None if s.signed else UNSIGNED,
                    connect_timeout=t.connect,
                    read_timeout=t.read,
                    retries={"max_attempts": 1, "mode": "standard"},  # retries are ours (engine/policy.py)
                    max_pool_connections=self.limits.pool_size,
                    s3={"addressing_style": "path"},
                )
                self._s3 = await self._stack.enter_async_context(self._botocore_session().create_client(
                    "s3", region_name=s.region, endpoint_url=s.endpoint_url or f"https://s3.{s.region}.amazonaws.com",  # never botocore's own env lookup
                    config=config))
            return self._s3

    async def _sign(self, url: str, headers: dict[str, str]) -> dict[str, str]:
        """SigV4 headers for a GET of `url` with the credentials of the environment."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        if self._credentials is None:
            creds = await self._botocore_session().get_credentials()
            if creds is None:
                from ..errors import AccessDenied

                raise AccessDenied("--signed was given but no AWS credentials were found",
                                   hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or drop --signed")
            self._credentials = creds
        frozen = await self._credentials.get_frozen_credentials()
        request = AWSRequest(method="GET", url=url, headers=dict(headers))
        S3SigV4Auth(frozen, "s3", self.settings.region).add_auth(request)
        return dict(request.headers.items())

    # --- listing (our own requests and parser: botocore's shape-driven parser took ~0.4 ms
    # per entry, and creating its client ~0.5 s, which a no-op resync need not pay) ---------

    def _bucket_url(self, params: dict[str, str]) -> str:
        s = self.settings
        base = f"{s.base_url}/{s.bucket}" if s.endpoint_url else s.base_url
        return f"{base}/?" + urlencode(sorted(params.items()), quote_via=quote, safe="~-._")

    async def _document(self, url: str, what: str, *, limit: int = 64 << 20) -> bytes:
        """GET a small document (a listing page) whole, in memory."""
        data = bytearray()

        def sink(buf: bytearray, n: int) -> None:
            try:
                if len(data) + n > limit:
                    raise ProtocolError(f"{what}: answer larger than {limit} bytes")
                data.extend(memoryview(buf)[:n])
            finally:
                self.buffers.give(buf)

        try:
            headers = await self._sign(url, {}) if self.settings.signed else {}
            if self._http is not None:
                async with self._http.get(url, headers) as exchange:
                    r = exchange.response
                    if r.status != 200:
                        raise from_status(r.status, what=what, code=_error_code(await exchange.read_error_body()))
                    if r.length is None:
                        raise ProtocolError(f"{what}: the answer has no Content-Length",
                                            hint="this server frames bodies another way: try --transport aiohttp")
                    await exchange.read_into(sink, self.buffers, r.length)
            else:
                async with self._aiohttp.get(url, headers=headers) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise from_status(resp.status, what=what, code=_error_code(body[:4096]))
                    data += body
        except asyncio.CancelledError:
            raise
        except MirrorError:
            raise
        except Exception as exc:
            raise self._translate(exc, what) from exc
        return bytes(data)

    async def list_keys(self, prefix: str) -> list[ObjectInfo]:
        """Current objects under `prefix` (ListObjectsV2)."""
        out: list[ObjectInfo] = []
        what = f"list s3://{self.settings.bucket}/{prefix}"
        params = {"list-type": "2", "prefix": prefix, "encoding-type": "url", "max-keys": str(self.LIST_PAGE_SIZE)}
        while True:
            page = listing.parse(await self._document(self._bucket_url(params), what), what=what)
            out += page.objects
            if not page.truncated:
                return out
            if not page.continuation_token:
                raise ProtocolError(f"{what}: a truncated listing without a continuation token")
            params["continuation-token"] = page.continuation_token

    async def list_versions(self, prefix: str) -> dict[tuple[str, str], ObjectInfo]:
        """Every object version under `prefix`, keyed by (key, version_id).

        Sizes and ETags of a whole dataset come from one listing rather than a HEAD per
        file; callers list once per run.
        """
        out: dict[tuple[str, str], ObjectInfo] = {}
        what = f"list versions of s3://{self.settings.bucket}/{prefix}"
        params = {"versions": "", "prefix": prefix, "encoding-type": "url", "max-keys": str(self.LIST_PAGE_SIZE)}
        while True:
            page = listing.parse(await self._document(self._bucket_url(params), what), what=what)
            for info in page.objects:
                out[(info.key, info.version_id)] = info
            if not page.truncated:
                return out
            if page.next_key is None:
                raise ProtocolError(f"{what}: a truncated listing without a next key marker")
            marker = (page.next_key, page.next_version_id or "")
            if (params.get("key-marker"), params.get("version-id-marker", "")) == marker:
                raise ProtocolError(f"{what}: the listing does not advance past {marker[0]!r}")
            params["key-marker"] = page.next_key
            if page.next_version_id:
                params["version-id-marker"] = page.next_version_id
            else:
                params.pop("version-id-marker", None)

    async def head(self, ref: ObjectRef, *, part_number: int | None = None) -> ObjectInfo:
        """HEAD one version; with `part_number`, S3 answers the size of that part and the part
        count, which is how the real part size of a multipart ETag is learned."""
        kwargs = {"Bucket": ref.bucket, "Key": ref.key}
        if ref.version_id:
            kwargs["VersionId"] = ref.version_id
        if part_number is not None:
            kwargs["PartNumber"] = part_number
        try:
            r = await (await self._client()).head_object(**kwargs)
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
            part_size=size if part_number is not None else None,
        )

    # --- object bodies --------------------------------------------------------------------------

    async def get_into(self, ref: ObjectRef, sink: Sink, *, start: int = 0, end: int | None = None,
                       size: int | None = None, if_match: str | None = None, seen: dict | None = None) -> None:
        """Stream bytes [start, end) of one object version (the whole object when neither is
        given) into `sink`, in buffers from `self.buffers` that the sink gives back.

        A ranged request checks that the server answered 206 with exactly the range asked
        for; `if_match` makes S3 refuse (412) rather than serve another object's bytes; a
        whole-object answer must have `size` bytes when it is known. Bytes that arrived
        before a failure have been handed to the sink: retry from where it got to. `seen`, if
        given, receives the answer's headers (lower-case names).
        """
        ranged = start > 0 or end is not None
        headers: dict[str, str] = {}
        if ranged:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if if_match:
            headers["If-Match"] = f'"{if_match}"'
        url = self.settings.object_url(ref)
        what = f"GET s3://{ref.bucket}/{ref.key}" + (f" [{start}-{end})" if ranged else "")
        try:
            if self.settings.signed:
                headers = await self._sign(url, headers)
            if self._http is not None:
                await self._get_lean(url, headers, sink, what=what, ref=ref, ranged=ranged, start=start, end=end,
                                     size=size, seen=seen)
            else:
                await self._get_aiohttp(url, headers, sink, what=what, ref=ref, ranged=ranged, start=start, end=end,
                                        size=size, seen=seen)
        except asyncio.CancelledError:
            raise
        except MirrorError:
            raise
        except Exception as exc:
            raise self._translate(exc, what) from exc

    async def _get_lean(self, url, headers, sink, *, what, ref, ranged, start, end, size, seen) -> None:
        async with self._http.get(url, headers) as exchange:
            r = exchange.response
            if seen is not None:
                seen.update(r.headers)
            if r.status not in (200, 206):
                raise from_status(r.status, what=what, code=_error_code(await exchange.read_error_body()))
            length = r.length
            if length is None:
                raise ProtocolError(f"{what}: the answer has no Content-Length",
                                    hint="this server frames bodies another way: try --transport aiohttp")
            _check_answer(r.status, r.headers.get("content-range"), length, r.headers.get("x-amz-version-id"),
                          ref=ref, ranged=ranged, start=start, end=end, size=size, what=what)
            await exchange.read_into(sink, self.buffers, length)

    async def _get_aiohttp(self, url, headers, sink, *, what, ref, ranged, start, end, size, seen) -> None:
        resp = await self._aiohttp.get(url, headers=headers)
        try:
            if seen is not None:
                seen.update((k.lower(), v) for k, v in resp.headers.items())
            if resp.status not in (200, 206):
                body = b""
                with contextlib.suppress(Exception):
                    body = await resp.content.read(4096)
                raise from_status(resp.status, what=what, code=_error_code(body))
            length = resp.headers.get("Content-Length")
            _check_answer(resp.status, resp.headers.get("Content-Range"), int(length) if length else None,
                          resp.headers.get("x-amz-version-id"), ref=ref, ranged=ranged, start=start, end=end,
                          size=size, what=what)
            await _copy_into_buffers(resp.content, sink, self.buffers, self.bucket)
        finally:
            resp.release()

    async def read_all(self, ref: ObjectRef, *, limit: int = 512 << 20, seen: dict | None = None) -> bytes:
        """A whole small object (a manifest, a metadata table) in memory; `seen` as in get_into."""
        data = bytearray()

        def sink(buf: bytearray, n: int) -> None:
            try:
                if len(data) + n > limit:
                    raise ProtocolError(f"s3://{ref.bucket}/{ref.key} is larger than {limit} bytes")
                data.extend(memoryview(buf)[:n])
            finally:
                self.buffers.give(buf)

        await self.get_into(ref, sink, seen=seen)
        return bytes(data)


async def _copy_into_buffers(content, sink: Sink, pool: BufferPool, bucket: TokenBucket | None = None) -> None:
    """aiohttp hands over its own chunks: copy them into pool buffers for the sink (the extra
    copy is this transport's price)."""
    loop = asyncio.get_running_loop()
    buf: bytearray | None = None
    fill = 0
    try:
        while True:
            chunk, _ = await content.readchunk()
            if not chunk:
                if content.at_eof():
                    break
                continue
            if bucket is not None:
                await bucket.wait(len(chunk))
            view = memoryview(chunk)
            while view:
                if buf is None:
                    buf = pool.take()
                    if buf is None:
                        waiter = loop.create_future()
                        pool.wait(waiter.set_result)
                        try:
                            buf = await waiter
                        except asyncio.CancelledError:
                            pool.cancel_wait(waiter.set_result)
                            if waiter.done() and not waiter.cancelled():
                                pool.give(waiter.result())
                            raise
                    fill = 0
                n = min(len(view), len(buf) - fill)
                buf[fill:fill + n] = view[:n]
                fill += n
                view = view[n:]
                if fill == len(buf):
                    out, buf = buf, None
                    sink(out, fill)
    finally:
        if buf is not None:
            if fill:
                sink(buf, fill)  # what arrived is good; the caller resumes after it
            else:
                pool.give(buf)


def _error_code(body: bytes) -> str | None:
    if b"<Code>" in body:
        return body.split(b"<Code>", 1)[1].split(b"</Code>", 1)[0].decode(errors="replace") or None
    return None


def _check_answer(status, content_range, content_length, version_id, *, ref, ranged, start, end, size, what) -> None:
    if ref.version_id and version_id not in (None, ref.version_id):
        raise ProtocolError(f"{what}: server answered version {version_id}, not {ref.version_id}")
    if not ranged:
        if status != 200:
            raise ProtocolError(f"{what}: expected HTTP 200, got {status}")
        if size is not None and content_length is not None and content_length != size:
            raise ProtocolError(f"{what}: the server sends {content_length} bytes, the object has {size}")
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

