"""The `vbo-mirror` command: parse, call the API, render. No logic lives here.

Human output goes to stdout, warnings and errors to stderr; `--json` makes stdout machine
readable (one JSON document, or JSON lines for streams of events). Exit codes: 0 success,
1 unexpected, 2 bad input, 3 remote/offline/lock, 4 local disk, 5 files failed, 130 Ctrl-C.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import click

from .api import Mirror
from .config import DEFAULT_DATASET
from .errors import InputError, MirrorError, MirrorWarning
from .remote import Timeouts


class Ctx:
    def __init__(self, *, dataset: str, cache_dir: str | None, endpoint_url: str | None, json_out: bool,
                 offline: bool, signed: bool, timeouts: Timeouts) -> None:
        self.dataset = dataset
        self.cache_dir = cache_dir
        self.endpoint_url = endpoint_url
        self.json = json_out
        self.offline = offline
        self.signed = signed
        self.timeouts = timeouts
        self._mirror: Mirror | None = None

    @property
    def mirror(self) -> Mirror:
        if self._mirror is None:
            self._mirror = Mirror(self.cache_dir, dataset=self.dataset, endpoint_url=self.endpoint_url,
                                  offline=self.offline, signed=self.signed, timeouts=self.timeouts)
        return self._mirror

    def emit(self, data: Any, text: str | Callable[[], str] | None = None) -> None:
        """Print `data` as JSON with --json, else the human `text` (or data as plain lines)."""
        if self.json:
            click.echo(json.dumps(data, indent=None if isinstance(data, list) else 2, default=str))
            return
        if callable(text):
            text = text()
        if text is None:
            text = "\n".join(data) if isinstance(data, list) else str(data)
        if text:
            click.echo(text)


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def handle_errors(fn):
    """One place that turns our errors into a message, a hint and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        json_out = isinstance(ctx.obj, Ctx) and ctx.obj.json
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", MirrorWarning)
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except MirrorError as exc:
            if json_out:
                click.echo(json.dumps({"ok": False, "error": {"kind": type(exc).__name__, "message": exc.message,
                                                              "hint": exc.hint}}))
            _err(f"vbo-mirror: error: {exc.message}")
            if exc.hint:
                _err(f"  hint: {exc.hint}")
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            _err("vbo-mirror: interrupted")
            ctx.exit(130)

    return wrapper


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, MirrorWarning):
        _err(f"vbo-mirror: warning: {message}")
    else:  # a library's warning: keep Python's format
        _err(warnings.formatwarning(message, category, filename, lineno, line).rstrip())


def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


# --- the command tree ------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True, envvar="VBO_MIRROR_DATASET",
              help="Dataset name (configs/datasets/NAME.toml) or a path to a dataset .toml.")
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar="VBO_MIRROR_CACHE_DIR",
              help="Where the mirror lives (env VBO_MIRROR_CACHE_DIR).")
@click.option("--endpoint-url", envvar=["VBO_MIRROR_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"],
              help="S3 endpoint replacing the host of the manifest URLs; bucket and key are kept "
                   "(env AWS_ENDPOINT_URL_S3).")
