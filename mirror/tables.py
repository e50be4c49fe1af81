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

from .config import DatasetConfig, FileKind, TableSpec
from .errors import InputError, ManifestError, NoFileError, UnknownIdError
from .manifest import FileEntry, Manifest

# Columns that hold ids: always int64, never inferred as float or string (but for the dataset's
# list columns, "[1, 2]" in some tables).
_ID_SUFFIX = "_id"
# Field metadata on an id column that the CSV wrote as floats ("951410079.0"): pandas.read_csv
# reads it as float64, and the pandas view (to_pandas) does the same.
_FLOAT_TEXT = b"vbo.float_text"
_WHOLE_FLOAT = r"^\s*[+-]?[0-9]+\.0*\s*$"  # "951410079.0": how pandas writes an id column with gaps
_INTEGRAL = r"^\s*\+?(-?[0-9]+)(?:\.0*)?\s*$"  # any whole number, as its bare digits


def read_csv(data: bytes, *, name: str, list_columns: frozenset[str] | None = None,
             temporal_as_text: bool = False) -> pa.Table:
    """Parse one metadata CSV into an Arrow table; a malformed file raises InputError.

    The tables were written by pandas, so an id column with missing values comes as floats
    and empty cells (`951410079.0,` then `,`): id columns are read as text and made int64
    here, exactly (no float in between, so ids past 2**53 survive), with pandas' NA tokens
    as nulls. A value that is not a whole number is named, with its column and row.

    `temporal_as_text`: columns pyarrow would read as timestamps, dates or times stay the CSV's
    text, as pandas.read_csv leaves them (`2020-12-01 12:44:00.000000+00:00` comes back with its
    `.000000`): what the pandas view (to_pandas) needs; `--where` compares the typed values."""
    if list_columns is None:
        from .config import DEFAULT_DATASET, load_dataset

        list_columns = load_dataset(DEFAULT_DATASET).list_columns
    first_line = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    columns = [c.strip().strip('"') for c in first_line.split(",")]
    id_columns = [c for c in columns if (c.endswith(_ID_SUFFIX) and c not in list_columns) or c == "file_id"]
    types = {c: pa.string() for c in id_columns}
    try:
        table = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(column_types=types))
        temporal = [f.name for f in table.schema if pa.types.is_temporal(f.type)] if temporal_as_text else []
        if temporal:
            types.update({c: pa.string() for c in temporal})
            table = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(column_types=types))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"{name}: not a readable metadata table: {exc}") from exc
    for column in id_columns:
        if column in table.column_names:
            i = table.column_names.index(column)
            table = table.set_column(i, *_id_column(table[column], name=name, column=column))
    return table


def _id_column(text: pa.ChunkedArray, *, name: str, column: str) -> tuple[pa.Field, pa.ChunkedArray]:
    na = pc.or_kleene(pc.is_null(text), pc.is_in(pc.utf8_trim_whitespace(text), value_set=pa.array(sorted(_PANDAS_NA))))
    floats = pc.fill_null(pc.match_substring_regex(text, _WHOLE_FLOAT), False)
    digits = pc.replace_substring_regex(text, pattern=_INTEGRAL, replacement=r"\1")
    digits = pc.if_else(na, pa.scalar(None, pa.string()), pc.utf8_trim_whitespace(digits))
    try:
        values = pc.cast(digits, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for row, value in enumerate(digits.to_pylist()):
            bare = (value or "0").lstrip("+-")
            if not (bare.isascii() and bare.isdigit()):
                raise InputError(f"{name}: column {column!r}, data row {row + 1}: {value!r} is not an id "
                                 "(a whole number)") from None
        raise InputError(f"{name}: column {column!r} holds an id out of range (64-bit)") from None
    metadata = {_FLOAT_TEXT: b"1"} if pc.any(floats).as_py() else None
    return pa.field(column, pa.int64(), metadata=metadata), values


# --- pandas, shaped like AllenSDK 2.16.2's tables ------------------------------------------------
#
# AllenSDK's cloud caches build their tables in their cloud APIs (for Ophys,
# BehaviorProjectCloudApi._get_*_table in allensdk/brain_observatory/behavior/
# behavior_project_cache/project_apis/data_io/behavior_project_cloud_api.py): pd.read_csv (some
# columns as str), literal_col_eval (ast.literal_eval on every non-null *string* cell of the list
# columns), dates with pd.to_datetime(utc=True), enforce_df_int_typing(use_pandas_type=True)
# (nullable "Int64"), enforce_df_column_order, set_index. Which columns get which is data, per
# table, in the dataset file (`[tables.X]` and its `recipe`: config.TableSpec). The CSV is parsed
# once, by pyarrow (read_csv above); _pandas_column turns each Arrow column into what
# pandas.read_csv would have made of the same text.

# pandas 1.5.3's default na_values (AllenSDK pins pandas 1.5.3; 2.x added "None"). pyarrow turns
# them into nulls in numeric columns but keeps them as text in string columns.
_PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                        "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null"})


