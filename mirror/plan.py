"""The planner: a PURE function from (target manifests, local state, remote sizes) to a Plan.

No I/O and no awaits here: what is on disk and what S3 said are gathered by the caller and
passed in as plain data, so every decision is testable with literals. Content is keyed by
the manifest hash: the same content is fetched once and linked at every view that wants it,
across versions and keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, NamedTuple

from .manifest import FileEntry, Manifest
from .model import ObjectInfo, ObjectRef, Selection, Shard


class Target(NamedTuple):
    """One view wanted on disk: `view` (relative to cache_dir) holding `entry`'s content."""

    view: str
    entry: FileEntry


class Fetch(NamedTuple):
    file_hash: str
    ref: ObjectRef
    size: int | None  # None when S3 did not tell (the engine HEADs it)
    etag: str | None
    views: tuple[str, ...]


class Link(NamedTuple):
    file_hash: str
    view: str
    size: int


@dataclass(frozen=True)
class LocalState:
    objects: Mapping[str, int]  # verified store objects: hash → size
    views: Mapping[str, str | None]  # existing view → hash it is a view of (None: something else)
    extra_files: frozenset[str] = frozenset()  # files under the target version dirs not wanted
    unverified: Mapping[str, int] = field(default_factory=dict)  # objects published unverified (not in `objects`)


@dataclass(frozen=True)
class Plan:
    manifests: tuple[str, ...]
    fetch: tuple[Fetch, ...] = ()
    link: tuple[Link, ...] = ()
    present: tuple[str, ...] = ()
    present_bytes: int = 0
    replace: tuple[str, ...] = ()  # views whose content is wrong: removed, then linked
    remove: tuple[str, ...] = ()  # files in the version dirs that no manifest wants
    # With --shard: which one, and the other shards' fetches that this one takes on once its
    # own are done, unless another process holds them (a shard that died or has not started).
    shard: "Shard | None" = None
    steal: tuple[Fetch, ...] = ()
    selection: dict | None = None  # by metadata: per manifest, what matched (tables.select_files)
    whole: tuple[str, ...] = ()  # version directories wanted whole (not a narrower selection)
    present_hashes: tuple[str, ...] = field(default=(), compare=False)  # each `present` view's content, in order
    layout: str = "allensdk"  # where the views are: AllenSDK's version directories, or "bucket"

    def views(self):
        """Every view this plan is about (wanted, whoever makes it)."""
        yield from self.present
        for x in self.link:
            yield x.view
        for f in (*self.fetch, *self.steal):
            yield from f.views

    def __repr__(self) -> str:
        # Short on purpose: asyncio's Runner reprs the task holding a run's result when it
        # restores its SIGINT handler, and the dataclass repr of a 100,000-entry plan took ~1.7 s.
        return (f"Plan({', '.join(self.manifests)}: fetch {len(self.fetch)}, link {len(self.link)}, "
                f"present {len(self.present)}, replace {len(self.replace)}, remove {len(self.remove)}"
                + (f", shard {self.shard}, steal {len(self.steal)}" if self.shard else "") + ")")

    # `fetch` may be a bulk.FetchColumns (a big manifest planned as columns): it answers these
    # itself, without making a Fetch per row.
    @property
    def fetch_bytes(self) -> int:
        if hasattr(self.fetch, "total_bytes"):
            return self.fetch.total_bytes()
        return sum(f.size or 0 for f in self.fetch)

    @property
    def unknown_sizes(self) -> int:
        if hasattr(self.fetch, "unknown_sizes"):
            return self.fetch.unknown_sizes()
        return sum(1 for f in self.fetch if f.size is None)

    @property
    def link_bytes(self) -> int:
        if hasattr(self.fetch, "linked_bytes"):
            return sum(link.size for link in self.link) + self.fetch.linked_bytes()
        return sum(link.size for link in self.link) + sum(f.size or 0 for f in self.fetch for _ in f.views[1:])

    @property
    def fetch_views(self) -> int:
        if hasattr(self.fetch, "view_count"):
            return self.fetch.view_count()
        return sum(len(f.views) for f in self.fetch)

    @property
    def views_total(self) -> int:
        return len(self.present) + len(self.link) + self.fetch_views

    def summary(self) -> dict:
        return {
            "manifests": list(self.manifests),
            "fetch": {"files": len(self.fetch), "bytes": self.fetch_bytes, "unknown_sizes": self.unknown_sizes},
            "link": {"files": len(self.link) + self.fetch_views - len(self.fetch), "bytes": self.link_bytes},
            "present": {"files": len(self.present), "bytes": self.present_bytes},
            "replace": len(self.replace),
            "remove": {"files": len(self.remove)},
            **({"shard": str(self.shard), "steal": {"files": len(self.steal),
                                                    "bytes": sum(f.size or 0 for f in self.steal)}}
               if self.shard else {}),
            **({"selection": self.selection} if self.selection else {}),
        }

    def to_dict(self) -> dict:
        """Plain data (for --json); built field by field: `dataclasses.asdict` deep-copies
        every string and took seconds on a 100,000-entry plan."""
        return {
            **self.summary(),
            "fetch_items": [{"file_hash": f.file_hash,
                             "ref": {"bucket": f.ref.bucket, "key": f.ref.key, "version_id": f.ref.version_id},
                             "size": f.size, "etag": f.etag, "views": list(f.views)} for f in self.fetch],
            "link_items": [{"file_hash": x.file_hash, "view": x.view, "size": x.size} for x in self.link],
            "present_items": list(self.present),
            "replace_items": list(self.replace),
            "remove_items": list(self.remove),
            **({"steal_items": [{"file_hash": f.file_hash, "key": f.ref.key, "size": f.size, "views": list(f.views)}
                                for f in self.steal]} if self.shard else {}),
        }


