"""`prune --keep VERSION...` and `gc`: give back the disk that no kept version needs.

Both run under the exclusive cache lock, so no sync (nor any shard) runs meanwhile, and a
sync that starts waits or says the cache is in use. What a kept version needs is read from
its manifest in cache_dir: a manifest that cannot be read makes prune refuse (it cannot
tell what that version needs), never guess.

  prune   the views of every other version (files that are views of the store objects
          their manifest names; anything else under those directories is left and listed),
          those versions' manifests, then what gc removes.
  gc      store objects that no manifest left in cache_dir names, partial downloads and
          resume state of such objects, and temporaries of interrupted runs.

Nothing here follows a symlink: directories are walked without following them and a
version directory that is a symlink is refused.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import InputError, StoreError
from ..manifest import Manifest
from ..reports import PruneReport, Refusal, Removed
from ..store.index import StateIndex
from ..store import wanted
from ..store.layout import CacheLayout, sidecar_of
from ..store.objects import ObjectStore
from ..store.views import view_matches

if TYPE_CHECKING:
    from ..store.facade import Store
    from ..versions import Versions

TEMP_PREFIXES = (".vbo-tmp-", ".vbo-link-")


@dataclass
class PrunePlan:
    kept: list[str]  # versions
    dropped: list[str]
    manifests: list[str] = field(default_factory=list)  # manifest files of the dropped versions: removed
    views: list[str] = field(default_factory=list)  # view paths (relative to cache_dir) to remove
    view_bytes: int = 0
    foreign: list[str] = field(default_factory=list)  # files under dropped version dirs that are not views: left
    objects: list[tuple[str, int]] = field(default_factory=list)  # (hash, size) no kept manifest names
    partials: list[tuple[Path, int]] = field(default_factory=list)
    temporaries: list[Path] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)  # version directories of dropped versions (emptied ones go)

    @property
    def frees(self) -> int:
        """Bytes given back: objects removed (their views are links of them) and partials."""
        return sum(s for _, s in self.objects) + sum(s for _, s in self.partials)

    def report(self, *, dry_run: bool, refused: list[InputError]) -> PruneReport:
        return PruneReport(dry_run, self.kept, self.dropped, len(self.views), self.view_bytes, self.foreign[:20],
                           len(self.foreign), len(self.objects), sum(s for _, s in self.objects), len(self.partials),
                           sum(s for _, s in self.partials), len(self.temporaries), self.frees,
                           [Refusal(e.message, e.hint) for e in refused])


def _walk_files(root: Path):
    """(path, lstat) of every entry below `root` that is not a directory, without following
    symlinks; directories are yielded last-first by the caller's own rmdir pass."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath, name)
            yield p, os.lstat(p)


def plan_prune(layout: CacheLayout, objects: ObjectStore, kept: list[Manifest], dropped: list[Manifest]) -> PrunePlan:
    plan = PrunePlan([m.manifest_version for m in kept], [m.manifest_version for m in dropped],
                     manifests=[m.name for m in dropped])
    kept_dirs = {m.view_dir for m in kept}
    for m in dropped:
        if m.view_dir in kept_dirs:
            continue  # two manifests of one version directory: the kept one owns it
        root = layout.view_path(m.view_dir)
        if os.path.islink(root):
            raise StoreError(f"{root} is a symlink: vbo-mirror does not follow symlinks out of cache_dir",
                             hint="remove that symlink by hand, then prune again")
        if not root.is_dir():
            continue
        plan.dirs.append(m.view_dir)
        want = {f"{m.view_dir}/{e.relative_path}": e.file_hash for e in m.entries()}
        for p, st in _walk_files(root):
            rel = str(p.relative_to(layout.root))
            h = want.get(rel)
            if p.name.startswith(TEMP_PREFIXES):
                plan.temporaries.append(p)
            elif stat.S_ISREG(st.st_mode) and h is not None and view_matches(p, objects.path(h)):
                plan.views.append(rel)
                plan.view_bytes += st.st_size
            else:
                plan.foreign.append(rel)
    needed = {e.file_hash for m in kept for e in m.entries()}
    plan.objects = [(h, size) for h, size, _ in objects.iter_objects() if h not in needed]
    for p in objects.partials():
        if p.name.removesuffix(".partial") not in needed:
            with contextlib.suppress(FileNotFoundError):
                plan.partials.append((p, os.lstat(p).st_size))
    for m in kept:  # temporaries left in kept version directories by interrupted runs
        root = layout.view_path(m.view_dir)
        if root.is_dir() and not os.path.islink(root):
            plan.temporaries += [p for p, _ in _walk_files(root) if p.name.startswith(TEMP_PREFIXES)]
    if layout.objects.is_dir():
        plan.temporaries += [p for p, _ in _walk_files(layout.objects) if p.name.startswith(TEMP_PREFIXES)]
    return plan


