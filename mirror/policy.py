"""The retry policy and the pacer: named objects passed in, never module globals. On the lowest
floor: the engine and the catalog retry by the same rules."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from .errors import MirrorError, SlowDown, StoreError


@dataclass
class RetryPolicy:
    attempts: int = 6  # tries of one request (a broken transfer resumes where it stopped)
    integrity_attempts: int = 3  # whole-file downloads after a hash mismatch
    base_delay: float = 0.2
    max_delay: float = 15.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter: clients that failed together retry apart."""
        return self.rng.uniform(0, min(self.max_delay, self.base_delay * (2 ** attempt)))


class Pacer:
    """One per remote: when S3 says SlowDown, every worker slows down, not just the one
    that was told. Requests are spaced at least `interval` apart; the interval doubles on
    SlowDown and decays on success."""

    def __init__(self, *, max_interval: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.interval = 0.0
        self.max_interval = max_interval
        self._next = 0.0
        self._clock = clock
        self._sleep = sleep
        self.slowdowns = 0

    async def wait(self) -> None:
        if self.interval <= 0:
            return
        now = self._clock()
        at = max(now, self._next)
        self._next = at + self.interval
        if at > now:
            await self._sleep(at - now)

    def observe(self, exc: MirrorError) -> None:
        """React to a failed request: only SlowDown changes the pace."""
        if isinstance(exc, SlowDown):
            self.slow_down()

    def slow_down(self) -> None:
        self.slowdowns += 1
        self.interval = min(self.max_interval, max(0.05, self.interval * 2))

    def success(self) -> None:
        if self.interval:
            self.interval = 0.0 if self.interval < 0.01 else self.interval * 0.9


async def call_with_retries(fn: Callable[[], Awaitable], *, policy: RetryPolicy, pacer: "Pacer | None" = None,
                            on_retry: Callable[[MirrorError, int, float], None] | None = None,
                            progressed: Callable[[], bool] | None = None,
                            sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
    """Await `fn()` until it succeeds, retrying errors whose kind says `retry`, with backoff;
    the error that ends it (not retryable, or the retries ran out) is raised as it is, its
    `outcome` left for the caller to act on. With a `pacer`, every attempt is paced and a
    SlowDown slows everyone. `progressed()`, asked after each failure, says whether that
    attempt moved forward (a resumable transfer that got some bytes): then the failures
    before it no longer count against `policy.attempts`."""
    failures = 0
    while True:
        if pacer is not None:
            await pacer.wait()
        try:
            result = await fn()
        except MirrorError as exc:
            if pacer is not None:
                pacer.observe(exc)
            if not exc.retry:
                raise
            failures = 1 if progressed is not None and progressed() else failures + 1
            if failures >= policy.attempts:
                raise
            delay = policy.delay(failures - 1)
            if on_retry is not None:
                on_retry(exc, failures, delay)
            await sleep(delay)
        else:
            if pacer is not None:
                pacer.success()
            return result


def first_error(eg: BaseExceptionGroup) -> BaseException:
    """The error to report from a TaskGroup's group: a disk error first (it stops
    everything), else the first of ours, else the first of any kind."""
    if not isinstance(eg, BaseExceptionGroup):
        return eg
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for x in e.exceptions:
                walk(x)
        else:
            leaves.append(e)

    walk(eg)
    for kind in (StoreError, MirrorError):
        for e in leaves:
            if isinstance(e, kind):
                return e
    return leaves[0] if leaves else eg
