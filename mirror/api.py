"""The Python API: `Mirror`, with the method names AllenSDK's project cache uses, so a
notebook written for `VisualBehaviorOphysProjectCache` reads the same.

Methods are synchronous (they run our asyncio code to completion, on uvloop when it is
installed, and in a helper thread when called from a running loop such as Jupyter's).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

from .catalog import Catalog, resolve_name, sort_manifest_names
from .config import DEFAULT_DATASET, DatasetConfig, load_dataset
from .engine.policy import RetryPolicy
from .limits import Limits
from .engine.verify import Verify
from .errors import (
    EndpointUnreachable,
    StoreError,
    InputError,
    OfflineError,
    OfflineWarning,
    OutdatedManifestWarning,
    TransferError,
    AccessDenied,
    ObjectNotFound,
    UnknownVersionError,
)
from .manifest import Manifest, ManifestDiff, compare_manifests, format_diff
from .semver import Version
from .gcpause import gc_paused
from .plan import LocalState, Plan, Target, make_plan, targets_of
from .remote import ObjectInfo, ObjectRef, OnDemand, RemoteSettings, Timeouts
from .store.fsutil import atomic_write
from .store.index import StateIndex, reconcile
from .store.layout import CacheLayout
from .store.lock import CacheLock
from .store.scan import scan_local
from .store.views import Linker

if TYPE_CHECKING:
    import pyarrow as pa

    from .engine.runner import Stats

T = TypeVar("T")


def run_async(coro: Awaitable[T]) -> T:
    """Run a coroutine to completion from synchronous code, wherever that code is."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_here(coro)
    # Called from inside a running loop (a notebook): run ours in a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vbo-mirror") as pool:
        return pool.submit(_run_here, coro).result()


