"""An "AWS-shaped" front for the sandbox: it answers the way AWS S3 and the proxies in front of
it do, which moto never does, so the tests meet what users meet.

moto (like SeaweedFS) frames every body with Content-Length and never redirects. In front of
it, this server re-frames its answers with h11 (server role) as the real world does:

- listings and error documents with `Transfer-Encoding: chunked` (AWS sends ListObjectsV2
  both ways, boto/botocore#2227), and a share of object bodies too (a proxy re-framing them);
- `100 Continue` and `103 Early Hints` before answers (RFC 9110 15.2: a client skips them);
- `Connection: close` on a share of answers (AWS closes connections at will);
- `307 Temporary Redirect` to a second listener for the first GET of each object;
- `301 PermanentRedirect` with `x-amz-bucket-region` for a bucket asked for in the wrong
  region: every request (`wrong_region`), or by the first path segment (`regions`, for the
  AWS addressing tests, where the client builds `/<region>/<bucket>/<key>` URLs).

With `intercept` (an ssl.SSLContext) it is also what many clusters put in the way: a
TLS-inspecting forward proxy. It takes `CONNECT host:443`, answers 200, and speaks TLS to the
client itself with a certificate of the site's own CA; inside, it serves AWS's host names
(`BUCKET.s3.REGION.amazonaws.com`, `s3.REGION.amazonaws.com/BUCKET`) from the sandbox, and a
wrong REGION gets the 301 AWS sends. The client never resolves or reaches an AWS name itself.

It listens on 127.0.0.1 only, runs its own loop in a thread, and is stopped by the test that
started it (a context manager). What reaches moto is counted, so a test can show the re-framed
run asked moto for exactly what a plain run asks.
"""

from __future__ import annotations

import asyncio
import collections
import random
import re
import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import aiohttp
import h11
from threaded import LoopThread

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection", "host",
       "content-length", "trailer"}


def error_doc(code: str, message: str, **extra: str) -> bytes:
    more = "".join(f"<{k}>{v}</{k}>" for k, v in extra.items())
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"{more}<RequestId>FRONT</RequestId></Error>").encode()


