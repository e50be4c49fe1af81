"""The retry policy and the pacer: named objects passed in, never module globals."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from ..errors import (
    AccessDenied,
    Action,
    EndpointUnreachable,
    IntegrityError,
    LockHeldError,
    MirrorError,
    ObjectChanged,
    ObjectNotFound,
    ProtocolError,
    RequestRejected,
    ServerError,
    SlowDown,
    StoreError,
    TransferError,
    ViewBlocked,
)

# What happens after each kind of error: the one place that decides. Pinned by a test.
RETRY_TABLE: dict[type[MirrorError], Action] = {
    EndpointUnreachable: Action.RETRY,
    TransferError: Action.RETRY,
    ServerError: Action.RETRY,
    SlowDown: Action.RETRY,
    ProtocolError: Action.RETRY,
    IntegrityError: Action.RETRY,
    ObjectNotFound: Action.SKIP_FILE,
    AccessDenied: Action.SKIP_FILE,
    ObjectChanged: Action.SKIP_FILE,
    RequestRejected: Action.SKIP_FILE,
    ViewBlocked: Action.SKIP_FILE,
    StoreError: Action.STOP_RUN,
    LockHeldError: Action.STOP_RUN,
}


def lookup(table: dict[type[MirrorError], Action], exc: MirrorError, default: Action) -> Action:
    """The action of the most specific error class of `exc` that `table` names."""
    return next((table[cls] for cls in type(exc).__mro__ if cls in table), default)


def action_for(exc: MirrorError) -> Action:
    return lookup(RETRY_TABLE, exc, exc.action)


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
                            sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
    """Await `fn()` until it succeeds, retrying what the retry table calls retryable, with
    backoff; with a `pacer`, every attempt is paced and a SlowDown slows everyone."""
    for attempt in range(policy.attempts):
        if pacer is not None:
            await pacer.wait()
        try:
            result = await fn()
        except MirrorError as exc:
            if pacer is not None:
                pacer.observe(exc)
            if action_for(exc) is not Action.RETRY or attempt == policy.attempts - 1:
                raise
            delay = policy.delay(attempt)
            if on_retry is not None:
                on_retry(exc, attempt + 1, delay)
            await sleep(delay)
        else:
            if pacer is not None:
                pacer.success()
            return result
    raise AssertionError("unreachable")


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
