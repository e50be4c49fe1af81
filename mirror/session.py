"""The async core behind `Mirror`: what lives as long as a mirror does, and each command as
the pipeline it walks: manifest (versions.py) → plan input (gather.py) → plan (plan.py, pure)
→ run (engine/sync.py) → store.

A `Session` owns the `Remote` (made on first use: a command that needs no network never
imports it), the `Limits`, the `Pacer` (a SlowDown slows every later call), the `Store` (the
one writer of cache_dir), and what it learned (`Versions`, `Facts`). Each operation works
through a `Catalog` of its own (offline fallback is per operation). `Mirror` (api.py) runs
these coroutines on one event loop thread and takes the cache lock wherever one is needed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .catalog import Catalog
from .config import DatasetConfig
from .engine.verify import Verify
from .errors import InputError, OfflineError
from .events import Event
from .gather import Facts
from .gcpause import gc_paused
from .limits import Limits
from .manifest import Manifest, ManifestDiff, compare_manifests
from .model import ObjectRef, Selection
from .progress import StatusLines
from .plan import Plan, make_sync_plan, shard_entries
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
        self.status_lines = StatusLines(on_status, lambda: self.STATUS_SECONDS)
        self.dataset = dataset
        self.layout = layout
        self.store = Store(layout, link_mode=link_mode) if layout is not None else None  # the one writer
        self.settings = settings
        self.offline = offline
        self.limits = limits
        self.pacer = Pacer()
        self.versions = Versions(dataset, layout, self.store, self.status_lines)
        self.facts = Facts(dataset, layout, self.store, self.status_lines)
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
        """`get`, before the lock (it only looks): where the file of `kind` for `item_id` goes,
        and what `fetch` is to make present (None: it is there already)."""
        layout, spec = self.need_layout(), self.facts.file_kind(kind)
        if version == "all":
            raise InputError("get makes one file present: name one version (or 'latest'), not 'all'")
        cat = self.catalog()
        m = await self.versions.manifest(cat, version)
        entry = await self.facts.entry_for(cat, m, spec, item_id)
        plan = await self._plan(cat, [m], Selection.files(m.manifest_version, [entry.key]))
        todo = (m, entry.key) if plan.fetch or plan.link or plan.replace else None
        return layout.view_path(f"{m.view_dir}/{entry.relative_path}"), todo

    async def fetch(self, todo: tuple, on_event: Callable[[Event], None] | None = None) -> Stats:
        """`get`, under the lock: planned again (a sync that just finished may have done it all)."""
        return await self.repair([todo[0]], {todo[1]}, on_event=on_event)

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
            entries = shard_entries(entries, await self.facts.sizes(cat, entries), selection.shard)
        return list(dict.fromkeys(self.settings.object_url(ObjectRef(e.bucket, e.key, e.version_id)) for e in entries))

    # --- looking at the mirror (api.py holds the cache lock where one is needed) ------------------

    async def status(self) -> CacheStatus:
        from .upkeep.status import cache_status

        return await asyncio.to_thread(cache_status, self.need_layout(), list(self.versions.local().values()),
                                       current=self.current_manifest())

    async def verify(self, *, fast: bool = False, repair: bool = False, jobs: int = 2,
                     on_event: Callable[[Event], None] | None = None, read_only: bool = False,
                     confirm: Callable[[dict], bool] | None = None) -> VerifyReport:
        from .upkeep import repair as fixing
        from .upkeep.status import verify_store

        layout, manifests = self.need_layout(), list(self.versions.local().values())
        report = await asyncio.to_thread(verify_store, layout, manifests, fast=fast, jobs=jobs, on_event=on_event,
                                         read_only=read_only)
        if repair and report.damaged:
            report = await fixing.repair(report, layout, self.store, manifests, confirm=confirm,
                                         fix=lambda ms, keys, where: self.repair(ms, keys, where, on_event=on_event))
        return report

    async def prune(self, keep: list[str] | None, *, dry_run: bool = False,
                    confirm: Callable[[PruneReport], bool] | None = None) -> PruneReport:
        from .upkeep.prune import prune_versions  # keep None: gc

        return await prune_versions(self.need_layout(), self.store, self.versions, keep, dry_run=dry_run,
                                    confirm=confirm)

    async def adopt(self, *, dry_run: bool = False, jobs: int = 2) -> AdoptReport:
        """Take what AllenSDK downloaded into cache_dir into the store, in place (upkeep/adopt.py)."""
        from .upkeep.adopt import adopt_cache

        return await asyncio.to_thread(adopt_cache, self.need_layout(), self.store, self.versions, dry_run=dry_run,
                                       jobs=jobs, on_progress=self.status_lines.counter("adopt: files looked at"))

    async def rebuild_index(self, *, jobs: int = 2) -> IndexRebuilt:
        from .upkeep.status import rebuild_index

        return await asyncio.to_thread(rebuild_index, self.need_layout(), list(self.versions.local().values()), jobs=jobs)

    async def bench(self, version: str | None, *, jobs: tuple[int, ...], part_sizes: tuple[int, ...], budget: int,
                    repeat: int, to_disk: Path | None, on_cell: Callable[[Any], None] | None) -> list:
        from .bench import choose, run_matrix, targets_of

        if self.offline:
            raise OfflineError("bench measures the endpoint and cannot run --offline")
        cat = self.catalog()
        m = await self.versions.manifest(cat, version)
        infos = await self.facts.sizes(cat, list(m.data_files.values()) or list(m.metadata_files.values()))
        return await run_matrix(self.settings, choose(targets_of(m, infos), budget), jobs=list(jobs),
                                part_sizes=list(part_sizes), repeat=repeat, to_disk=to_disk,
                                on_cell=on_cell or (lambda c: None))
