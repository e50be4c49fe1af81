"""A fault-injecting HTTP proxy in front of moto, for faults that must be exact and repeatable:
a stream cut after N bytes, a 503 SlowDown, corrupted bytes, a slow link.

It listens on 127.0.0.1 only, runs its own event loop in a thread, and is stopped by the test
that started it (a context manager). Everything else is moto's real answer.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from threaded import LoopThread

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection", "host"}


@dataclass
class Rule:
    """Applies to GETs whose path contains `key` (and, if set, whose Range header is `range`
    or absent when `range` is ""), at most `times` times."""

    key: str
    action: str  # "cut" | "status" | "corrupt" | "stall" (send `after` bytes, then hold the connection)
    times: int = 1
    after: int = 0  # cut: bytes sent before the connection drops
    status: int = 503
    code: str = "SlowDown"
    method: str = "GET"
    hits: int = 0
    in_query: bool = False  # match `key` against the path and the query (?versions, ...)


@dataclass
class FaultProxy(LoopThread):
    upstream: str
    rate: float | None = None  # bytes per second for response bodies (None: as fast as possible)
    rules: list[Rule] = field(default_factory=list)
    requests: list[tuple[str, str, dict]] = field(default_factory=list)
    peers: set = field(default_factory=set)  # client (host, port) of every connection seen
    in_flight: int = 0
    max_in_flight: int = 0  # requests being answered at once, at most
    ssl_context: object = None  # an ssl.SSLContext: serve https
    rate_keys: tuple = ()  # with `rate`: slow only GETs whose path contains one of these (empty: every body)
    count_keys: tuple = ()  # GETs whose body bytes are counted in `payload_bytes` as they are sent
    payload_bytes: int = 0  # counted bytes (sent to the socket: a killed client may not have read them all)
    stall_max: float = 30.0  # action "stall": hold the connection at most this long
    chunk_size: int = 16 << 10  # bodies are written (and counted, and paced) this many bytes at a time

    def __post_init__(self) -> None:
        self._init_loop("faultproxy")

    # --- lifecycle ---------------------------------------------------------------------

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"

    async def _shutdown(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    # --- the proxy ---------------------------------------------------------------------------

    def _match(self, request: web.Request) -> Rule | None:
        for rule in self.rules:
            where = request.path_qs if rule.in_query else request.path
            if rule.method == request.method and rule.key in where and rule.hits < rule.times:
                rule.hits += 1
                return rule
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs, dict(request.headers)))
        self.peers.add(request.transport.get_extra_info("peername"))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        rule = self._match(request)
        if rule is not None and rule.action == "status":
            body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{rule.code}</Code>"
                    f"<Message>injected</Message></Error>").encode()
            return web.Response(status=rule.status, body=body, content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        data = await request.read()
        async with self._session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                         data=data or None, allow_redirects=False) as up:
            resp = web.StreamResponse(status=up.status)
            for k, v in up.headers.items():
                if k.lower() not in HOP and k.lower() != "content-encoding":
                    resp.headers[k] = v
            await resp.prepare(request)
            sent = 0
            flipped = False
            counted = up.status < 300 and request.method == "GET" and any(k in request.path for k in self.count_keys)
            paced = bool(self.rate) and (not self.rate_keys or any(k in request.path for k in self.rate_keys))
            async for chunk in up.content.iter_chunked(self.chunk_size):
                if rule is not None and rule.action in ("cut", "stall") and sent + len(chunk) > rule.after:
                    head = chunk[: rule.after - sent]
                    await resp.write(head)
                    if counted:
                        self.payload_bytes += len(head)
                    if rule.action == "stall":
                        await self._hold(request)  # nothing more, connection open, until the client gives up
                    else:
                        await asyncio.sleep(0.05)
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
                if rule is not None and rule.action == "corrupt" and not flipped and chunk:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    flipped = True
                await resp.write(chunk)
                if counted:
                    self.payload_bytes += len(chunk)
                sent += len(chunk)
                if paced:
                    await asyncio.sleep(len(chunk) / self.rate)
            await resp.write_eof()
            return resp

    async def _hold(self, request: web.Request) -> None:
        deadline = time.monotonic() + self.stall_max
        while time.monotonic() < deadline:
            if request.transport is None or request.transport.is_closing():
                return
            await asyncio.sleep(0.05)

    def gets(self, key_part: str = "") -> list[tuple[str, dict]]:
        return [(p, h) for m, p, h in self.requests if m == "GET" and key_part in p]
