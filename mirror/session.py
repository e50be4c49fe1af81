"""The async core behind `Mirror`: what lives as long as a mirror does, and each command as
the pipeline it walks: manifest (versions.py) → plan input (gather.py) → plan (plan.py, pure)
→ run (engine/sync.py) → store.

A `Session` owns the `Remote` (its connection pool; made on first use, so a command that
needs no network never imports the network code), the `Limits`, the `Pacer` (a SlowDown
slows every later call, not only the one that was told), the `Store` (the one writer of
cache_dir), and what it learned (`Versions`: the manifest names online; `Facts`: the object
sizes and the tables). `Mirror` (api.py) runs these coroutines on one long-lived event loop
thread and takes the cache lock for every command that needs it.

Each operation works through a `Catalog` made for it: when the endpoint does not answer and
cache_dir holds what is needed, that operation goes on offline and the next one tries again.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .catalog import Catalog
from .config import DatasetConfig
from .engine.verify import Verify
from .errors import InputError, MirrorError, OfflineError, OfflineWarning, StoreError
from .events import Event
from .gather import Facts
from .gcpause import gc_paused
from .limits import Limits
from .manifest import Manifest, ManifestDiff, compare_manifests
from .model import ObjectRef, Selection
from .plan import Plan, content_sizes, make_sync_plan, shard_of
from .policy import Pacer, RetryPolicy
from .remote import OnDemand, RemoteSettings
from .store.facade import Store
from .store.layout import CacheLayout
from .versions import Versions

if TYPE_CHECKING:
    import pyarrow as pa

    from .engine.runner import Stats
    from .reports import AdoptReport, CacheStatus, IndexRebuilt, PruneReport, VerifyReport


class Session:
    STATUS_SECONDS = 2.0  # a long step (listing, HEADs) says how far it is at most this often

    def __init__(self, dataset: DatasetConfig, layout: CacheLayout | None, settings: RemoteSettings, *,
                 offline: bool = False, limits: Limits = Limits(), link_mode: str = "auto",
                 on_status: Callable[[str], None] | None = None) -> None:
        """`on_status`: one line at a time on long steps before a transfer starts (the CLI
        prints them on stderr)."""
        self.on_status = on_status
        self.dataset = dataset
        self.layout = layout
        self.store = Store(layout, link_mode=link_mode) if layout is not None else None  # the one writer
        self.settings = settings
        self.offline = offline
        self.limits = limits
        self.pacer = Pacer()
        self.versions = Versions(dataset, layout, self.store, self._status)
        self.facts = Facts(dataset, layout, self.store, on_status=self._status, progress_line=self._progress_line)
        self._remote: OnDemand | None = None
        self._manifest_etags: dict[str, str | None] = {}

    def catalog(self, remote: OnDemand | None = None) -> Catalog:
        """A Catalog for one operation, on the session's remote (or `remote`; None offline)."""
        if self.offline:
            return Catalog(self.dataset, self.layout, None, store=self.store)
        if remote is None:
            if self._remote is None:
                self._remote = OnDemand(self.settings, self.limits)
            remote = self._remote
        return Catalog(self.dataset, self.layout, remote, manifest_etags=self._manifest_etags, store=self.store)

    async def aclose(self) -> None:
        if self._remote is not None:
            old, self._remote = self._remote, None
            await old.aclose()

    def need_layout(self) -> CacheLayout:
        if self.layout is None:
            raise InputError("no cache directory given",
                             hint="pass --cache-dir DIR (or set VBO_MIRROR_CACHE_DIR), or Mirror(cache_dir=...)")
        return self.layout

    def current_manifest(self) -> str | None:
        return self.versions.current()

    def _status(self, line: str) -> None:
        if self.on_status is not None:
            self.on_status(line)

    def _progress_line(self, what: str) -> Callable[[int, int], None]:
        """done/total, said at most every STATUS_SECONDS, and once at the end."""
        last = [time.monotonic()]

        def report(done: int, total: int) -> None:
            now = time.monotonic()
            if done == total or now - last[0] >= self.STATUS_SECONDS:
                last[0] = now
                self._status(f"{what} {done:,}/{total:,}")

        return report

    # --- manifests and tables --------------------------------------------------------------------

    async def list_manifests(self) -> list[str]:
        return await self.versions.list_online(self.catalog())

    async def load_manifest(self, version: str) -> Manifest:
        self.need_layout()
        return await self.versions.use(self.catalog(), version)

    async def manifest(self, version: str | None) -> Manifest:
        return await self.versions.manifest(self.catalog(), version)

    async def manifest_summary(self, version: str | None) -> dict[str, Any]:
        from .describe import manifest_summary

        cat = self.catalog()
        m = await self.versions.manifest(cat, version, warn=True)
        return manifest_summary(m, await self.facts.sizes(cat, list(m.entries())), current=m.name == self.current_manifest())

    async def diff(self, a: str, b: str, *, detail: bool = False) -> ManifestDiff | dict[str, Any]:
        from .describe import compare_detail

        cat = self.catalog()
        ma = await cat.load(await self.versions.resolve(cat, a))
        mb = await cat.load(await self.versions.resolve(cat, b))
        diff = compare_manifests(ma, mb)
        if not detail:
            return diff
        return compare_detail(diff, ma, mb, await self.facts.sizes(cat, [*ma.entries(), *mb.entries()]))

    async def table(self, version: str | None, name: str, *, raw: bool = False) -> pa.Table | bytes:
        cat = self.catalog()
        m = await self.versions.manifest(cat, version)
        return await (self.facts.table_bytes if raw else self.facts.table)(cat, m, name)

    # --- plan and sync ---------------------------------------------------------------------------

    async def _plan(self, cat: Catalog, manifests: list[Manifest], selection: Selection, *,
                    verify: Verify | None = None) -> Plan:
        self.need_layout()
        with gc_paused():  # several objects per entry, none in a cycle: see mirror/gcpause.py
            given = await self.facts.gather(cat, manifests, selection, verify=verify, io_threads=self.limits.io_threads)
            return make_sync_plan(given, selection)

    async def plan(self, selection: Selection) -> Plan:
        cat = self.catalog()
        return await self._plan(cat, await self.versions.select(cat, selection.version), selection)

    async def sync(self, selection: Selection, *, limits: Limits | None = None, verify: Verify = Verify.MANIFEST,
                   link_mode: str | None = None, policy: RetryPolicy | None = None,
                   on_event: Callable[[Event], None] | None = None,
                   on_start: Callable[[Stats], None] | None = None) -> Stats:
        # Other limits than the session's (connections, buffers): a remote sized for this run
        # only; the session's own is left as it is (another thread may be using it).
        own = OnDemand(self.settings, limits) if limits is not None and limits != self.limits else None
        try:
            cat = self.catalog(own)
            manifests = await self.versions.select(cat, selection.version)
            if len(manifests) == 1 and self.current_manifest() is None:
                self.store.pin(manifests[0].name)  # the first version synced becomes current, as AllenSDK's load_manifest
            plan = await self._plan(cat, manifests, selection, verify=verify)
            return await self._run(cat, plan, limits=limits, verify=verify, link_mode=link_mode, policy=policy,
                                   on_event=on_event, on_start=on_start,
                                   bucket_of=manifests[0] if plan.layout == "bucket" else None)
        finally:
            if own is not None:
                await own.aclose()

    async def _run(self, cat: Catalog, plan: Plan, *, limits: Limits | None = None, verify: Verify = Verify.MANIFEST,
                   link_mode: str | None = None, **kw: Any) -> Stats:
        from .engine.sync import run_plan

        store = self.store.with_link_mode(link_mode or self.store.link_mode)  # None: the Mirror's
        return await run_plan(plan, store=store, remote=cat.remote, unreachable=cat.unreachable,
                              limits=limits or self.limits, verify=verify, pacer=self.pacer, **kw)

    async def locate(self, kind: str, item_id: int, version: str | None) -> tuple[Path, tuple | None]:
        """`get`, before the lock: where the file of `kind` for `item_id` goes, and what a
        fetch of it is about (None: it is there already)."""
        layout = self.need_layout()
        spec = self.dataset.file_kinds.get(kind)
        if spec is None:
            raise InputError(f"unknown file kind {kind!r}; known: {', '.join(sorted(self.dataset.file_kinds))}")
        if version == "all":
            raise InputError("get makes one file present: name one version (or 'latest'), not 'all'")
        from . import tables as tbl

        cat = self.catalog()
        m = await self.versions.manifest(cat, version)
        entry = tbl.entry_for_id(m, await self.facts.table(cat, m, spec.table), spec, int(item_id))
        selection = Selection.files(m.manifest_version, [entry.key])
        plan = await self._plan(cat, [m], selection)  # looks only
        todo = (m, selection) if plan.fetch or plan.link or plan.replace else None
        return layout.view_path(f"{m.view_dir}/{entry.relative_path}"), todo

    async def fetch(self, todo: tuple, on_event: Callable[[Event], None] | None = None) -> Stats:
        """`get`, under the lock: planned again (a sync that just finished may have done it all)."""
        m, selection = todo
        return await self.repair([m], selection.keys, on_event=on_event)

    async def repair(self, manifests: list[Manifest], keys: set[str] | frozenset[str], layout: str = "allensdk",
                     on_event: Callable[[Event], None] | None = None) -> Stats:
        cat = self.catalog()
        selection = Selection(None, frozenset(keys), strays=False, layout=layout)
        plan = await self._plan(cat, manifests, selection, verify=Verify.MANIFEST)
        return await self._run(cat, plan, on_event=on_event)

    async def urls(self, selection: Selection) -> list[str]:
        cat = self.catalog()
        entries = []
        for m in await self.versions.select(cat, selection.version):
            entries += await self.facts.selected(cat, m, selection)
        if selection.shard is not None:
            mine = shard_of(content_sizes(entries, await self.facts.sizes(cat, entries)), selection.shard)
            entries = [e for e in entries if e.file_hash in mine]
        return list(dict.fromkeys(self.settings.object_url(ObjectRef(e.bucket, e.key, e.version_id)) for e in entries))

    # --- looking at the mirror (api.py holds the cache lock where one is needed) ------------------

    async def status(self) -> CacheStatus:
        from .upkeep.status import cache_status

        layout = self.need_layout()
        manifests = list(self.versions.local().values())
        return await asyncio.to_thread(cache_status, layout, manifests, current=self.current_manifest())

    async def verify(self, *, fast: bool = False, repair: bool = False, jobs: int = 2,
                     on_event: Callable[[Event], None] | None = None, read_only: bool = False,
                     confirm: Callable[[dict], bool] | None = None) -> VerifyReport:
        from .upkeep import repair as fixing
        from .upkeep.status import verify_store

        layout = self.need_layout()
        manifests = list(self.versions.local().values())
        report = await asyncio.to_thread(verify_store, layout, manifests, fast=fast, jobs=jobs, on_event=on_event,
                                         read_only=read_only)
        if repair and report.damaged:
            async def fix(ms: list[Manifest], keys: set[str], where: str) -> Stats:
                return await self.repair(ms, keys, where, on_event=on_event)

            report = await fixing.repair(report, layout, self.store, manifests, fix, confirm)
        return report

    async def prune(self, keep: list[str] | None, *, dry_run: bool = False,
                    confirm: Callable[[PruneReport], bool] | None = None) -> PruneReport:
        """`keep` None: gc only."""
        from .catalog import resolve_name
        from .upkeep.prune import apply_prune, plan_prune, refusals

        layout = self.need_layout()

        def unreadable(name: str, exc: MirrorError) -> None:
            raise StoreError(f"cannot read {layout.manifest_path(name)}: prune cannot tell what that version "
                             f"needs ({exc})", hint="fix or remove that manifest, then prune again") from None

        manifests = self.versions.local(on_unreadable=unreadable)
        names = list(manifests) if keep is None else list(dict.fromkeys(
            resolve_name(self.dataset, v, list(manifests)) for v in keep))
        refused = refusals(layout, manifests, names, keep_given=keep is not None, current=self.current_manifest())
        if refused and not dry_run:
            raise refused[0]
        plan = await asyncio.to_thread(plan_prune, layout, self.store.objects, [manifests[n] for n in names],
                                       [m for n, m in manifests.items() if n not in names])
        report = plan.report(dry_run=dry_run, refused=refused)
        report.applied = not dry_run and (confirm is None or confirm(report))
        if report.applied:
            report.removed = await asyncio.to_thread(apply_prune, layout, self.store.objects, plan)
        return report

    async def adopt(self, *, dry_run: bool = False, jobs: int = 2) -> AdoptReport:
        """Take what AllenSDK downloaded into cache_dir into the store, in place (upkeep/adopt.py)."""
        from .upkeep.adopt import adopt_tree

        layout = self.need_layout()

        def skip(name: str, exc: MirrorError) -> None:
            warnings.warn(f"{name} is skipped: {exc}", OfflineWarning, stacklevel=4)

        manifests = list(self.versions.local(on_unreadable=skip).values())
        if not manifests:
            raise InputError(f"no manifest in {layout.root}: nothing to adopt",
                             hint="adopt works on a cache_dir that AllenSDK filled (its manifests are at the top)")
        return await asyncio.to_thread(adopt_tree, layout, self.store, manifests, dry_run=dry_run, jobs=jobs,
                                       on_progress=self._progress_line("adopt: files looked at"))

    async def rebuild_index(self, *, jobs: int = 2) -> IndexRebuilt:
        from .upkeep.status import rebuild_index

        layout = self.need_layout()
        return await asyncio.to_thread(rebuild_index, layout, list(self.versions.local().values()), jobs=jobs)

    async def bench(self, version: str | None, *, jobs: tuple[int, ...], part_sizes: tuple[int, ...], budget: int,
                    repeat: int, to_disk: Path | None, on_cell: Callable[[Any], None] | None) -> list:
        from .bench import Target as BenchTarget, choose, run_matrix

        if self.offline:
            raise OfflineError("bench measures the endpoint and cannot run --offline")
        cat = self.catalog()
        m = await self.versions.manifest(cat, version)
        entries = list(m.data_files.values()) or list(m.metadata_files.values())
        infos = await self.facts.sizes(cat, entries)
        targets = [BenchTarget(ObjectRef(e.bucket, e.key, e.version_id), info.size, info.etag)
                   for e in entries if (info := infos.get((e.key, e.version_id))) is not None and info.size > 0]
        if not targets:
            raise OfflineError(f"no object of {m.name} has a known size to measure with")
        return await run_matrix(self.settings, choose(targets, budget), jobs=list(jobs), part_sizes=list(part_sizes),
                                repeat=repeat, to_disk=to_disk, on_cell=on_cell or (lambda c: None))
