"""A lean HTTP/1.1 client whose response bodies land straight in our own large buffers.

Why not aiohttp for the bytes: for every socket read aiohttp copies the data into a new
`bytes`, runs its parser, feeds a StreamReader and reschedules a timer, all holding the GIL;
at hundreds of MB/s that per-read work, not hashing, bounded a sync (py-spy, RESULTS.md).
Here an `asyncio.BufferedProtocol` (uvloop) lets the kernel copy each body straight into a
recycled buffer of a MiB or more; Python runs two tiny calls per socket read and hands a
buffer over only when it is full. Timeouts cost nothing per read either: one watchdog tick
per client compares byte counters.

What HTTP/1.1 says is h11's job, not ours: every request is written by h11 and every answer
head parsed by it (1xx skipped, obsolete line folding, strict and duplicate Content-Length,
header size), so this module only decides where the bytes go. A body framed by Content-Length
(S3's objects) skips h11 and is received in place; any other framing (chunked, as AWS sends
listings and error documents and as proxies re-frame, or delimited by the close) is decoded by
h11 and copied into the same buffers: slower, with the same guarantees above it.

Proxies as curl does them (netenv.py): a CONNECT tunnel for https, the absolute form for http,
the endpoint's name resolved by the proxy. Keep-alive, no pipelining, no compression; redirects
are the caller's decision (remote/client.py), never followed here.

Here: the pool of connections, the tunnel, the watchdog. One connection's protocol is in
connection.py; what both use (errors, `Response`, `BufferPool`) in wire.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from urllib.parse import urlsplit

from .connection import _BODY, _DEAD, _DONE, _HEAD, _HEADERS, _IDLE, _READING, _SLOW, _Connection
from .netenv import Proxy, ProxyConfig, host_header, port_of, ssl_context
from .ratelimit import TokenBucket
# The client's errors and buffers are part of what it offers (tests and callers import them from here).
from .wire import (ERROR_BODY_MAX, FLUSH_ALIGN, USER_AGENT, BadResponse, BufferPool, ConnectFailed,  # noqa: F401
                   ConnectTimeout, HttpError, ProxyFailed, Response, Sink, Stalled, Straggler, StreamBroken, TooSlow)

class HttpClient:
    """A pool of keep-alive connections per (scheme, host, port, proxy), at most
    `max_connections` in all. Waiting for a free connection is not counted against the connect
    timeout: only opening a socket (the proxy's tunnel, TLS) is."""

    # Also about how long a slow response's buffer holds bytes before the watchdog hands them
    # over (`_Connection.flush`); a fast one fills its buffers within a tick and is left alone.
    WATCHDOG_TICK = 0.1

    def __init__(self, *, max_connections: int, connect_timeout: float, read_timeout: float,
                 ssl_context: ssl.SSLContext | None = None, min_rate: float = 0.0, rate_window: float = 30.0,
                 straggler_factor: float = 0.0, straggler_window: float = 5.0, straggler_peers: int = 4,
                 bucket: TokenBucket | None = None, proxies: ProxyConfig | None = None) -> None:
        """`min_rate` (bytes/s, 0: off) over `rate_window` seconds: a body that arrives slower
        is aborted as Stalled, like curl's --speed-limit/--speed-time: a server that drips a
        byte now and then never trips the read timeout, and would hold a sync forever."""
        self.max_connections = max_connections
        self.bucket = bucket  # --bwlimit: shared by every connection
        # Bytes one socket read may take: unbounded, except under --bwlimit, where every
        # paused connection reads at once when the bucket refills and the last such round's
        # debt is never paid back (short reads keep it to a small share of the limit).
        self.read_cap = 1 << 62
        if bucket is not None:
            self.read_cap = int(max(16 << 10, min(256 << 10, bucket.rate / (100 * max_connections))))
            # Slow on purpose now: a share of the limit is not a slow server (nor a straggler).
            min_rate = min(min_rate, bucket.rate / (4 * max_connections))
            straggler_factor = 0.0
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.min_rate = min_rate
        self.rate_window = rate_window
        self._window: dict[_Connection, tuple[int, float]] = {}
        # Stragglers (as the AWS CRT does): over each `straggler_window` of body bytes, a
        # response more than `straggler_factor` times slower than the median of at least
        # `straggler_peers` others is cut, one per tick, and retried from the byte reached on
        # another connection (a slow server disk or a bad path rarely hits two connections).
        self.straggler_factor = straggler_factor
        self.straggler_window = straggler_window
        self.straggler_peers = straggler_peers
        self._strag: dict[_Connection, tuple[int, float]] = {}
        self._rates: dict[_Connection, float] = {}
        self._ssl = ssl_context  # None: netenv.ssl_context() on the first https connection
        self.proxies = proxies or ProxyConfig()
        self._slots: asyncio.Semaphore | None = None
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._seen: dict[_Connection, tuple[int, float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.opened = 0  # connections opened, for tests and stats

    async def __aenter__(self) -> "HttpClient":
        self.start()
        return self

    def start(self) -> None:
        """Bind to the running loop and start the watchdog (needs no await)."""
        self.loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.max_connections)
        self._timer = self.loop.call_later(self.WATCHDOG_TICK, self._watch)

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for conns in self._idle.values():
            for c in conns:
                c.transport.close()
        for c in list(self._busy):
            c.transport.abort()
        self._idle.clear()
        self._busy.clear()

    # --- the watchdog: read timeouts without per-read work -----------------------------------

    def _watch(self) -> None:
        now = self.loop.time()
        for c in list(self._busy):
            if c.state in _READING and c._buf is not None:
                # A response that filled no buffer since the last tick hands over what it holds:
                # at most a tick or two of a slow response's bytes waits in memory; a fast one is
                # never split.
                if c.handed == c._handed_seen and c._fill >= FLUSH_ALIGN:
                    c.flush()
                c._handed_seen = c.handed
            if c.state not in (_HEAD, _BODY, _SLOW) or c.waiting_for_buffer or c.throttled:
                self._seen[c] = (c.received, now)
                self._window.pop(c, None)  # our own backpressure is not the server's slowness
                self._strag.pop(c, None)
                self._rates.pop(c, None)
                continue
            last = self._seen.get(c)
            if last is None or last[0] != c.received:
                self._seen[c] = (c.received, now)
            elif now - last[1] >= self.read_timeout:
                c.abort(Stalled(f"no data for {self.read_timeout:g}s"))
                continue
            if self.min_rate > 0 and c.state in _READING:
                start = self._window.get(c)
                if start is None:
                    self._window[c] = (c.received, now)
                elif now - start[1] >= self.rate_window:
                    rate = (c.received - start[0]) / (now - start[1])
                    if rate < self.min_rate:
                        c.abort(TooSlow(f"slower than {self.min_rate:g} bytes/s for {self.rate_window:g}s "
                                        f"({rate:.0f} bytes/s)"))
                    else:
                        self._window[c] = (c.received, now)
            if self.straggler_factor > 0:
                if c.state not in _READING:
                    self._strag.pop(c, None)
                    self._rates.pop(c, None)
                elif (start := self._strag.get(c)) is None:
                    self._strag[c] = (c.received, now)
                elif now - start[1] >= self.straggler_window:
                    self._rates[c] = (c.received - start[0]) / (now - start[1])
                    self._strag[c] = (c.received, now)
        if self.straggler_factor > 0 and len(self._rates) >= self.straggler_peers:
            rates = sorted(self._rates.values())
            median = rates[len(rates) // 2]
            slow, rate = min(self._rates.items(), key=lambda kv: kv[1])
            if median > 0 and rate * self.straggler_factor < median:
                self._rates.pop(slow, None)
                self._strag.pop(slow, None)
                slow.abort(Straggler(f"a straggler: {rate:.0f} bytes/s against a median of {median:.0f} "
                                     f"over the other {len(rates) - 1} responses in flight"))
        self._timer = self.loop.call_later(self.WATCHDOG_TICK, self._watch)

    def _progress(self, c: _Connection) -> None:
        self._seen[c] = (c.received, self.loop.time())

    def _forget(self, c: _Connection) -> None:
        self._busy.discard(c)
        self._seen.pop(c, None)
        self._window.pop(c, None)
        self._strag.pop(c, None)
        self._rates.pop(c, None)
        idle = self._idle.get(c.key)
        if idle and c in idle:
            idle.remove(c)

    # --- connections ------------------------------------------------------------------------------

    async def _open(self, key: tuple, proxy: Proxy | None) -> _Connection:
        scheme, host, port, _ = key
        ctx = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl_context()
            ctx = self._ssl
        try:
            return await asyncio.wait_for(self._connect(key, proxy, ctx), self.connect_timeout)
        except asyncio.TimeoutError:
            via = f" through the proxy {proxy.url} (from {proxy.source})" if proxy else ""
            raise ConnectTimeout(f"connect timed out after {self.connect_timeout:g}s{via}") from None

    async def _connect(self, key: tuple, proxy: Proxy | None, ctx: ssl.SSLContext | None) -> _Connection:
        scheme, host, port, _ = key
        if proxy is None:
            try:
                _, conn = await self.loop.create_connection(lambda: _Connection(self, key), host, port, ssl=ctx,
                                                            server_hostname=host if ctx else None)
            except (OSError, ssl.SSLError) as exc:
                raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
            self.opened += 1
            return conn
        try:
            _, conn = await self.loop.create_connection(lambda: _Connection(self, key), proxy.host, proxy.port)
        except OSError as exc:
            raise ProxyFailed(f"cannot reach the proxy {proxy.url} (from {proxy.source}): "
                              f"{type(exc).__name__}: {exc}", proxy) from exc
        self.opened += 1
        if ctx is None:
            return conn  # plain http: each request names its absolute URL to the proxy
        # https: a CONNECT tunnel (the proxy resolves the endpoint's name), then TLS inside it.
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # authority form: port always
        headers = [("Host", authority), ("User-Agent", USER_AGENT)]
        if proxy.auth:
            headers.append(("Proxy-Authorization", proxy.auth))
        try:
            response = await conn.send("CONNECT", authority, headers)
        except HttpError as exc:
            conn.abort(StreamBroken("tunnel abandoned"))
            raise ProxyFailed(f"the proxy {proxy.url} (from {proxy.source}) broke off the tunnel to "
                              f"{authority}: {exc}", proxy) from exc
        except BaseException:
            conn.abort(StreamBroken("tunnel abandoned"))
            raise
        if not 200 <= response.status < 300:
            conn.keep_alive = False
            conn.state = _DEAD
            conn.transport.abort()
            raise ProxyFailed(f"the proxy {proxy.url} (from {proxy.source}) refused the tunnel to {authority}: "
                              f"HTTP {response.status} {response.reason}".rstrip(), proxy, response.status)
        try:
            conn.transport = await self.loop.start_tls(conn.transport, conn, ctx, server_hostname=host)
        except (OSError, ssl.SSLError) as exc:
            conn.transport.abort()
            raise ConnectFailed(f"{type(exc).__name__}: {exc} (TLS inside the tunnel of {proxy.url})") from exc
        conn.state = _IDLE
        return conn

    def _pooled(self, key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            c = idle.pop()
            if c.state == _IDLE and not c.transport.is_closing():
                return c
        return None

    def get(self, url: str, headers: dict[str, str]):
        return self.request("GET", url, headers)

    @contextlib.asynccontextmanager
    async def request(self, method: str, url: str, headers: dict[str, str]):
        """Send a request; yield an `Exchange` once the final status and headers are in (1xx
        skipped). The body must be read (`read_into` / `read_error_body`) inside the block;
        the connection goes back to the pool only when its body was read whole and the server
        keeps it alive. A `Host` in `headers` is sent as given (a signature covers it)."""
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("http", "https") or not parts.hostname:
            raise BadResponse(f"unsupported URL {url!r}")
        try:
            port = port_of(parts)
        except ValueError:
            raise BadResponse(f"bad port in {url!r}") from None
        host = parts.hostname
        proxy = self.proxies.select(scheme, host, port)
        key = (scheme, host, port, proxy.key if proxy is not None else None)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        fields = [("Host", headers.get("Host") or host_header(scheme, host, parts.port))]
        if proxy is not None and scheme == "http":
            target = f"http://{fields[0][1]}{target}"  # absolute form: the proxy opens the connection
            if proxy.auth:
                fields.append(("Proxy-Authorization", proxy.auth))
        fields += [("User-Agent", USER_AGENT), ("Accept-Encoding", "identity")]
        fields += [(k, v) for k, v in headers.items() if k.lower() != "host"]
        async with self._slots:
            conn = None
            response = None
            for fresh in (False, True):
                conn = None if fresh else self._pooled(key)
                reused = conn is not None
                if conn is None:
                    conn = await self._open(key, proxy)
                self._busy.add(conn)
                self._progress(conn)
                before = conn.received
                try:
                    response = await conn.send(method, target, fields)
                    break
                except StreamBroken:
                    # A pooled connection the server had closed meanwhile: try once on a new one.
                    self._busy.discard(conn)
                    if not reused or conn.received != before:
                        raise
                except BaseException:
                    self._busy.discard(conn)
                    conn.abort(StreamBroken("request abandoned"))
                    raise
            exchange = Exchange(self, conn, response)
            try:
                yield exchange
            except BaseException:
                conn.keep_alive = False
                raise
            finally:
                self._busy.discard(conn)
                self._seen.pop(conn, None)
                if conn.state == _HEADERS and response.framing == "none":
                    conn.state = _DONE  # nothing to read (HEAD, 204, 304)
                if conn.state == _DONE and conn.keep_alive and not conn.transport.is_closing():
                    conn.state = _IDLE
                    conn.transport.resume_reading()  # so a close by the server is noticed
                    self._idle.setdefault(key, []).append(conn)
                elif conn.state != _DEAD:
                    conn.state = _DEAD
                    conn.transport.abort()


class Exchange:
    def __init__(self, client: HttpClient, conn: _Connection, response: Response) -> None:
        self.client = client
        self.conn = conn
        self.response = response

    async def read_into(self, sink: Sink, pool: BufferPool, expect: int | None = None) -> None:
        """Stream the body into `sink`, in buffers from `pool`; `expect`: the bytes it must
        have, checked whatever the framing. Cancelled, the connection is dropped (the
        caller's finally releases what it holds)."""
        fut = self.conn.read_body(self.response, sink, pool, expect=expect)
        try:
            await fut
        except asyncio.CancelledError:
            self.conn.hand_over()  # before the caller's cleanup closes what the sink writes to
            self.conn.abort(StreamBroken("cancelled"))
            raise

    async def read_error_body(self, limit: int = ERROR_BODY_MAX, wait: float = 2.0) -> bytes:
        """Up to `limit` bytes of a (small) error document, whatever its framing (a body that
        neither ends nor closes is cut after `wait` s)."""
        got = bytearray()
        pool = BufferPool(limit, 1)

        def sink(buf: bytearray, n: int) -> None:
            got.extend(memoryview(buf)[:n])
            pool.give(buf)

        conn = self.conn
        fut = conn.read_body(self.response, sink, pool, cap=limit)
        with contextlib.suppress(HttpError, asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(fut), wait)
        if not fut.done():
            conn.abort(StreamBroken("error body abandoned"))  # hands what arrived to the sink
            with contextlib.suppress(HttpError):
                await fut
        elif not fut.cancelled():
            fut.exception()  # seen
        return bytes(got)