@dataclass
class AwsFront(LoopThread):
    upstream: str
    seed: int = 1
    chunk_listings: bool = True
    chunk_errors: bool = True
    chunk_objects: float = 0.0  # share of object GET bodies sent chunked
    informational: bool = True  # 100 Continue + 103 Early Hints before every answer
    close_rate: float = 0.0  # share of answers that end their connection
    redirect_first_get: bool = False  # 307 to the second listener, once per object path
    wrong_region: str | None = None  # every request: 301 PermanentRedirect naming this region
    regions: tuple[str, str] | None = None  # (the bucket's region, prefix routing): /<region>/... paths
    intercept: object = None  # an ssl.SSLContext: be a TLS-inspecting forward proxy for AWS names
    home_region: str = "us-west-2"  # with `intercept`: the region the bucket lives in
    counts: collections.Counter = field(default_factory=collections.Counter)
    upstream_requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._redirected: set[str] = set()
        self.tunnels: list[str] = []
        self._init_loop("awsfront")
        self.second_url = ""

    # --- lifecycle ---------------------------------------------------------------------------

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._servers = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()
        for second in (False, True):
            server = await asyncio.start_server(lambda r, w, s=second: self._connection(r, w, s), "127.0.0.1", 0)
            self._servers.append(server)
            url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            if second:
                self.second_url = url
            else:
                self.url = url

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for w in list(self._writers):
            w.close()
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._session.close()

    # --- HTTP/1.1, server side, by h11 ----------------------------------------------------------

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        """As a forward proxy: take the CONNECT, then speak TLS as the host asked for."""
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data:
                    return None
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                if event.method != b"CONNECT":
                    writer.write(conn.send(h11.Response(status_code=405, headers=[("Content-Length", "0")])))
                    return None
                authority = event.target.decode()
            if isinstance(event, h11.EndOfMessage):
                break
        self.counts["CONNECT"] += 1
        self.tunnels.append(authority)
        writer.write(conn.send(h11.Response(status_code=200, headers=[])))
        await writer.drain()
        await writer.start_tls(self.intercept)
        return authority

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, second: bool) -> None:
        self._writers.add(writer)
        self._tasks.add(asyncio.current_task())
        conn = h11.Connection(h11.SERVER)
        try:
            if self.intercept is not None and await self._tunnel(reader, writer) is None:
                return
            while True:
                request = None
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        conn.receive_data(data)
                        if not data:
                            return
                        continue
                    if isinstance(event, h11.ConnectionClosed):
                        return
                    if isinstance(event, h11.Request):
                        request = event
                    if isinstance(event, h11.EndOfMessage):
                        break
                close = await self._answer(conn, writer, request, second)
                if close or conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, ssl.SSLError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, method: str, status: int,
                    headers: list[tuple[str, str]], body: bytes, *, chunked: bool, close: bool) -> None:
        if self.informational:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            writer.write(conn.send(h11.InformationalResponse(status_code=103, headers=[("Link", "</x>; rel=preload")])))
            self.counts["informational"] += 2
        headers = list(headers)
        if close:
            headers.append(("Connection", "close"))
            self.counts["close"] += 1
        if method == "HEAD":
            pass  # the upstream's Content-Length (the object's size) is kept in `headers`
        elif chunked:
            headers.append(("Transfer-Encoding", "chunked"))
            self.counts["chunked"] += 1
        else:
            headers.append(("Content-Length", str(len(body))))
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
        if method != "HEAD" and body:
            if chunked:
                at = 0
                while at < len(body):  # chunks of uneven sizes, as a proxy passes them on
                    n = self._rng.randint(1, 9000)
                    writer.write(conn.send(h11.Data(data=body[at:at + n])))
                    at += n
            else:
                writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    # --- S3, as AWS shapes it ---------------------------------------------------------------------

    async def _moved(self, conn, writer, method: str, region: str, close: bool) -> bool:
        """S3's answer to a bucket asked for in the wrong region."""
        self.counts["301"] += 1
        body = error_doc("PermanentRedirect", "The bucket you are attempting to access must be addressed using "
                         "the specified endpoint.", Endpoint=f"s3.{region}.amazonaws.com")
        await self._send(conn, writer, method, 301, [("x-amz-bucket-region", region),
                                                     ("Content-Type", "application/xml")], body,
                         chunked=self.chunk_errors, close=close)
        return close

    async def _answer(self, conn, writer, request: h11.Request, second: bool) -> bool:
        method = request.method.decode()
        target = request.target.decode()
        parts = urlsplit(target)
        close = self._rng.random() < self.close_rate
        self.counts[("second" if second else "first", method)] += 1
        self.counts["via" if any(k.lower() == b"via" for k, _ in request.headers) else "direct"] += 1
        if self.wrong_region:
            return await self._moved(conn, writer, method, self.wrong_region, close)
        if self.intercept is not None:
            host = next(v.decode() for k, v in request.headers if k == b"host").rsplit(":", 1)[0]
            aws = re.fullmatch(r"(?:(?P<bucket>[a-z0-9.-]+)\.)?s3\.(?P<region>[a-z0-9-]+)\.amazonaws\.com", host)
            if aws is None:
                raise h11.LocalProtocolError(f"not an AWS S3 host: {host}")
            self.counts[("host", host)] += 1
            if aws["region"] != self.home_region:
                return await self._moved(conn, writer, method, self.home_region, close)
            if aws["bucket"]:  # virtual-hosted: the bucket is in the name, path-style upstream
                target = f"/{aws['bucket']}{target}"
        if self.regions is not None:
            home = self.regions[0]
            region, _, rest = parts.path.lstrip("/").partition("/")
            if region != home:
                return await self._moved(conn, writer, method, home, close)
            target = "/" + rest + (f"?{parts.query}" if parts.query else "")
        # What moto is asked for, path-style: /bucket/ (+ a listing's query) or /bucket/key.
        parts = urlsplit(target)
        query = parse_qs(parts.query, keep_blank_values=True)
        listing = "list-type" in query or "versions" in query or parts.path.rstrip("/").count("/") <= 1
        if (self.redirect_first_get and not second and method == "GET" and not listing
                and parts.path not in self._redirected):
            self._redirected.add(parts.path)
            self.counts["307"] += 1
            body = error_doc("TemporaryRedirect", "Please re-send this request to the specified temporary endpoint.")
            await self._send(conn, writer, method, 307, [("Location", self.second_url + target),
                                                         ("Content-Type", "application/xml")], body,
                             chunked=self.chunk_errors, close=close)
            return close
        headers = [(k.decode(), v.decode("latin-1")) for k, v in request.headers if k.decode().lower() not in HOP]
        self.upstream_requests.append((method, target))
        async with self._session.request(method, self.upstream + target, headers=headers,
                                         allow_redirects=False) as up:
            body = await up.read()
            out = [(k, v) for k, v in up.headers.items() if k.lower() not in HOP or
                   (method == "HEAD" and k.lower() == "content-length")]
            status = up.status
        if status >= 300:
            chunked = self.chunk_errors
        elif listing:
            chunked = self.chunk_listings
        else:
            chunked = self._rng.random() < self.chunk_objects
        await self._send(conn, writer, method, status, out, body, chunked=chunked, close=close)
        return close