@dataclass(frozen=True)
class PlanInput:
    """What a plan is made from, gathered by `gather.Facts.gather` (all of a plan's I/O)."""

    manifests: tuple[str, ...]  # names, in order
    targets: list[Target]  # every view the selection wants (or a bulk.TargetTable: iterable like it)
    local: LocalState
    sizes: Mapping[tuple[str, str | None], ObjectInfo]  # what S3 said of the objects not in the store
    tops: tuple[str, ...]  # each manifest's top directory: AllenSDK's version dir, or the bucket layout's project
    selection: dict | None = None  # by metadata: per manifest, what matched (tables.select_files)


def make_sync_plan(given: PlanInput, selection: Selection) -> Plan:
    """The plan of a sync, a dry run or a repair, complete: the views to make, with one
    shard's split when `selection.shard`, which version directories are wanted whole, and
    where the views go. Pure."""
    if selection.shard is None:
        if hasattr(given.targets, "make_plan"):  # a bulk.TargetTable: the same rules, column-wise
            plan = given.targets.make_plan(given.local, given.sizes, manifests=given.manifests)
        else:
            plan = make_plan(given.targets, given.local, given.sizes, manifests=given.manifests)
    else:
        # Split by content over every selected object (not only what is missing), so that all
        # shards compute the same split whenever they start and whatever is done by then.
        mine = shard_of(content_sizes((t.entry for t in given.targets), given.sizes, given.local), selection.shard)
        own = make_plan([t for t in given.targets if t.entry.file_hash in mine], given.local, given.sizes,
                        manifests=given.manifests)
        rest = make_plan([t for t in given.targets if t.entry.file_hash not in mine], given.local, given.sizes,
                         manifests=given.manifests)
        plan = split_for_shard(rest, own, selection.shard)
    whole = selection.keys is None and not selection.by_metadata
    return replace(plan, selection=given.selection, whole=given.tops if whole else (), layout=selection.layout)


def content_sizes(entries: Iterable[FileEntry], sizes: Mapping[tuple[str, str | None], ObjectInfo],
                  local: LocalState | None = None) -> dict[str, int]:
    """Each content hash's size, for a shard split: the store's (or an unverified object's)
    where it holds it, else S3's, else 0 (unknown offline: every shard sees the same 0)."""
    out: dict[str, int] = {}
    for e in entries:
        if e.file_hash not in out:
            known = local.objects.get(e.file_hash, local.unverified.get(e.file_hash)) if local else None
            if known is None:
                info = sizes.get((e.key, e.version_id))
                known = info.size if info else 0
            out[e.file_hash] = known
    return out


