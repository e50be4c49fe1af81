"""Just enough semver to order manifest versions ("latest" is the semver maximum, not the
text maximum: 0.10.0 > 0.9.0)."""

from __future__ import annotations

import re
from functools import total_ordering

_SEMVER = re.compile(
    r"^v?(?P<major>0|[1-9][0-9]*)\.(?P<minor>0|[1-9][0-9]*)\.(?P<patch>0|[1-9][0-9]*)"
    r"(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$"
)


@total_ordering
class Version:
    __slots__ = ("text", "_key")

    def __init__(self, text: str) -> None:
        m = _SEMVER.match(text)
        if not m:
            raise ValueError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        self.text = text[1:] if text.startswith("v") else text
        pre = m.group("pre")
        # A pre-release sorts before its release; identifiers compare numerically when numeric.
        pre_key: tuple = (1,) if pre is None else (0, *((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")))
        self._key = (int(m.group("major")), int(m.group("minor")), int(m.group("patch")), pre_key)

    @classmethod
    def is_valid(cls, text: str) -> bool:
        return bool(_SEMVER.match(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key == other._key

    def __lt__(self, other: "Version") -> bool:
        return self._key < other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Version({self.text!r})"
