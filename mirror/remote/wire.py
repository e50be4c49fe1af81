"""What the lean HTTP client (remote/http.py) and its connections share: limits, the errors
it raises, an answer's head (`Response`, made from h11's event), and the pool of receive
buffers bodies land in."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import mmap
from dataclasses import dataclass
from typing import Callable

import h11

from .netenv import Proxy

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
    framing, length = framing_of(method, status, headers)  # h11 checked Content-Length: digits, duplicates equal
    return Response(status, headers, event.reason.decode("latin-1", "replace"), framing, length)


def framing_of(method: str, status: int, headers: dict[str, str]) -> tuple[str, int | None]:
    """How an answer's body is delimited (RFC 9112 6.3), for every transport: ("none", None)
    for HEAD, 204, 304 and a tunnel opened; ("chunked", None) when a transfer coding is named
    (it beats Content-Length); ("length", n); else ("close", None). `headers`: lower-case
    names, their Content-Length already checked by the parser that read them."""
    if method == "HEAD" or status in (204, 304) or (method == "CONNECT" and 200 <= status < 300):
        return "none", None
    if "transfer-encoding" in headers:
        return "chunked", None
    if "content-length" in headers:
        return "length", int(headers["content-length"])
    return "close", None


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



