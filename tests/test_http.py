"""The lean HTTP client against a raw server on 127.0.0.1 whose answers are exact byte strings:
keep-alive reuse, a pooled connection the server closed, stalls, malformed answers, error
bodies however framed, and back-pressure when the receive buffers run out."""

from __future__ import annotations

import asyncio
import time

import pytest

from mirror.remote.http import BadResponse, BufferPool, HttpClient, Stalled, StreamBroken


class RawServer:
    """Answers each request with the next scripted behaviour: bytes to send, then optionally
    a pause, a close, or nothing more (a stall)."""

    def __init__(self, script):
        self.script = list(script)
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                action = self.script.pop(0)
                await action(writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ok(body: bytes, *, close=False, extra=b""):
    async def act(w):
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), b"Connection: close\r\n" if close else b"")
                + body + extra)
        await w.drain()
        if close:
            w.close()
    return act


def stall_after(data: bytes):
    async def act(w):
        w.write(data)
        await w.drain()
        await asyncio.sleep(30)
    return act


def paced(body: bytes, chunk: int, pause: float, *, length: int | None = None):
    """An answer whose body comes `chunk` bytes at a time, `pause` s apart; `length` announces
    more than is sent (a response that never ends)."""
    async def act(w):
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(body) if length is None else length))
        for i in range(0, len(body), chunk):
            w.write(body[i:i + chunk])
            await w.drain()
            await asyncio.sleep(pause)
    return act


def collector(pool: BufferPool, *, hold: list | None = None):
    """(bytes received, a sink that collects them and gives each buffer back, or holds it)."""
    got = bytearray()

    def sink(buf, n):
        got.extend(memoryview(buf)[:n])
        if hold is not None:
            hold.append(buf)  # the caller gives it back later
        else:
            pool.give(buf)

    return got, sink


async def fetch(client: HttpClient, url: str, pool: BufferPool, *, hold: list | None = None,
                expect: int | None = None) -> bytes:
    """GET url/obj whole; `expect`: the bytes the body must have (default: its Content-Length)."""
    got, sink = collector(pool, hold=hold)
    async with client.get(url + "/obj", {}) as ex:
        if ex.response.status != 200:
            return b"ERROR " + await ex.read_error_body()
        await ex.read_into(sink, pool, ex.response.length if expect is None else expect)
    return bytes(got)


def run(coro):
    return asyncio.run(coro)


def test_keep_alive_reuses_one_connection_and_a_closed_one_is_replaced():
    async def go():
        body = bytes(range(256)) * 1000
        async with RawServer([ok(body), ok(body), ok(body, close=True), ok(b"after")]) as srv:
            async with HttpClient(max_connections=4, connect_timeout=2, read_timeout=5) as c:
                pool = BufferPool(64 << 10, 4)
                for _ in range(3):
                    assert await fetch(c, srv.url, pool) == body
                assert srv.connections == 1
                assert await fetch(c, srv.url, pool) == b"after"  # the server closed: a new connection
                assert srv.connections == 2
    run(go())


def test_a_pooled_connection_closed_by_the_server_while_idle_is_retried_on_a_new_one():
    async def go():
        async def close_now(w):
            w.close()

        async with RawServer([ok(b"first"), close_now, ok(b"second")]) as srv:
            async with HttpClient(max_connections=2, connect_timeout=2, read_timeout=5) as c:
                pool = BufferPool(64 << 10, 2)
                assert await fetch(c, srv.url, pool) == b"first"
                # the pooled connection dies before answering: tried once more on a fresh one
                assert await fetch(c, srv.url, pool) == b"second"
                assert srv.connections == 2
    run(go())


