"""One connection of the lean HTTP client: an asyncio BufferedProtocol whose state machine
sends a request (h11), parses the answer's head (h11), and lands the body in pool buffers:
in place when Content-Length frames it, decoded by h11 otherwise (remote/http.py says why)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Callable

import h11

from .wire import (FLUSH_ALIGN, HEAD_MAX, MAX_INFORMATIONAL, BadResponse, BufferPool, HttpError, Response, Sink,
                   StreamBroken, _keeps_alive, _response)

if TYPE_CHECKING:
    from .http import HttpClient

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
                # Never a byte past what must come: the sink writes where the range says, and
                # bytes beyond it would land on another part's. As with Content-Length, the body
                # is what was announced and the stream is out of step: the connection goes.
                over = self._limit is not None and n > self._limit - self._got
                if over:
                    n = self._limit - self._got
                buf[self._fill:self._fill + n] = pending[:n]
                self._fill += n
                self._got += n
                self._pending = pending[n:] if n < len(pending) else None
                if over:
                    self._pending = None
                    self.keep_alive = False
                    self._end_slow()
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


