"""The async core behind `Mirror`: one session per mirror, alive as long as it is.

A `Session` owns, for its whole life, the things every call used to build again: the
`Remote` (its connection pool; made on first use, so a command that needs no network never
imports the network code), the `Limits`, the `Pacer` (a SlowDown slows every later call,
not only the one that was told), and what it learned from S3 (the manifest listing, the
object sizes). `Mirror` is a thin synchronous face that runs these coroutines on one
long-lived event loop thread (`mirror/loop.py`).

Each operation works through a `Catalog` made for it: when the endpoint does not answer and
cache_dir holds what is needed, that operation goes on offline and the next one tries the
endpoint again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .catalog import Catalog, resolve_name
from .config import DatasetConfig
from .policy import Pacer, RetryPolicy
from .engine.verify import Verify
from .events import Event
from .errors import (
    AccessDenied,
    EndpointUnreachable,
    InputError,
    MirrorError,
    ObjectNotFound,
    OfflineError,
    OfflineWarning,
    OutdatedManifestWarning,
    StoreError,
    TransferError,
    UnknownVersionError,
    ViewBlocked,
)
from .gcpause import gc_paused
from .limits import Limits
from .manifest import Manifest, ManifestDiff, compare_manifests
from .model import ObjectInfo, ObjectRef, Selection
from .plan import LocalState, Plan, Target, make_plan, shard_of, split_for_shard, targets_of
from .remote import OnDemand, RemoteSettings
from .semver import Version
from .store.index import StateIndex, reconcile
from .store.facade import Store
from .store.fsutil import read_no_follow, store_error
from .store.layout import CacheLayout
from .store.claims import Claims
from .store.lock import CacheLock
from .upkeep.scan import scan_local

if TYPE_CHECKING:
    import pyarrow as pa

    from .engine.runner import Stats


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
        self._remote: OnDemand | None = None
        self._online_names: list[str] | None = None
        self._infos: dict[tuple[str, str], ObjectInfo] = {}
        self._listing: dict[tuple[str, str], ObjectInfo] | None = None
        self._headed: set[tuple[str, str]] = set()
        self._manifest_etags: dict[str, str | None] = {}
        self._tables: dict[tuple[str, str], pa.Table] = {}
        self._warned_outdated: set[str] = set()

    # --- what the session owns -------------------------------------------------------------

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
        """The manifest in use in cache_dir (AllenSDK's `_manifest_last_used.txt`), if any."""
        if self.layout is None:
            return None
        path = self.layout.last_used
        try:
            raw = read_no_follow(path, "the version in use")
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise InputError(f"{path} is a directory, not the name of the version in use",
                             hint="remove that directory, then pin a version: vbo-mirror manifests use VERSION") from None
        except OSError as exc:
            raise store_error(exc, f"reading {path}") from exc
        try:
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise InputError(f"{path} is not UTF-8 text, so it names no version",
                             hint="pin a version again: vbo-mirror manifests use VERSION") from None
        return name if self.dataset.version_of(name) is not None else None

    def local_manifests(self) -> list[Manifest]:
        cat = Catalog(self.dataset, self.need_layout(), None)
        return [m for n in cat.local_names() if (m := cat.read_local(n)) is not None]

    # --- manifests -----------------------------------------------------------------------------

    async def available(self, cat: Catalog) -> list[str]:
        """Manifest names to choose from: online ones plus any in cache_dir. When the
        endpoint does not answer and cache_dir holds manifests, carry on offline."""
        from .catalog import sort_manifest_names

        local = cat.local_names()
        if cat.remote is None:
            return local
        if self._online_names is None:
            try:
                self._online_names = await cat.online_names()
            except (EndpointUnreachable, TransferError) as exc:
                if not local:
                    raise
                warnings.warn(f"{exc}; working offline from {cat.layout.root}", OfflineWarning, stacklevel=2)
                cat.remote = None  # for this operation; the next one tries the endpoint again
                cat.unreachable = exc
                return local
        return sort_manifest_names(self.dataset, {*self._online_names, *local})

    def _status(self, line: str) -> None:
        if self.on_status is not None:
            self.on_status(line)

    def _progress_line(self, what: str) -> Callable[[int, int], None]:
        """done/total, said at most every STATUS_SECONDS, and once at the end."""
        import time

        last = [time.monotonic()]

        def report(done: int, total: int) -> None:
            now = time.monotonic()
            if done == total or now - last[0] >= self.STATUS_SECONDS:
                last[0] = now
                self._status(f"{what} {done:,}/{total:,}")

        return report

    async def list_manifests(self) -> list[str]:
        """The versions online (with those cache_dir holds); offline, cache_dir's. When the
        endpoint does not answer, a list of only what the cache holds would pass for what is
        online: that is an error naming both ways on (exit 3)."""
        cat = self.catalog()
        if cat.remote is None:
            return await self.available(cat)
        try:
            if self._online_names is None:
                self._online_names = await cat.online_names()
        except (EndpointUnreachable, TransferError) as exc:
            local = cat.local_names()
            if not local:
                raise
            raise OfflineError(f"cannot list the versions online: {exc}",
                               hint=f"cache_dir holds {len(local)} (`vbo-mirror --offline manifests list` lists "
                                    "them); or check the endpoint / proxy") from exc
        return await self.available(cat)

    async def load_manifest(self, version: str) -> Manifest:
        self.need_layout()
        cat = self.catalog()
        name = await self.resolve(cat, version)
        available = await self.available(cat)
        manifest = await cat.load(name)
        self.store.pin(name)
        self._warn_if_outdated(name, available)
        return manifest

    async def manifest(self, cat: Catalog, version: str | None, *, warn: bool = False) -> Manifest:
        """The manifest of `version`, or of the current one; on a cache_dir with none in use,
        the latest is loaded and pinned (as AllenSDK does on a fresh cache_dir)."""
        if version is None:
            current = self.current_manifest()
            if current is None:
                if self.layout is None:
                    version = "latest"
                else:
                    name = await self.resolve(cat, "latest")
                    manifest = await cat.load(name)
                    self.store.pin(name)
                    self._status(f"no version was in use in {self.layout.root}: using the latest, "
                                 f"{manifest.manifest_version} (now current, as AllenSDK does; `manifests use V` "
                                 "for another)")
                    return manifest
            else:
                local = cat.read_local(current)
                if local is not None:
                    if warn and cat.remote is not None:
                        self._warn_if_outdated(current, await self.available(cat))
                    return local
                version = current
        return await cat.load(await self.resolve(cat, version))

    async def resolve(self, cat: Catalog, version: str) -> str:
        if version != "latest":
            # A version named explicitly and already in cache_dir needs no listing: manifests
            # are immutable (a changed one would be a new version), and a no-op resync then
            # touches no network at all.
            with contextlib.suppress(UnknownVersionError):
                return resolve_name(self.dataset, version, cat.local_names())
            # Not in cache_dir: fetch it by its name straight away (one round trip, not a
            # listing first); a name the bucket lacks falls through to the listing, whose
            # error lists the versions there are.
            name = self.dataset.manifest_name(str(Version(version))) if Version.is_valid(version) else (
                version if self.dataset.version_of(version) is not None else None)
            if name is not None and cat.remote is not None:
                # 404, or the 403 S3 gives for a missing key to whom may not list the bucket
                with contextlib.suppress(ObjectNotFound, AccessDenied):
                    await cat.load(name)
                    return name
        available = await self.available(cat)
        if not available and cat.remote is None:
            where = self.layout.root if self.layout else "cache_dir (none given)"
            raise OfflineError(f"no manifest in {where}, and vbo-mirror is offline",
                               hint="run `vbo-mirror manifests use latest` once online")
        if version == "latest" and cat.unreachable is not None:
            # 'latest' asks the bucket; the newest version in cache_dir may not be it (a cron job
            # must learn that, not sync an old version and exit 0).
            newest = self.dataset.version_of(available[-1])
            raise OfflineError(f"'latest' cannot be checked: {cat.unreachable}",
                               hint=f"the newest version in cache_dir is {newest}: name it (--version {newest}) "
                                    "to work from the cache, or add --offline")
        return resolve_name(self.dataset, version, available)

    def _warn_if_outdated(self, name: str, available: list[str]) -> None:
        latest = available[-1] if available else name
        if name != latest and name not in self._warned_outdated:
            self._warned_outdated.add(name)
            old, new = self.dataset.version_of(name), self.dataset.version_of(latest)
            warnings.warn(
                f"version {old} is in use; the latest is {new}\n"
                f"  what changed: vbo-mirror manifests compare {old} {new}\n"
                "  move to it:   vbo-mirror manifests use latest",
                OutdatedManifestWarning, stacklevel=3)

    async def manifest_summary(self, version: str | None) -> dict[str, Any]:
        cat = self.catalog()
        m = await self.manifest(cat, version, warn=True)
        infos = await self.sizes(cat, list(m.entries()))
        meta = [infos.get((e.key, e.version_id)) for e in m.metadata_files.values()]
        data = [infos.get((e.key, e.version_id)) for e in m.data_files.values()]
        return {
            "name": m.name,
            "project_name": m.project_name,
            "manifest_version": m.manifest_version,
            "current": m.name == self.current_manifest(),
            "metadata_files": len(meta),
            "data_files": len(data),
            "metadata_bytes": sum(i.size for i in meta if i),
            "data_bytes": sum(i.size for i in data if i),
            "total_bytes": sum(i.size for i in (*meta, *data) if i),
            "unknown_sizes": sum(1 for i in (*meta, *data) if i is None),
            "data_pipeline": [dict(p) for p in m.data_pipeline],
        }

    async def sizes(self, cat: Catalog, entries: list) -> dict[tuple[str, str], ObjectInfo]:
        """Object sizes and ETags: the dataset prefix is listed once per session (version ids
        are immutable, so what it says stays true), with a HEAD for what the listing lacks;
        offline, what the local index knows."""
        wanted = [e for e in entries if (e.key, e.version_id) not in self._infos]
        if not wanted:
            return self._infos
        if cat.remote is not None:
            if self._listing is None:
                self._status(f"listing the object versions under s3://{self.dataset.bucket}/{self.dataset.prefix}")
                self._listing = await cat.list_versions() or {}
                self._infos.update(self._listing)
            missing = [e for e in wanted if (e.key, e.version_id) not in self._infos
                       and (e.key, e.version_id) not in self._headed]
            if missing:
                self._status(f"{len(missing):,} object sizes the listing lacks: asking each by HEAD")
                self._infos.update(await cat.head_infos(missing, on_progress=self._progress_line("HEAD")))
                # Asked and answered (404/403 included): not asked again. After an error that
                # was raised, nothing is recorded and the next call tries again.
                self._headed.update((e.key, e.version_id) for e in missing)
        elif self.layout is not None:
            index = StateIndex(self.layout)
            index.load()
            for e in wanted:
                rec = index.get(e.file_hash)
                if rec is not None:
                    self._infos[(e.key, e.version_id)] = ObjectInfo(e.key, e.version_id, rec.size, rec.etag)
        return self._infos

    async def diff(self, a: str, b: str) -> tuple[ManifestDiff, Manifest, Manifest, Catalog]:
        cat = self.catalog()
        ma = await cat.load(await self.resolve(cat, a))
        mb = await cat.load(await self.resolve(cat, b))
        return compare_manifests(ma, mb), ma, mb, cat

    async def compare_detail(self, a: str, b: str) -> dict[str, Any]:
        diff, ma, mb, cat = await self.diff(a, b)
        infos = await self.sizes(cat, [*ma.entries(), *mb.entries()])
        by_path = {"a": {e.relative_path: e for e in ma.entries()}, "b": {e.relative_path: e for e in mb.entries()}}

        def size(side: str, path: str | None) -> int | None:
            e = by_path[side].get(path) if path else None
            info = infos.get((e.key, e.version_id)) if e else None
            return info.size if info else None

        changes = []
        totals: dict[str, int] = {}
        for c in diff.changes:
            old_path = c.old_path if c.change == "renamed" else (c.path if c.change != "created" else None)
            item = {"kind": c.kind, "change": c.change, "path": c.path, "old_path": c.old_path,
                    "old_hash": c.old_hash, "new_hash": c.new_hash,
                    "old_bytes": size("a", old_path),
                    "new_bytes": size("b", c.path) if c.change != "deleted" else None}
            changes.append(item)
            moved = item["old_bytes"] if c.change == "deleted" else item["new_bytes"]
            totals[c.change] = totals.get(c.change, 0) + (moved or 0)
        counts = {k: sum(1 for c in diff.changes if c.change == k) for k in ("changed", "created", "deleted", "renamed")}
        return {"a": diff.a, "b": diff.b, "equivalent": not diff.changes, "counts": counts,
                "bytes": {k: totals.get(k, 0) for k in counts}, "changes": changes}

    # --- metadata tables -------------------------------------------------------------------------

    async def table_bytes(self, cat: Catalog, m: Manifest, name: str) -> bytes:
        index = self.store.new_index() if self.store is not None else None
        data = await cat.table_bytes(m, name, index=index)
        if index is not None and index.dirty:
            await asyncio.to_thread(self.store.commit_index, index)
        return data

    async def table(self, cat: Catalog, m: Manifest, name: str) -> pa.Table:
        cached = self._tables.get((m.name, name))
        if cached is not None:
            return cached
        from . import tables as tbl

        table = tbl.read_csv(await self.table_bytes(cat, m, name), name=f"{m.name}: {name}")
        self._tables[(m.name, name)] = table
        return table

    # --- plan and execute ------------------------------------------------------------------------

    async def select(self, cat: Catalog, version: str | None) -> list[Manifest]:
        """'all' → every version; otherwise the one `manifest` resolves."""
        if version == "all":
            names = await self.available(cat)
            if not names:
                raise OfflineError("no manifest is known: none online and none in cache_dir")
            return [await cat.load(n) for n in names]
        return [await self.manifest(cat, version)]

    async def selected(self, cat: Catalog, m: Manifest, selection: Selection, reports: dict | None = None) -> list:
        """The entries of `m` that `selection` picks: by key, by metadata (the tables always
        come along; `reports[m.name]` says what matched), or every one."""
        if selection.by_metadata:
            entries = list(m.metadata_files.values())
            if selection.tables_only:
                report = {"tables_only": True, "files": 0}
            else:
                from . import select as sel
                from . import tables as tbl

                kinds = list(self.dataset.file_kinds.values())
                tables = {k.table: await self.table(cat, m, k.table) for k in kinds}
                picked, report = tbl.select_files(
                    m, tables, kinds, where=sel.parse(selection.where) if selection.where is not None else None,
                    ids=(selection.ids[0], list(selection.ids[1])) if selection.ids is not None else None)
                entries += picked
            if reports is not None:
                reports[m.name] = report
        else:
            entries = list(m.entries())
        if selection.keys is not None:
            entries = [e for e in entries if e.key in selection.keys]
        return entries

    async def plan_for(self, cat: Catalog, manifests: list[Manifest], selection: Selection = Selection(), *,
                       verify: Verify | None = None) -> tuple[Plan, LocalState]:
        """`verify`: the mode of the sync to come. With BLAKE2b, objects an earlier run published
        unverified are hashed here first (kept if right, removed to be fetched again if not);
        with none, they are taken as they are. A dry run (None) plans them as fetches."""
        layout = self.need_layout()
        with gc_paused():  # several objects per entry, none in a cycle: see mirror/gcpause.py
            targets: list[Target] = []
            reports: dict = {}
            bucket = selection.layout == "bucket"
            if bucket and len(manifests) != 1:
                raise InputError("the bucket layout holds one version at a time: name one (--version V)")
            top = {m.name: (m.project_name if bucket else m.view_dir) for m in manifests}
            for m in manifests:
                targets += targets_of(m, await self.selected(cat, m, selection, reports), top[m.name])
            dirs = list(top.values()) if selection.strays and not selection.by_metadata else []
            trust = verify is not None and not verify.blake2b
            local = await asyncio.to_thread(scan_local, layout, targets, stray_dirs=dirs, trust_unverified=trust)
            if local.unverified and verify is not None and verify.blake2b:
                await asyncio.to_thread(self._verify_unverified, list(local.unverified))
                local = await asyncio.to_thread(scan_local, layout, targets, stray_dirs=dirs)
            need = [t.entry for t in targets if t.entry.file_hash not in local.objects]
            infos = await self.sizes(cat, need) if need else {}
            names = [m.name for m in manifests]
            if selection.shard is None:
                plan = make_plan(targets, local, infos, manifests=names)
            else:
                plan = self._shard_plan(targets, local, infos, names, selection)
            if reports:
                plan = dataclasses.replace(plan, selection=reports)
            if selection.keys is None and not selection.by_metadata:
                plan = dataclasses.replace(plan, whole=tuple(top.values()))
            if bucket:
                plan = dataclasses.replace(plan, layout="bucket")
            return plan, local

    @staticmethod
    def _shard_plan(targets: list[Target], local: LocalState, infos: dict, names: list[str],
                    selection: Selection) -> Plan:
        """Split by content over every selected object (not only what is missing), so that all
        shards compute the same split whenever they start and whatever is done by then."""
        sizes: dict[str, int] = {}
        for t in targets:
            e = t.entry
            if e.file_hash not in sizes:
                known = local.objects.get(e.file_hash, local.unverified.get(e.file_hash))
                if known is None:
                    info = infos.get((e.key, e.version_id))
                    known = info.size if info else 0  # unknown (offline): every shard sees the same 0
                sizes[e.file_hash] = known
        mine = shard_of(sizes, selection.shard)
        own = make_plan([t for t in targets if t.entry.file_hash in mine], local, infos, manifests=names)
        rest = make_plan([t for t in targets if t.entry.file_hash not in mine], local, infos, manifests=names)
        return split_for_shard(rest, own, selection.shard)

    def _verify_unverified(self, hashes: list[str]) -> dict:
        index = self.store.new_index()
        index.load()
        result = self.store.verify_unverified(hashes, index=index, jobs=self.limits.io_threads)
        if index.dirty:
            with contextlib.suppress(Exception):  # the index is a summary: the store decided
                self.store.commit_index(index)
        return result

    async def plan(self, selection: Selection) -> Plan:
        cat = self.catalog()
        return (await self.plan_for(cat, await self.select(cat, selection.version), selection))[0]

    async def sync(self, selection: Selection, *, limits: Limits | None = None, verify: Verify = Verify.MANIFEST,
                   link_mode: str | None = None, policy: RetryPolicy | None = None,
                   on_event: Callable[[Event], None] | None = None,
                   on_start: Callable[[Stats], None] | None = None) -> Stats:
        # Other limits than the session's (connections, buffers): a remote sized for this run
        # only; the session's own is left as it is (another thread may be using it).
        own = OnDemand(self.settings, limits) if limits is not None and limits != self.limits else None
        try:
            cat = self.catalog(own)
            manifests = await self.select(cat, selection.version)
            if len(manifests) == 1 and self.current_manifest() is None:
                self.store.pin(manifests[0].name)  # the first version synced becomes current, as AllenSDK's load_manifest
            plan, local = await self.plan_for(cat, manifests, selection, verify=verify)
            stats = await self.execute(cat, plan, local, limits=limits, verify=verify, link_mode=link_mode,
                                       policy=policy, on_event=on_event, on_start=on_start)
            if plan.layout == "bucket" and not stats.failures:
                await asyncio.to_thread(self.store.bucket_manifest, manifests[0])
            return stats
        finally:
            if own is not None:
                await own.aclose()

    async def execute(self, cat: Catalog, plan: Plan, local: LocalState, *, limits: Limits | None = None,
                      verify: Verify = Verify.MANIFEST, link_mode: str | None = None, policy: RetryPolicy | None = None,
                      on_event: Callable[[Event], None] | None = None,
                      on_start: Callable[[Stats], None] | None = None) -> Stats:
        layout = self.need_layout()
        if (plan.fetch or plan.steal) and cat.remote is None:
            n, size = len(plan.fetch) + len(plan.steal), sum(f.size or 0 for f in (*plan.fetch, *plan.steal))
            unknown = sum(1 for f in (*plan.fetch, *plan.steal) if f.size is None)
            what = f"{n} file{'s' if n != 1 else ''} ({'sizes unknown' if unknown == n else f'{size:,} bytes' + (f' + {unknown} of unknown size' if unknown else '')})"
            if cat.unreachable is not None:
                raise OfflineError(f"{what} to fetch, and the endpoint did not answer: {cat.unreachable}",
                                   hint="check the network or --endpoint-url, then run the same command again")
            raise OfflineError(f"{what} to fetch, and --offline was given", hint="drop --offline to fetch them")
        self._check_space(plan)
        await asyncio.to_thread(self._record_wanted, plan)
        store = self.store.with_link_mode(link_mode or self.store.link_mode)  # None: the Mirror's
        index = store.new_index()

        def prepare_index() -> dict:
            # The whole store (the plan looked only at what it wants), walked in the index thread.
            index.load()
            objects = {h: size for h, size, _ in store.iter_objects()}
            added, dropped = reconcile(index, objects, mtime_of=lambda h: _mtime(layout.object_path(h)))
            return {"added": added, "dropped": dropped}

        from .engine.runner import Engine

        # With nothing to do the index is left alone (pyarrow need not even load), unless it is
        # missing: then this run rebuilds it from the store.
        busy = bool(plan.fetch or plan.link or plan.remove or plan.replace or plan.steal)
        claims = Claims(layout.claims_path) if plan.shard else None
        engine = Engine(store=store, remote=cat.remote, index=index, limits=limits or self.limits,
                        policy=policy, verify=verify, on_event=on_event or (lambda e: None), pacer=self.pacer,
                        prepare_index=prepare_index if busy or not layout.index_path.exists() else None,
                        claims=claims)
        if on_start:
            on_start(engine.stats)
        try:
            stats = await engine.run(plan)
        finally:
            if claims is not None:
                claims.close()
        await asyncio.to_thread(self._record_for_allensdk, plan, stats)
        return stats

    def _record_for_allensdk(self, plan: Plan, stats) -> None:
        """AllenSDK's `_downloaded_data.json` (store/allensdk.py), for the views in its layout
        that this run made or found. A record that cannot be written is a warning: the mirror
        itself is complete."""
        from .upkeep.allensdk import record_downloaded

        if plan.layout != "allensdk":
            return  # the bucket layout is read by AllenSDK's static cache, which keeps no record
        layout = self.need_layout()
        if not (plan.fetch or plan.steal or plan.link or plan.replace) and (layout.root / "_downloaded_data.json").exists():
            return  # a no-op resync: its views were recorded when they were made (and stays fast)
        failed = {v for f in stats.failures for v in f.views}
        pairs = list(zip(plan.present, plan.present_hashes))
        pairs += [(x.view, x.file_hash) for x in plan.link]
        pairs += [(v, f.file_hash) for f in (*plan.fetch, *plan.steal) for v in f.views]
        pairs = [(v, h) for v, h in pairs if v not in failed and os.path.isfile(layout.view_path(v))]
        try:
            record_downloaded(layout, pairs)
        except StoreError as exc:
            warnings.warn(f"AllenSDK's record of downloaded files not updated: {exc}", OfflineWarning, stacklevel=2)

    def _record_wanted(self, plan: Plan) -> None:
        """What verify will expect to find (store/wanted.py)."""
        from .upkeep import wanted

        layout = self.need_layout()
        for d in plan.whole:
            wanted.add(layout, d, None)
        by_dir: dict[str, list[str]] = {}
        for view in plan.views():
            d = view.split("/", 1)[0]
            if d not in plan.whole:
                by_dir.setdefault(d, []).append(view)
        for d, views in by_dir.items():
            wanted.add(layout, d, views)

    def _check_space(self, plan: Plan) -> None:
        """Refuse up front when the fetch cannot fit, rather than fill the disk midway."""
        layout = self.need_layout()
        # A shard counts the other shards' fetches too: they all land in this one cache_dir.
        need = sum(f.size or 0 for f in (*plan.fetch, *plan.steal) if not self.store.partial_exists(f.file_hash))
        if not need:
            return
        probe = layout.root
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if need > free:
            raise StoreError(f"not enough space under {layout.root}: the plan fetches {need:,} bytes, "
                             f"{free:,} are free", hint="free space, or sync fewer versions (--version)")

    async def get_file(self, kind: str, item_id: int, version: str | None,
                       on_event: Callable[[Event], None] | None = None) -> Path:
        layout = self.need_layout()
        spec = self.dataset.file_kinds.get(kind)
        if spec is None:
            raise InputError(f"unknown file kind {kind!r}; known: {', '.join(sorted(self.dataset.file_kinds))}")
        if version == "all":
            raise InputError("get makes one file present: name one version (or 'latest'), not 'all'")
        cat = self.catalog()
        m = await self.manifest(cat, version)
        from . import tables as tbl

        entry = tbl.entry_for_id(m, await self.table(cat, m, spec.table), spec, int(item_id))
        path = layout.view_path(f"{m.view_dir}/{entry.relative_path}")
        selection = Selection.files(m.manifest_version, [entry.key])
        plan, local = await self.plan_for(cat, [m], selection)  # outside the lock: looks only
        if plan.fetch or plan.link or plan.replace:
            lock = CacheLock(layout.lock_path, wait=True, timeout=600, command="vbo-mirror get", on_wait=self.on_status)
            await asyncio.to_thread(lock.acquire)  # waiting for a running sync must not block the loop
            try:
                # Planned again under the lock: a sync that just finished may have done it all.
                plan, local = await self.plan_for(cat, [m], selection, verify=Verify.MANIFEST)
                stats = await self.execute(cat, plan, local, on_event=on_event)
            finally:
                lock.release()
            if stats.failures:
                raise stats.failures[0].error  # its own type: ObjectNotFound, IntegrityError, ...
        return path

    async def repair(self, manifests: list[Manifest], keys: set[str],
                     on_event: Callable[[Event], None] | None = None, layout: str = "allensdk") -> Stats:
        cat = self.catalog()
        plan, local = await self.plan_for(cat, manifests, Selection(None, frozenset(keys), strays=False,
                                                                    layout=layout), verify=Verify.MANIFEST)
        return await self.execute(cat, plan, local, on_event=on_event)

    # --- looking at the mirror (the caller holds the cache lock for verify and rebuild) ---------

    async def status(self) -> dict[str, Any]:
        from .upkeep.status import cache_status

        layout = self.need_layout()
        return await asyncio.to_thread(cache_status, layout, self.local_manifests(), current=self.current_manifest())

    async def verify(self, *, fast: bool = False, repair: bool = False, jobs: int = 2,
                     on_event: Callable[[Event], None] | None = None, read_only: bool = False,
                     confirm: Callable[[dict], bool] | None = None) -> dict[str, Any]:
        """With `repair`: fetch damaged content again and relink wrong or missing views. Views
        whose content was never in the store are more than damage (a whole version may be
        behind them): they are fetched only when `confirm` (shown what) says yes."""
        from .upkeep.status import verify_store

        layout = self.need_layout()
        manifests = self.local_manifests()
        report = await asyncio.to_thread(verify_store, layout, manifests, fast=fast, jobs=jobs, on_event=on_event,
                                         read_only=read_only)
        if repair and (report["corrupt"] or report["views_wrong"] or report["views_missing_content"]
                       or report["views_missing"]):
            for rel in report["views_wrong"]:  # what a sync would replace anyway
                with contextlib.suppress(ViewBlocked):  # a directory in the way: the repair reports it
                    self.store.remove_view(rel)
            bad = {c["file_hash"] for c in report["corrupt"]}
            wrong = set(report["views_wrong"]) | set(report["views_missing"])
            new = set(report["views_missing_unstored"])
            if new and not (confirm is not None and confirm({"views": sorted(new)})):
                wrong -= new
                report["repair_declined"] = sorted(new)
            keys = {e.key for m in manifests for e in m.entries()
                    if e.file_hash in bad or f"{m.view_dir}/{e.relative_path}" in wrong}
            runs = [await self.repair(manifests, keys, on_event=on_event)] if keys else []
            for m in manifests:  # the bucket layout's views (sync --layout bucket)
                if os.path.isfile(layout.view_path(f"{m.project_name}/manifests/{m.name}")):
                    bkeys = {e.key for e in m.entries()
                             if e.file_hash in bad or f"{m.project_name}/{e.relative_path}" in wrong}
                    if bkeys:
                        runs.append(await self.repair([m], bkeys, on_event=on_event, layout="bucket"))
            failures = [f.to_dict() for st in runs for f in st.failures]
            report["repaired"] = {"files_fetched": sum(st.files_done for st in runs),
                                  "views_linked": sum(st.files_linked for st in runs), "failures": failures}
            report["ok"] = not failures and not report.get("repair_declined")
        return report

    async def prune(self, keep: list[str] | None, *, dry_run: bool = False,
                    confirm: Callable[[dict], bool] | None = None) -> dict[str, Any]:
        """(The caller holds the exclusive cache lock.) `keep` None: gc only."""
        from .catalog import resolve_name
        from .upkeep.prune import apply_prune, plan_prune

        layout = self.need_layout()
        cat = Catalog(self.dataset, layout, None)
        manifests: dict[str, Manifest] = {}
        for name in cat.local_names():
            try:
                m = cat.read_local(name)
            except MirrorError as exc:
                raise StoreError(f"cannot read {layout.manifest_path(name)}: prune cannot tell what that version "
                                 f"needs ({exc})", hint="fix or remove that manifest, then prune again") from None
            if m is not None:
                manifests[name] = m
        if keep is None:
            kept_names = list(manifests)
        else:
            kept_names = list(dict.fromkeys(resolve_name(self.dataset, v, list(manifests)) for v in keep))
        refusals: list[InputError] = []  # a dry run shows the plan and says what a real prune would refuse
        current = self.current_manifest()
        if keep is not None and current is not None and current in manifests and current not in kept_names:
            v = manifests[current].manifest_version
            refusals.append(InputError(f"the current version {v} (_manifest_last_used.txt) is not among the kept ones",
                                       hint=f"add --keep {v}, or make a kept version current first (`manifests use`)"))
        kept = [manifests[n] for n in kept_names]
        dropped = [m for n, m in manifests.items() if n not in kept_names]
        for m in dropped:  # the bucket layout's views are links of that version's objects too
            if os.path.isfile(layout.view_path(f"{m.project_name}/manifests/{m.name}")):
                refusals.append(InputError(
                    f"the bucket layout ({m.project_name}/) holds version {m.manifest_version}",
                    hint=f"add --keep {m.manifest_version}, or sync the bucket layout to a kept "
                         "version first (sync --layout bucket --version V)"))
        if refusals and not dry_run:
            raise refusals[0]
        plan = await asyncio.to_thread(plan_prune, layout, self.store.objects, kept, dropped)
        report: dict[str, Any] = {"dry_run": dry_run, **plan.summary(),
                                  "refused": [{"message": e.message, "hint": e.hint} for e in refusals]}
        if dry_run or (confirm is not None and not confirm(report)):
            report["applied"] = False
            return report
        report.update(await asyncio.to_thread(apply_prune, layout, self.store.objects, plan))
        report["applied"] = True
        return report

    async def adopt(self, *, dry_run: bool = False, jobs: int = 2) -> dict[str, Any]:
        """(The caller holds the exclusive cache lock.) Take what AllenSDK downloaded into
        cache_dir into the store, in place (mirror/adopt.py)."""
        from .upkeep.adopt import adopt_tree

        layout = self.need_layout()
        cat = Catalog(self.dataset, layout, None)
        manifests = []
        for name in cat.local_names():
            try:
                m = cat.read_local(name)
            except MirrorError as exc:
                warnings.warn(f"{name} is skipped: {exc}", OfflineWarning, stacklevel=2)
                continue
            if m is not None:
                manifests.append(m)
        if not manifests:
            raise InputError(f"no manifest in {layout.root}: nothing to adopt",
                             hint="adopt works on a cache_dir that AllenSDK filled (its manifests are at the top)")
        return await asyncio.to_thread(adopt_tree, layout, self.store, manifests, dry_run=dry_run, jobs=jobs,
                                       on_progress=self._progress_line("adopt: files looked at"))

    async def rebuild_index(self, *, jobs: int = 2) -> dict[str, Any]:
        from .upkeep.status import rebuild_index

        return await asyncio.to_thread(rebuild_index, self.need_layout(), self.local_manifests(), jobs=jobs)

    # --- measuring the endpoint and listing URLs -------------------------------------------------

    async def bench(self, version: str | None, *, jobs: tuple[int, ...], part_sizes: tuple[int, ...], budget: int,
                    repeat: int, to_disk: Path | None, on_cell: Callable[[Any], None] | None) -> list:
        from .bench import Target as BenchTarget, choose, run_matrix

        if self.offline:
            raise OfflineError("bench measures the endpoint and cannot run --offline")
        cat = self.catalog()
        m = await self.manifest(cat, version)
        entries = list(m.data_files.values()) or list(m.metadata_files.values())
        infos = await self.sizes(cat, entries)
        targets = [BenchTarget(ObjectRef(e.bucket, e.key, e.version_id), info.size, info.etag)
                   for e in entries if (info := infos.get((e.key, e.version_id))) is not None and info.size > 0]
        if not targets:
            raise OfflineError(f"no object of {m.name} has a known size to measure with")
        return await run_matrix(self.settings, choose(targets, budget), jobs=list(jobs), part_sizes=list(part_sizes),
                                repeat=repeat, to_disk=to_disk, on_cell=on_cell or (lambda c: None))

    async def urls(self, selection: Selection) -> list[str]:
        cat = self.catalog()
        entries = []
        for m in await self.select(cat, selection.version):
            entries += await self.selected(cat, m, selection)
        if selection.shard is not None:
            infos = await self.sizes(cat, entries)
            sizes: dict[str, int] = {}
            for e in entries:
                info = infos.get((e.key, e.version_id))
                sizes.setdefault(e.file_hash, info.size if info else 0)
            mine = shard_of(sizes, selection.shard)
            entries = [e for e in entries if e.file_hash in mine]
        seen: dict[str, None] = {}
        for e in entries:
            seen.setdefault(self.settings.object_url(ObjectRef(e.bucket, e.key, e.version_id)), None)
        return list(seen)


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0
