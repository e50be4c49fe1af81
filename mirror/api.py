"""The Python API: `Mirror`, with the method names AllenSDK's project cache uses, so a
notebook written for `VisualBehaviorOphysProjectCache` reads the same.

`Mirror` is a thin synchronous face: each method runs a coroutine of its `Session`
(mirror/session.py: the remote, the limits, the pacer and what S3 said, for the mirror's
whole life) on one long-lived event loop thread (mirror/loop.py). That works the same from
a script and from inside a running loop (Jupyter); Ctrl-C cancels the running job, keeps
what it downloaded for the next run, and raises KeyboardInterrupt.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

from .catalog import Catalog
from .config import DEFAULT_DATASET, DatasetConfig, load_dataset
from .policy import RetryPolicy
from .engine.verify import Verify
from .events import Event
from .errors import InputError, OfflineError
from .limits import Limits
from .loop import LoopThread
from .manifest import Manifest, ManifestDiff, format_diff
from .model import Selection
from .plan import Plan
from .remote import RemoteSettings, Timeouts
from .remote.settings import check_endpoint, endpoint_from_env
from .session import Session
from .store.layout import CacheLayout
from .store.lock import CacheLock

if TYPE_CHECKING:
    import pyarrow as pa

    from .engine.runner import Stats
    from .reports import AdoptReport, CacheStatus, IndexRebuilt, PruneReport, VerifyReport

T = TypeVar("T")


def _shutdown(loop: LoopThread, session: Session) -> None:
    """Cancel what still runs, close the session's connections, stop the loop (at close(),
    garbage collection or interpreter exit)."""
    loop.stop(before=session.aclose)


class Mirror:
    """A local mirror of one dataset in `cache_dir`.

    `endpoint_url` replaces the host of every S3 URL (bucket and key stay those of the
    manifest); None follows the environment as the CLI does (VBO_MIRROR_ENDPOINT_URL,
    AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL), "" is AWS whatever the environment says;
    `offline` works only from what cache_dir holds; `signed` uses the AWS
    credentials of the environment instead of anonymous requests; `link_mode` (auto, reflink,
    hardlink, copy) is how views are made, tables and data files alike (a sync may name
    another for its run). `on_status(line)` hears about long steps before a transfer (listing
    object versions, HEADs for sizes the listing lacks). Callbacks given to a method (`on_event`, ...) run on the Mirror's
    loop thread and must not call the same Mirror. `close()` (or a `with`
    block) releases the connections and the loop thread; so does garbage collection.
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
        proxy: str | None = None,
        limits: Limits = Limits(),
        link_mode: str = "auto",
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self.dataset = load_dataset(dataset) if isinstance(dataset, str) else dataset
        self.layout = CacheLayout(cache_dir) if cache_dir is not None else None
        if endpoint_url is None:  # as the CLI: VBO_MIRROR_ENDPOINT_URL, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL
            endpoint_url, source = endpoint_from_env()
        else:
            source = "endpoint_url"
        self.endpoint_url = check_endpoint(endpoint_url, source) if endpoint_url else None
        self.signed = signed
        self.timeouts = timeouts
        self.transport = transport
        # None: HTTPS_PROXY / HTTP_PROXY / NO_PROXY as curl reads them; "": no proxy; else a URL.
        self.proxy = proxy
        from .remote.netenv import proxy_config

        proxy_config(proxy)  # a proxy setting that cannot be used is refused now, not at the first request
        self.session = Session(self.dataset, self.layout, self.remote_settings(), offline=offline, limits=limits,
                               link_mode=link_mode, on_status=on_status)
        self._loop = LoopThread()
        self._finalizer = weakref.finalize(self, _shutdown, self._loop, self.session)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "Mirror":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def offline(self) -> bool:
        return self.session.offline

    @offline.setter
    def offline(self, value: bool) -> None:
        self.session.offline = value

    @property
    def cache_dir(self) -> Path | None:
        return self.layout.root if self.layout else None

    def remote_settings(self) -> RemoteSettings:
        return RemoteSettings(bucket=self.dataset.bucket, region=self.dataset.region, endpoint_url=self.endpoint_url,
                              signed=self.signed, timeouts=self.timeouts, transport=self.transport,
                              proxy=self.proxy)

    def need_layout(self) -> CacheLayout:
        """The cache layout, or a clear error when no cache_dir was given."""
        return self.session.need_layout()

    def need_mirror(self) -> CacheLayout:
        """The layout of a cache_dir that holds a mirror: reading commands (status, verify)
        on a mistyped --cache-dir would report a healthy nothing."""
        layout = self.need_layout()
        if not layout.holds_mirror():
            what = "does not exist" if not layout.root.exists() else "holds no mirror (no .vbo-mirror/, no manifest)"
            raise InputError(f"{layout.root} {what}",
                             hint="check --cache-dir / VBO_MIRROR_CACHE_DIR; `vbo-mirror sync` makes a mirror there")
        return layout

    def _lock(self, command: str, *, wait: bool, shared: bool = False, timeout: float | None = None) -> CacheLock:
        """The cache lock, taken here for every command that needs it (and only here): exclusive,
        or shared by the shards of one sync."""
        return CacheLock(self.need_layout().lock_path, wait=wait, timeout=timeout, on_wait=self.session.on_status,
                         command=command, shared=shared)

    def _call(self, fn: Callable[[Session], Awaitable[T]]) -> T:
        return self._loop.run(lambda: fn(self.session))

    # --- manifests (AllenSDK names) -------------------------------------------------------

    def list_manifest_file_names(self) -> list[str]:
        """Manifest file names online (in cache_dir when offline), oldest first by semver."""
        return self._call(lambda s: s.list_manifests())

    def latest_manifest_file(self) -> str:
        names = self.list_manifest_file_names()
        if not names:
            raise OfflineError("no manifest is known: none online and none in cache_dir")
        return names[-1]

    def list_all_downloaded_manifests(self) -> list[str]:
        return Catalog(self.dataset, self.layout, None).local_names()

    def current_manifest(self) -> str | None:
        """The manifest in use in cache_dir (AllenSDK's `_manifest_last_used.txt`), if any."""
        return self.session.current_manifest()

    def load_manifest(self, version: str = "latest") -> Manifest:
        """Download (if needed), validate and pin a version as current; warn when it is not
        the latest. `version` is 'latest', '1.0.1', 'v1.0.1' or a manifest file name."""
        return self._call(lambda s: s.load_manifest(version))

    def manifest(self, version: str | None = None) -> Manifest:
        """The manifest of `version`, or of the current one; on a cache_dir with none in use,
        the latest is loaded and pinned (as AllenSDK does on a fresh cache_dir)."""
        return self._call(lambda s: s.manifest(version))

    def manifest_summary(self, version: str | None = None) -> dict[str, Any]:
        """Counts of files, total bytes (from the S3 listing of object versions; from cache_dir
        for what it holds when offline) and the data_pipeline of one version."""
        return self._call(lambda s: s.manifest_summary(version))

    def diff_manifests(self, a: str, b: str) -> ManifestDiff:
        return self._call(lambda s: s.diff(a, b))

    def compare_manifests(self, a: str, b: str) -> str:
        """AllenSDK's message: `... changed/created/deleted`, `... renamed ...`, metadata first."""
        return format_diff(self.diff_manifests(a, b))

    def compare_manifests_detail(self, a: str, b: str) -> dict[str, Any]:
        """The structured diff, with the bytes each change moves (None where unknown)."""
        return self._call(lambda s: s.diff(a, b, detail=True))

    # --- metadata tables -------------------------------------------------------------------

    def metadata_table_names(self, version: str | None = None) -> list[str]:
        return sorted(self.manifest(version).metadata_files)

    def get_table(self, name: str, *, version: str | None = None) -> pa.Table:
        """One metadata table as Arrow, fetched on demand and verified against the manifest."""
        return self._call(lambda s: s.table(version, name))

    def get_table_bytes(self, name: str, *, version: str | None = None) -> bytes:
        """The table's CSV exactly as released (verified against the manifest's BLAKE2b)."""
        return self._call(lambda s: s.table(version, name, raw=True))

    def table_path(self, name: str, *, version: str | None = None) -> Path:
        """Where the table's CSV sits in the AllenSDK layout (fetched if needed)."""
        layout = self.need_layout()
        m = self.manifest(version)
        self.get_table(name, version=m.manifest_version)
        entry = m.metadata_files[name]
        return layout.view_path(f"{m.view_dir}/{entry.relative_path}")

    def get_table_frame(self, name: str, *, version: str | None = None):
        """One metadata table as the pandas DataFrame AllenSDK's project cache returns for it
        (index, dtypes, lists, dates, column order and default row filters: the dataset file's
        recipe for that table)."""
        from . import tables as tbl

        # From the CSV's bytes again: pandas keeps date and time text as written, where the
        # Arrow table (for --where) holds typed values whose text form may differ.
        table = tbl.read_csv(self.get_table_bytes(name, version=version), name=name,
                             list_columns=self.dataset.list_columns, temporal_as_text=True)
        spec = self.dataset.tables.get(name)
        return tbl.to_pandas(table, spec=spec, dataset=self.dataset, name=name, index=spec.index if spec else None)

    # The cache's table getters, by the names AllenSDK gives them (the dataset file's `getter`s):
    # get_behavior_session_table, get_ophys_experiment_table, ... for Visual Behavior Ophys;
    # get_ecephys_session_table, get_probe_table, get_channel_table, get_unit_table, ... for
    # Visual Behavior Neuropixels. Each takes `version=`.
    def __getattr__(self, attr: str):
        if attr.startswith("get_") and attr.endswith("_table") and "dataset" in self.__dict__:
            for spec in self.dataset.tables.values():
                if spec.getter == attr:
                    def getter(*, version: str | None = None, _name: str = spec.name):
                        return self.get_table_frame(_name, version=version)

                    getter.__name__ = attr
                    getter.__doc__ = f"The {spec.name} table as AllenSDK's {attr}() returns it."
                    return getter
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}"
                             + (f" (this dataset's table getters: "
                                f"{', '.join(sorted(t.getter for t in self.dataset.tables.values() if t.getter))})"
                                if attr.endswith("_table") and "dataset" in self.__dict__ else ""))

    def __dir__(self):
        return sorted({*super().__dir__(), *(t.getter for t in self.dataset.tables.values() if t.getter)})

    # --- sync: plan, fetch, views ----------------------------------------------------------

    def plan(self, version: str | Selection | None = None) -> Plan:
        """A dry run: what a sync of `version` ('all', 'latest', a version; default the
        current one, or a `Selection`) would fetch, link, leave and remove. Nothing is
        written but manifests."""
        return self._call(lambda s: s.plan(version if isinstance(version, Selection) else Selection(version)))

    def sync(self, version: str | Selection | None = None, *, limits: Limits | None = None,
             verify: Verify = Verify.MANIFEST, link_mode: str | None = None, wait: bool = False,
             policy: RetryPolicy | None = None, on_event: Callable[[Event], None] | None = None,
             on_start: Callable[[Stats], None] | None = None) -> Stats:
        """Make every file of `version` present and verified in cache_dir. Returns the run's
        stats; `stats.failures` lists the files that could not be mirrored (each with its
        error). `limits` (default: the Mirror's) sizes connections, requests and memory.
        A `Selection` picks files by metadata (`where`, `ids`) and/or one shard of them:
        shards of one selection run at the same time into one cache_dir."""
        selection = version if isinstance(version, Selection) else Selection(version)
        command = "vbo-mirror sync" + (f" --shard {selection.shard}" if selection.shard else "")
        with self._lock(command, wait=wait, shared=selection.shard is not None):
            return self._call(lambda s: s.sync(selection, limits=limits, verify=verify, link_mode=link_mode,
                                               policy=policy, on_event=on_event, on_start=on_start))

    # --- measuring the endpoint ---------------------------------------------------------------

    def bench(self, version: str | None = None, *, jobs: tuple[int, ...] = (1, 4, 16, 64),
              part_sizes: tuple[int, ...] = (8 << 20, 32 << 20), budget: int = 1 << 30, repeat: int = 1,
              to_disk: Path | None = None, on_cell: Callable[[Any], None] | None = None) -> list:
        """GET throughput over a matrix of concurrency x part size on real objects of `version`
        (the largest first, up to `budget` bytes per cell); see mirror/bench.py."""
        return self._call(lambda s: s.bench(version, jobs=jobs, part_sizes=part_sizes, budget=budget, repeat=repeat,
                                            to_disk=to_disk, on_cell=on_cell))

    # --- one file ---------------------------------------------------------------------------

    def get_behavior_session_path(self, behavior_session_id: int, *, version: str | None = None) -> Path:
        """The NWB of one behavior session, fetched first if needed."""
        return self.get_file_path("behavior-session", behavior_session_id, version=version)

    def get_ophys_experiment_path(self, ophys_experiment_id: int, *, version: str | None = None) -> Path:
        """The NWB of one ophys experiment, fetched first if needed."""
        return self.get_file_path("ophys-experiment", ophys_experiment_id, version=version)

    def get_file_path(self, kind: str, item_id: int, *, version: str | None = None,
                      on_event: Callable[[Event], None] | None = None) -> Path:
        """Raises the file's own error when it cannot be fetched (ObjectNotFound, AccessDenied,
        IntegrityError, ...)."""
        path, todo = self._call(lambda s: s.locate(kind, item_id, version))  # outside the lock: looks only
        if todo is not None:
            # Waits (up to 10 min) for a running sync rather than refuse: `get` is what a notebook calls.
            with self._lock("vbo-mirror get", wait=True, timeout=600):
                stats = self._call(lambda s: s.fetch(todo, on_event=on_event))
            if stats.failures:
                raise stats.failures[0].error  # its own type: ObjectNotFound, IntegrityError, ...
        return path

    # --- looking at the mirror -------------------------------------------------------------------

    def urls(self, version: str | Selection | None = None) -> list[str]:
        """Direct download URLs (with ?versionId=) of every file of `version` (or of a
        `Selection`: by metadata, one shard), for wget/aria2."""
        return self._call(lambda s: s.urls(version if isinstance(version, Selection) else Selection(version)))

    def status(self) -> CacheStatus:
        """Per downloaded version: files present and missing, logical bytes (what the views
        add up to) against bytes on disk (each stored object counted once)."""
        self.need_mirror()
        return self._call(lambda s: s.status())

    def verify(self, *, fast: bool = False, repair: bool = False, jobs: int = 2,
               on_event: Callable[[Event], None] | None = None, wait: bool = False,
               confirm: Callable[[dict], bool] | None = None) -> VerifyReport:
        """Check every stored object (BLAKE2b, or with `fast` the xxh3 fingerprint in the
        index) and every view of the downloaded versions; with `repair`, fetch damaged
        content again and relink wrong views. Missing views whose content was never stored
        are fetched only if `confirm({"views": [...]})` returns True (default: not)."""
        layout = self.need_mirror()
        if layout.read_only() and not repair:
            # Nobody can write there meanwhile: no lock needed, and the check only reports.
            return self._call(lambda s: s.verify(fast=fast, jobs=jobs, on_event=on_event, read_only=True))
        command = "vbo-mirror verify" + (" --repair" if repair else "")
        with self._lock(command, wait=wait):
            return self._call(lambda s: s.verify(fast=fast, repair=repair, jobs=jobs, on_event=on_event,
                                                 confirm=confirm))

    def prune(self, keep: list[str], *, dry_run: bool = False, confirm: Callable[[PruneReport], bool] | None = None,
              wait: bool = False) -> PruneReport:
        """Remove the views of every version not in `keep`, their manifests, and every store
        object no kept version needs (plus what `gc` removes). `confirm` is shown the plan
        (what goes, what it frees) and says whether to go ahead; `dry_run` only plans. Takes
        the exclusive cache lock: never beside a running sync."""
        if not keep:
            raise InputError("prune needs at least one version to keep (--keep VERSION)",
                             hint="to remove only what no manifest needs, use gc")
        with self._lock("vbo-mirror prune", wait=wait):
            return self._call(lambda s: s.prune(list(keep), dry_run=dry_run, confirm=confirm))

    def gc(self, *, dry_run: bool = False, wait: bool = False) -> PruneReport:
        """Remove store objects that no manifest in cache_dir names, partial downloads of such
        objects, and temporaries of interrupted runs (exclusive cache lock)."""
        with self._lock("vbo-mirror gc", wait=wait):
            return self._call(lambda s: s.prune(None, dry_run=dry_run))

    def adopt(self, *, dry_run: bool = False, jobs: int = 2, wait: bool = False) -> AdoptReport:
        """Take the files AllenSDK downloaded into cache_dir into the store, in place: each one
        whose BLAKE2b is the manifest's becomes a hard-linked view of a store object (its
        symlinks too), nothing is fetched, and AllenSDK still opens the directory. What does
        not match is reported; the next sync fetches it. Exclusive cache lock."""
        with self._lock("vbo-mirror adopt", wait=wait):
            return self._call(lambda s: s.adopt(dry_run=dry_run, jobs=jobs))

    def rebuild_index(self, *, jobs: int = 2, wait: bool = False) -> IndexRebuilt:
        """Rebuild the state index from the store: every object is read and verified."""
        with self._lock("vbo-mirror index rebuild", wait=wait):
            return self._call(lambda s: s.rebuild_index(jobs=jobs))