def test_a_stalled_response_ends_after_the_read_timeout_not_never():
    async def go():
        async with RawServer([stall_after(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=1.0) as c:
                c.WATCHDOG_TICK = 0.1
                pool = BufferPool(64 << 10, 2)
                t0 = time.monotonic()
                with pytest.raises(Stalled):
                    await fetch(c, srv.url, pool)
                assert 0.9 <= time.monotonic() - t0 < 3.0
    run(go())


def test_bytes_held_in_a_buffer_are_handed_over_within_a_tick_even_if_it_never_fills():
    """A slow response must not keep its bytes in a half-full buffer (a kill -9 would lose
    them, and the resume state cannot record them): at the next tick the watchdog hands over
    the whole blocks that arrived, in order, and the body still ends byte-exact."""
    body = bytes(range(256)) * 64  # 16 KiB, in a 64 KiB buffer that it never fills
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)

    async def slow(w):
        w.write(head + body[:10000])
        await w.drain()
        await asyncio.sleep(1.0)
        w.write(body[10000:])
        await w.drain()

    async def go():
        async with RawServer([slow]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=5) as c:
                c.WATCHDOG_TICK = 0.1
                pool = BufferPool(64 << 10, 2)
                got: list[tuple[float, bytes]] = []
                t0 = time.monotonic()

                def sink(buf, n):
                    got.append((time.monotonic() - t0, bytes(memoryview(buf)[:n])))
                    pool.give(buf)

                async with c.get(srv.url + "/obj", {}) as ex:
                    await ex.read_into(sink, pool, ex.response.length)
        early = [chunk for at, chunk in got if at < 0.6]  # ticks of 0.1 s; the rest comes at 1 s
        assert early and len(early[0]) == 8192  # whole 4 KiB blocks only, handed over mid-body
        assert b"".join(chunk for _, chunk in got) == body
    run(go())


def test_a_server_that_never_answers_is_a_stall_too():
    async def go():
        async with RawServer([stall_after(b"")]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=0.5) as c:
                c.WATCHDOG_TICK = 0.1
                with pytest.raises(Stalled):
                    await fetch(c, srv.url, BufferPool(64 << 10, 1))
    run(go())


def test_malformed_answers_are_refused():
    async def garbage(w):
        w.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await w.drain()

    async def huge_head(w):
        w.write(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * (70 << 10) + b"\r\n\r\n")
        await w.drain()

    async def go():
        for act in (garbage, huge_head):
            async with RawServer([act]) as srv:
                async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=2) as c:
                    with pytest.raises(BadResponse):
                        await fetch(c, srv.url, BufferPool(64 << 10, 1))
    run(go())


def test_bytes_beyond_the_announced_body_retire_the_connection():
    async def go():
        async with RawServer([ok(b"abc", extra=b"GARBAGE"), ok(b"next")]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=2) as c:
                pool = BufferPool(64 << 10, 1)
                assert await fetch(c, srv.url, pool) == b"abc"
                assert await fetch(c, srv.url, pool) == b"next"
                assert srv.connections == 2  # the out-of-step connection was not reused
    run(go())


def test_a_connection_cut_mid_body_hands_over_what_arrived_then_fails():
    async def cut(w):
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 300)
        await w.drain()
        w.transport.abort()

    async def go():
        async with RawServer([cut]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=2) as c:
                pool = BufferPool(64 << 10, 1)
                got, sink = collector(pool)
                with pytest.raises(StreamBroken):
                    async with c.get(srv.url + "/x", {}) as ex:
                        await ex.read_into(sink, pool, ex.response.length)
                assert bytes(got) == b"y" * 300
    run(go())


def test_error_documents_are_read_whatever_their_framing():
    async def chunked(w):
        doc = b"<Error><Code>SlowDown</Code></Error>"
        w.write(b"HTTP/1.1 503 Slow Down\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(doc), doc))
        await w.drain()

    async def go():
        async with RawServer([chunked]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=2) as c:
                t0 = time.monotonic()
                got = await fetch(c, srv.url, BufferPool(64 << 10, 1))
                assert b"<Code>SlowDown</Code>" in got
                assert time.monotonic() - t0 < 1  # the last chunk ends it: no waiting for more
    run(go())


def test_no_free_buffer_pauses_the_socket_until_one_comes_back():
    async def go():
        body = bytes(range(256)) * 4096  # 1 MiB through a pool of 2 x 64 KiB buffers
        async with RawServer([ok(body)]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=5) as c:
                pool = BufferPool(64 << 10, 2)
                held: list = []

                async def give_back_slowly():
                    while True:
                        await asyncio.sleep(0.01)
                        while held:
                            pool.give(held.pop(0))

                giver = asyncio.create_task(give_back_slowly())
                try:
                    got = await fetch(c, srv.url, pool, hold=held)
                finally:
                    giver.cancel()
                assert got == body
                assert pool.count == 2 and pool._made <= 2
    run(go())


def test_connect_failures_are_quick_and_named():
    from mirror.remote.http import ConnectFailed

    async def go():
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=2) as c:
            with pytest.raises(ConnectFailed):
                await fetch(c, f"http://127.0.0.1:{port}", BufferPool(64 << 10, 1))
    run(go())


def test_a_response_that_drips_under_the_read_timeout_is_cut_by_the_minimum_rate():
    """One byte every 0.2 s never trips a 1 s read timeout; a minimum rate of 1 KiB/s over
    1 s ends it (without it the response would take 100,000 x 0.2 s)."""
    from mirror.remote.http import TooSlow

    async def go():
        async with RawServer([paced(b"x" * 100, 1, 0.2, length=100_000)]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=1.0, min_rate=1024,
                                  rate_window=1.0) as c:
                c.WATCHDOG_TICK = 0.1
                pool = BufferPool(64 << 10, 2)
                t0 = time.monotonic()
                with pytest.raises(TooSlow):
                    await fetch(c, srv.url, pool)
                assert time.monotonic() - t0 < 5
    run(go())


