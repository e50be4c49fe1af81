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
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import mmap
import socket
import ssl
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

import h11

from .netenv import Proxy, ProxyConfig, host_header, ssl_context
from .ratelimit import TokenBucket

HEAD_MAX = 64 << 10  # status line + headers (h11's limit of an incomplete head)
MAX_HEADERS = 200  # header fields in one answer
MAX_INFORMATIONAL = 16  # 1xx answers skipped before the final one
FLUSH_ALIGN = 4096  # what the watchdog hands over of a buffer held too long: whole blocks (O_DIRECT)
ERROR_BODY_MAX = 8 << 10
USER_AGENT = "vbo-mirror"

# What a body sink gets: a buffer it now owns and how many bytes of it are filled. It gives
# the buffer back to the pool (from any thread) once it is done with it.
Sink = Callable[[bytearray, int], None]


class HttpError(Exception):
    """Base of what this module raises; remote/translate.py turns these into our kinds."""


class ConnectFailed(HttpError):
    pass


class ConnectTimeout(HttpError):
    pass


class ProxyFailed(ConnectFailed):
    """The proxy itself cannot be reached, or did not open the tunnel."""

    def __init__(self, message: str, proxy: Proxy, status: int | None = None) -> None:
        super().__init__(message)
        self.proxy = proxy
        self.status = status


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
    reason: str = ""
    # How the body is delimited (RFC 9112 6.3): "none" (HEAD, 204, 304), "length",
    # "chunked", or "close" (until the server closes the connection).
    framing: str = "length"
    length: int | None = None  # with framing "length"
    error_body: bytes = b""  # the first bytes of a non-2xx answer's body (its error document)
    url: str = ""  # the URL that gave this answer

    @property
    def error_code(self) -> str | None:
        return xml_text(self.error_body, "Code")


def xml_text(body: bytes, tag: str) -> str | None:
    """The text of the first <tag> in a small S3 XML document (error documents are flat)."""
    start = body.find(b"<%s>" % tag.encode())
    if start < 0:
        return None
    start += len(tag) + 2
    end = body.find(b"</%s>" % tag.encode(), start)
    if end < 0:
        return None
    return body[start:end].decode("utf-8", "replace").strip() or None


def _response(event: h11.Response, method: str) -> Response:
    if len(event.headers) > MAX_HEADERS:
        raise BadResponse(f"more than {MAX_HEADERS} header fields")
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    status = event.status_code
    length = None
    if method == "HEAD" or status in (204, 304) or (method == "CONNECT" and 200 <= status < 300):
        framing = "none"
    elif "transfer-encoding" in headers:
        framing = "chunked"  # h11 accepts no other transfer coding (and it beats Content-Length)
    elif "content-length" in headers:
        framing = "length"
        length = int(headers["content-length"])  # h11 checked: digits only, duplicates equal
    else:
        framing = "close"
    return Response(status, headers, event.reason.decode("latin-1", "replace"), framing, length)


def _keeps_alive(event: h11.Response) -> bool:
    """RFC 9112 9.3, as h11 decides it: HTTP/1.0 or `Connection: close` ends the connection."""
    if event.http_version < b"1.1":
        return False
    for name, value in event.headers:
        if name == b"connection" and b"close" in [t.strip().lower() for t in value.split(b",")]:
            return False
    return True


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
_IDLE, _HEAD, _HEADERS, _BODY, _SLOW, _DONE, _DEAD = range(7)
_READING = (_BODY, _SLOW)


