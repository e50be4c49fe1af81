"""`--bwlimit`: one token bucket for every connection of a process.

Bytes are counted as they are read from the sockets. A connection that overdraws the
bucket stops reading (the kernel's receive window then slows the server down: no bytes
are dropped or fetched twice) until the bucket has refilled, then every paused connection
resumes at once, so none is starved. The burst is a tenth of a second of the rate (at least
64 KiB): short enough that the rate over any second stays near the limit.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

class TokenBucket:
    def __init__(self, rate: float, *, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(64 << 10, rate / 10)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()
        self._paused: list[Callable[[], None]] = []
        self._timer: asyncio.TimerHandle | None = None

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def spend(self, n: int) -> float:
        """Take `n` bytes; the seconds the caller must wait before reading more (0: none)."""
        self._refill()
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def pause(self, resume: Callable[[], None], loop: asyncio.AbstractEventLoop, delay: float) -> None:
        """Call `resume` once the bucket is back in credit (shared by every paused reader)."""
        self._paused.append(resume)
        if self._timer is None:
            self._timer = loop.call_later(delay, self._wake, loop)

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._refill()
        if self._tokens < 0:
            self._timer = loop.call_later(-self._tokens / self.rate, self._wake, loop)
            return
        paused, self._paused = self._paused, []
        for resume in paused:
            resume()

    async def wait(self, n: int) -> None:
        """For a reader that can await (the aiohttp transport)."""
        delay = self.spend(n)
        if delay > 0:
            await asyncio.sleep(delay)
