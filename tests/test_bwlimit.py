"""`--bwlimit`: one token bucket per process, over every connection."""

from __future__ import annotations

import json

import pytest

from mirror.errors import InputError
from mirror.remote.ratelimit import TokenBucket
from mirror.units import parse_rate


@pytest.mark.parametrize("text,rate", [("200MB/s", 200e6), ("1Gbit/s", 125e6), ("50MiB/s", 50 << 20),
                                       ("800k", 800e3), ("1.5 GB/s", 1.5e9), ("64KiBps", 64 << 10),
                                       ("10Mbit/s", 1.25e6)])
def test_rates_parse_in_bytes_per_second(text, rate):
    assert parse_rate(text) == (pytest.approx(rate), None)


@pytest.mark.parametrize("text", ["fast", "10 parsecs", "-5MB/s", "100", "MB/s", ""])
def test_bad_rates_are_refused(text):
    with pytest.raises(InputError, match="bwlimit"):
        parse_rate(text)


def test_the_bucket_allows_its_rate_and_a_short_burst():
    now = [0.0]
    b = TokenBucket(1_000_000, clock=lambda: now[0])  # burst: 0.1 s = 100 kB
    assert b.spend(100_000) == 0.0
    assert b.spend(50_000) == pytest.approx(0.05)  # 50 kB in debt: 50 ms at 1 MB/s
    now[0] += 0.05
    assert b.spend(0) == 0.0
    now[0] += 10.0  # idle time does not pile up beyond the burst
    assert b.spend(100_000) == 0.0 and b.spend(1) > 0


def test_a_sync_under_bwlimit_stays_within_5_percent_of_it(cli, replica):
    limit = 500_000
    s = json.loads(cli("--json", "sync", "--version", "1.0.1", "--bwlimit", "500kB/s").stdout.splitlines()[-1])
    assert s["bytes_fetched"] > 2_000_000  # seconds of transfer, so startup and the burst are small beside it
    rate = s["bytes_fetched"] / s["seconds"]
    assert rate <= limit * 1.05, rate
    assert rate >= limit * 0.85, rate  # and not far below it (the sandbox serves several MB/s)
    r = cli("sync", "--bwlimit", "fast", expect=2)
    assert "--bwlimit" in r.stderr
