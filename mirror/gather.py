"""Everything a plan needs that takes I/O, gathered into one value (`plan.PlanInput`).

`Facts` keeps, for a session's life, what S3 said (the dataset prefix listed once, the sizes
HEADs found: version ids are immutable, so what they say stays true) and the metadata tables
read. `gather` picks the entries a selection wants (the tables and `--where` for a selection
by metadata), looks at cache_dir (`upkeep/scan.py`), hashes objects an earlier run published
unverified when this run verifies, and asks the sizes of what is missing. `plan.make_sync_plan`
then decides, with no I/O at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Iterable

from .catalog import Catalog
from .config import DatasetConfig, FileKind
from .engine.verify import Verify
from .errors import InputError
from .manifest import FileEntry, Manifest
from .model import ObjectInfo, Selection
from .plan import PlanInput, targets_of
from .store.index import StateIndex
from .store.layout import CacheLayout
from .upkeep.scan import scan_local

if TYPE_CHECKING:
    import pyarrow as pa

    from .progress import StatusLines
    from .store.facade import Store

Key = tuple[str, str | None]


class Facts:
    def __init__(self, dataset: DatasetConfig, layout: CacheLayout | None, store: Store | None,
                 status: StatusLines) -> None:
        self.dataset = dataset
        self.layout = layout
        self.store = store
        self._status = status
        self._infos: dict[Key, ObjectInfo] = {}
        self._listing: dict[Key, ObjectInfo] | None = None
        self._headed: set[Key] = set()
        self._tables: dict[tuple[str, str], pa.Table] = {}
        self._where: dict[str, object] = {}  # --where text → its parsed expression

    async def sizes(self, cat: Catalog, entries: Iterable[FileEntry]) -> dict[Key, ObjectInfo]:
        """Object sizes and ETags: the dataset prefix is listed once, with a HEAD for what the
        listing lacks; offline, what the local index knows (`entries` is not even read when
        it knows nothing: a million of them need not be made for that)."""
        index = None
        if cat.remote is None:
            if self.layout is None:
                return self._infos
            index = StateIndex(self.layout)
            if not (index.load() and index.records):
                return self._infos
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
                self._infos.update(await cat.head_infos(missing, on_progress=self._status.counter("HEAD")))
                # Asked and answered (404/403 included): not asked again. After an error that
                # was raised, nothing is recorded and the next call tries again.
                self._headed.update((e.key, e.version_id) for e in missing)
        elif index is not None:
            for e in wanted:
                rec = index.get(e.file_hash)
                if rec is not None:
                    self._infos[(e.key, e.version_id)] = ObjectInfo(e.key, e.version_id, rec.size, rec.etag)
        return self._infos

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

        table = tbl.read_csv(await self.table_bytes(cat, m, name), name=f"{m.name}: {name}",
                             list_columns=self.dataset.list_columns)
        self._tables[(m.name, name)] = table
        return table

    def file_kind(self, kind: str) -> FileKind:
        """One of the dataset's file kinds ('behavior-session', ...), or a clear error."""
        spec = self.dataset.file_kinds.get(kind)
        if spec is None:
            raise InputError(f"unknown file kind {kind!r}; known: {', '.join(sorted(self.dataset.file_kinds))}")
        return spec

    async def entry_for(self, cat: Catalog, m: Manifest, spec: FileKind, item_id: int) -> FileEntry:
        """The file of a kind for one id, found by the kind's table."""
        from . import tables as tbl

        from .errors import NoFileError

        try:
            return tbl.entry_for_id(m, await self.table(cat, m, spec.table), spec, int(item_id),
                                    no_file_id=self.dataset.no_file_id)
        except NoFileError as exc:
            if exc.fallback_id is None or not spec.fallback_kind:
                raise
            # AllenSDK's rule (VBN: a behavior session recorded with Neuropixels is read from
            # its ecephys session's NWB)
            return await self.entry_for(cat, m, self.file_kind(spec.fallback_kind), exc.fallback_id)

    async def selected(self, cat: Catalog, m: Manifest, selection: Selection,
                       reports: dict | None = None) -> list[FileEntry]:
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
                if selection.where is not None and selection.where not in self._where:
                    self._where[selection.where] = sel.parse(selection.where)  # once, not once per version
                picked, report = tbl.select_files(
                    m, tables, kinds, where=self._where.get(selection.where) if selection.where is not None else None,
                    ids=(selection.ids[0], list(selection.ids[1])) if selection.ids is not None else None,
                    bare_id_columns=self.dataset.bare_id_columns, no_file_id=self.dataset.no_file_id)
                entries += picked
            if reports is not None:
                reports[m.name] = report
        else:
            entries = list(m.entries())
        if selection.keys is not None:
            entries = [e for e in entries if e.key in selection.keys]
        return entries

    async def gather(self, cat: Catalog, manifests: list[Manifest], selection: Selection, *,
                     verify: Verify | None, io_threads: int) -> PlanInput:
        """`verify`: the mode of the sync to come. With BLAKE2b, objects an earlier run published
        unverified are hashed here first (kept if right, removed to be fetched again if not);
        with none, they are taken as they are. A dry run (None) plans them as fetches."""
        layout = self.layout
        bucket = selection.layout == "bucket"
        if bucket and len(manifests) != 1:
            raise InputError("the bucket layout holds one version at a time: name one (--version V)")
        tops = tuple(m.project_name if bucket else m.view_dir for m in manifests)
        targets: list = []  # of Target; or one bulk.TargetTable, which iterates like it
        reports: dict = {}
        whole = selection.keys is None and not selection.by_metadata
        if len(manifests) == 1 and whole and manifests[0].in_columns:
            from .bulk import TargetTable  # (numpy and pyarrow: only for a big manifest)

            targets = TargetTable(manifests[0], tops[0])  # a big manifest, whole: planned as columns
        else:
            for m, top in zip(manifests, tops):
                targets += targets_of(m, await self.selected(cat, m, selection, reports), top)
        dirs = list(tops) if selection.strays and not selection.by_metadata else []
        trust = verify is not None and not verify.blake2b
        local = await asyncio.to_thread(scan_local, layout, targets, stray_dirs=dirs, trust_unverified=trust)
        if local.unverified and verify is not None and verify.blake2b:
            await asyncio.to_thread(self._verify_unverified, list(local.unverified), io_threads)
            local = await asyncio.to_thread(scan_local, layout, targets, stray_dirs=dirs)
        infos = dict(await self.sizes(cat, (t.entry for t in targets if t.entry.file_hash not in local.objects)))
        return PlanInput(tuple(m.name for m in manifests), targets, local, infos, tops, reports or None)

    def _verify_unverified(self, hashes: list[str], jobs: int) -> None:
        index = self.store.new_index()
        index.load()
        self.store.verify_unverified(hashes, index=index, jobs=jobs)
        if index.dirty:
            with contextlib.suppress(Exception):  # the index is a summary: the store decided
                self.store.commit_index(index)