def test_a_slow_but_steady_response_is_not_cut():
    """Above the minimum rate (here ~50 KB/s against 1 KiB/s), however slow, it completes."""
    body = b"y" * 60_000

    async def go():
        async with RawServer([paced(body, 5_000, 0.1)]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=1.0, min_rate=1024,
                                  rate_window=0.3) as c:
                c.WATCHDOG_TICK = 0.05
                assert await fetch(c, srv.url, BufferPool(64 << 10, 2)) == body
    run(go())


def test_a_response_much_slower_than_its_peers_is_cut_as_a_straggler():
    """Five responses in flight, one at a fiftieth of the others' rate: that one is cut (to be
    asked again on another connection); the others are left alone and complete."""
    from mirror.remote.http import Straggler

    fast_body = b"f" * 300_000

    script = [paced(fast_body, 10_000, 0.05) for _ in range(4)] + [paced(b"s" * 300_000, 200, 0.05)]

    async def go():
        async with RawServer(script) as srv:
            async with HttpClient(max_connections=5, connect_timeout=2, read_timeout=5, straggler_factor=8,
                                  straggler_window=0.4, straggler_peers=4) as c:
                c.WATCHDOG_TICK = 0.05
                pool = BufferPool(64 << 10, 10)
                return await asyncio.gather(*(fetch(c, srv.url, pool) for _ in range(5)), return_exceptions=True)

    results = run(go())
    assert sum(isinstance(r, Straggler) for r in results) == 1
    assert sorted(r for r in results if isinstance(r, bytes)) == [fast_body] * 4


# --- RFC 9110/9112 edges, each as a client must take it ----------------------------------------


def raw(data: bytes, *, close=False):
    async def act(w):
        w.write(data)
        await w.drain()
        if close:
            w.close()
    return act


def test_a_chunked_200_is_decoded_into_the_same_buffers_byte_exact():
    """A proxy may re-frame what S3 sent: chunks of odd sizes, a chunk extension, a trailer."""
    body = bytes(range(256)) * 1000
    pieces, at = [], 0
    for n in (1, 4095, 70000, 13, 100000):
        pieces.append(b"%x;ext=1\r\n%s\r\n" % (len(body[at:at + n]), body[at:at + n]))
        at += n
    pieces.append(b"%x\r\n%s\r\n" % (len(body[at:]), body[at:]))
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(pieces)
              + b"0\r\nX-Trailer: yes\r\n\r\n")

    async def go():
        async with RawServer([raw(answer), ok(b"again")]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=5) as c:
                pool = BufferPool(64 << 10, 2)
                async with c.get(srv.url + "/obj", {}) as ex:
                    assert ex.response.framing == "chunked" and ex.response.length is None
                assert await fetch(c, srv.url, pool) == b"again"
                assert srv.connections == 2  # the first body was not read: its connection was dropped
        async with RawServer([raw(answer), ok(b"next")]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=5) as c:
                pool = BufferPool(64 << 10, 2)
                assert await fetch(c, srv.url, pool, expect=len(body)) == body
                assert await fetch(c, srv.url, pool) == b"next"
                assert srv.connections == 1  # a chunked body read whole keeps the connection
    run(go())


def test_a_chunked_body_longer_or_shorter_than_announced():
    """Shorter: broken (the caller resumes from the byte reached). Longer: exactly the bytes
    announced reach the sink, never one past them (they would land on another part's range),
    and the out-of-step connection is not reused, as with Content-Length."""
    longer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n"

    async def go():
        async with RawServer([raw(longer), ok(b"next"), raw(longer)]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=5) as c:
                pool = BufferPool(64 << 10, 1)
                assert await fetch(c, srv.url, pool, expect=4) == b"abcd"
                assert await fetch(c, srv.url, pool) == b"next"
                assert srv.connections == 2  # the longer answer's connection was dropped
                with pytest.raises(StreamBroken):
                    await fetch(c, srv.url, pool, expect=9)
    run(go())


def test_a_chunked_body_cut_off_hands_over_what_came_then_breaks():
    async def go():
        async with RawServer([raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n10\r\nxy",
                                  close=True)]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=5) as c:
                pool = BufferPool(64 << 10, 1)
                got, sink = collector(pool)
                with pytest.raises(StreamBroken):
                    async with c.get(srv.url + "/obj", {}) as ex:
                        await ex.read_into(sink, pool, 22)
                assert bytes(got) == b"abcdefxy"  # every byte that came is kept (resume from there)
    run(go())


