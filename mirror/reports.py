"""What the maintenance commands answer, as typed values: `status`, `verify` (and its repair),
`prune`/`gc`, `adopt`, `index rebuild`. (A sync answers `engine.runner.Stats`, a dry run a
`plan.Plan`.) Callers read attributes; `to_dict()` is the JSON form, for `--json` only, with
the keys in field order and an optional field left out while it is None.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def _optional(default: Any = None) -> Any:
    return field(default=default, metadata={"optional": True})


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Report:
    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get("optional"):
                continue
            out[f.name] = _plain(value)
        return out


# --- status -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VersionStatus(Report):
    manifest: str
    version: str
    current: bool
    layout: str  # "allensdk" (its version directory) or "bucket" (sync --layout bucket)
    directory: str
    files: int
    present: int
    missing: int
    wrong: int
    complete: bool
    logical_bytes: int  # what the present views add up to
    stored_bytes: int  # their objects, each counted once


@dataclass(frozen=True)
class CacheStatus(Report):
    cache_dir: str
    versions: list[VersionStatus]
    objects: int
    unverified_objects: int  # published without their BLAKE2b checked (--verify none)
    bytes_on_disk: int
    logical_bytes: int
    partials: int
    partial_bytes: int  # what a resume keeps, not the files' target sizes


# --- verify and repair --------------------------------------------------------------------------

@dataclass(frozen=True)
class Corruption(Report):
    file_hash: str
    path: str
    problem: str
    checked_by: str  # "blake2b" or "xxh3"


@dataclass(frozen=True)
class Repaired(Report):
    files_fetched: int
    views_linked: int
    failures: list  # engine.runner.Failure


@dataclass
class VerifyReport(Report):
    objects: int
    bytes: int
    mode: str  # "full" or "fast"
    corrupt: list[Corruption]
    views_wrong: list[str]
    views_missing_content: list[str]  # views of content that was found damaged
    views_missing: list[str]  # asked for by a sync and gone
    views_missing_unstored: list[str]  # of those, the ones whose content was never in the store
    orphan_partials_removed: list[str]
    ok: bool
    read_only: bool
    repaired: Repaired | None = _optional()
    repair_declined: list[str] | None = _optional()  # unstored views a repair was not allowed to fetch

    @property
    def damaged(self) -> bool:
        return bool(self.corrupt or self.views_wrong or self.views_missing_content or self.views_missing)


# --- prune and gc -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Refusal(Report):
    message: str
    hint: str | None


@dataclass(frozen=True)
class Removed(Report):
    views_removed: int
    objects_removed: int
    partials_removed: int
    temporaries_removed: int


@dataclass
class PruneReport(Report):
    dry_run: bool
    kept: list[str]
    dropped: list[str]
    views: int
    view_bytes: int
    left_not_views: list[str]  # files under dropped version directories that are not views: left (first 20)
    left_not_views_count: int
    objects: int
    object_bytes: int
    partials: int
    partial_bytes: int
    temporaries: int
    frees_bytes: int
    refused: list[Refusal]  # what a real prune refuses (a dry run reports them)
    applied: bool = False
    removed: Removed | None = _optional()

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update(out.pop("removed", None) or {})  # its counts at the top, as the JSON always had them
        return out


# --- adopt --------------------------------------------------------------------------------------

@dataclass
class Amount(Report):
    files: int = 0
    bytes: int = 0


@dataclass
class Tally(Report):
    """One kind of outcome of adopt: how many files, their bytes, a few examples."""

    files: int = 0
    bytes: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class AdoptReport(Report):
    cache_dir: str
    dry_run: bool
    entries: int  # manifest entries looked at
    adopted: Tally = field(default_factory=Tally)  # taken into the store, now hard-linked views
    present: Tally = field(default_factory=Tally)  # already views
    mismatch: Tally = field(default_factory=Tally)  # other bytes than the manifest says
    missing: Tally = field(default_factory=Tally)  # absent, or a broken link
    foreign: Tally = field(default_factory=Tally)  # links out of cache_dir, or to what is not a file
    failed: Tally = field(default_factory=Tally)  # could not be read
    objects_added: Amount = field(default_factory=Amount)
    copied: Amount = field(default_factory=Amount)  # objects copied in (another filesystem)
    symlinks: Amount = field(default_factory=Amount)  # AllenSDK's symlinks replaced by views
    rerooted: Amount = field(default_factory=Amount)
    duplicates_freed: Amount = field(default_factory=Amount)
    logical_bytes: int = 0
    stored_bytes: int = 0
    hashed_bytes: int = 0
    ok: bool = True
    allensdk_record: str | None = _optional()
    seconds: float = 0.0

    def tally(self, category: str) -> Tally:
        return getattr(self, category)


# --- index rebuild ------------------------------------------------------------------------------

@dataclass(frozen=True)
class IndexRebuilt(Report):
    objects: int
    bytes: int
    removed_corrupt: list[str]
