"""Which version a command is about: the current one, 'latest', 'all', a version named, and
what to do when the endpoint does not answer.

`Versions` lives as long as a `Session`; it keeps only what the bucket said (its manifest
names) and which outdated versions it has warned about. Each operation passes its `Catalog`;
the one thing resolution may change there is `Catalog.fall_back_offline` (that operation goes
on from cache_dir; the next one tries the endpoint again).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Callable

from .catalog import Catalog, resolve_name, sort_manifest_names
from .config import DatasetConfig
from .errors import (
    AccessDenied,
    EndpointUnreachable,
    InputError,
    MirrorError,
    ObjectNotFound,
    OfflineError,
    OfflineWarning,
    OutdatedManifestWarning,
    TransferError,
    UnknownVersionError,
)
from .manifest import Manifest
from .semver import Version
from .store.fsutil import read_no_follow, store_error
from .store.layout import CacheLayout

if TYPE_CHECKING:
    from .store.facade import Store


class Versions:
    def __init__(self, dataset: DatasetConfig, layout: CacheLayout | None, store: Store | None,
                 on_status: Callable[[str], None]) -> None:
        self.dataset = dataset
        self.layout = layout
        self.store = store
        self._status = on_status
        self._online: list[str] | None = None  # the bucket's manifest names, once listed
        self._warned: set[str] = set()

    # --- what cache_dir holds (no network) ------------------------------------------------------

    def current(self) -> str | None:
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

    def local(self, on_unreadable: Callable[[str, MirrorError], None] | None = None) -> dict[str, Manifest]:
        """The manifests in cache_dir, by name. One that does not parse raises, unless
        `on_unreadable(name, error)` is given (then it is left out)."""
        cat = Catalog(self.dataset, self.layout, None)
        out: dict[str, Manifest] = {}
        for name in cat.local_names():
            try:
                m = cat.read_local(name)
            except MirrorError as exc:
                if on_unreadable is None:
                    raise
                on_unreadable(name, exc)
                continue
            if m is not None:
                out[name] = m
        return out

    # --- online and cache_dir together ------------------------------------------------------------

    async def available(self, cat: Catalog) -> list[str]:
        """Manifest names to choose from: online ones plus any in cache_dir. When the
        endpoint does not answer and cache_dir holds manifests, this operation goes on offline."""
        local = cat.local_names()
        if cat.remote is None:
            return local
        if self._online is None:
            try:
                self._online = await cat.online_names()
            except (EndpointUnreachable, TransferError) as exc:
                if not local:
                    raise
                warnings.warn(f"{exc}; working offline from {cat.layout.root}", OfflineWarning, stacklevel=2)
                cat.fall_back_offline(exc)
                return local
        return sort_manifest_names(self.dataset, {*self._online, *local})

    async def list_online(self, cat: Catalog) -> list[str]:
        """The versions online (with those cache_dir holds); offline, cache_dir's. When the
        endpoint does not answer, a list of only what the cache holds would pass for what is
        online: that is an error naming both ways on (exit 3)."""
        if cat.remote is not None and self._online is None:
            try:
                self._online = await cat.online_names()
            except (EndpointUnreachable, TransferError) as exc:
                local = cat.local_names()
                if not local:
                    raise
                raise OfflineError(f"cannot list the versions online: {exc}",
                                   hint=f"cache_dir holds {len(local)} (`vbo-mirror --offline manifests list` lists "
                                        "them); or check the endpoint / proxy") from exc
        return await self.available(cat)

    async def use(self, cat: Catalog, version: str) -> Manifest:
        """`manifests use`: load `version` and make it the current one."""
        name = await self.resolve(cat, version)
        available = await self.available(cat)
        manifest = await cat.load(name)
        self.store.pin(name)
        self.warn_if_outdated(name, available)
        return manifest

    async def manifest(self, cat: Catalog, version: str | None, *, warn: bool = False) -> Manifest:
        """The manifest of `version`, or of the current one; on a cache_dir with none in use,
        the latest is loaded and pinned (as AllenSDK does on a fresh cache_dir)."""
        if version is None:
            current = self.current()
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
                        self.warn_if_outdated(current, await self.available(cat))
                    return local
                version = current
        return await cat.load(await self.resolve(cat, version))

    async def select(self, cat: Catalog, version: str | None) -> list[Manifest]:
        """'all' → every version; otherwise the one `manifest` resolves."""
        if version == "all":
            names = await self.available(cat)
            if not names:
                raise OfflineError("no manifest is known: none online and none in cache_dir")
            return [await cat.load(n) for n in names]
        return [await self.manifest(cat, version)]

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

    def warn_if_outdated(self, name: str, available: list[str]) -> None:
        latest = available[-1] if available else name
        if name != latest and name not in self._warned:
            self._warned.add(name)
            old, new = self.dataset.version_of(name), self.dataset.version_of(latest)
            warnings.warn(
                f"version {old} is in use; the latest is {new}\n"
                f"  what changed: vbo-mirror manifests compare {old} {new}\n"
                "  move to it:   vbo-mirror manifests use latest",
                OutdatedManifestWarning, stacklevel=3)