def shard_entries(entries: list[FileEntry], sizes: Mapping[tuple[str, str | None], ObjectInfo],
                  shard: Shard) -> list[FileEntry]:
    """The entries whose content `shard` fetches (`urls --shard`): the split a sync's plan makes."""
    mine = shard_of(content_sizes(entries, sizes), shard)
    return [e for e in entries if e.file_hash in mine]


def targets_of(manifest: Manifest, entries: Iterable[FileEntry] | None = None, view_dir: str | None = None
               ) -> list[Target]:
    """`view_dir`: AllenSDK's `{project}-{version}` (None), or the bucket layout's `{project}`."""
    chosen = manifest.entries() if entries is None else entries
    top = view_dir or manifest.view_dir
    return [Target(f"{top}/{e.relative_path}", e) for e in chosen]


def make_plan(
    targets: Iterable[Target],
    local: LocalState,
    remote: Mapping[tuple[str, str], ObjectInfo] = {},
    *,
    manifests: Iterable[str] = (),
) -> Plan:
    """Decide, for every wanted view, whether it is present, can be linked from content
    already in the store, or needs its content fetched; and which stray files to remove."""
    present: list[str] = []
    present_hashes: list[str] = []
    present_bytes = 0
    links: list[Link] = []
    replace: list[str] = []
    fetch_views: dict[str, list[str]] = {}
    fetch_entry: dict[str, FileEntry] = {}
    wanted: set[str] = set()
    for t in targets:
        if t.view in wanted:
            continue
        wanted.add(t.view)
        h = t.entry.file_hash
        have = local.views.get(t.view, "absent")
        if have == h and h in local.objects:
            present.append(t.view)
            present_hashes.append(h)
            present_bytes += local.objects[h]
            continue
        if have != "absent":
            replace.append(t.view)
        if h in local.objects:
            links.append(Link(h, t.view, local.objects[h]))
        else:
            fetch_views.setdefault(h, []).append(t.view)
            fetch_entry.setdefault(h, t.entry)
    fetch = []
    for h, views in fetch_views.items():
        e = fetch_entry[h]
        info = remote.get((e.key, e.version_id))
        fetch.append(Fetch(h, ObjectRef(e.bucket, e.key, e.version_id),
                           info.size if info else None, info.etag if info else None, tuple(views)))
    # Biggest first: large objects start early and small ones fill the gaps at the end.
    fetch.sort(key=lambda f: (-(f.size or 0), f.ref.key))
    remove = sorted(p for p in local.extra_files if p not in wanted)
    return Plan(tuple(manifests), tuple(fetch), tuple(links), tuple(present), present_bytes,
                tuple(sorted(replace)), tuple(remove), present_hashes=tuple(present_hashes))


def shard_of(sizes: Mapping[str, int], shard: Shard) -> set[str]:
    """The content hashes shard `shard.index` of `shard.count` fetches: a deterministic,
    size-balanced split of `sizes` (hash -> bytes; every hash in exactly one shard). Largest
    first, each to the least loaded shard (ties: the lowest index), so every process that
    is given the same sizes computes the same split, and the shards' bytes differ by at most
    the largest object. Content, not keys, is split: every view of one object is made by the
    shard that fetched it."""
    import heapq

    loads = [(0, i) for i in range(shard.count)]
    mine: set[str] = set()
    for h, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        load, i = heapq.heappop(loads)
        if i == shard.index:
            mine.add(h)
        heapq.heappush(loads, (load + size, i))
    return mine


def split_for_shard(plan: Plan, own: Plan, shard: Shard) -> Plan:
    """A shard's plan from two plans over its own targets (`own`) and the others' (`plan`):
    its own work, the links and presence of the rest (cheap, and harmless to repeat), and the
    others' fetches as steals; stray views are removed by shard 0 only."""
    return Plan(own.manifests, own.fetch, own.link + plan.link, own.present + plan.present,
                own.present_bytes + plan.present_bytes, tuple(sorted(own.replace + plan.replace)),
                own.remove if shard.index == 0 else (), shard, plan.fetch, own.selection, own.whole,
                own.present_hashes + plan.present_hashes, own.layout)
