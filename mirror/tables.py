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