def test_a_body_delimited_by_the_close_is_read_to_the_end():
    async def go():
        async with RawServer([raw(b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 100_000, close=True)]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=5) as c:
                assert await fetch(c, srv.url, BufferPool(64 << 10, 2), expect=100_000) == b"z" * 100_000
    run(go())


def test_informational_answers_are_skipped_and_obsolete_folding_unfolded():
    answer = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
              b"HTTP/1.1 200 OK\r\nX-Folded: one\r\n  two\r\nContent-Length: 5\r\n\r\nhello")

    async def go():
        async with RawServer([raw(answer)]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=5) as c:
                pool = BufferPool(64 << 10, 1)
                got, sink = collector(pool)
                async with c.get(srv.url + "/obj", {}) as ex:
                    assert ex.response.status == 200
                    assert ex.response.headers["x-folded"] == "one two"
                    await ex.read_into(sink, pool, ex.response.length)
                assert bytes(got) == b"hello"
    run(go())


@pytest.mark.parametrize("value", [b"+12", b"1_000", b"\xd9\xa1\xd9\xa2", b"-1", b"12, 13", b"0x10"])
def test_content_length_must_be_plain_digits_and_agree(value):
    async def go():
        async with RawServer([raw(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n" + b"x" * 20)]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=2) as c:
                with pytest.raises(BadResponse):
                    await fetch(c, srv.url, BufferPool(64 << 10, 1))
    run(go())


def test_duplicate_content_lengths_are_fine_when_equal_and_refused_when_not():
    async def go():
        same = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc")
        differ = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
        async with RawServer([same, differ]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=2) as c:
                pool = BufferPool(64 << 10, 1)
                assert await fetch(c, srv.url, pool) == b"abc"
                with pytest.raises(BadResponse):
                    await fetch(c, srv.url, pool)
    run(go())


def test_too_many_header_fields_or_1xx_answers_are_refused():
    many = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(500)) + b"Content-Length: 0\r\n\r\n"
    informational = b"HTTP/1.1 100 Continue\r\n\r\n" * 50 + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    async def go():
        for answer in (many, informational):
            async with RawServer([raw(answer)]) as srv:
                async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=2) as c:
                    with pytest.raises(BadResponse):
                        await fetch(c, srv.url, BufferPool(64 << 10, 1))
    run(go())


def test_head_has_no_body_whatever_content_length_says_and_keeps_the_connection():
    async def go():
        async with RawServer([raw(b"HTTP/1.1 200 OK\r\nContent-Length: 123456\r\nETag: \"abc\"\r\n\r\n"),
                              ok(b"after")]) as srv:
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=2) as c:
                async with c.request("HEAD", srv.url + "/obj", {}) as ex:
                    assert ex.response.status == 200 and ex.response.framing == "none"
                    assert ex.response.headers["content-length"] == "123456"
                assert await fetch(c, srv.url, BufferPool(64 << 10, 1)) == b"after"
                assert srv.connections == 1
                assert srv.requests[0].startswith(b"HEAD /obj HTTP/1.1\r\n")
    run(go())


def test_the_host_header_is_what_botocores_signer_signs():
    """IPv6 literals bracketed, default ports dropped: a signature made for one Host and a
    request sent with another reads as 'access denied'."""
    from urllib.parse import urlsplit

    from botocore.auth import _host_from_url

    from mirror.remote.netenv import host_header

    for url in ("http://[::1]:9000/b/k", "https://[::1]:443/b/k", "http://[::1]/b", "https://s3.us-west-2.amazonaws.com:443/b",
                "http://127.0.0.1:80/b", "http://127.0.0.1:8080/b", "https://Bucket.S3.amazonaws.com/k",
                "https://h.example:8443/k"):
        parts = urlsplit(url)
        assert host_header(parts.scheme, parts.hostname, parts.port) == _host_from_url(url), url


def test_the_request_sent_names_the_host_as_signed():
    async def go():
        async with RawServer([ok(b"x"), ok(b"y")]) as srv:
            port = srv.url.rsplit(":", 1)[1]
            async with HttpClient(max_connections=1, connect_timeout=2, read_timeout=2) as c:
                assert await fetch(c, srv.url, BufferPool(64 << 10, 1)) == b"x"
                async with c.request("GET", srv.url + "/obj", {"Host": "signed.example"}) as ex:
                    await ex.read_error_body()
        assert b"\r\nHost: 127.0.0.1:" + port.encode() + b"\r\n" in srv.requests[0]
        assert b"\r\nHost: signed.example\r\n" in srv.requests[1] and srv.requests[1].count(b"Host:") == 1
    run(go())
