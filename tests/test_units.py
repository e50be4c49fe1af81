"""One grammar for sizes and rates: decimal and binary units everywhere, a bare number said to
be bytes/s, part sizes rounded to whole 4 KiB blocks (and said so)."""

from __future__ import annotations

import pytest

from mirror.errors import InputError
from mirror.units import align_part_size, parse_rate, parse_size


@pytest.mark.parametrize("text,size", [("16MB", 16_000_000), ("16MiB", 16 << 20), ("16M", 16_000_000),
                                       ("1GiB", 1 << 30), ("1.5 GB", 1_500_000_000), ("1048576", 1 << 20),
                                       ("64KiB", 64 << 10), ("64kb", 64_000), ("2 bytes", 2)])
def test_sizes_in_any_unit(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["16Mbit", "8MiB/s", "big", "", "0", "0.5"])
def test_what_is_not_a_size_is_refused_with_examples(text):
    with pytest.raises(InputError, match="size"):
        parse_size(text, what="--part-size")


def test_a_bare_rate_is_bytes_per_second_and_says_so():
    rate, note = parse_rate("5000000")
    assert rate == 5_000_000 and "bytes/s" in note and "5 MB/s" in note
    with pytest.raises(InputError, match=r"a number without a unit is bytes/s"):
        parse_rate("5")
    assert parse_rate("5MB/s") == (5_000_000, None) and parse_rate("5MiB") == (5 << 20, None)


def test_part_sizes_round_to_whole_blocks_and_say_it_once():
    assert align_part_size(16 << 20) == (16 << 20, None)
    size, note = align_part_size(16_000_000, text="16MB")
    assert size % 4096 == 0 and abs(size - 16_000_000) < 4096 and "16MB" in note and "4 KiB" in note


def test_the_cli_takes_decimal_part_sizes_and_bare_rates(cli, replica):
    r = cli("sync", "--version", "1.0.1", "--part-size", "100kB", "--bwlimit", "50000000")
    assert r.stderr.count("note:") == 2
    assert "rounded to 98,304" in r.stderr and "bytes/s" in r.stderr
    r = cli("sync", "--version", "1.0.1", "--bwlimit", "5", expect=2)
    assert "bytes/s" in r.stderr and "Traceback" not in r.stderr
