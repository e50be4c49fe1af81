"""Metadata tables as Arrow (pandas on request), and the queries that map rows to data files.

The CSVs are read with pyarrow: ids become int64 (nullable), so `file_id` survives the
round trip without turning into floats until pandas is asked for. A row links to its data
file through `data_files[str(int(file_id))]`; rows without a file_id (behavior sessions that
have ophys data) have no file of their own.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .config import FileKind
from .errors import InputError, ManifestError, UnknownIdError
from .manifest import FileEntry, Manifest

# Columns that hold ids: always int64, never inferred as float or string.
_ID_SUFFIX = "_id"
_LIST_COLUMNS = {"ophys_experiment_id", "ophys_container_id"}  # "[1, 2]" in some tables


def read_csv(data: bytes, *, name: str) -> pa.Table:
    """Parse one metadata CSV into an Arrow table; a malformed file raises InputError."""
    first_line = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    columns = [c.strip().strip('"') for c in first_line.split(",")]
    types = {c: pa.int64() for c in columns if c.endswith(_ID_SUFFIX) and c not in _LIST_COLUMNS}
    types["file_id"] = pa.int64()
    try:
        return pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(column_types=types))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"{name}: not a readable metadata table: {exc}") from exc


def to_pandas(table: pa.Table, *, index: str | None):
    """A pandas DataFrame indexed like AllenSDK's (`behavior_session_id`, ...)."""
    df = table.to_pandas()
    if index and index in df.columns:
        df = df.set_index(index)
    return df


def entry_for_id(manifest: Manifest, table: pa.Table, kind: FileKind, item_id: int) -> FileEntry:
    """The data file of one behavior session / ophys experiment, with a message that says
    why when there is none."""
    ids = table[kind.id_column]
    hit = table.filter(pc.equal(ids, pa.scalar(item_id, pa.int64())))
    if hit.num_rows == 0:
        raise UnknownIdError(f"{kind.id_column} {item_id} is not in {kind.table} of {manifest.name}",
                             hint=f"list the ids with `vbo-mirror tables {kind.table}`")
    fid = hit["file_id"][0].as_py()
    if fid is None:
        raise UnknownIdError(f"{kind.id_column} {item_id} has no NWB file of its own in {manifest.name}"
                             " (a behavior session recorded with ophys: its data is in its ophys experiments' files)")
    entry = manifest.data_files.get(str(int(fid)))
    if entry is None:
        raise ManifestError(manifest.name, f"{kind.table} names file_id {fid} for {kind.id_column} {item_id}, "
                            "but data_files has no such entry")
    return entry



def select_files(manifest: Manifest, tables: dict[str, pa.Table], kinds: list[FileKind], *,
                 where=None, ids: tuple[str | None, list[int]] | None = None) -> tuple[list[FileEntry], dict]:
    """The data files that rows of the file-carrying tables (`kinds`: behavior sessions,
    ophys experiments) pick, and a report of why: rows matched per table.

    `where` (a parsed mirror.select.Expr) applies to every such table that has all of its
    columns; none having them is an error naming the unknown column. `ids` (column, ids):
    rows whose column holds one of the ids, in every such table with that column; without a
    column (a bare list), behavior_session_id and ophys_experiment_id are both tried, so a
    behavior session's id also picks its ophys experiments. Both given: rows must match both.
    """
    from . import select as sel

    report: dict = {"where": where.text if where is not None else None, "tables": {}}
    if ids is not None:
        column, values = ids
        report["ids"] = {"column": column, "given": len(values)}
        id_columns = [column] if column else ["behavior_session_id", "ophys_experiment_id"]
        id_array = pa.array(values, pa.int64())
    picked: dict[str, FileEntry] = {}
    found_ids: set[int] = set()
    unknown: list[sel.UnknownColumn] = []
    applied = 0
    for kind in kinds:
        table = tables[kind.table]
        mask = None
        if where is not None:
            try:
                mask = sel.evaluate(where, table, table_name=kind.table)
            except sel.UnknownColumn as exc:
                unknown.append(exc)
                continue
        if ids is not None:
            # id columns of integers only (a session's list of its experiments, "[1, 2]", is not one)
            cols = [c for c in id_columns if c in table.column_names and pa.types.is_integer(table[c].type)]
            if not cols:
                continue
            hit = None
            for c in cols:
                col = table[c]
                one = pc.fill_null(pc.is_in(col, value_set=id_array), False)
                found_ids.update(v for v in pc.filter(col, one).to_pylist() if v is not None)
                hit = one if hit is None else pc.or_(hit, one)
            mask = hit if mask is None else pc.and_(mask, hit)
        applied += 1
        rows = table.filter(mask) if mask is not None else table
        files = 0
        for fid in rows["file_id"].to_pylist():
            if fid is None:
                continue
            entry = manifest.data_files.get(str(int(fid)))
            if entry is None:
                raise ManifestError(manifest.name, f"{kind.table} names file_id {fid}, but data_files has no such entry")
            if entry.key not in picked:
                picked[entry.key] = entry
                files += 1
        report["tables"][kind.table] = {"rows": table.num_rows, "matched": rows.num_rows, "files": files}
    if where is not None and applied == 0 and unknown:
        raise unknown[0]  # no file-carrying table has every column named
    if ids is not None:
        if applied == 0:
            raise InputError(f"no table of {manifest.name} has a {' or '.join(id_columns)} column",
                             hint="name the id column in a CSV header (behavior_session_id, ophys_experiment_id, ...)")
        missing = [v for v in values if v not in found_ids]
        report["ids"]["not_found"] = len(missing)
        report["ids"]["not_found_first"] = missing[:5]
    report["files"] = len(picked)
    return list(picked.values()), report