@click.option("--json", "json_out", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--offline", is_flag=True, help="Use only what cache_dir holds; no network.")
@click.option("--signed", is_flag=True, help="Sign requests with the AWS credentials of the environment "
                                             "(default: anonymous).")
@click.option("--connect-timeout", type=float, default=10.0, show_default=True, help="Seconds.")
@click.option("--read-timeout", type=float, default=60.0, show_default=True,
              help="Seconds between two reads of a response.")
@click.version_option(package_name="vbo-mirror")
@click.pass_context
def main(ctx: click.Context, dataset, cache_dir, endpoint_url, json_out, offline, signed,
         connect_timeout, read_timeout) -> None:
    """Fast, verified, resumable mirror of the Allen Institute Visual Behavior Ophys release."""
    ctx.obj = Ctx(dataset=dataset, cache_dir=cache_dir, endpoint_url=endpoint_url, json_out=json_out,
                  offline=offline, signed=signed, timeouts=Timeouts(connect=connect_timeout, read=read_timeout))


# --- manifests -----------------------------------------------------------------------------


@main.group()
def manifests() -> None:
    """Dataset versions: list, pin, show and compare manifests."""


@manifests.command("list")
@click.pass_obj
@handle_errors
def manifests_list(c: Ctx) -> None:
    """Manifest names online (in cache_dir when offline), oldest first."""
    c.emit(c.mirror.list_manifest_file_names())


@manifests.command("latest")
@click.pass_obj
@handle_errors
def manifests_latest(c: Ctx) -> None:
    """The newest manifest (semver maximum)."""
    c.emit(c.mirror.latest_manifest_file())


@manifests.command("downloaded")
@click.pass_obj
@handle_errors
def manifests_downloaded(c: Ctx) -> None:
    """Manifests present in cache_dir."""
    c.mirror._need_layout()
    c.emit(c.mirror.list_all_downloaded_manifests())


@manifests.command("current")
@click.pass_obj
@handle_errors
def manifests_current(c: Ctx) -> None:
    """The manifest in use in cache_dir."""
    c.mirror._need_layout()
    current = c.mirror.current_manifest()
    if current is None and not c.json:
        raise InputError(f"no manifest is in use in {c.mirror.cache_dir}",
                         hint="pick one with `vbo-mirror manifests use latest`")
    c.emit(current)


@manifests.command("use")
@click.argument("version")
@click.pass_obj
@handle_errors
def manifests_use(c: Ctx, version: str) -> None:
    """Download (if needed) and pin VERSION (or 'latest') as the current one."""
    m = c.mirror.load_manifest(version)
    c.emit({"current": m.name, "manifest_version": m.manifest_version, "path": str(c.mirror.layout.manifest_path(m.name))},
           f"using {m.name}")


@manifests.command("show")
@click.argument("version", required=False)
@click.pass_obj
@handle_errors
def manifests_show(c: Ctx, version: str | None) -> None:
    """Counts of files, total bytes and the data pipeline of VERSION (default: current)."""
    s = c.mirror.manifest_summary(version)

    def text() -> str:
        lines = [f"{s['name']}{'  (current)' if s['current'] else ''}",
                 f"  project          {s['project_name']} {s['manifest_version']}",
                 f"  metadata files   {s['metadata_files']:>6}   {human_bytes(s['metadata_bytes'])}",
                 f"  data files       {s['data_files']:>6}   {human_bytes(s['data_bytes'])}",
                 f"  total            {s['metadata_files'] + s['data_files']:>6}   {human_bytes(s['total_bytes'])}"]
        if s["unknown_sizes"]:
            lines.append(f"  ({s['unknown_sizes']} files of unknown size: not in the S3 listing or, offline, not in cache_dir)")
        lines.append("  data pipeline:")
        for p in s["data_pipeline"]:
            lines.append(f"    {p.get('name', '?')} {p.get('version', '')}" + (f"  ({p['comment']})" if p.get("comment") else ""))
        return "\n".join(lines)

    c.emit(s, text)


@manifests.command("compare")
@click.argument("a")
@click.argument("b")
@click.pass_obj
@handle_errors
def manifests_compare(c: Ctx, a: str, b: str) -> None:
    """What changed from version A to version B (AllenSDK's message; --json for bytes)."""
    if c.json:
        c.emit(c.mirror.compare_manifests_detail(a, b))
    else:
        click.echo(c.mirror.compare_manifests(a, b).rstrip("\n"))


# --- tables ---------------------------------------------------------------------------------


@main.command("tables")
@click.argument("name", required=False)
@click.option("--version", "version", help="Dataset version (default: current).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "parquet"]), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to FILE instead of stdout.")
@click.option("--rows", type=int, default=20, show_default=True, help="Rows shown by --format table.")
@click.pass_obj
@handle_errors
def tables_cmd(c: Ctx, name: str | None, version: str | None, fmt: str, output: str | None, rows: int) -> None:
    """The metadata tables of a version: a summary of all, or NAME as a table, CSV or Parquet."""
    m = c.mirror
    if name is None:
        manifest = m.manifest(version)
        summary = []
        for t in sorted(manifest.metadata_files):
            arrow = m.get_table(t, version=manifest.manifest_version)
            spec = m.dataset.tables.get(t)
            summary.append({"table": t, "rows": arrow.num_rows, "columns": arrow.num_columns,
                            "index": spec.index if spec else None})
        c.emit({"manifest": manifest.name, "tables": summary},
               lambda: "\n".join([f"{manifest.name}:"] + [f"  {s['table']:<28} {s['rows']:>7} rows  {s['columns']:>3} columns"
                                                          f"  index {s['index']}" for s in summary]))
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
        width = os.get_terminal_size().columns if sys.stdout.isatty() else 200
        with pd.option_context("display.max_rows", rows, "display.min_rows", rows, "display.width", width,
                               "display.max_columns", None if output else 12):
            text = df.to_string() if output else df.head(rows).to_string()
        if output:
            Path(output).write_text(text + "\n")
        else:
            click.echo(text)
            if len(df) > rows:
                click.echo(f"[{len(df)} rows x {df.shape[1]} columns; first {rows} shown]")


# --- sandbox --------------------------------------------------------------------------------


@main.group()
def sandbox() -> None:
    """A local S3 server (moto, 127.0.0.1) with a scaled-down replica of the bucket."""


@sandbox.command("up")
@click.option("--port", type=int, default=0, help="Port on 127.0.0.1 (default: a free one).")
@click.option("--scale", type=float, default=1 / 1000, show_default=True, help="NWB sizes relative to the real ones.")
@click.option("--seed", type=int, default=20210322, show_default=True)
@click.pass_obj
@handle_errors
def sandbox_up_cmd(c: Ctx, port: int, scale: float, seed: int) -> None:
    """Start the sandbox in the background and print its endpoint."""
    from .sandbox.replica import ReplicaSpec
    from .sandbox.server import sandbox_up

    if not 0 < scale <= 0.05:
        raise InputError("--scale must be in (0, 0.05]: moto keeps every object in memory")
    state = sandbox_up(ReplicaSpec(seed=seed, scale=scale), port=port)
    c.emit(state, lambda: (f"sandbox {'already ' if state.get('already_running') else ''}running at {state['endpoint_url']} "
                           f"(pid {state['pid']}, {len(state['manifests'])} manifests, {human_bytes(state['bytes'])})\n"
                           f"  export AWS_ENDPOINT_URL_S3={state['endpoint_url']}\n"
                           "  stop it with: vbo-mirror sandbox down"))


@sandbox.command("down")
@click.pass_obj
@handle_errors
def sandbox_down_cmd(c: Ctx) -> None:
    """Stop the sandbox."""
    from .sandbox.server import sandbox_down

    state = sandbox_down()
    c.emit({"stopped": state is not None, **(state or {})},
           "sandbox stopped" if state else "no sandbox was running")


@sandbox.command("status")
@click.pass_obj
@handle_errors
def sandbox_status_cmd(c: Ctx) -> None:
    """Whether the sandbox runs, and where."""
    from .sandbox.server import sandbox_status

    state = sandbox_status()
    c.emit({"running": state is not None, **(state or {})},
           f"sandbox running at {state['endpoint_url']} (pid {state['pid']})" if state else "no sandbox is running")


if __name__ == "__main__":  # pragma: no cover
    main()