def _run_here(coro: Awaitable[T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


class Mirror:
    """A local mirror of one dataset in `cache_dir`.

    `endpoint_url` replaces the host of every S3 URL (bucket and key stay those of the
    manifest); `offline` works only from what cache_dir holds; `signed` uses the AWS
    credentials of the environment instead of anonymous requests.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike | None = None,
        *,
        dataset: str | DatasetConfig = DEFAULT_DATASET,
        endpoint_url: str | None = None,
        offline: bool = False,
        signed: bool = False,
        timeouts: Timeouts = Timeouts(),
        transport: str = "lean",
    ) -> None:
        self.dataset = load_dataset(dataset) if isinstance(dataset, str) else dataset
        self.layout = CacheLayout(cache_dir) if cache_dir is not None else None
        self.endpoint_url = endpoint_url or None
        self.offline = offline
        self.signed = signed
        self.timeouts = timeouts
        self.transport = transport
        self._online_names: list[str] | None = None
        self._infos: dict[tuple[str, str], ObjectInfo] = {}
        self._listing: dict[tuple[str, str], ObjectInfo] | None = None
        self._headed: set[tuple[str, str]] = set()
        self._manifest_etags: dict[str, str | None] = {}
        self._tables: dict[tuple[str, str], "pa.Table"] = {}
        self._warned_outdated: set[str] = set()

    @property
    def cache_dir(self) -> Path | None:
        return self.layout.root if self.layout else None

    def remote_settings(self) -> RemoteSettings:
        return RemoteSettings(bucket=self.dataset.bucket, region=self.dataset.region, endpoint_url=self.endpoint_url,
                              signed=self.signed, timeouts=self.timeouts, transport=self.transport)

    def _need_layout(self) -> CacheLayout:
        if self.layout is None:
            raise InputError("no cache directory given",
                             hint="pass --cache-dir DIR (or set VBO_MIRROR_CACHE_DIR), or Mirror(cache_dir=...)")
        return self.layout

    # --- running async work -------------------------------------------------------------

    def _run(self, fn: Callable[[Catalog], Awaitable[T]], *, limits: Limits = Limits()) -> T:
        async def main() -> T:
            if self.offline:
                return await fn(Catalog(self.dataset, self.layout, None))
            remote = OnDemand(self.remote_settings(), limits)
            try:
                return await fn(Catalog(self.dataset, self.layout, remote, manifest_etags=self._manifest_etags))
            finally:
                await remote.aclose()

        return run_async(main())

    async def _available(self, cat: Catalog) -> list[str]:
        """Manifest names to choose from: online ones plus any in cache_dir. When the
        endpoint does not answer and cache_dir holds manifests, carry on offline."""
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
                cat.remote = None  # for this call; the next one tries the endpoint again
                return local
        return sort_manifest_names(self.dataset, {*self._online_names, *local})

    # --- manifests (AllenSDK names) -------------------------------------------------------

    def list_manifest_file_names(self) -> list[str]:
        """Manifest file names online (in cache_dir when offline), oldest first by semver."""
        return self._run(self._available)

    def latest_manifest_file(self) -> str:
        names = self.list_manifest_file_names()
        if not names:
            raise OfflineError("no manifest is known: none online and none in cache_dir")
        return names[-1]

    def list_all_downloaded_manifests(self) -> list[str]:
        return Catalog(self.dataset, self.layout, None).local_names()

    def current_manifest(self) -> str | None:
        """The manifest in use in cache_dir (AllenSDK's `_manifest_last_used.txt`), if any."""
        if self.layout is None:
            return None
        try:
            name = self.layout.last_used.read_text().strip()
        except FileNotFoundError:
            return None
        return name if self.dataset.version_of(name) is not None else None

    def load_manifest(self, version: str = "latest") -> Manifest:
        """Download (if needed), validate and pin a version as current; warn when it is not
        the latest. `version` is 'latest', '1.0.1', 'v1.0.1' or a manifest file name."""
        layout = self._need_layout()

        async def go(cat: Catalog) -> Manifest:
            name = await self._resolve(cat, version)
            available = await self._available(cat)
            manifest = await cat.load(name)
            atomic_write(layout.last_used, name.encode())
            self._warn_if_outdated(name, available)
            return manifest

        return self._run(go)

    def manifest(self, version: str | None = None) -> Manifest:
        """The manifest of `version`, or of the current one; on a cache_dir with none in use,
        the latest is loaded and pinned (as AllenSDK does on a fresh cache_dir)."""

        async def go(cat: Catalog) -> Manifest:
            return await self._manifest(cat, version)

        return self._run(go)

    async def _manifest(self, cat: Catalog, version: str | None, *, warn: bool = False) -> Manifest:
        if version is None:
            current = self.current_manifest()
            if current is None:
                if self.layout is None:
                    version = "latest"
                else:
                    name = await self._resolve(cat, "latest")
                    manifest = await cat.load(name)
                    atomic_write(self.layout.last_used, name.encode())
                    return manifest
            else:
                local = cat.read_local(current)
                if local is not None:
                    if warn and cat.remote is not None:
                        self._warn_if_outdated(current, await self._available(cat))
                    return local
                version = current
        return await cat.load(await self._resolve(cat, version))

    async def _resolve(self, cat: Catalog, version: str) -> str:
        if version != "latest":
            # A version named explicitly and already in cache_dir needs no listing: manifests
            # are immutable (a changed one would be a new version), and a no-op resync then
            # touches no network at all.
            local = cat.local_names()
            with contextlib.suppress(UnknownVersionError):
                return resolve_name(self.dataset, version, local)
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
        available = await self._available(cat)
        if not available and cat.remote is None:
            where = self.layout.root if self.layout else "cache_dir (none given)"
            raise OfflineError(f"no manifest in {where}, and vbo-mirror is offline",
                               hint="run `vbo-mirror manifests use latest` once online")
        return resolve_name(self.dataset, version, available)

    def _warn_if_outdated(self, name: str, available: list[str]) -> None:
        latest = available[-1] if available else name
        if name != latest and name not in self._warned_outdated:
            self._warned_outdated.add(name)
            warnings.warn(
                f"{name} is not the latest manifest: {latest} is. "
                f"To see what changed: vbo-mirror manifests compare {self.dataset.version_of(name)} "
                f"{self.dataset.version_of(latest)} (Python: compare_manifests({name!r}, {latest!r})); "
                "to move to it: vbo-mirror manifests use latest",
                OutdatedManifestWarning, stacklevel=3)

    def manifest_summary(self, version: str | None = None) -> dict[str, Any]:
        """Counts of files, total bytes (from the S3 listing of object versions; from cache_dir
        for what it holds when offline) and the data_pipeline of one version."""

        async def go(cat: Catalog) -> dict[str, Any]:
            m = await self._manifest(cat, version, warn=True)
            infos = await self._sizes(cat, list(m.entries()))
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

        return self._run(go)

    async def _sizes(self, cat: Catalog, entries: list) -> dict[tuple[str, str], ObjectInfo]:
        """Object sizes and ETags: the dataset prefix is listed once per Mirror (version ids
        are immutable, so what it says stays true), with a HEAD for what the listing lacks;
        offline, what the local index knows."""
        wanted = [e for e in entries if (e.key, e.version_id) not in self._infos]
        if not wanted:
            return self._infos
        if cat.remote is not None:
            if self._listing is None:
                self._listing = await cat.list_versions() or {}
                self._infos.update(self._listing)
            missing = [e for e in wanted if (e.key, e.version_id) not in self._infos
                       and (e.key, e.version_id) not in self._headed]
            if missing:
                self._headed.update((e.key, e.version_id) for e in missing)
                self._infos.update(await cat.head_infos(missing))
        elif self.layout is not None:
            index = StateIndex(self.layout)
            index.load()
            for e in wanted:
                rec = index.get(e.file_hash)
                if rec is not None:
                    self._infos[(e.key, e.version_id)] = ObjectInfo(e.key, e.version_id, rec.size, rec.etag)
        return self._infos

    def diff_manifests(self, a: str, b: str) -> ManifestDiff:
        async def go(cat: Catalog) -> ManifestDiff:
            ma = await cat.load(await self._resolve(cat, a))
            mb = await cat.load(await self._resolve(cat, b))
            return compare_manifests(ma, mb)

        return self._run(go)

    def compare_manifests(self, a: str, b: str) -> str:
        """AllenSDK's message: `... changed/created/deleted`, `... renamed ...`, metadata first."""
        return format_diff(self.diff_manifests(a, b))

    def compare_manifests_detail(self, a: str, b: str) -> dict[str, Any]:
        """The structured diff, with the bytes each change moves (None where unknown)."""

        async def go(cat: Catalog) -> dict[str, Any]:
            ma = await cat.load(await self._resolve(cat, a))
            mb = await cat.load(await self._resolve(cat, b))
            diff = compare_manifests(ma, mb)
            infos = await self._sizes(cat, [*ma.entries(), *mb.entries()])
            by_path = {
                "a": {e.relative_path: e for e in ma.entries()},
                "b": {e.relative_path: e for e in mb.entries()},
            }

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

        return self._run(go)

    # --- metadata tables -------------------------------------------------------------------

    def metadata_table_names(self, version: str | None = None) -> list[str]:
        return sorted(self.manifest(version).metadata_files)

    def get_table(self, name: str, *, version: str | None = None) -> pa.Table:
        """One metadata table as Arrow, fetched on demand and verified against the manifest."""

        async def go(cat: Catalog) -> pa.Table:
            m = await self._manifest(cat, version)
            return await self._table(cat, m, name)

        return self._run(go)

    def get_table_bytes(self, name: str, *, version: str | None = None) -> bytes:
        """The table's CSV exactly as released (verified against the manifest's BLAKE2b)."""

        async def go(cat: Catalog) -> bytes:
            return await self._table_bytes(cat, await self._manifest(cat, version), name)

        return self._run(go)

    async def _table_bytes(self, cat: Catalog, m: Manifest, name: str) -> bytes:
        index = StateIndex(self.layout) if self.layout is not None else None
        data = await cat.table_bytes(m, name, index=index)
        if index is not None:
            index.commit()
        return data

    async def _table(self, cat: Catalog, m: Manifest, name: str) -> pa.Table:
        cached = self._tables.get((m.name, name))
        if cached is not None:
            return cached
        from . import tables as tbl

        table = tbl.read_csv(await self._table_bytes(cat, m, name), name=f"{m.name}: {name}")
        self._tables[(m.name, name)] = table
        return table

    def table_path(self, name: str, *, version: str | None = None) -> Path:
        """Where the table's CSV sits in the AllenSDK layout (fetched if needed)."""
        layout = self._need_layout()
        m = self.manifest(version)
        self.get_table(name, version=m.manifest_version)
        entry = m.metadata_files[name]
        return layout.view_path(f"{m.view_dir}/{entry.relative_path}")

    def _frame(self, name: str, version: str | None):
        spec = self.dataset.tables.get(name)
        from . import tables as tbl

        return tbl.to_pandas(self.get_table(name, version=version), index=spec.index if spec else None)

    def get_behavior_session_table(self, *, version: str | None = None):
        return self._frame("behavior_session_table", version)

    def get_ophys_session_table(self, *, version: str | None = None):
        return self._frame("ophys_session_table", version)

    def get_ophys_experiment_table(self, *, version: str | None = None):
        return self._frame("ophys_experiment_table", version)

    def get_ophys_cells_table(self, *, version: str | None = None):
        return self._frame("ophys_cells_table", version)

    # --- sync: plan, fetch, views ----------------------------------------------------------

    async def _select(self, cat: Catalog, version: str | None) -> list[Manifest]:
        """'all' → every version; otherwise the one `_manifest` resolves."""
        if version == "all":
            names = await self._available(cat)
            if not names:
                raise OfflineError("no manifest is known: none online and none in cache_dir")
            return [await cat.load(n) for n in names]
        return [await self._manifest(cat, version)]

    async def _plan(self, cat: Catalog, manifests: list[Manifest], *, entries: list | None = None,
                    strays: bool = True) -> tuple[Plan, LocalState]:
        layout = self._need_layout()
        with gc_paused():  # several objects per entry, none in a cycle: see mirror/gcpause.py
            targets: list[Target] = []
            chosen = set(entries) if entries is not None else None
            for m in manifests:
                targets += targets_of(m, [e for e in m.entries() if e in chosen] if chosen is not None else None)
            dirs = [m.view_dir for m in manifests] if strays else []
            local = await asyncio.to_thread(scan_local, layout, targets, stray_dirs=dirs)
            need = [t.entry for t in targets if t.entry.file_hash not in local.objects]
            infos = await self._sizes(cat, need) if need else {}
            return make_plan(targets, local, infos, manifests=[m.name for m in manifests]), local

    def plan(self, version: str | None = None) -> Plan:
        """A dry run: what a sync of `version` ('all', 'latest', a version; default the
        current one) would fetch, link, leave and remove. Nothing is written but manifests."""

        async def go(cat: Catalog) -> Plan:
            return (await self._plan(cat, await self._select(cat, version)))[0]

        return self._run(go)

    def sync(self, version: str | None = None, *, limits: Limits = Limits(), verify: Verify = Verify.MANIFEST,
             link_mode: str = "auto", wait: bool = False, policy: RetryPolicy | None = None,
             on_event: Callable[[dict], None] | None = None, on_start: Callable[[Stats], None] | None = None) -> Stats:
        """Make every file of `version` present and verified in cache_dir. Returns the run's
        stats; `stats.failures` lists the files that could not be mirrored."""
        layout = self._need_layout()

        async def go(cat: Catalog) -> Stats:
            manifests = await self._select(cat, version)
            plan, local = await self._plan(cat, manifests)
            return await self._execute(cat, plan, local, limits=limits, verify=verify, link_mode=link_mode,
                                       policy=policy, on_event=on_event, on_start=on_start)

        with CacheLock(layout.lock_path, wait=wait, command="vbo-mirror sync"):
            return self._run(go, limits=limits)

    async def _execute(self, cat: Catalog, plan: Plan, local: LocalState, *, limits: Limits = Limits(),
                       verify: Verify = Verify.MANIFEST, link_mode: str = "auto", policy: RetryPolicy | None = None,
                       on_event: Callable[[dict], None] | None = None,
                       on_start: Callable[[Stats], None] | None = None) -> Stats:
        layout = self._need_layout()
        self._check_space(plan)
        index = StateIndex(layout)

        def prepare_index() -> dict:
            # The whole store (the plan looked only at what it wants), walked in the index thread.
            from .store.objects import ObjectStore

            index.load()
            objects = {h: size for h, size, _ in ObjectStore(layout).iter_objects()}
            added, dropped = reconcile(index, objects, mtime_of=lambda h: _mtime(layout.object_path(h)))
            return {"added": added, "dropped": dropped}

        from .engine.runner import Engine

        # With nothing to do the index is left alone (pyarrow need not even load), unless it is
        # missing: then this run rebuilds it from the store.
        busy = bool(plan.fetch or plan.link or plan.remove or plan.replace)
        engine = Engine(layout=layout, remote=cat.remote, index=index, linker=Linker(link_mode), limits=limits,
                        policy=policy, verify=verify, on_event=on_event or (lambda e: None),
                        prepare_index=prepare_index if busy or not layout.index_path.exists() else None)
        if on_start:
            on_start(engine.stats)
        return await engine.run(plan)

    def _check_space(self, plan: Plan) -> None:
        """Refuse up front when the fetch cannot fit, rather than fill the disk midway."""
        layout = self._need_layout()
        need = sum(f.size or 0 for f in plan.fetch if not layout.partial_path(f.file_hash).exists())
        if not need:
            return
        probe = layout.root
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if need > free:
            raise StoreError(f"not enough space under {layout.root}: the plan fetches {need:,} bytes, "
                             f"{free:,} are free", hint="free space, or sync fewer versions (--version)")

    # --- measuring the endpoint ---------------------------------------------------------------

    def bench(self, version: str | None = None, *, jobs: tuple[int, ...] = (1, 4, 16, 64),
              part_sizes: tuple[int, ...] = (8 << 20, 32 << 20), budget: int = 1 << 30, repeat: int = 1,
              to_disk: Path | None = None, on_cell: Callable[[Any], None] | None = None) -> list:
        """GET throughput over a matrix of concurrency x part size on real objects of `version`
        (the largest first, up to `budget` bytes per cell); see mirror/bench.py."""
        from .bench import Target, choose, run_matrix

        if self.offline:
            raise OfflineError("bench measures the endpoint and cannot run --offline")

        async def go(cat: Catalog) -> list:
            m = await self._manifest(cat, version)
            entries = list(m.data_files.values()) or list(m.metadata_files.values())
            infos = await self._sizes(cat, entries)
            targets = [Target(ObjectRef(e.bucket, e.key, e.version_id), info.size, info.etag)
                       for e in entries if (info := infos.get((e.key, e.version_id))) is not None and info.size > 0]
            if not targets:
                raise OfflineError(f"no object of {m.name} has a known size to measure with")
            chosen = choose(targets, budget)
            return await run_matrix(self.remote_settings(), chosen, jobs=list(jobs), part_sizes=list(part_sizes),
                                    repeat=repeat, to_disk=to_disk, on_cell=on_cell or (lambda c: None))

        return self._run(go)

    # --- one file ---------------------------------------------------------------------------

    def get_behavior_session_path(self, behavior_session_id: int, *, version: str | None = None) -> Path:
        """The NWB of one behavior session, fetched first if needed."""
        return self.get_file_path("behavior-session", behavior_session_id, version=version)

    def get_ophys_experiment_path(self, ophys_experiment_id: int, *, version: str | None = None) -> Path:
        """The NWB of one ophys experiment, fetched first if needed."""
        return self.get_file_path("ophys-experiment", ophys_experiment_id, version=version)

    def get_file_path(self, kind: str, item_id: int, *, version: str | None = None,
                      on_event: Callable[[dict], None] | None = None) -> Path:
        layout = self._need_layout()
        spec = self.dataset.file_kinds.get(kind)
        if spec is None:
            raise InputError(f"unknown file kind {kind!r}; known: {', '.join(sorted(self.dataset.file_kinds))}")

        async def go(cat: Catalog) -> Path:
            m = await self._manifest(cat, version)
            from . import tables as tbl

            entry = tbl.entry_for_id(m, await self._table(cat, m, spec.table), spec, int(item_id))
            path = layout.view_path(f"{m.view_dir}/{entry.relative_path}")
            plan, local = await self._plan(cat, [m], entries=[entry], strays=False)
            if plan.fetch or plan.link or plan.replace:
                lock = CacheLock(layout.lock_path, wait=True, timeout=600, command="vbo-mirror get")
                await asyncio.to_thread(lock.acquire)  # waiting for a running sync must not block the loop
                try:
                    # Planned again under the lock: a sync that just finished may have done it all.
                    plan, local = await self._plan(cat, [m], entries=[entry], strays=False)
                    stats = await self._execute(cat, plan, local, on_event=on_event)
                finally:
                    lock.release()
                if stats.failures:
                    raise stats.failures[0].error  # its own type: ObjectNotFound, IntegrityError, ...
            return path

        return self._run(go)

    # --- looking at the mirror -------------------------------------------------------------------

    def urls(self, version: str | None = None) -> list[str]:
        """Direct download URLs (with ?versionId=) of every file of `version`, for wget/aria2."""
        settings = self.remote_settings()

        async def go(cat: Catalog) -> list[str]:
            seen: dict[str, None] = {}
            for m in await self._select(cat, version):
                for e in m.entries():
                    seen.setdefault(settings.object_url(ObjectRef(e.bucket, e.key, e.version_id)), None)
            return list(seen)

        return self._run(go)

    def status(self) -> dict[str, Any]:
        """Per downloaded version: files present and missing, logical bytes (what the views
        add up to) against bytes on disk (each stored object counted once)."""
        from .store.status import cache_status

        layout = self._need_layout()
        cat = Catalog(self.dataset, layout, None)
        manifests = [m for n in cat.local_names() if (m := cat.read_local(n)) is not None]
        return cache_status(layout, manifests, current=self.current_manifest())

    def verify(self, *, fast: bool = False, repair: bool = False, jobs: int = 2,
               on_event: Callable[[dict], None] | None = None, wait: bool = False) -> dict[str, Any]:
        """Check every stored object (BLAKE2b, or with `fast` the xxh3 fingerprint in the
        index) and every view of the downloaded versions; with `repair`, fetch damaged
        content again and relink wrong views."""
        from .store.status import verify_store

        layout = self._need_layout()
        cat = Catalog(self.dataset, layout, None)
        manifests = [m for n in cat.local_names() if (m := cat.read_local(n)) is not None]
        with CacheLock(layout.lock_path, wait=wait, command="vbo-mirror verify"):
            report = verify_store(layout, manifests, fast=fast, jobs=jobs, on_event=on_event)
            if repair and (report["corrupt"] or report["views_wrong"] or report["views_missing_content"]):
                for rel in report["views_wrong"]:  # what a sync would replace anyway
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        os.unlink(layout.view_path(rel))
                bad = {c["file_hash"] for c in report["corrupt"]}
                wanted = [e for m in manifests for e in m.entries()
                          if e.file_hash in bad or f"{m.view_dir}/{e.relative_path}" in set(report["views_wrong"])]

                async def go(cat: Catalog) -> Stats:
                    plan, local = await self._plan(cat, manifests, entries=wanted, strays=False)
                    return await self._execute(cat, plan, local, on_event=on_event)

                stats = self._run(go)
                report["repaired"] = {"files_fetched": stats.files_done, "views_linked": stats.files_linked,
                                      "failures": [f.to_dict() for f in stats.failures]}
                report["ok"] = not stats.failures
        return report

    def rebuild_index(self, *, jobs: int = 2, wait: bool = False) -> dict[str, Any]:
        """Rebuild the state index from the store: every object is read and verified."""
        from .store.status import rebuild_index

        layout = self._need_layout()
        cat = Catalog(self.dataset, layout, None)
        manifests = [m for n in cat.local_names() if (m := cat.read_local(n)) is not None]
        with CacheLock(layout.lock_path, wait=wait, command="vbo-mirror index rebuild"):
            return rebuild_index(layout, manifests, jobs=jobs)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
