"""`--ids FILE`: an id list, one id per line or a CSV with an id column, read strictly: every
line an id, and a message naming the file and line when one is not."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from .select import SelectError

MAX_ID_FILE = 64 << 20  # bytes in an id list
_MAX_INT64 = (1 << 63) - 1
ID_COLUMNS = ("behavior_session_id", "ophys_experiment_id", "ophys_session_id", "ophys_container_id")


_ID = re.compile(r"[0-9]+")


def read_ids(path: Path, *, id_columns: tuple[str, ...] | None = None) -> tuple[str | None, list[int]]:
    """The ids in an id list file: one integer per line (blank lines and `#` comments ignored)
    -> (None, ids), or a CSV with a header -> (id column, ids). The id column is the first of
    `id_columns` (the dataset's; default ID_COLUMNS, Visual Behavior Ophys's) the header has,
    or its only column. Ids keep their order; repeats are dropped."""
    id_columns = id_columns or ID_COLUMNS
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_ID_FILE:
            raise SelectError(f"{path}: {size} bytes is too large for an id list (the limit is 64 MiB)")
        with open(path, "rb") as f:
            data = f.read(MAX_ID_FILE + 1)
    except OSError as exc:
        raise SelectError(f"cannot read the id list {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_ID_FILE:
        raise SelectError(f"{path}: too large for an id list (the limit is 64 MiB)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SelectError(f"{path}: not UTF-8 text (a bad byte at offset {exc.start})") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    first = next((i for i, line in enumerate(lines) if _uncomment(line)), None)
    if first is None:
        raise SelectError(f"{path}: no ids in the file")
    if _ID.fullmatch(_uncomment(lines[first])):
        pairs = [(n, value) for n, line in enumerate(lines, 1) if (value := _uncomment(line))]
        return None, _checked_ids(path, pairs, id_columns)
    return _csv_ids(path, data.removeprefix(b"\xef\xbb\xbf"), lines, first, id_columns)


def _uncomment(line: str) -> str:
    return line.split("#", 1)[0].strip()


def _checked_ids(path: Path, pairs: list[tuple[int, str | None]], id_columns: tuple[str, ...]) -> list[int]:
    """Integers from (line number, text) pairs, in order and without repeats."""
    ids: dict[int, None] = {}
    for lineno, value in pairs:
        if value is None or not value.strip():
            raise SelectError(f"{path}, line {lineno}: an empty id")
        if not _ID.fullmatch(value.strip()) or int(value) > _MAX_INT64:
            raise SelectError(f"{path}, line {lineno}: {value.strip()[:40]!r} is not an integer id",
                              hint="an id list holds one integer per line, or is a CSV with a header "
                                   f"naming one of {', '.join(id_columns)}")
        ids[int(value)] = None
    if not ids:
        raise SelectError(f"{path}: no ids in the file")
    return list(ids)


def _csv_ids(path: Path, data: bytes, lines: list[str], header: int, id_columns: tuple[str, ...]
             ) -> tuple[str, list[int]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [name.strip() for name in next(csv.reader([lines[header]]))]
    column = next((c for c in id_columns if c in names), names[0] if len(names) == 1 else None)
    if column is None:
        raise SelectError(f"{path}: no id column in the CSV header ({', '.join(names)[:200]}); "
                          f"expected one of {', '.join(id_columns)}",
                          hint="or write one integer id per line, without a header")
    try:
        table = pacsv.read_csv(io.BytesIO(data), read_options=pacsv.ReadOptions(skip_rows=header),
                               convert_options=pacsv.ConvertOptions(include_columns=[column],
                                                                    column_types={column: pa.string()}))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SelectError(f"{path}: not a readable CSV: {exc}") from exc
    # pyarrow skips empty lines, so row i is the i-th non-empty line after the header.
    numbers = [n for n, line in enumerate(lines[header + 1:], header + 2) if line]
    pairs = list(zip(numbers, table.column(column).to_pylist()))
    return column, _checked_ids(path, pairs, id_columns)