def to_pandas(table: pa.Table, *, index: str | None = None, name: str | None = None, spec: TableSpec | None = None,
              dataset: DatasetConfig | None = None):
    """A pandas DataFrame shaped like the one AllenSDK 2.16.2's project cache returns for the
    same CSV: its index, dtypes, list-valued columns (Python lists), UTC dates, nullable "Int64"
    columns, column order (AllenSDK's fixed order first; the columns it leaves unordered, which
    it emits in set order, keep the CSV's order here) and default row filters.

    The recipe is `spec`'s; without one, the dataset's table of that `name`, or else of that
    `index` (default dataset: Visual Behavior Ophys). A table the dataset does not describe
    gets read_csv-like columns, indexed by `index`, with the dataset's list columns parsed.
    A list-column cell that is not a Python literal raises InputError naming table, column, row.
    """
    import pandas as pd

    if spec is None:
        if dataset is None:
            from .config import DEFAULT_DATASET, load_dataset

            dataset = load_dataset(DEFAULT_DATASET)
        spec = dataset.table_for(name=name) if name else dataset.table_for(index=index)
        if spec is None:
            spec = TableSpec(name or "metadata table", index or "", list_columns=tuple(sorted(dataset.list_columns)))
    name, index = spec.name, index or spec.index
    str_columns, date_columns, int_columns = set(spec.str_columns), set(spec.date_columns), set(spec.int_columns)
    df = pd.DataFrame({f.name: _pandas_column(pd, f, col, as_str=f.name in str_columns,
                                              keep_datetime=f.name in date_columns, nullable_int=f.name in int_columns)
                       for f, col in zip(table.schema, table.columns)})
    if df.columns.size != table.num_columns:
        raise InputError(f"{name}: a column name appears twice in the CSV header")
    row_ids = table[index].to_pylist() if index and index in table.column_names else None

    for column in spec.list_columns:  # literal_col_eval
        if column in df.columns and df[column].dtype == object:
            df[column] = _literal_lists(df[column], name=name, column=column, index=index, row_ids=row_ids)
    for column in date_columns & set(df.columns):
        values = df[column]
        try:  # text pyarrow did not read as timestamps: each cell on its own, as pandas 1.5 did
            dates = pd.to_datetime(values, utc=True, **({} if values.dtype.kind == "M" else {"format": "mixed"}))
        except (ValueError, TypeError) as exc:
            raise InputError(f"{name}: column {column!r} holds a value that is not a date: {exc}") from exc
        df[column] = dates.dt.as_unit("ns")  # pandas 1.5 (AllenSDK) has only ns
    if spec.column_order:
        ordered = [c for c in spec.column_order if c in df.columns]
        df = df[ordered + [c for c in df.columns if c not in ordered]]
    for column in int_columns & set(df.columns):  # enforce_df_int_typing(use_pandas_type=True)
        try:
            df[column] = df[column].astype("Int64")
        except (ValueError, TypeError) as exc:
            raise InputError(f"{name}: column {column!r} should hold whole numbers: {exc}") from exc
    for column in spec.drop_rows_with:  # AllenSDK's default filters (e.g. abnormal_histology)
        if column in df.columns:
            df = df[df[column].isna()]
    if index and index in df.columns:
        df = df.set_index(index)
    return df


