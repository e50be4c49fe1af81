"""A lean HTTP/1.1 GET client whose response bodies land straight in our own large buffers.

Why not aiohttp for the bytes: for every socket read aiohttp copies the data into a new
`bytes`, runs its parser, feeds a StreamReader and reschedules a timer, all holding the GIL;
at hundreds of MB/s that per-read work, not hashing, bounded a sync (py-spy, RESULTS.md).
Here an `asyncio.BufferedProtocol` (uvloop) lets the kernel copy each body straight into a
recycled buffer of a MiB or more; Python runs two tiny calls per socket read and hands a
buffer over only when it is full. Timeouts cost nothing per read either: one watchdog tick
per client compares byte counters.

Scope, on purpose: GET with keep-alive, bodies delimited by Content-Length (S3 always sends
one for objects); error documents are read up to a few KiB however they are framed, and
their connection is then closed. No pipelining, no redirects, no compression.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import mmap
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from .ratelimit import TokenBucket

HEAD_MAX = 64 << 10  # status line + headers
FLUSH_ALIGN = 4096  # what the watchdog hands over of a buffer held too long: whole blocks (O_DIRECT)
ERROR_BODY_MAX = 8 << 10
USER_AGENT = b"vbo-mirror"

# What a body sink gets: a buffer it now owns and how many bytes of it are filled. It gives
# the buffer back to the pool (from any thread) once it is done with it.
Sink = Callable[[bytearray, int], None]


class HttpError(Exception):
    """Base of what this module raises; remote/translate.py turns these into our kinds."""


class ConnectFailed(HttpError):
    pass


class ConnectTimeout(HttpError):
    pass


class StreamBroken(HttpError):
    """The connection closed or failed mid-response."""


class Stalled(HttpError):
    """No byte arrived for the read timeout."""


class TooSlow(Stalled):
    """Bytes kept coming, but slower than the minimum rate over its window."""


class Straggler(TooSlow):
    """Much slower than the other responses in flight: asked again on another connection."""


class BadResponse(HttpError):
    """Not a well-formed HTTP/1.1 answer."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "

    @property
    def length(self) -> int | None:
        value = self.headers.get("content-length")
        if value is None or "transfer-encoding" in self.headers:
            return None
        try:
            n = int(value)
        except ValueError:
            raise BadResponse(f"bad Content-Length {value!r}") from None
        if n < 0:
            raise BadResponse(f"bad Content-Length {value!r}")
        return n


