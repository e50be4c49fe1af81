"""Pieces of the engine whose behaviour must be exact: the pacer (with an injected clock),
the ordered hasher (parts landing out of order), the multipart ETag, the retry backoff."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random

from mirror.engine.policy import Pacer, RetryPolicy
from mirror.engine.transfer import _OrderedHasher
from mirror.hashing import MultiHasher


def test_pacer_spaces_requests_after_slowdown_and_recovers():
    now = [100.0]
    slept = []

    async def sleep(d):
        slept.append(d)
        now[0] += d

    p = Pacer(max_interval=1.0, clock=lambda: now[0], sleep=sleep)

    async def go():
        await p.wait()
        assert slept == []  # no slowdown yet: no waiting
        p.slow_down()
        p.slow_down()
        assert p.interval == 0.1 and p.slowdowns == 2
        for _ in range(3):
            await p.wait()
        assert [round(d, 9) for d in slept] == [0.1, 0.1]  # the first goes at once, the next are spaced
        for _ in range(10):
            p.slow_down()
        assert p.interval == 1.0  # capped
        for _ in range(60):
            p.success()
        assert p.interval < 0.01

    asyncio.run(go())


def test_retry_delays_are_jittered_and_capped():
    pol = RetryPolicy(base_delay=0.5, max_delay=4.0, rng=random.Random(1))
    for attempt in range(10):
        d = pol.delay(attempt)
        assert 0 <= d <= min(4.0, 0.5 * 2 ** attempt)
    assert len({round(pol.delay(3), 6) for _ in range(20)}) > 1


def test_ordered_hasher_gives_the_whole_file_digest_whatever_the_order(tmp_path):
    data = random.Random(3).randbytes(1_000_003)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        parts = [(s, min(s + 65_536, len(data))) for s in range(0, len(data), 65_536)]
        random.Random(4).shuffle(parts)
        h = _OrderedHasher(fd, MultiHasher(), done=[[0, 65_536]])  # a resumed prefix
        for s, e in parts:
            if s >= 65_536:
                h.wrote(s, [data[s:e]])
        assert h.finish() == len(data)
        assert h.hasher.digests().blake2b == hashlib.blake2b(data).hexdigest()
    finally:
        os.close(fd)


def test_multipart_etag_matches_s3s_rule():
    data = random.Random(5).randbytes(300_000)
    part = 100_000
    md5s = b"".join(hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part))
    want = f"{hashlib.md5(md5s).hexdigest()}-3"
    h = MultiHasher(etag_part_size=part)
    for i in range(0, len(data), 7_777):
        h.update(data[i:i + 7_777])
    assert h.digests().etag == want
    h = MultiHasher(want_etag=True)
    h.update(data)
    assert h.digests().etag == hashlib.md5(data).hexdigest()