def apply_prune(layout: CacheLayout, objects: ObjectStore, plan: PrunePlan) -> Removed:
    """Remove what `plan` lists (the caller holds the exclusive lock); returns counts."""
    removed_views = 0
    for rel in plan.views:
        removed_views += _unlink(layout, layout.view_path(rel))
    for p in plan.temporaries:
        _unlink(layout, p)
    for p, _ in plan.partials:
        for f in (p, sidecar_of(p)):
            _unlink(layout, f)
    index = StateIndex(layout)
    index.load()
    for h, _ in plan.objects:
        objects.remove(h)
        index.drop(h)
    for name in plan.manifests:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(layout.manifest_path(name))
    for d in plan.dirs:  # directories of dropped versions left empty
        remove_empty_dirs(layout.view_path(d))
        wanted.remove(layout, d)
    index.commit()
    return Removed(removed_views, len(plan.objects), len(plan.partials), len(plan.temporaries))


def _unlink(layout: CacheLayout, path: Path) -> int:
    """Remove `path` (never a directory) by unlinkat in its directory, reached from cache_dir
    without following symlinks (a symlinked directory on the way raises StoreError); 1 if it
    was there."""
    try:
        dfd, name = layout.open_parent(path)
    except FileNotFoundError:
        return 0
    try:
        os.unlink(name, dir_fd=dfd)
        return 1
    except FileNotFoundError:
        return 0
    finally:
        os.close(dfd)


def remove_empty_dirs(root: Path) -> None:
    """Directories under (and including) `root` that are empty, deepest first; never follows
    a symlink and never removes a directory that still holds anything."""
    if not root.is_dir() or os.path.islink(root):
        return
    for dirpath, _dirnames, _files in sorted(os.walk(root, followlinks=False), key=lambda t: -len(t[0])):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def refusals(layout: CacheLayout, manifests: dict[str, Manifest], kept_names: list[str], *, keep_given: bool,
             current: str | None) -> list[InputError]:
    """What a real prune would refuse (a dry run shows them beside its plan): dropping the
    current version, or a version the bucket layout holds (its views are that version's links)."""
    out: list[InputError] = []
    if keep_given and current is not None and current in manifests and current not in kept_names:
        v = manifests[current].manifest_version
        out.append(InputError(f"the current version {v} (_manifest_last_used.txt) is not among the kept ones",
                              hint=f"add --keep {v}, or make a kept version current first (`manifests use`)"))
    for name, m in manifests.items():
        if name not in kept_names and os.path.isfile(layout.view_path(f"{m.project_name}/manifests/{m.name}")):
            out.append(InputError(
                f"the bucket layout ({m.project_name}/) holds version {m.manifest_version}",
                hint=f"add --keep {m.manifest_version}, or sync the bucket layout to a kept "
                     "version first (sync --layout bucket --version V)"))
    return out


async def prune_versions(layout: CacheLayout, store: Store, versions: Versions, keep: list[str] | None, *,
                         dry_run: bool, confirm: Callable[[PruneReport], bool] | None) -> PruneReport:
    """`prune --keep` (`keep` None: `gc`), the caller holding the exclusive cache lock: every
    manifest in cache_dir must be readable (what a version needs is read from it), refusals
    are raised (or, in a dry run, reported), and `confirm` is shown the plan first."""
    import asyncio

    from ..catalog import resolve_name

    def unreadable(name: str, exc: Exception) -> None:
        raise StoreError(f"cannot read {layout.manifest_path(name)}: prune cannot tell what that version "
                         f"needs ({exc})", hint="fix or remove that manifest, then prune again") from None

    manifests = versions.local(on_unreadable=unreadable)
    names = list(manifests) if keep is None else list(dict.fromkeys(
        resolve_name(versions.dataset, v, list(manifests)) for v in keep))
    refused = refusals(layout, manifests, names, keep_given=keep is not None, current=versions.current())
    if refused and not dry_run:
        raise refused[0]
    plan = await asyncio.to_thread(plan_prune, layout, store.objects, [manifests[n] for n in names],
                                   [m for n, m in manifests.items() if n not in names])
    report = plan.report(dry_run=dry_run, refused=refused)
    report.applied = not dry_run and (confirm is None or confirm(report))
    if report.applied:
        report.removed = await asyncio.to_thread(apply_prune, layout, store.objects, plan)
    return report
