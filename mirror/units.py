"""Sizes and rates as users type them, one grammar for every option (`--part-size`,
`bench --bytes`, `--bwlimit`): a number, then an optional unit, decimal (`k M G T`, 1000s) or
binary (`Ki Mi Gi Ti`, 1024s), then an optional `B`/`byte(s)`, or for rates `bit(s)`, and for
rates an optional `/s` or `ps`. `16MB` is 16,000,000 bytes, `16MiB` 16,777,216; a lowercase `b`
alone is bytes too (`Mb/s` is ambiguous: spell `Mbit/s` for bits)."""

from __future__ import annotations

import re

from .errors import InputError
from .limits import PART_ALIGN

_PREFIX = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_GRAMMAR = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?:([kmgt])(i)?)?\s*(b|bytes?|bits?)?\s*(/\s*s|ps)?\s*$",
                      re.I)


def _parse(text: str, *, what: str, rate: bool) -> tuple[float, bool]:
    """(bytes, or bytes/s; whether the number had no unit at all)."""
    examples = "200MB/s, 1Gbit/s, 50MiB/s" if rate else "16MB, 8MiB, 1GiB, 1048576"
    m = _GRAMMAR.match(text or "")
    if not m or (m.group(5) and not rate):
        raise InputError(f"{what} {text!r}: not a {'rate' if rate else 'size'} (examples: {examples})")
    number, prefix, binary, unit, per_second = m.groups()
    value = float(number) * (1024 if binary else 1000) ** _PREFIX[(prefix or "").lower()]
    if unit and unit.lower().startswith("bit"):
        if not rate:
            raise InputError(f"{what} {text!r}: a size is in bytes (examples: {examples})")
        value /= 8
    return value, not (prefix or unit or per_second)


def parse_size(text: str, *, what: str = "size") -> int:
    value, _ = _parse(text, what=what, rate=False)
    if value < 1 or value != int(value):
        raise InputError(f"{what} {text!r}: a size is a whole, positive number of bytes")
    return int(value)


def parse_rate(text: str, *, what: str = "--bwlimit", minimum: float = 1024) -> tuple[float, str | None]:
    """(bytes/s, a note to show once when the number had no unit: it is taken as bytes/s)."""
    value, bare = _parse(text, what=what, rate=True)
    if value < minimum:
        said = " (a number without a unit is bytes/s)" if bare else ""
        raise InputError(f"{what} {text!r}: {value:g} bytes/s{said}, under the minimum of 1 KiB/s",
                         hint="e.g. --bwlimit 200MB/s or 1Gbit/s")
    note = f"{what} {text}: a number without a unit is bytes/s ({value / 1e6:g} MB/s)" if bare else None
    return value, note


def align_part_size(size: int, *, what: str = "--part-size", text: str | None = None) -> tuple[int, str | None]:
    """A part size rounded to whole 4 KiB blocks (direct I/O writes them), and a note saying so
    when it changed."""
    aligned = max(PART_ALIGN, round(size / PART_ALIGN) * PART_ALIGN)
    if aligned == size:
        return size, None
    return aligned, (f"{what} {text or size}: {size:,} bytes, rounded to {aligned:,} "
                     f"(a multiple of 4 KiB, which direct I/O writes)")


def size_flag(n: int) -> str:
    """A size as an option value that means exactly `n` bytes (`32MiB`, `98304`)."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)