class BufferPool:
    """At most `count` receive buffers of `size` bytes, made on first use and recycled, so
    memory stays near count x size whatever the object sizes. A connection that finds none
    free pauses its socket (TCP pushes back on the server) until one comes back. Buffers are
    anonymous mmaps: page-aligned, as direct I/O needs."""

    def __init__(self, size: int, count: int) -> None:
        self.size = size
        self.count = count
        self._free: list[bytearray] = []
        self._made = 0
        self._waiters: collections.deque[Callable[[bytearray], None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def take(self) -> bytearray | None:
        if self._free:
            return self._free.pop()
        if self._made < self.count:
            self._made += 1
            return mmap.mmap(-1, self.size)
        return None

    def wait(self, callback: Callable[[bytearray], None]) -> None:
        self._waiters.append(callback)

    def cancel_wait(self, callback: Callable[[bytearray], None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(callback)

    def give(self, buf: bytearray) -> None:
        """Return a buffer (event-loop thread only)."""
        if self._waiters:
            self._waiters.popleft()(buf)
        else:
            self._free.append(buf)

    def give_threadsafe(self, buf: bytearray) -> None:
        """Return a buffer from a worker thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # the run is over; the buffer goes with the garbage
        try:
            loop.call_soon_threadsafe(self.give, buf)
        except RuntimeError:  # loop closed meanwhile
            pass

    @property
    def in_use(self) -> int:
        return self._made - len(self._free)


# Connection states
_IDLE, _HEAD, _HEADERS, _BODY, _DONE, _DEAD = range(6)


class _Connection(asyncio.BufferedProtocol):
    def __init__(self, client: "HttpClient", key: tuple[str, str, int]) -> None:
        self.client = client
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.state = _IDLE
        self.requests = 0
        self.received = 0  # every byte read, for the watchdog
        self.waiting_for_buffer = False
        self._head = bytearray(HEAD_MAX)
        self._hlen = 0
        self._leftover = b""
        self._waiter: asyncio.Future | None = None
        self._buf: bytearray | None = None
        self._fill = 0
        self._remaining = 0
        self._leftover_pending = b""
        self._sink: Sink | None = None
        self._pool: BufferPool | None = None
        self._reason: BaseException | None = None
        self.keep_alive = True
        self.throttled = False  # paused by the --bwlimit bucket
        self.handed = 0  # full buffers handed over (the watchdog flushes only a connection that handed none)
        self._handed_seen = -1

    # --- asyncio protocol ---------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, sizehint: int):
        if self.state == _BODY:
            buf = self._buf
            end = self._fill + min(self._remaining, self.client.read_cap)
            if self._fill == 0 and end >= len(buf):
                return buf
            return memoryview(buf)[self._fill:min(len(buf), end)]
        if self._hlen >= len(self._head):  # cannot happen while a request waits: see buffer_updated
            self._hlen = 0
        return memoryview(self._head)[self._hlen:]

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        if self.state == _BODY:
            self._fill += nbytes
            self._remaining -= nbytes
            bucket = self.client.bucket
            delay = bucket.spend(nbytes) if bucket is not None else 0.0  # a debt left is paid by the next read
            if self._remaining == 0 or self._fill == len(self._buf):
                self._hand_off()
            if delay > 0 and self.state == _BODY:
                self.throttled = True
                self.transport.pause_reading()
                bucket.pause(self._unthrottle, self.client.loop, delay)
            return
        start = max(0, self._hlen - 3)
        self._hlen += nbytes
        if self.state != _HEAD:
            # Bytes nobody asked for (after a body, or on an idle connection): out of step.
            self._break(BadResponse("the server sent bytes outside any response"))
            return
        end = self._head.find(b"\r\n\r\n", start, self._hlen)
        if end < 0:
            if self._hlen >= len(self._head):
                self._break(BadResponse(f"response headers larger than {HEAD_MAX} bytes"))
            return
        try:
            response = _parse_head(bytes(self._head[:end]))
        except BadResponse as exc:
            self._break(exc)
            return
        self._leftover = bytes(self._head[end + 4:self._hlen])
        self._hlen = 0
        self.state = _HEADERS
        self.keep_alive = _keeps_alive(response)
        self.transport.pause_reading()  # until the caller says where the body goes
        self._resolve(response)

    def eof_received(self):
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        state, self.state = self.state, _DEAD
        self.client._forget(self)
        if self._pool is not None and self.waiting_for_buffer:
            self._pool.cancel_wait(self._take_buffer)
            self.waiting_for_buffer = False
        if state == _BODY and self._buf is not None:
            if self._fill and self._sink is not None:
                # What did arrive is good (the caller resumes from the byte reached).
                buf, n, self._buf = self._buf, self._fill, None
                with contextlib.suppress(BaseException):
                    self._sink(buf, n)
            elif self._buf is not None and self._pool is not None:
                self._pool.give(self._buf)
                self._buf = None
        if state in (_HEAD, _HEADERS, _BODY):
            reason = self._reason or exc
            if isinstance(reason, HttpError):
                err = reason
            elif state == _HEAD and reason is None:
                err = StreamBroken("the server closed the connection before answering")
            else:
                err = StreamBroken(f"the connection closed mid-response ({reason or 'end of stream'})")
            self._reject(err)

    # --- used by HttpClient ---------------------------------------------------------------

    def send(self, head: bytes) -> asyncio.Future:
        self.state = _HEAD
        self._hlen = 0
        self.requests += 1
        waiter = self._waiter = self.client.loop.create_future()
        self.transport.write(head)
        return waiter

    def read_body(self, length: int, sink: Sink, pool: BufferPool) -> asyncio.Future:
        """Stream `length` body bytes into `sink`, in buffers from `pool`."""
        waiter = self._waiter = self.client.loop.create_future()
        self._sink = sink
        self._pool = pool
        self._remaining = length
        self._fill = 0
        self.state = _BODY
        leftover, self._leftover = self._leftover, b""
        if leftover and self.client.bucket is not None:
            self.client.bucket.spend(len(leftover))  # body bytes that came with the headers count too
        if len(leftover) > self._remaining:
            # Bytes after the announced body: the body is whole, the stream is out of step.
            leftover = leftover[:self._remaining]
            self.keep_alive = False
        if self._remaining == 0:
            self._finish_body()
        else:
            self._leftover_pending = leftover
            buf = pool.take()
            if buf is None:
                self.waiting_for_buffer = True
                pool.wait(self._take_buffer)
            else:
                self._take_buffer(buf)
        return waiter

    def hand_over(self) -> None:
        """Give the sink what the current buffer holds, now (it is handed over only when full
        otherwise): a cancelled caller keeps, and records for resume, every byte that came."""
        if self.state == _BODY and self._buf is not None and self._fill and self._sink is not None:
            buf, n, self._buf, self._fill = self._buf, self._fill, None, 0
            with contextlib.suppress(BaseException):
                self._sink(buf, n)

    def _unthrottle(self) -> None:
        self.throttled = False
        if self.state == _BODY and not self.waiting_for_buffer:
            self.client._progress(self)
            self.transport.resume_reading()

    def flush(self) -> None:
        """Hand the sink the whole blocks this buffer holds and go on in a fresh buffer (the
        unaligned tail, under one block, is copied over). Called by the watchdog for a buffer
        that has held bytes for a tick: on a slow link a buffer would otherwise hold seconds
        of data that a kill -9 throws away, and that the resume state never records."""
        if self.state != _BODY or self._buf is None or self._sink is None or self._pool is None:
            return
        n = self._fill - self._fill % FLUSH_ALIGN
        if n <= 0:
            return
        fresh = self._pool.take()
        if fresh is None:
            return  # every buffer is in use: keep holding (the writes are behind anyway)
        buf, tail = self._buf, self._fill - n
        if tail:
            fresh[:tail] = buf[n:self._fill]
        self._buf, self._fill = fresh, tail
        try:
            self._sink(buf, n)
        except BaseException as exc:
            self._sink_refused(exc)

    def abort(self, reason: HttpError) -> None:
        if self._reason is None:
            self._reason = reason
        if self.transport is not None:
            self.transport.abort()

    # --- internals ----------------------------------------------------------------------------

    def _take_buffer(self, buf: bytearray) -> None:
        self.waiting_for_buffer = False
        if self.state != _BODY:  # died while waiting
            self._pool.give(buf)
            return
        self._buf = buf
        self._fill = 0
        pending = self._leftover_pending
        if pending:  # body bytes that came with the headers (never more than a buffer holds)
            self._leftover_pending = b""
            n = len(pending)
            buf[:n] = pending
            self._fill = n
            self._remaining -= n
            if self._remaining == 0 or n == len(buf):
                self._hand_off()
        if self.state == _BODY and not self.waiting_for_buffer and not self.throttled:
            self.client._progress(self)  # time spent waiting for a buffer is not a stall
            self.transport.resume_reading()

    def _hand_off(self) -> None:
        buf, n = self._buf, self._fill
        self._buf, self._fill = None, 0
        self.handed += 1
        try:
            self._sink(buf, n)
        except BaseException as exc:
            self._sink_refused(exc)
            return
        if self._remaining == 0:
            self._finish_body()
            return
        buf = self._pool.take()
        if buf is None:
            self.transport.pause_reading()
            self.waiting_for_buffer = True
            self._pool.wait(self._take_buffer)
        else:
            self._buf = buf

    def _sink_refused(self, exc: BaseException) -> None:
        """The sink refused a buffer (an earlier write failed): this response stops here."""
        self.keep_alive = False
        self.state = _DEAD
        self._reject(exc)
        self.transport.abort()

    def _finish_body(self) -> None:
        self.state = _DONE
        self._sink = None
        self._resolve(None)

    def _resolve(self, value) -> None:
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_result(value)

    def _reject(self, exc: BaseException) -> None:
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_exception(exc)

    def _break(self, exc: HttpError) -> None:
        self.keep_alive = False
        self.abort(exc)


def _parse_head(raw: bytes) -> Response:
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise BadResponse("undecodable response head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise BadResponse(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadResponse(f"malformed header line {line[:80]!r}")
        name = name.lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    headers[":version"] = parts[0]
    return Response(int(parts[1]), headers)


def _keeps_alive(r: Response) -> bool:
    conn = r.headers.get("connection", "").lower()
    if r.headers[":version"] == "HTTP/1.0":
        return "keep-alive" in conn
    return "close" not in conn


class HttpClient:
    """A pool of keep-alive connections per (scheme, host, port), at most `max_connections`
    in all. Waiting for a free connection is not counted against the connect timeout: only
    opening a socket (and TLS) is."""

    # Also about how long a slow response's buffer holds bytes before the watchdog hands them
    # over (`_Connection.flush`); a fast one fills its buffers within a tick and is left alone.
    WATCHDOG_TICK = 0.1

    def __init__(self, *, max_connections: int, connect_timeout: float, read_timeout: float,
                 ssl_context: ssl.SSLContext | None = None, min_rate: float = 0.0, rate_window: float = 30.0,
                 straggler_factor: float = 0.0, straggler_window: float = 5.0, straggler_peers: int = 4,
                 bucket: TokenBucket | None = None) -> None:
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
        self._ssl = ssl_context
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
            if c.state == _BODY and c._buf is not None:
                # A response that filled no buffer since the last tick hands over what it holds:
                # at most a tick or two of a slow response's bytes waits in memory; a fast one is
                # never split.
                if c.handed == c._handed_seen and c._fill >= FLUSH_ALIGN:
                    c.flush()
                c._handed_seen = c.handed
            if c.state not in (_HEAD, _BODY) or c.waiting_for_buffer or c.throttled:
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
            if self.min_rate > 0 and c.state == _BODY:
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
                if c.state != _BODY:
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

    async def _open(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        ctx = None
        if scheme == "https":
            if self._ssl is None:
                # The CA bundle botocore would use (AWS_CA_BUNDLE), else the system's (which
                # OpenSSL lets SSL_CERT_FILE / SSL_CERT_DIR override).
                self._ssl = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
            ctx = self._ssl
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Connection(self, key), host, port, ssl=ctx,
                                            server_hostname=host if ctx else None),
                self.connect_timeout)
        except asyncio.TimeoutError:
            raise ConnectTimeout(f"connect timed out after {self.connect_timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        self.opened += 1
        return conn

    def _pooled(self, key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            c = idle.pop()
            if c.state == _IDLE and not c.transport.is_closing():
                return c
        return None

    @contextlib.asynccontextmanager
    async def get(self, url: str, headers: dict[str, str]):
        """Send a GET; yield an `Exchange` once the status and headers are in. The body must
        be read (`read_into` / `read_error_body`) inside the block; the connection goes back
        to the pool only when its body was read whole and the server keeps it alive."""
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("http", "https") or not parts.hostname:
            raise BadResponse(f"unsupported URL {url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, parts.hostname, port)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "User-Agent: vbo-mirror", "Accept-Encoding: identity"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        async with self._slots:
            conn = None
            response = None
            for fresh in (False, True):
                conn = None if fresh else self._pooled(key)
                reused = conn is not None
                if conn is None:
                    conn = await self._open(key)
                self._busy.add(conn)
                self._progress(conn)
                before = conn.received
                try:
                    response = await conn.send(head)
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

    async def read_into(self, sink: Sink, pool: BufferPool, length: int | None) -> None:
        """Stream the body into `sink`, in buffers from `pool`. Cancelled, the connection is
        dropped (the caller's finally releases what it holds)."""
        fut = self.conn.read_body(length, sink, pool)
        try:
            await fut
        except asyncio.CancelledError:
            self.conn.hand_over()  # before the caller's cleanup closes what the sink writes to
            self.conn.abort(StreamBroken("cancelled"))
            raise

    async def read_error_body(self, limit: int = ERROR_BODY_MAX, wait: float = 2.0) -> bytes:
        """Up to `limit` bytes of a (small) error document, whatever its framing; the
        connection is not reused afterwards."""
        self.conn.keep_alive = False
        got = bytearray()
        pool = BufferPool(limit, 1)

        def sink(buf: bytearray, n: int) -> None:
            got.extend(memoryview(buf)[:n])

        length = self.response.length
        want = min(limit, length) if length is not None else limit
        conn = self.conn
        fut = conn.read_body(want, sink, pool)
        with contextlib.suppress(HttpError, asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(fut), wait)
        if not fut.done():
            conn.abort(StreamBroken("error body abandoned"))  # hands what arrived to the sink
            with contextlib.suppress(HttpError):
                await fut
        return bytes(got)

