"""S3 access: every request of a run (object GETs, HEADs, listings) goes through one
transport and one `_call`, so proxies, CA bundles, addressing, redirects and errors never
differ between them. The transport is the lean client (`http.py`: bodies straight into our
buffers, framing by h11) or, with `--transport aiohttp`, aiohttp; listings are parsed by
`listing.py`. botocore only signs (SigV4, with `--signed`), and aiobotocore only finds the
credentials (its providers are async: instance metadata, SSO, ...)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import warnings
from typing import Callable
from urllib.parse import quote, urlencode, urljoin, urlsplit

from ..errors import MirrorError, ProtocolError, Redirected, RegionWarning, WrongRegion
from ..limits import Limits
from . import listing
from .http import HttpClient
from .wire import ERROR_BODY_MAX, BufferPool, ProxyFailed, Response, Sink, framing_of, xml_text
from .netenv import ProxyConfig, host_header, proxy_config
from .ratelimit import TokenBucket
from .translate import from_exception, from_status
from .settings import TRANSPORTS, RemoteSettings, Timeouts  # noqa: F401 (re-exported)
from ..model import ObjectInfo, ObjectRef, strip_etag

_REBUILD = object()  # a redirect to the bucket's own region: build the URL again
_REDIRECTS = (301, 302, 303, 307, 308)


class Remote:
    """One endpoint: a pool of connections sized by `limits`, receive buffers shared by every
    GET, the proxy and TLS settings of the environment. Used as an async context manager."""

    LIST_PAGE_SIZE = 1000  # S3's maximum; tests make it small to walk many pages

    def __init__(self, settings: RemoteSettings, limits: Limits = Limits()) -> None:
        if settings.transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {settings.transport!r}")
        self.settings = settings
        self.limits = limits
        self.buffers = BufferPool(limits.receive_buffer, limits.buffers)
        self.bucket = TokenBucket(limits.bwlimit) if limits.bwlimit else None
        self.proxies = proxy_config(settings.proxy)
        self._stack = contextlib.AsyncExitStack()
        self._http: HttpClient | None = None
        self._transport = None
        self._session = None
        self._credentials = None

    async def __aenter__(self) -> "Remote":
        self.open()
        return self

    def open(self) -> None:
        """Set up inside the running loop (nothing here awaits: it may also be done on first
        use, see remote.OnDemand)."""
        t = self.settings.timeouts
        self.buffers.bind(asyncio.get_running_loop())
        if self.settings.transport == "lean":
            self._http = HttpClient(max_connections=self.limits.pool_size, connect_timeout=t.connect,
                                    read_timeout=t.read, min_rate=t.min_rate, rate_window=t.rate_window,
                                    straggler_factor=t.straggler_factor, straggler_window=t.straggler_window,
                                    bucket=self.bucket, proxies=self.proxies)
            self._http.start()
            self._stack.push_async_callback(self._http.close)
            self._transport = _Lean(self._http)
        else:
            self._transport = _Aiohttp(self.limits.pool_size, t, self.proxies, self.bucket)
            self._stack.push_async_callback(self._transport.close)

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stack.aclose()

    @property
    def opened(self) -> int:
        """Connections opened so far (lean transport), for tests and stats."""
        return self._http.opened if self._http is not None else 0

    def _translate(self, exc: BaseException, what: str):
        t = self.settings.timeouts
        return from_exception(exc, what=what, url=self.settings.base_url, connect_timeout=t.connect,
                              read_timeout=t.read, proxied=self._proxied())

    def _proxied(self) -> str | None:
        """The proxy requests to the endpoint go through, as users name it (for messages)."""
        try:
            proxy = self.proxies.for_url(self.settings.base_url)
        except (ValueError, MirrorError):  # a bad port, or an unusable proxy setting: said where it is used
            return None
        return f"{proxy.url} (from {proxy.source})" if proxy else None

    # --- signing -------------------------------------------------------------------------------

    async def _sign(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        """SigV4 headers for `method url` with the credentials of the environment; the Host
        header in `headers` is the one that will be sent, so the signature covers it."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        if self._credentials is None:
            if self._session is None:
                from aiobotocore.session import get_session

                self._session = get_session()
            creds = await self._session.get_credentials()
            if creds is None:
                from ..errors import AccessDenied

                raise AccessDenied("--signed was given but no AWS credentials were found",
                                   hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or drop --signed")
            self._credentials = creds
        frozen = await self._credentials.get_frozen_credentials()
        request = AWSRequest(method=method, url=url, headers=dict(headers))
        S3SigV4Auth(frozen, "s3", self.settings.region).add_auth(request)
        return dict(request.headers.items())

    # --- the one way every request goes ------------------------------------------------------

    async def _call(self, method: str, build: Callable[[RemoteSettings], str], headers: dict[str, str], *,
                    what: str, sink: Sink | None = None,
                    check: Callable[[Response], int | None] | None = None) -> Response:
        """Send one request and return its 2xx answer (its body streamed into `sink` once
        `check` accepted the head and said how many bytes must come). A redirect is
        followed at most once: to the bucket's region for AWS (then kept for the run), or to
        a Location; every other answer becomes our error kind."""
        settings = self.settings
        url = build(settings)
        hopped = False
        try:
            while True:
                parts = urlsplit(url)
                send = {"Host": host_header(parts.scheme, parts.hostname or "", parts.port), **headers}
                if settings.signed:
                    send = await self._sign(method, url, send)
                r = await self._transport.request(method, url, send, sink=sink, pool=self.buffers, check=check)
                if 200 <= r.status < 300:
                    return r
                where = self._redirect(r, url, settings, what)
                if where is None:
                    raise from_status(r.status, what=what, code=r.error_code, proxied=self._proxied())
                if hopped:
                    raise Redirected(f"{what}: redirected again (HTTP {r.status}) after following one redirect",
                                     hint="check --endpoint-url: vbo-mirror follows one redirect per request")
                hopped = True
                if where is _REBUILD:
                    settings = self.settings
                    url = build(settings)
                else:
                    url = where
        except asyncio.CancelledError:
            raise
        except MirrorError:
            raise
        except Exception as exc:
            raise self._translate(exc, what) from exc

    def _redirect(self, r: Response, url: str, used: RemoteSettings, what: str):
        """Where a 3xx (or a 400 naming the region) sends this request: _REBUILD, a URL, None
        when it is not a redirect, or an error when it cannot be followed."""
        region = r.headers.get("x-amz-bucket-region") or xml_text(r.error_body, "Region")
        code = r.error_code
        said = f"HTTP {r.status}{' ' + code if code else ''}"
        if region and region != used.region and (r.status in _REDIRECTS or r.status == 400):
            if used.endpoint_url:
                raise WrongRegion(f"{what}: {used.endpoint_url} says s3://{used.bucket} is in region {region} ({said})",
                                  hint=f"use --endpoint-url https://s3.{region}.amazonaws.com, or leave "
                                       f"--endpoint-url out (vbo-mirror then finds the region itself)")
            if self.settings.region == used.region:
                warnings.warn(f"s3://{used.bucket} is in region {region}, not {used.region} as the dataset file "
                              f"says: following it for the rest of this run", RegionWarning, stacklevel=2)
                self.settings = dataclasses.replace(self.settings, region=region)
            return _REBUILD
        if r.status not in _REDIRECTS:
            return None
        location = r.headers.get("location")
        if not location:
            raise Redirected(f"{what}: redirected ({said}) without a Location or a region to follow",
                             hint="check --endpoint-url and the dataset's region")
        target = urljoin(url, location)
        scheme = urlsplit(target).scheme
        if scheme not in ("http", "https") or (scheme == "http" and url.startswith("https:")):
            raise Redirected(f"{what}: refused a redirect ({said}) from {url.split('?')[0]} to {target!r}",
                             hint="vbo-mirror never follows https to http, nor to other schemes")
        return target

    # --- listing (our own requests and parser: botocore's shape-driven parser took ~0.4 ms
    # per entry, and creating its client ~0.5 s, which a no-op resync need not pay) ---------

    def _bucket_url(self, params: dict[str, str]) -> Callable[[RemoteSettings], str]:
        query = urlencode(sorted(params.items()), quote_via=quote, safe="~-._")
        return lambda s: f"{s.bucket_url(s.bucket)}/?{query}"

    async def _document(self, build: Callable[[RemoteSettings], str], what: str, *, limit: int = 64 << 20) -> bytes:
        """GET a small document (a listing page) whole, in memory, however it is framed."""
        data, sink = self._in_memory(limit, f"{what}: answer larger than {limit} bytes")
        await self._call("GET", build, {}, what=what, sink=sink, check=lambda r: r.length)
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
        params = {"partNumber": str(part_number)} if part_number is not None else {}
        what = f"HEAD s3://{ref.bucket}/{ref.key}"
        r = await self._call("HEAD", lambda s: s.object_url(ref, **params), {}, what=what)
        try:
            size = int(r.headers.get("content-length", ""))
        except ValueError:
            raise ProtocolError(f"{what}: the answer has no usable Content-Length") from None
        version = r.headers.get("x-amz-version-id")
        if ref.version_id and version not in (None, ref.version_id):
            raise ProtocolError(f"{what}: server answered version {version}, not {ref.version_id}")
        return ObjectInfo(
            ref.key,
            version or ref.version_id,
            size if part_number is None else -1,
            strip_etag(r.headers.get("etag")),
            part_size=size if part_number is not None else None,
        )

    # --- object bodies --------------------------------------------------------------------------

    async def get_into(self, ref: ObjectRef, sink: Sink, *, start: int = 0, end: int | None = None,
                       size: int | None = None, if_match: str | None = None, seen: dict | None = None) -> None:
        """Stream bytes [start, end) of one object version (the whole object when neither is
        given) into `sink`, in buffers from `self.buffers` that the sink gives back.

        A ranged request checks that the server answered 206 with exactly the range asked
        for; `if_match` makes S3 refuse (412) rather than serve another object's bytes; a
        whole-object answer must have `size` bytes when it is known, however it is framed.
        Bytes that arrived before a failure have been handed to the sink: retry from where it
        got to. `seen`, if given, receives the answer's headers (lower-case names).
        """
        ranged = start > 0 or end is not None
        headers: dict[str, str] = {}
        if ranged:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if if_match:
            headers["If-Match"] = f'"{if_match}"'
        what = f"GET s3://{ref.bucket}/{ref.key}" + (f" [{start}-{end})" if ranged else "")

        def check(r: Response) -> int | None:
            if seen is not None:
                seen.update(r.headers)
            return _check_answer(r.status, r.headers.get("content-range"), r.length, r.headers.get("x-amz-version-id"),
                                 ref=ref, ranged=ranged, start=start, end=end, size=size, what=what)

        await self._call("GET", lambda s: s.object_url(ref), headers, what=what, sink=sink, check=check)

    async def read_all(self, ref: ObjectRef, *, limit: int = 512 << 20, seen: dict | None = None) -> bytes:
        """A whole small object (a manifest, a metadata table) in memory; `seen` as in get_into."""
        data, sink = self._in_memory(limit, f"s3://{ref.bucket}/{ref.key} is larger than {limit} bytes")
        await self.get_into(ref, sink, seen=seen)
        return bytes(data)

    def _in_memory(self, limit: int, too_large: str) -> tuple[bytearray, Sink]:
        """A sink that collects a small body in memory (giving each buffer back), refusing more
        than `limit` bytes with `too_large`."""
        data = bytearray()

        def sink(buf: bytearray, n: int) -> None:
            try:
                if len(data) + n > limit:
                    raise ProtocolError(too_large)
                data.extend(memoryview(buf)[:n])
            finally:
                self.buffers.give(buf)

        return data, sink


# --- transports: one `request` each --------------------------------------------------------------


class _Lean:
    def __init__(self, http: HttpClient) -> None:
        self.http = http

    async def request(self, method: str, url: str, headers: dict[str, str], *, sink: Sink | None,
                      pool: BufferPool, check) -> Response:
        async with self.http.request(method, url, headers) as exchange:
            r = exchange.response
            if not 200 <= r.status < 300:
                return dataclasses.replace(r, error_body=await exchange.read_error_body(), url=url)
            expect = check(r) if check is not None else None
            if sink is not None:
                await exchange.read_into(sink, pool, expect)
            return r


class _Aiohttp:
    """aiohttp, told the same things as the lean client: our proxy choice (not its own reading
    of the environment), our TLS context, no redirects of its own."""

    def __init__(self, pool_size: int, t: Timeouts, proxies: ProxyConfig, bucket: TokenBucket | None) -> None:
        import aiohttp

        from .netenv import ssl_context

        self.proxies = proxies
        self.bucket = bucket
        self.ssl = ssl_context()
        connector = aiohttp.TCPConnector(limit=pool_size, ttl_dns_cache=300, ssl=self.ssl)
        # sock_connect, not connect: aiohttp's `connect` also counts the wait for a free
        # connection of the pool, which is not the server's fault.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=t.read)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                             trust_env=False, skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        await self.session.close()

    async def request(self, method: str, url: str, headers: dict[str, str], *, sink: Sink | None,
                      pool: BufferPool, check) -> Response:
        import aiohttp

        proxy = self.proxies.for_url(url)
        kwargs = {}
        if proxy is not None:
            kwargs["proxy"] = proxy.url
            if proxy.auth:
                kwargs["proxy_headers"] = {"Proxy-Authorization": proxy.auth}
        try:
            async with self.session.request(method, url, headers={"User-Agent": "vbo-mirror", **headers},
                                            allow_redirects=False, **kwargs) as resp:
                names: dict[str, str] = {}
                for k, v in resp.headers.items():
                    k = k.lower()
                    names[k] = f"{names[k]}, {v}" if k in names else v
                framing, length = framing_of(method, resp.status, names)
                r = Response(resp.status, names, resp.reason or "", framing, length, url=url)
                if not 200 <= resp.status < 300:
                    body = b""
                    with contextlib.suppress(Exception):
                        body = await resp.content.read(ERROR_BODY_MAX)
                    return dataclasses.replace(r, error_body=body)
                expect = check(r) if check is not None else None
                if sink is not None and framing != "none":
                    got = await _copy_into_buffers(resp.content, sink, pool, self.bucket, limit=expect)
                    if expect is not None and got != expect:
                        raise ProtocolError(f"the body has {got} bytes, {expect} were announced")
                return r
        except aiohttp.ClientHttpProxyError as exc:
            raise ProxyFailed(f"the proxy {proxy.url} (from {proxy.source}) refused the tunnel: HTTP {exc.status} "
                              f"{exc.message}", proxy, exc.status) from exc
        except aiohttp.ClientProxyConnectionError as exc:
            raise ProxyFailed(f"cannot reach the proxy {proxy.url} (from {proxy.source}): {exc}", proxy) from exc


async def _copy_into_buffers(content, sink: Sink, pool: BufferPool, bucket: TokenBucket | None = None, *,
                             limit: int | None = None) -> int:
    """aiohttp hands over its own chunks: copy them into pool buffers for the sink (the extra
    copy is this transport's price). Returns the bytes copied; never more than `limit` reach
    the sink (the excess of a longer body would land on another part's range: it is dropped,
    and the connection with it)."""
    loop = asyncio.get_running_loop()
    buf: bytearray | None = None
    fill = 0
    total = 0
    try:
        while True:
            chunk, _ = await content.readchunk()
            if not chunk:
                if content.at_eof():
                    break
                continue
            if bucket is not None:
                await bucket.wait(len(chunk))
            if limit is not None and total + len(chunk) > limit:
                chunk = chunk[:limit - total]
                total = limit
                over = True
            else:
                total += len(chunk)
                over = False
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
            if over:
                break
    finally:
        if buf is not None:
            if fill:
                sink(buf, fill)  # what arrived is good; the caller resumes after it
            else:
                pool.give(buf)
    return total


def _check_answer(status, content_range, content_length, version_id, *, ref, ranged, start, end, size,
                  what) -> int | None:
    """Refuse an answer that is not the bytes asked for; return how many body bytes it must
    carry (whatever its framing), or None when that is not known."""
    if ref.version_id and version_id not in (None, ref.version_id):
        raise ProtocolError(f"{what}: server answered version {version_id}, not {ref.version_id}")
    if not ranged:
        if status != 200:
            raise ProtocolError(f"{what}: expected HTTP 200, got {status}")
        if size is not None and content_length is not None and content_length != size:
            raise ProtocolError(f"{what}: the server sends {content_length} bytes, the object has {size}")
        return size if size is not None else content_length
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
    return last - first + 1