def _pandas_column(pd, field: pa.Field, column: pa.ChunkedArray, *, as_str: bool, keep_datetime: bool,
                   nullable_int: bool):
    """One Arrow column as pandas.read_csv would have typed the same CSV text: ints (float64
    when some are missing), floats, bools (object when some are missing), strings as object
    with NaN for pandas' NA tokens and empty cells, an empty column as float64 NaN; dates and
    times that pyarrow recognised go back to text (pandas.read_csv does not parse them), but for
    `keep_datetime` columns. `as_str`: pandas' dtype=str (text, NaN for missing).
    `nullable_int`: an integer column goes straight to "Int64" (AllenSDK gets there through
    float64, which rounds ids above 2**53; the values are otherwise the same)."""
    import numpy as np

    t = field.type
    if pa.types.is_null(t):
        return pd.Series(np.full(len(column), np.nan, dtype=object if as_str else float))
    if as_str:
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            values = column.to_pylist()
            return pd.Series([np.nan if v is None or v in _PANDAS_NA else v for v in values], dtype=object)
        return pd.Series([np.nan if v is None else _text(v) for v in column.to_pylist()], dtype=object)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pd.Series([np.nan if v is None or v in _PANDAS_NA else v for v in column.to_pylist()], dtype=object)
    if pa.types.is_integer(t) and nullable_int:
        return column.to_pandas(types_mapper=lambda _t: pd.Int64Dtype())
    if pa.types.is_integer(t) and (field.metadata or {}).get(_FLOAT_TEXT):
        return column.to_pandas().astype("float64")  # "951410079.0" in the CSV: pandas reads floats
    if pa.types.is_boolean(t) and column.null_count:
        return pd.Series([np.nan if v is None else v for v in column.to_pylist()], dtype=object)
    if pa.types.is_timestamp(t) and keep_datetime:
        return column.to_pandas()
    if pa.types.is_temporal(t):
        return pd.Series([np.nan if v is None else _text(v) for v in column.to_pylist()], dtype=object)
    return column.to_pandas()  # int64 (float64 with NaN when some are missing), float64, bool


def _text(value) -> str:
    """A value pyarrow parsed, back to CSV-like text (dates and times in ISO form)."""
    if hasattr(value, "isoformat"):
        return value.isoformat(sep=" ") if hasattr(value, "date") and hasattr(value, "hour") else value.isoformat()
    return str(value)


def _literal_lists(series, *, name: str, column: str, index: str | None, row_ids: list | None):
    """AllenSDK's literal_col_eval on one column: every non-null string cell through
    ast.literal_eval (never eval); other cells as they are. Equal cells are parsed once, each
    row still gets a list of its own."""
    import ast

    import pandas as pd

    parsed: dict[str, object] = {}
    out = []
    for row, value in enumerate(series.tolist()):
        if isinstance(value, str):
            if value not in parsed:
                try:
                    parsed[value] = ast.literal_eval(value)
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
                    where = f"data row {row + 1}" + (f" ({index} {row_ids[row]})" if row_ids is not None else "")
                    shown = value if len(value) <= 80 else value[:77] + "..."
                    raise InputError(f"{name}: column {column!r}, {where}: {shown!r} is not a Python literal "
                                     f"({type(exc).__name__})",
                                     hint="AllenSDK reads this column with ast.literal_eval; is the CSV damaged?") from exc
            value = parsed[value]
            if isinstance(value, list):
                value = list(value)
        out.append(value)
    return pd.Series(out, index=series.index, dtype=object, name=series.name)


