"""What versions exist and what they hold: manifests online and in cache_dir, loading one
safely, object sizes from the S3 listing, and the metadata tables of a version.

A downloaded manifest is validated completely in memory before a byte of it reaches
cache_dir, so a malformed or hostile manifest leaves the disk untouched. Metadata tables
go through the content-addressed store like every other file: verified against the
manifest's BLAKE2b, published read-only, hard-linked into the version's directory.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING, Callable, Iterable

from .config import DatasetConfig
from .policy import RetryPolicy, call_with_retries, first_error
from .errors import Action, AccessDenied, IntegrityError, ManifestError, MirrorError, OfflineError, UnknownVersionError
from .manifest import FileEntry, Manifest, parse_manifest
from .model import ObjectInfo, ObjectRef, strip_etag
from .semver import Version
from .store.fsutil import read_no_follow
from .store.index import StateIndex
from .store.layout import CacheLayout

if TYPE_CHECKING:
    from .remote.client import Remote
    from .store.facade import Store

# Metadata calls retry briefly: a dead endpoint must be reported in seconds, not minutes.
METADATA_RETRIES = RetryPolicy(attempts=3, base_delay=0.2, max_delay=2.0)
HEAD_CONCURRENCY = 32


def sort_manifest_names(dataset: DatasetConfig, names: Iterable[str]) -> list[str]:
    """Manifest file names of `dataset`, oldest first by semver (0.10.0 after 0.9.0)."""
    versioned = [(Version(v), n) for n in names if (v := dataset.version_of(n)) is not None]
    return [n for _, n in sorted(versioned)]


def resolve_name(dataset: DatasetConfig, version: str, available: list[str]) -> str:
    """'latest', '1.0.1', 'v1.0.1' or a file name → the manifest file name, from `available`."""
    if not available:
        raise UnknownVersionError(version, [])
    if version == "latest":
        return available[-1]
    if dataset.version_of(version) is not None:
        name = version
    elif Version.is_valid(version):
        name = dataset.manifest_name(str(Version(version)))
    else:
        raise UnknownVersionError(version, [dataset.version_of(n) for n in available])
    if name not in available:
        raise UnknownVersionError(version, [dataset.version_of(n) for n in available])
    return name


class Catalog:
    """Manifests and metadata of one dataset; `remote` None means offline."""

    def __init__(self, dataset: DatasetConfig, layout: CacheLayout | None, remote: Remote | None,
                 *, manifest_etags: dict[str, str | None] | None = None, store: Store | None = None) -> None:
        """`store`: where downloaded manifests and tables are written (None: nothing is)."""
        self.dataset = dataset
        self.layout = layout
        self.remote = remote
        self.store = store
        # Set when the endpoint did not answer and this call carries on from cache_dir
        # (`remote` is then None): what went wrong, for messages that must not say "--offline".
        self.unreachable: Exception | None = None
        # name → ETag from the manifest listing: a single-part ETag is the MD5 of the bytes
        self.manifest_etags = manifest_etags if manifest_etags is not None else {}
        self._parsed: dict[str, Manifest] = {}  # downloaded in this call, already validated

    def fall_back_offline(self, reason: Exception) -> None:
        """The endpoint did not answer: the rest of this operation works from cache_dir, and
        its messages say why (not "--offline"). The Catalog is this operation's alone."""
        self.remote = None
        self.unreachable = reason

    # --- manifests -------------------------------------------------------------------

    async def online_listing(self) -> list[ObjectInfo]:
        """The manifest objects in the bucket (name order is not meaningful; see sort)."""
        remote = self._need_remote("list the manifests online")
        infos = await call_with_retries(lambda: remote.list_keys(self.dataset.manifest_prefix), policy=METADATA_RETRIES)
        return [i for i in infos if self.dataset.version_of(i.key.rsplit("/", 1)[-1]) is not None]

    async def online_names(self) -> list[str]:
        listing = await self.online_listing()
        self.manifest_etags.update({i.key.rsplit("/", 1)[-1]: i.etag for i in listing})
        return sort_manifest_names(self.dataset, self.manifest_etags)

    def local_names(self) -> list[str]:
        if self.layout is None or not self.layout.root.is_dir():
            return []
        return sort_manifest_names(self.dataset, (p.name for p in self.layout.root.iterdir() if p.is_file()))

    def read_local(self, name: str) -> Manifest | None:
        """The copy in cache_dir, validated again (it may have been edited by hand)."""
        if self.layout is None:
            return None
        path = self.layout.manifest_path(name)
        try:
            data = read_no_follow(path, "a manifest")
        except FileNotFoundError:
            return None
        return parse_manifest(data, source=str(path), dataset=self.dataset)

    async def download(self, name: str) -> Manifest:
        """Fetch, check against the S3 ETag (the listing's, else the answer's own), validate
        in memory, and only then write the manifest to cache_dir."""
        remote = self._need_remote(f"download {name}")
        key = self.dataset.manifest_prefix + name

        async def fetch() -> bytes:
            seen: dict = {}
            data = await remote.read_all(ObjectRef(self.dataset.bucket, key), seen=seen)
            etag = self.manifest_etags.get(name) or strip_etag(seen.get("etag"))
            if etag and "-" not in etag and hashlib.md5(data).hexdigest() != etag:
                raise IntegrityError(f"{name}: downloaded bytes do not match the S3 ETag {etag}",
                                     hint="try again; if it persists the object changed while it was read")
            return data

        data = await call_with_retries(fetch, policy=METADATA_RETRIES)
        manifest = parse_manifest(data, source=f"s3://{self.dataset.bucket}/{key}", dataset=self.dataset)
        if self.store is not None:
            self.store.write_manifest(name, data)
        self._parsed[name] = manifest
        return manifest

    async def load(self, name: str) -> Manifest:
        if name in self._parsed:
            return self._parsed[name]
        local = self.read_local(name)
        if local is not None:
            return local
        if self.remote is None:
            raise OfflineError(f"{name} is not in {self._where()} and vbo-mirror is offline",
                               hint="run once online (without --offline) to download it")
        return await self.download(name)

    # --- sizes ---------------------------------------------------------------------------

    async def list_versions(self) -> dict[tuple[str, str], ObjectInfo] | None:
        """Every object version under the dataset prefix (one ListObjectVersions, paged), or
        None where the bucket does not allow listing versions."""
        remote = self._need_remote("learn file sizes from S3")
        try:
            return await call_with_retries(lambda: remote.list_versions(self.dataset.prefix), policy=METADATA_RETRIES)
        except AccessDenied:
            return None

    async def head_infos(self, entries: Iterable[FileEntry], *,
                         on_progress: Callable[[int, int], None] | None = None) -> dict[tuple[str, str], ObjectInfo]:
        """Size and ETag by HEAD, for versions the listing did not show: HEAD_CONCURRENCY
        workers over the list (not a task per entry: a plan may lack 200,000 sizes), with
        `on_progress(done, total)` after each. A version that is gone or denied is left out
        (its size stays unknown, and the sync fails that one file with the server's own
        answer); any other error, once its retries are spent, is raised."""
        remote = self._need_remote("learn file sizes from S3")
        todo = list(entries)
        found: dict[tuple[str, str], ObjectInfo] = {}
        pending = iter(todo)
        done = 0

        async def worker() -> None:
            nonlocal done
            for e in pending:
                try:
                    found[(e.key, e.version_id)] = await call_with_retries(
                        lambda: remote.head(ObjectRef(e.bucket, e.key, e.version_id)), policy=METADATA_RETRIES)
                except MirrorError as exc:
                    if exc.retry or exc.outcome is Action.STOP_RUN:
                        raise  # only a version that is gone or denied is left out
                done += 1
                if on_progress is not None:
                    on_progress(done, len(todo))

        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(min(HEAD_CONCURRENCY, len(todo))):
                    tg.create_task(worker())
        except BaseExceptionGroup as eg:
            raise first_error(eg) from eg
        return found

    # --- metadata tables -----------------------------------------------------------------

    async def table_bytes(self, manifest: Manifest, table: str, *, index: StateIndex | None = None) -> bytes:
        """The verified bytes of one metadata table, from the store or fetched into it, and
        its view in the version directory made sure of (in the store's link mode)."""
        entry = manifest.metadata_files.get(table)
        if entry is None:
            raise ManifestError(manifest.name, f"has no metadata table {table!r} "
                                f"(it has: {', '.join(sorted(manifest.metadata_files)) or 'none'})")
        store = self.store
        data = await asyncio.to_thread(store.read_verified, entry.file_hash) if store is not None else None
        if data is None:
            if self.remote is None:
                raise OfflineError(f"metadata table {table} of {manifest.name} is not in {self._where()} "
                                   "and vbo-mirror is offline", hint="run once online to fetch it")
            ref = ObjectRef(entry.bucket, entry.key, entry.version_id)
            data = await call_with_retries(lambda: self._fetch_verified(ref, entry.file_hash), policy=METADATA_RETRIES)
            if store is not None:
                await asyncio.to_thread(store.put_bytes, entry.file_hash, data, index=index, key=entry.key,
                                        version_id=entry.version_id)
        if store is not None:
            view = f"{manifest.view_dir}/{entry.relative_path}"
            if await asyncio.to_thread(store.ensure_view, entry.file_hash, view):
                # Looking at a table wants that table, not the version's data files: recorded,
                # so verify does not take a version directory it finds as wanted whole.
                await asyncio.to_thread(store.record_wanted, manifest.view_dir, [view])
        return data

    async def _fetch_verified(self, ref: ObjectRef, file_hash: str) -> bytes:
        data = await self.remote.read_all(ref)
        if hashlib.blake2b(data).hexdigest() != file_hash:
            raise IntegrityError(f"s3://{ref.bucket}/{ref.key} (version {ref.version_id}): "
                                 "BLAKE2b of the downloaded bytes does not match the manifest")
        return data

    # --- helpers -------------------------------------------------------------------------

    def _need_remote(self, what: str) -> Remote:
        if self.remote is None:
            raise OfflineError(f"cannot {what}: working offline (--offline, or the endpoint did not answer)",
                               hint="drop --offline, or check --endpoint-url and the network")
        return self.remote

    def _where(self) -> str:
        return str(self.layout.root) if self.layout else "the cache (no --cache-dir given)"
