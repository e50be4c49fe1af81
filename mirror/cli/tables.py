"""`vbo-mirror tables`: the metadata tables of a version, as a view, CSV or Parquet."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click

from .root import Ctx, InputError, handle_errors, main


# --- tables ---------------------------------------------------------------------------------


@main.command("tables", short_help="Metadata tables of a version: list, show, export.")
@click.argument("name", required=False)
@click.option("--version", "version", help="Dataset version (default: current).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "parquet"]), default="table", show_default=True,
              help="table: a view that fits the terminal; csv or parquet: the whole table (to -o FILE or stdout).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to FILE instead of stdout.")
@click.option("--rows", type=int, default=20, show_default=True, help="Rows shown by --format table.")
@click.option("--columns", default=None, metavar="A,B,...",
              help="Columns shown by --format table (default: as many as fit the terminal, in order).")
@click.pass_obj
@handle_errors
def tables_cmd(c: Ctx, name: str | None, version: str | None, fmt: str, output: str | None, rows: int,
               columns: str | None) -> None:
    """The metadata tables of a version: a summary of all, or NAME as a table, CSV or Parquet."""
    m = c.mirror
    if name is None:
        manifest = m.manifest(version)
        summary = []
        for t in sorted(manifest.metadata_files):
            arrow = m.get_table(t, version=manifest.manifest_version)
            spec = m.dataset.tables.get(t)
            indexed = spec is not None and spec.index in arrow.column_names
            # columns besides the index, as the table view counts them
            summary.append({"table": t, "rows": arrow.num_rows, "columns": arrow.num_columns - indexed,
                            "index": spec.index if spec else None})
        c.emit({"manifest": manifest.name, "tables": summary},
               lambda: "\n".join([f"{manifest.name}:"] + [f"  {s['table']:<28} {s['rows']:>7} rows  {s['columns']:>3} columns"
                                                          f" + index {s['index']}" for s in summary]))
        return
    if fmt == "csv":  # the verified bytes as released, not a re-encoding
        data = m.get_table_bytes(name, version=version)
        if output:
            Path(output).write_bytes(data)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        return
    arrow = m.get_table(name, version=version)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        if output is None and sys.stdout.isatty():
            raise InputError("Parquet is binary: pass --output FILE (or redirect stdout)")
        pq.write_table(arrow, output or sys.stdout.buffer)
    else:
        import pandas as pd

        spec = m.dataset.tables.get(name)
        df = arrow.to_pandas()
        if spec and spec.index in df.columns:
            df = df.set_index(spec.index)
        if c.json and output is None:
            c.emit({"table": name, "rows": arrow.num_rows, "columns": arrow.column_names,
                    "records": json.loads(df.head(rows).reset_index().to_json(orient="records"))})
            return
        if columns:
            wanted = [x.strip() for x in columns.split(",") if x.strip()]
            unknown = [x for x in wanted if x not in df.columns]
            if unknown:
                raise InputError(f"{name} has no column {', '.join(map(repr, unknown))}",
                                 hint=f"its columns: {', '.join(df.columns)}")
            df = df[wanted]
        if output:
            Path(output).write_text(df.to_string() + "\n")
            return
        width = shutil.get_terminal_size((120, 24)).columns
        text, shown = _fit(df.head(rows), width, pd)
        click.echo(text)
        notes = []
        if len(df) > rows:
            notes.append(f"first {rows} of {len(df)} rows")
        if shown < df.shape[1]:
            notes.append(f"{shown} of {df.shape[1]} columns besides the index {df.index.name}: --columns A,B,... for "
                         "others, --format csv for all")
        if notes:
            click.echo(f"[{'; '.join(notes)}]")


def _fit(df, width: int, pd) -> tuple[str, int]:
    """The frame as text no wider than `width`: long cells cut to 24 characters, and the first
    columns that fit (at least one)."""
    with pd.option_context("display.max_colwidth", 24, "display.max_columns", None, "display.width", 10**6,
                           "display.max_rows", None):
        best, n = df.iloc[:, :1].to_string(), 1
        for k in range(2, df.shape[1] + 1):
            text = df.iloc[:, :k].to_string()
            if max(map(len, text.splitlines())) > width:
                break
            best, n = text, k
    return best, n