def entry_for_id(manifest: Manifest, table: pa.Table, kind: FileKind, item_id: int, *,
                 no_file_id: int | None = None) -> FileEntry:
    """The data file of one item of a file kind (a behavior session, an ophys experiment, an
    ecephys session, a probe's LFP), with a message that says why when there is none. A row
    with no file of its own raises NoFileError, carrying the id its kind falls back to."""
    ids = table[kind.id_column]
    hit = table.filter(pc.equal(ids, pa.scalar(item_id, pa.int64())))
    if hit.num_rows == 0:
        raise UnknownIdError(f"{kind.id_column} {item_id} is not in {kind.table} of {manifest.name}",
                             hint=f"list the ids with `vbo-mirror tables {kind.table}`")
    fid = hit["file_id"][0].as_py()
    if fid is None or fid == no_file_id:
        other = None
        if kind.fallback_column and kind.fallback_column in hit.column_names:
            other = hit[kind.fallback_column][0].as_py()
        raise NoFileError(f"{kind.id_column} {item_id} has no NWB file of its own in {manifest.name}"
                          + (f" ({kind.no_file})" if kind.no_file else ""),
                          fallback_id=int(other) if other is not None else None)
    entry = manifest.data_files.get(str(int(fid)))
    if entry is None:
        raise ManifestError(manifest.name, f"{kind.table} names file_id {fid} for {kind.id_column} {item_id}, "
                            "but data_files has no such entry")
    return entry


def select_files(manifest: Manifest, tables: dict[str, pa.Table], kinds: list[FileKind], *,
                 where=None, ids: tuple[str | None, list[int]] | None = None,
                 bare_id_columns: tuple[str, ...] = ("behavior_session_id", "ophys_experiment_id"),
                 no_file_id: int | None = None) -> tuple[list[FileEntry], dict]:
    """The data files that rows of the file-carrying tables (`kinds`: for Ophys, behavior
    sessions and ophys experiments) pick, and a report of why: rows matched per table.

    `where` (a parsed mirror.select.Expr) applies to every such table that has all of its
    columns; none having them is an error naming the unknown column. `ids` (column, ids):
    rows whose column holds one of the ids, in every such table with that column; without a
    column (a bare list), each of `bare_id_columns` is tried (the dataset's: for Ophys,
    behavior_session_id and ophys_experiment_id, so a behavior session's id also picks its
    ophys experiments). Both given: rows must match both. A picked row without a file of its
    own (no file_id, or `no_file_id`) picks its kind's fallback (VBN: a behavior session
    recorded with Neuropixels picks its ecephys session's NWB).
    """
    from . import select as sel

    report: dict = {"where": where.text if where is not None else None, "tables": {}}
    if ids is not None:
        column, values = ids
        report["ids"] = {"column": column, "given": len(values)}
        id_columns = [column] if column else list(bare_id_columns)
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
        fids = rows["file_id"].to_pylist()
        if kind.fallback_column and kind.fallback_kind and kind.fallback_column in rows.column_names:
            by = {k.name: k for k in kinds}.get(kind.fallback_kind)
            others = [o for f, o in zip(fids, rows[kind.fallback_column].to_pylist())
                      if (f is None or f == no_file_id) and o is not None]
            if by is not None and others:
                other = tables[by.table]
                hit = other.filter(pc.fill_null(pc.is_in(other[by.id_column], value_set=pa.array(others, pa.int64())),
                                                False))
                fids += hit["file_id"].to_pylist()
        files = 0
        for fid in fids:
            if fid is None or fid == no_file_id:
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
            raise InputError(f"no table of {manifest.name} has a column named {' or '.join(id_columns)}",
                             hint=f"name the id column in a CSV header ({', '.join(bare_id_columns)}, ...)")
        missing = [v for v in values if v not in found_ids]
        report["ids"]["not_found"] = len(missing)
        report["ids"]["not_found_first"] = missing[:5]
    report["files"] = len(picked)
    return list(picked.values()), report