class _Connection(asyncio.BufferedProtocol):
    def __init__(self, client: "HttpClient", key: tuple) -> None:
        self.client = client
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.state = _IDLE
        self.requests = 0
        self.received = 0  # every byte read, for the watchdog
        self.waiting_for_buffer = False
        self._wait_cb: Callable[[bytearray], None] | None = None
        self._head = bytearray(HEAD_MAX)
        self.h: h11.Connection | None = None  # this request's parser (a fresh one per request)
        self.method = "GET"
        self._informational = 0
        self._head_fed = 0
        self._waiter: asyncio.Future | None = None
        self._buf: bytearray | None = None
        self._fill = 0
        self._remaining = 0
        self._leftover_pending = b""
        self._pending: memoryview | None = None  # decoded body bytes not yet in a buffer (slow path)
        self._got = 0
        self._limit: int | None = None  # slow path: more body bytes than this is an error
        self._cap: int | None = None  # slow path: stop (and drop the connection) after this many
        self._closing = False
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
        # A head, a body h11 decodes, or bytes nobody asked for: copied out at once.
        if self.state == _SLOW and self.client.read_cap < HEAD_MAX:
            return memoryview(self._head)[:self.client.read_cap]
        return self._head

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        if self.state == _BODY:
            self._fill += nbytes
            self._remaining -= nbytes
            if self._remaining == 0 or self._fill == len(self._buf):
                self._hand_off()
            self._throttle(nbytes)
            return
        data = bytes(memoryview(self._head)[:nbytes])
        if self.state == _SLOW:
            self.h.receive_data(data)
            self._pump()
            self._throttle(nbytes)
            return
        if self.state != _HEAD:
            # Bytes nobody asked for (after a body, or on an idle connection): out of step.
            self._break(BadResponse("the server sent bytes outside any response"))
            return
        self._head_fed += nbytes
        self.h.receive_data(data)
        self._next_head()

    def eof_received(self):
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == _SLOW and exc is None and self._reason is None and not self.waiting_for_buffer:
            # A body delimited by the close ends here; a chunked one cut short is broken.
            self._closing = True
            with contextlib.suppress(h11.RemoteProtocolError):
                self.h.receive_data(b"")
            self._pump()
        state, self.state = self.state, _DEAD
        self.client._forget(self)
        if self._pool is not None and self.waiting_for_buffer:
            self._pool.cancel_wait(self._wait_cb)
            self.waiting_for_buffer = False
        if state in _READING and self._buf is not None:
            if self._fill and self._sink is not None:
                # What did arrive is good (the caller resumes from the byte reached).
                buf, n, self._buf = self._buf, self._fill, None
                with contextlib.suppress(BaseException):
                    self._sink(buf, n)
            elif self._buf is not None and self._pool is not None:
                self._pool.give(self._buf)
                self._buf = None
        if state in (_HEAD, _HEADERS, _BODY, _SLOW):
            reason = self._reason or exc
            if isinstance(reason, HttpError):
                err = reason
            elif state == _HEAD and reason is None:
                err = StreamBroken("the server closed the connection before answering")
            else:
                err = StreamBroken(f"the connection closed mid-response ({reason or 'end of stream'})")
            self._reject(err)

    # --- used by HttpClient ---------------------------------------------------------------

    def send(self, method: str, target: str, headers: list[tuple[str, str]]) -> asyncio.Future:
        """Write one request (h11 checks and frames it); the future gets the final answer's
        `Response` once its head is in."""
        self.h = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEAD_MAX)
        self.method = method
        self._informational = 0
        self._head_fed = 0
        try:
            data = self.h.send(h11.Request(method=method, target=target, headers=headers))
            data += self.h.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise BadResponse(f"cannot send this request: {exc}") from None
        self.state = _HEAD
        self.requests += 1
        waiter = self._waiter = self.client.loop.create_future()
        self.transport.write(data)
        return waiter

    def read_body(self, response: Response, sink: Sink, pool: BufferPool, *, expect: int | None = None,
                  cap: int | None = None) -> asyncio.Future:
        """Stream the body into `sink`, in buffers from `pool`. A body framed by Content-Length
        is received in place; any other is decoded by h11 (then `expect` bytes must come,
        no more, no fewer). `cap`: keep only the first `cap` bytes (an error document)."""
        waiter = self._waiter = self.client.loop.create_future()
        self._sink = sink
        self._pool = pool
        self._buf, self._fill = None, 0
        if response.framing == "none":
            self._finish_body()
        elif response.framing == "length" and cap is None:
            self._in_place(response.length)
        else:
            self.state = _SLOW
            self._limit, self._cap, self._got, self._pending = expect, cap, 0, None
            self._pump()
            if self.state == _SLOW and not self.waiting_for_buffer and not self.throttled:
                self.client._progress(self)
                self.transport.resume_reading()
        return waiter

    def hand_over(self) -> None:
        """Give the sink what the current buffer holds, now (it is handed over only when full
        otherwise): a cancelled caller keeps, and records for resume, every byte that came."""
        if self.state in _READING and self._buf is not None and self._fill and self._sink is not None:
            buf, n, self._buf, self._fill = self._buf, self._fill, None, 0
            with contextlib.suppress(BaseException):
                self._sink(buf, n)

    def _throttle(self, nbytes: int) -> None:
        bucket = self.client.bucket
        if bucket is None:
            return
        delay = bucket.spend(nbytes)  # a debt left is paid by the next read
        if delay > 0 and self.state in _READING:
            self.throttled = True
            self.transport.pause_reading()
            bucket.pause(self._unthrottle, self.client.loop, delay)

    def _unthrottle(self) -> None:
        self.throttled = False
        if self.state in _READING and not self.waiting_for_buffer:
            self.client._progress(self)
            self.transport.resume_reading()

    def flush(self) -> None:
        """Hand the sink the whole blocks this buffer holds and go on in a fresh buffer (the
        unaligned tail, under one block, is copied over). Called by the watchdog for a buffer
        that has held bytes for a tick: on a slow link a buffer would otherwise hold seconds
        of data that a kill -9 throws away, and that the resume state never records."""
        if self.state not in _READING or self._buf is None or self._sink is None or self._pool is None:
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

    # --- the head -------------------------------------------------------------------------------

    def _next_head(self) -> None:
        while True:
            try:
                event = self.h.next_event()
            except h11.RemoteProtocolError as exc:
                self._break(BadResponse(f"not a well-formed HTTP/1.1 answer: {exc}"))
                return
            if event is h11.NEED_DATA:
                if self._head_fed > HEAD_MAX:  # h11 bounds what it holds, not what it was fed
                    self._break(BadResponse(f"response headers larger than {HEAD_MAX} bytes"))
                return
            if type(event) is h11.InformationalResponse:  # 100 Continue, 103 Early Hints: not the answer
                self._informational += 1
                if self._informational > MAX_INFORMATIONAL:
                    self._break(BadResponse(f"more than {MAX_INFORMATIONAL} informational (1xx) answers"))
                    return
                continue
            if type(event) is h11.Response:
                if self._head_fed > HEAD_MAX and self._head_fed - len(self.h.trailing_data[0]) > HEAD_MAX:
                    self._break(BadResponse(f"response headers larger than {HEAD_MAX} bytes"))
                    return
                try:
                    response = _response(event, self.method)
                except BadResponse as exc:
                    self._break(exc)
                    return
                self.keep_alive = _keeps_alive(event)
                self.state = _HEADERS
                self.transport.pause_reading()  # until the caller says where the body goes
                self._resolve(response)
                return
            self._break(BadResponse(f"unexpected {type(event).__name__} before the answer"))
            return

    # --- a body framed by Content-Length: received in place -----------------------------------

    def _in_place(self, length: int) -> None:
        self._remaining = length
        self.state = _BODY
        leftover = self.h.trailing_data[0]  # body bytes that came with the head
        if leftover and self.client.bucket is not None:
            self.client.bucket.spend(len(leftover))
        if len(leftover) > self._remaining:
            # Bytes after the announced body: the body is whole, the stream is out of step.
            leftover = leftover[:self._remaining]
            self.keep_alive = False
        if self._remaining == 0:
            self._finish_body()
        else:
            self._leftover_pending = leftover
            buf = self._pool.take()
            if buf is None:
                self._await_buffer(self._take_buffer)
            else:
                self._take_buffer(buf)

    def _await_buffer(self, callback: Callable[[bytearray], None]) -> None:
        self.transport.pause_reading()
        self.waiting_for_buffer = True
        self._wait_cb = callback
        self._pool.wait(callback)

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
            self._await_buffer(self._take_buffer)
        else:
            self._buf = buf

    # --- any other body: decoded by h11, copied into the same buffers ----------------------------

    def _pump(self) -> None:
        while self.state == _SLOW:
            pending = self._pending
            if pending is not None:
                if self._buf is None:
                    buf = self._pool.take()
                    if buf is None:
                        self._await_buffer(self._slow_take)
                        return
                    self._buf, self._fill = buf, 0
                buf = self._buf
                n = min(len(pending), len(buf) - self._fill)
                if self._cap is not None:
                    n = min(n, self._cap - self._got)
                buf[self._fill:self._fill + n] = pending[:n]
                self._fill += n
                self._got += n
                self._pending = pending[n:] if n < len(pending) else None
                if self._limit is not None and self._got > self._limit:
                    self._break(BadResponse(f"the body is longer than the {self._limit} bytes announced"))
                    return
                if self._cap is not None and self._got >= self._cap:
                    self.keep_alive = False  # the rest of an overlong error document goes with the connection
                    self._end_slow()
                    return
                if self._fill == len(buf):
                    self._buf, self._fill = None, 0
                    self.handed += 1
                    try:
                        self._sink(buf, len(buf))
                    except BaseException as exc:
                        self._sink_refused(exc)
                        return
                continue
            try:
                event = self.h.next_event()
            except h11.RemoteProtocolError as exc:
                kind = StreamBroken if self._closing else BadResponse
                self._break(kind(f"the body broke off: {exc}" if self._closing else f"malformed body: {exc}"))
                return
            if event is h11.NEED_DATA:
                return
            if type(event) is h11.Data:
                if event.data:
                    self._pending = memoryview(event.data)
                continue
            if type(event) is h11.EndOfMessage:
                self._end_slow()
                return
            self._break(BadResponse(f"unexpected {type(event).__name__} in a body"))
            return

    def _slow_take(self, buf: bytearray) -> None:
        self.waiting_for_buffer = False
        if self.state != _SLOW:
            self._pool.give(buf)
            return
        self._buf, self._fill = buf, 0
        self._pump()
        if self.state == _SLOW and not self.waiting_for_buffer and not self.throttled:
            self.client._progress(self)
            self.transport.resume_reading()

    def _end_slow(self) -> None:
        buf, n = self._buf, self._fill
        self._buf, self._fill = None, 0
        if buf is not None:
            if n:
                try:
                    self._sink(buf, n)
                except BaseException as exc:
                    self._sink_refused(exc)
                    return
            else:
                self._pool.give(buf)
        if self.h.their_state is not h11.DONE or self.h.trailing_data[0]:
            self.keep_alive = False  # the server ends the connection, or sent bytes beyond the answer
        if self._limit is not None and self._got < self._limit and self._cap is None:
            self.keep_alive = False
            self.state = _DONE
            self._sink = None
            self._reject(StreamBroken(f"the body ended after {self._got} of {self._limit} bytes"))
            return
        self._finish_body()

    # --- endings ------------------------------------------------------------------------------------

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

    def request(self, method: str, url: str, headers: dict[str, str]):
        """Send a request; yield an `Exchange` once the final status and headers are in (1xx
        skipped). The body must be read (`read_into` / `read_error_body`) inside the block;
        the connection goes back to the pool only when its body was read whole and the server
        keeps it alive. A `Host` in `headers` is sent as given (a signature covers it)."""
        return self._request(method, url, headers)

    def get(self, url: str, headers: dict[str, str]):
        return self._request("GET", url, headers)

    @contextlib.asynccontextmanager
    async def _request(self, method: str, url: str, headers: dict[str, str]):
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("http", "https") or not parts.hostname:
            raise BadResponse(f"unsupported URL {url!r}")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
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
