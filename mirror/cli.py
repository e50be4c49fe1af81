"""The `vbo-mirror` command: parse, call the API, render. No logic lives here.

Human output goes to stdout, warnings and errors to stderr; `--json` makes stdout machine
readable (one JSON document, or JSON lines for streams of events). Exit codes: 0 success,
1 unexpected, 2 bad input, 3 remote/offline/lock, 4 local disk, 5 files failed, 130 Ctrl-C.
"""

from __future__ import annotations

import os

# numpy (under pyarrow) starts OpenBLAS worker threads that spin on the cores a sync needs for
# hashing; we never do linear algebra. Set before anything imports numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import functools  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import click  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from .config import DEFAULT_DATASET  # noqa: E402
from .engine.verify import Verify  # noqa: E402
from .errors import InputError, MirrorError, MirrorWarning, Terminated  # noqa: E402
from .limits import Limits  # noqa: E402
from .units import size_flag  # noqa: E402
from .remote.settings import TRANSPORTS, Timeouts  # noqa: E402

# The API (asyncio, the store, the engine, pyarrow on demand) is imported by the commands that
# use it, so `--help` and argument errors answer at once.
if TYPE_CHECKING:
    from .api import Mirror


class Ctx:
    def __init__(self, *, dataset: str, cache_dir: str | None, endpoint_url: str | None, json_out: bool,
                 offline: bool, signed: bool, timeouts: Timeouts, transport: str = "lean",
                 proxy: str | None = None) -> None:
        self.dataset = dataset
        self.cache_dir = cache_dir
        self.endpoint_url = endpoint_url
        self.json = json_out
        self.offline = offline
        self.signed = signed
        self.timeouts = timeouts
        self.transport = transport
        self.proxy = proxy
        self._mirror: Mirror | None = None

    @property
    def mirror(self) -> "Mirror":
        if self._mirror is None:
            from .api import Mirror

            from .remote.settings import check_endpoint

            if self.endpoint_url:  # the option; without it the API reads (and names) the variables
                check_endpoint(self.endpoint_url, "--endpoint-url")
            self._mirror = Mirror(self.cache_dir, dataset=self.dataset, endpoint_url=self.endpoint_url or None,
                                  offline=self.offline, signed=self.signed, timeouts=self.timeouts,
                                  transport=self.transport, proxy=self.proxy, on_status=_status_line)
        return self._mirror

    def emit(self, data: Any, text: str | Callable[[], str] | None = None) -> None:
        """Print `data` as JSON lines with --json, else the human `text` (or data as plain lines).

        JSON lines on every command, each object with an "event"; the last one is the summary,
        with "ok": a list is one {"event": "item", "value": ...} per element, then a summary
        with the count; a document is the summary itself; a single value is the summary's
        "value"."""
        if self.json:
            command = click.get_current_context().command_path.split(" ", 1)[-1]
            if isinstance(data, list):
                for item in data:
                    click.echo(json.dumps({"event": "item", "value": item}, default=str))
                summary = {"count": len(data)}
            elif isinstance(data, dict):
                summary = data
            else:
                summary = {"value": data}
            click.echo(json.dumps({"event": "summary", "command": command, "ok": summary.get("ok", True),
                                   **{k: v for k, v in summary.items() if k != "ok"}}, default=str))
            return
        if callable(text):
            text = text()
        if text is None:
            text = "\n".join(data) if isinstance(data, list) else str(data)
        if text:
            click.echo(text)


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _status_line(line: str) -> None:
    """Long steps before a transfer (listing, HEADs): a line on stderr, with or without --json."""
    click.echo(f"vbo-mirror: {line}", err=True)


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
                click.echo(json.dumps({"event": "summary", "command": ctx.command_path.split(" ", 1)[-1], "ok": False,
                                       "error": {"kind": type(exc).__name__, "message": exc.message,
                                                 "hint": exc.hint, "exit_code": exc.exit_code}}))
            _err(f"vbo-mirror: error: {exc.message}")
            if exc.hint:
                _err(f"  hint: {exc.hint}")
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            _interrupted(ctx, json_out, "interrupted", 130)
        except Terminated as exc:
            _interrupted(ctx, json_out, str(exc), 128 + exc.signum)

    return wrapper


def _interrupted(ctx: click.Context, json_out: bool, what: str, code: int) -> None:
    if json_out:  # the stream ends with a line that says so, not in the middle of nowhere
        click.echo(json.dumps({"event": "interrupted", "command": ctx.command_path.split(" ", 1)[-1], "ok": False,
                               "reason": what, "exit_code": code,
                               "hint": "what was downloaded is kept: run the same command again to resume"}))
    _err(f"vbo-mirror: {what}; what was downloaded is kept: run the same command again to resume")
    ctx.exit(code)


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


class _Main(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # `vbo-mirror --version 1.1.0 sync` would print the tool's version and sync nothing:
        # before the command, --version takes no value; the data version is the command's.
        for i, arg in enumerate(args):
            if arg == "--version" and i + 1 < len(args) and not args[i + 1].startswith("-"):
                nxt = args[i + 1]
                if nxt not in self.commands:
                    raise click.UsageError(f"--version {nxt}: before the command --version prints vbo-mirror's "
                                           "own version; the data version is an option of the command, e.g. "
                                           f"`vbo-mirror sync --version {nxt}`")
            if arg in self.commands:
                # Global flags given after the command (`sync --json`) mean the same as before it.
                head, tail = args[:i], args[i:]
                end = tail.index("--") if "--" in tail else len(tail)
                moved = [a for a in tail[:end] if a in self.GLOBAL_FLAGS]
                if moved:
                    args = [*moved, *head, *[a for a in tail[:end] if a not in self.GLOBAL_FLAGS], *tail[end:]]
                break
        return super().parse_args(ctx, args)

    GLOBAL_FLAGS = ("--json", "--offline", "--signed")


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True, envvar="VBO_MIRROR_DATASET",
              help="Dataset name (configs/datasets/NAME.toml) or a path to a dataset .toml.")
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar="VBO_MIRROR_CACHE_DIR",
              help="Where the mirror lives (env VBO_MIRROR_CACHE_DIR).")
@click.option("--endpoint-url",
              help="S3 endpoint replacing the host of the manifest URLs; bucket and key are kept "
                   "(env AWS_ENDPOINT_URL_S3).")
@click.option("--json", "json_out", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--offline", is_flag=True, help="Use only what cache_dir holds; no network.")
@click.option("--signed", is_flag=True, help="Sign requests with the AWS credentials of the environment "
                                             "(default: anonymous).")
@click.option("--connect-timeout", type=float, default=10.0, show_default=True, help="Seconds.")
@click.option("--read-timeout", type=float, default=60.0, show_default=True,
              help="Seconds between two reads of a response.")
@click.option("--min-rate", type=float, default=1024.0, show_default=True,
              help="Bytes/s a response must keep up over --min-rate-window, else it is retried from the "
                   "byte reached (0: off; lean transport).")
@click.option("--min-rate-window", type=float, default=30.0, show_default=True, help="Seconds.")
@click.option("--transport", type=click.Choice(TRANSPORTS), default="lean", show_default=True,
              help="How object bodies are fetched: lean (straight into our buffers; fastest, see "
                   "benchmarks/RESULTS.md) or aiohttp.")
@click.option("--proxy", metavar="URL",
              help="HTTP proxy for every request (https goes through it in a CONNECT tunnel); "
                   "default: HTTPS_PROXY / HTTP_PROXY / NO_PROXY as curl reads them.")
@click.option("--no-proxy", "no_proxy", is_flag=True, help="Connect directly, whatever HTTPS_PROXY says.")
@click.version_option(package_name="vbo-mirror")
@click.pass_context
def main(ctx: click.Context, dataset, cache_dir, endpoint_url, json_out, offline, signed,
         connect_timeout, read_timeout, min_rate, min_rate_window, transport, proxy, no_proxy) -> None:
    """Fast, verified, resumable mirror of the Allen Institute Visual Behavior Ophys release."""
    if proxy is not None and no_proxy:
        raise click.UsageError("--proxy and --no-proxy contradict each other: give one")
    timeouts = Timeouts(connect=connect_timeout, read=read_timeout, min_rate=min_rate, rate_window=min_rate_window)
    ctx.obj = Ctx(dataset=dataset, cache_dir=cache_dir, endpoint_url=endpoint_url, json_out=json_out,
                  offline=offline, signed=signed, timeouts=timeouts, transport=transport,
                  proxy="" if no_proxy else proxy)


# --- manifests -----------------------------------------------------------------------------


@main.group()
def manifests() -> None:
    """Dataset versions: list, pin, show and compare manifests."""


@manifests.command("list", short_help="Manifests online (in cache_dir offline), oldest first.")
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
    c.mirror.need_layout()
    c.emit(c.mirror.list_all_downloaded_manifests())


@manifests.command("current")
@click.pass_obj
@handle_errors
def manifests_current(c: Ctx) -> None:
    """The manifest in use in cache_dir."""
    c.mirror.need_layout()
    current = c.mirror.current_manifest()
    if current is None and not c.json:
        raise InputError(f"no manifest is in use in {c.mirror.cache_dir}",
                         hint="pick one with `vbo-mirror manifests use latest`")
    c.emit(current)


@manifests.command("use", short_help="Download and pin a version as the current one.")
@click.argument("version")
@click.pass_obj
@handle_errors
def manifests_use(c: Ctx, version: str) -> None:
    """Download (if needed) and pin VERSION (or 'latest') as the current one."""
    m = c.mirror.load_manifest(version)
    c.emit({"current": m.name, "manifest_version": m.manifest_version, "path": str(c.mirror.layout.manifest_path(m.name))},
           f"using {m.name}")


@manifests.command("show", short_help="Files, bytes and data pipeline of a version.")
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


@manifests.command("compare", short_help="What changed from A to B (AllenSDK's message).")
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


# --- sync and friends -------------------------------------------------------------------------

def _note(text: str) -> None:
    """One line about how an option was understood (stderr: stdout stays the command's)."""
    click.echo(f"vbo-mirror: note: {text}", err=True)


def part_size_option(text: str, *, what: str = "--part-size") -> int:
    """A part size in any unit, rounded to whole 4 KiB blocks (said once when it is)."""
    from .units import align_part_size, parse_size

    size, note = align_part_size(parse_size(text, what=what), what=what, text=text)
    if note:
        _note(note)
    return size


version_option = click.option("--version", "version", default=None,
                              help="V, 'latest' or 'all' (default: the current version).")


def selection_options(fn):
    """The selection options of plan, sync and urls: by metadata, and one shard."""
    for opt in reversed([
        click.option("--where", default=None, metavar="EXPR",
                     help="Only data files whose metadata rows match, e.g. 'cre_line == \"Sst-IRES-Cre\" and "
                          "imaging_depth > 200' (behavior_session_table, ophys_experiment_table; the tables "
                          "always come along). Operators: == != < <= > >= in, not in, is null, and or not, "
                          ".startswith() .endswith() .contains()."),
        click.option("--ids", "ids_file", default=None, type=click.Path(dir_okay=False), metavar="FILE",
                     help="Only data files of these ids: one behavior_session_id / ophys_experiment_id per "
                          "line, or a CSV with such a column (a session's id also picks its experiments). With "
                          "--where, a row must match both."),
        click.option("--tables-only", is_flag=True, help="Only the metadata tables, no data file."),
        click.option("--layout", "view_layout", type=click.Choice(["allensdk", "bucket"]), default="allensdk",
                     show_default=True,
                     help="Where views go: AllenSDK's {project}-{version}/ directories, or the S3 keys "
                          "{project}/... as on a mounted bucket (one version at a time; AllenSDK's "
                          "from_local_cache(use_static_cache=True)). Both are links into one store."),
        click.option("--shard", default=None, metavar="K/N",
                     help="Only shard K of N (0-based, e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT): "
                          "a size-balanced split by content; N shards run at once into one cache_dir."),
    ]):
        fn = opt(fn)
    return fn


def _selection(version: str | None, shard: str | None = None, where: str | None = None,
               ids_file: str | None = None, tables_only: bool = False, view_layout: str = "allensdk"):
    from .model import Selection, Shard

    if tables_only and (where is not None or ids_file is not None):
        raise InputError("--tables-only selects no data file: drop --where/--ids, or --tables-only")
    ids = None
    if ids_file is not None:
        from .select import read_ids

        column, values = read_ids(Path(ids_file))
        ids = (column, tuple(values))
    if where is not None:
        from .select import parse

        parse(where)  # a syntax error is reported before anything is fetched
    try:
        return Selection(version, shard=Shard.parse(shard) if shard else None, where=where, ids=ids,
                         tables_only=tables_only, layout=view_layout)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _plan_text(plan) -> str:
    s = plan.summary()
    lines = [f"plan for {', '.join(s['manifests'])}",
             f"  fetch    {s['fetch']['files']:>7} files  {human_bytes(s['fetch']['bytes'])}"
             + (f"  (+{s['fetch']['unknown_sizes']} of unknown size)" if s['fetch']['unknown_sizes'] else ""),
             f"  link     {s['link']['files']:>7} files  {human_bytes(s['link']['bytes'])}  (content already on disk or fetched once)",
             f"  present  {s['present']['files']:>7} files  {human_bytes(s['present']['bytes'])}",
             f"  replace  {s['replace']:>7} views  (wrong content at a view path)",
             f"  remove   {s['remove']['files']:>7} views  (stray views no manifest wants)"]
    for name, r in (s.get("selection") or {}).items():
        if r.get("tables_only"):
            lines.insert(1, f"  selected: the metadata tables of {name} only")
            continue
        why = [f"where {r['where']}"] if r.get("where") else []
        if r.get("ids"):
            i = r["ids"]
            why.append(f"{i['given']} ids" + (f" ({i['column']})" if i["column"] else "")
                       + (f", {i['not_found']} not found (e.g. {', '.join(map(str, i['not_found_first']))})"
                          if i.get("not_found") else ""))
        rows = "; ".join(f"{t}: {x['matched']} of {x['rows']} rows, {x['files']} files" for t, x in r["tables"].items())
        both = " (rows matching both)" if len(why) == 2 else ""
        lines.insert(1, f"  selected in {name}: {r['files']} data files + the tables ({' and '.join(why)}{both}; {rows})")
    if "shard" in s:
        lines[0] += f", shard {s['shard']}"
        lines.append(f"  then     {s['steal']['files']:>7} files  {human_bytes(s['steal']['bytes'])}  of the other shards "
                     "that no process is fetching by then (one that died, or has not started)")
    return "\n".join(lines)


@main.command("plan", short_help="Dry run: what a sync would fetch, link, remove.")
@version_option
@selection_options
@click.pass_obj
@handle_errors
def plan_cmd(c: Ctx, version: str | None, **sel) -> None:
    """Dry run: what a sync would fetch, link, keep and remove (--json: the whole plan)."""
    _show_plan(c, c.mirror.plan(_selection(version, **sel)))


def _show_plan(c: Ctx, plan) -> None:
    if c.json:  # one line, no indentation: a plan can hold a million items
        click.echo(json.dumps({"event": "summary", "command": "plan", "ok": True, **plan.to_dict()},
                              separators=(",", ":")))
    else:
        click.echo(_plan_text(plan))


def _run_with_progress(c: Ctx, fn, stats_every: float = 10.0):
    """Call fn(on_event, on_start) with the right renderer for where stdout goes."""
    from .progress import LiveProgress, PlainEvents, json_lines

    if c.json:
        return fn(json_lines(), None)
    if sys.stderr.isatty():
        live = LiveProgress()
        with live:
            return fn(live, live.attach)
    return fn(PlainEvents(every=stats_every), None)


def _summary_text(s: dict) -> str:
    if s.get("shard"):
        return _shard_summary_text(s)
    text = (f"{s['files']} files: {s['files_fetched']} fetched ({human_bytes(s['bytes_fetched'])}"
            + (f", {human_bytes(s['bytes_resumed'])} resumed" if s['bytes_resumed'] else "")
            + f"), {s['files_linked']} linked ({human_bytes(s['bytes_linked'])}), {s['files_present']} already present"
            + (f", {s['removed']} stray views removed" if s['removed'] else "")
            + f" in {s['seconds']:.1f}s ({s['mb_per_s']:.1f} MB/s)"
            + (f", {s['retries']} retries" if s['retries'] else ""))
    if s["failures"]:
        text += f"\n{len(s['failures'])} files FAILED:" + "".join(f"\n  {f['key']}: {f['message']}" for f in s["failures"])
    return text


def _shard_summary_text(s: dict) -> str:
    """What this process did, in counts that add up: its part (the objects it was given:
    fetched + made from other shards' objects + failed), the rest of the selection every shard
    makes sure of (linked from the store, present), and other shards' parts (fetched here,
    made here from their objects, left to the shard fetching them)."""
    part, others = s["part"], s["others"]
    failed = part["views"] - part["fetched_views"] - part["by_others"]
    lines = [f"shard {s['shard']}: its part, {part['views']} files: {part['fetched_views']} fetched "
             f"({part['fetched_objects']} objects, {human_bytes(part['fetched_bytes'])}"
             + (f", {human_bytes(s['bytes_resumed'])} resumed" if s['bytes_resumed'] else "")
             + f"), {part['by_others']} made from objects other shards fetched"
             + (f", {failed} failed" if failed > 0 else "")
             + f"; in {s['seconds']:.1f}s ({s['mb_per_s']:.1f} MB/s)",
             f"  the rest of the selection: {s['store_linked']} linked from content already stored, "
             f"{s['files_present']} already present"]
    if others["fetched_views"] or others["linked_views"] or others["left_views"]:
        lines.append(f"  other shards' parts: {others['fetched_views']} fetched here ({others['fetched_objects']} objects "
                     f"nobody had claimed, {human_bytes(others['fetched_bytes'])}), {others['linked_views']} made here "
                     f"from their objects, {others['left_views']} left to the shards fetching them")
    if s["retries"]:
        lines.append(f"  {s['retries']} retries")
    text = "\n".join(lines)
    if s["failures"]:
        text += f"\n{len(s['failures'])} files FAILED:" + "".join(f"\n  {f['key']}: {f['message']}" for f in s["failures"])
    return text


@main.command("sync", short_help="Fetch, verify and link files of a version.")
@version_option
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=Limits().jobs, show_default=True,
              help="Concurrent GETs (and files in flight).")
@click.option("--part-size", default=size_flag(Limits().part_size), show_default=True,
              help="Objects larger than this are fetched as ranged parts of this size.")
@click.option("--verify", "verify", type=click.Choice([v.value for v in Verify]), default="manifest", show_default=True,
              help="Check downloads against the manifest's BLAKE2b, the S3 ETag, both, or size only.")
@click.option("--link-mode", type=click.Choice(["auto", "reflink", "hardlink", "copy"]), default="auto",
              show_default=True, help="How views are made: auto = reflink, else hard link, else copy.")
@click.option("--wait", is_flag=True, help="If another run holds the cache, wait for it instead of exiting.")
@click.option("--dry-run", "-n", is_flag=True, help="Only show the plan (as `vbo-mirror plan`).")
@click.option("--stats", "stats_every", type=click.FloatRange(0), default=10.0, show_default=True, metavar="SECONDS",
              help="Without a terminal: a progress line on stderr this often (version, files, bytes, rate, "
                   "ETA; 0: none).")
@click.option("--bwlimit", default=None, metavar="RATE",
              help="Cap this process's download rate over all connections, e.g. 200MB/s, 1Gbit/s, 50MiB/s "
                   "(with --shard: per process).")
@selection_options
@click.pass_obj
@handle_errors
def sync_cmd(c: Ctx, version, jobs, part_size, verify, link_mode, wait, dry_run, stats_every, bwlimit,
             **sel) -> None:
    """Fetch, verify and link every file of a version; resumes whatever an earlier run left."""

    from .units import parse_rate

    rate = None
    if bwlimit:
        rate, note = parse_rate(bwlimit)
        if note:
            _note(note)
    try:
        limits = Limits(jobs=jobs, part_size=part_size_option(part_size), bwlimit=rate)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    selection = _selection(version, **sel)
    if dry_run:
        _show_plan(c, c.mirror.plan(selection))
        return
    stats = _run_with_progress(c, lambda on_event, on_start: c.mirror.sync(
        selection, limits=limits, verify=Verify(verify), link_mode=link_mode, wait=wait,
        on_event=on_event, on_start=on_start), stats_every)
    s = stats.summary()
    if not c.json:
        click.echo(_summary_text(s))
    if s["failures"]:
        click.get_current_context().exit(5)


@main.command("get", short_help="One session's or experiment's NWB: fetch, print path.")
@click.argument("kind", type=click.Choice(["behavior-session", "ophys-experiment"]))
@click.argument("item_id", type=int)
@click.option("--version", "version", default=None,
              help="V or 'latest' (default: the current version; on a cache with none, the latest, made current).")
@click.pass_obj
@handle_errors
def get_cmd(c: Ctx, kind: str, item_id: int, version: str | None) -> None:
    """Make sure the NWB of one behavior session / ophys experiment is present; print its path."""
    path = c.mirror.get_file_path(kind, item_id, version=version)
    c.emit({"kind": kind, "id": item_id, "path": str(path)}, str(path))


@main.command("status", short_help="Per version: files present / missing, bytes.")
@click.pass_obj
@handle_errors
def status_cmd(c: Ctx) -> None:
    """Per downloaded version: files present / missing, logical bytes against bytes on disk."""
    s = c.mirror.status()

    def text() -> str:
        lines = [f"{s['cache_dir']}"]
        for v in s["versions"]:
            lines.append(f"  {v['version']:<8}{'*' if v['current'] else ' '} {v['present']:>6}/{v['files']:<6} files present"
                         f"  {v['missing']:>6} missing" + (f"  {v['wrong']} wrong" if v['wrong'] else "")
                         + f"  {human_bytes(v['logical_bytes']):>10} in views"
                         + ("  (bucket layout)" if v.get("layout") == "bucket" else ""))
        lines.append(f"  store: {s['objects']} objects, {human_bytes(s['bytes_on_disk'])} on disk for "
                     f"{human_bytes(s['logical_bytes'])} of views"
                     + (f"; {s['partials']} partial downloads ({human_bytes(s['partial_bytes'])} saved, resumed by the next sync)" if s['partials'] else ""))
        if s["unverified_objects"]:
            lines.append(f"  {s['unverified_objects']} objects were published unverified (--verify none): the next "
                         "sync checks their BLAKE2b before using them (or run `vbo-mirror verify`)")
        return "\n".join(lines)

    c.emit(s, text)


@main.command("verify", short_help="Check stored objects and views (exit 5 if damaged).")
@click.option("--fast", is_flag=True, help="Compare xxh3 fingerprints with the index (disk speed) instead of BLAKE2b.")
@click.option("--repair", is_flag=True, help="Fetch damaged content again and relink wrong views.")
@click.option("--yes", "-y", is_flag=True,
              help="With --repair: also fetch missing views whose content was never in the store, without asking.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=2, show_default=True, help="Files hashed at once.")
@click.option("--wait", is_flag=True, help="If another run holds the cache, wait for it.")
@click.pass_obj
@handle_errors
def verify_cmd(c: Ctx, fast: bool, repair: bool, yes: bool, jobs: int, wait: bool) -> None:
    """Check every stored object and view; exit 5 if anything is damaged (and not repaired)."""
    def confirm(info: dict) -> bool:
        if yes:
            return True
        if c.json or not sys.stdin.isatty():
            return False  # reported, with --yes to fetch them
        click.echo(f"{len(info['views'])} missing views have content that was never in the store "
                   f"(e.g. {info['views'][0]}): repairing them means fetching it.", err=True)
        return click.confirm("fetch it?", default=False, err=True)

    r = c.mirror.verify(fast=fast, repair=repair, jobs=jobs, wait=wait, confirm=confirm)

    def text() -> str:
        lines = [f"checked {r['objects']} objects ({human_bytes(r['bytes'])}, {r['mode']})"]
        lines += [f"  CORRUPT {x['path']}: {x['problem']}" for x in r["corrupt"]]
        lines += [f"  WRONG VIEW {v}" for v in r["views_wrong"]]
        unstored = set(r.get("views_missing_unstored", ()))
        lines += [f"  MISSING VIEW {v} ({'its content is not in the store: --repair fetches it' if v in unstored else 'its content is in the store: --repair relinks it'})"
                  for v in r["views_missing"]]
        lines += [f"  VIEW OF DAMAGED CONTENT {v}" for v in r["views_missing_content"]]
        if r["orphan_partials_removed"]:
            lines.append(f"  removed {len(r['orphan_partials_removed'])} partial downloads no downloaded version wants")
        if "repaired" in r:
            rep = r["repaired"]
            lines.append(f"  repaired: {rep['files_fetched']} files fetched again, {rep['views_linked']} views relinked"
                         + (f", {len(rep['failures'])} failed" if rep["failures"] else ""))
            if r.get("repair_declined"):
                lines.append(f"  not fetched: {len(r['repair_declined'])} missing views whose content was never in "
                             "the store (more than damage): `vbo-mirror verify --repair --yes` fetches them")
        elif not r["ok"] or r["views_missing_content"]:
            lines.append("  run `vbo-mirror verify --repair` to fetch damaged content again")
        lines.append("ok" if r["ok"] else "NOT OK")
        return "\n".join(lines)

    c.emit(r, text)
    if not r["ok"]:
        click.get_current_context().exit(5)


def _prune_text(r: dict) -> str:
    lines = []
    if r["dropped"]:
        lines.append(f"versions removed: {', '.join(r['dropped'])}  ({r['views']} views)")
    lines.append(f"versions kept: {', '.join(r['kept']) or '(none in cache_dir)'}")
    lines.append(f"store objects no kept version needs: {r['objects']} ({human_bytes(r['object_bytes'])})")
    if r["partials"]:
        lines.append(f"partial downloads of such objects: {r['partials']} ({human_bytes(r['partial_bytes'])})")
    if r["temporaries"]:
        lines.append(f"temporaries of interrupted runs: {r['temporaries']}")
    if r["left_not_views_count"]:
        lines.append(f"left in place, not views of the store: {r['left_not_views_count']} files, e.g. "
                     + ", ".join(r["left_not_views"][:3]))
    verb = "frees" if r.get("applied") else "would free"
    lines.append(f"{verb} {human_bytes(r['frees_bytes'])}" + ("" if r.get("applied") else
                                                              " (dry run)" if r["dry_run"] else " (nothing removed)"))
    for refusal in r.get("refused", ()):
        lines.append(f"warning: the real prune would refuse: {refusal['message']} ({refusal['hint']})")
    return "\n".join(lines)


@main.command("prune", short_help="Remove other versions and what only they use.")
@click.option("--keep", "keep", multiple=True, required=True, metavar="VERSION",
              help="A version to keep (repeat for several; 'latest' works). Every other version goes.")
@click.option("--dry-run", "-n", is_flag=True, help="Only show what would be removed and freed.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask; needed when stdin is not a terminal.")
@click.option("--wait", is_flag=True, help="If another run holds the cache, wait for it.")
@click.pass_obj
@handle_errors
def prune_cmd(c: Ctx, keep: tuple[str, ...], dry_run: bool, yes: bool, wait: bool) -> None:
    """Remove other versions' views and manifests, and the store objects no kept version needs."""
    def confirm(plan: dict) -> bool:
        if yes:
            return True
        if c.json or not sys.stdin.isatty():
            raise InputError("prune removes files: pass --yes to go ahead (or --dry-run to see what goes)")
        click.echo(_prune_text({**plan, "applied": False}), err=True)
        return click.confirm("remove these?", default=False, err=True)

    r = c.mirror.prune(list(keep), dry_run=dry_run, confirm=confirm, wait=wait)
    c.emit(r, lambda: _prune_text(r))


@main.command("gc", short_help="Remove unreferenced objects, partials, temporaries.")
@click.option("--dry-run", "-n", is_flag=True, help="Only show what would be removed and freed.")
@click.option("--wait", is_flag=True, help="If another run holds the cache, wait for it.")
@click.pass_obj
@handle_errors
def gc_cmd(c: Ctx, dry_run: bool, wait: bool) -> None:
    """Remove store objects no manifest in cache_dir names, their partial downloads, and
    temporaries of interrupted runs."""
    r = c.mirror.gc(dry_run=dry_run, wait=wait)
    c.emit(r, lambda: _prune_text(r))


def _adopt_text(r: dict) -> str:
    lines = [f"{r['cache_dir']}: {r['entries']} files of {', '.join(r.get('versions', [])) or 'the manifests'} looked at"
             + (" (dry run: nothing changed)" if r["dry_run"] else "")]
    for cat, what in (("adopted", "taken into the store (now hard-linked views)"), ("present", "already views"),
                      ("mismatch", "with other bytes than the manifest says (the next sync replaces them)"),
                      ("missing", "absent or a broken link (the next sync fetches them)"),
                      ("foreign", "links out of cache_dir or to something that is not a file: left alone"),
                      ("failed", "could not be read")):
        x = r[cat]
        if x["files"]:
            lines.append(f"  {x['files']:>6} {what}" + (f", {human_bytes(x['bytes'])}" if x["bytes"] else ""))
    lines.append(f"  {human_bytes(r['logical_bytes'])} of files now stored once in {human_bytes(r['stored_bytes'])}")
    return "\n".join(lines)


@main.command("adopt", short_help="Take an AllenSDK cache into the store, in place.")
@click.argument("directory", required=False, type=click.Path(file_okay=False, exists=True))
@click.option("--dry-run", "-n", is_flag=True, help="Hash and report; change nothing.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=2, show_default=True, help="Files hashed at once.")
@click.option("--wait", is_flag=True, help="If another run holds the cache, wait for it.")
@click.pass_obj
@handle_errors
def adopt_cmd(c: Ctx, directory: str | None, dry_run: bool, jobs: int, wait: bool) -> None:
    """Take the files AllenSDK downloaded into DIRECTORY (default: cache_dir) into the store, in
    place: each file with the manifest's BLAKE2b becomes a hard-linked view (AllenSDK's
    symlinks too), nothing is fetched, AllenSDK still opens the directory. Exit 5 if some files
    do not match (the next sync replaces them)."""
    if directory is not None:
        c.cache_dir = directory
    r = c.mirror.adopt(dry_run=dry_run, jobs=jobs, wait=wait)
    c.emit(r, lambda: _adopt_text(r))
    if r["mismatch"]["files"] or r["failed"]["files"]:
        click.get_current_context().exit(5)


@main.command("urls", short_help="Direct URLs of the files, for wget / aria2c.")
@version_option
@selection_options
@click.pass_obj
@handle_errors
def urls_cmd(c: Ctx, version: str | None, **sel) -> None:
    """Direct download URLs with ?versionId= for every file, one per line (wget -i / aria2c -i)."""
    c.emit(c.mirror.urls(_selection(version, **sel)))


@main.group("index")
def index_group() -> None:
    """The state index (a summary of the store)."""


@index_group.command("rebuild")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=2, show_default=True, help="Files hashed at once.")
@click.option("--wait", is_flag=True, help="If another run holds the cache, wait for it.")
@click.pass_obj
@handle_errors
def index_rebuild_cmd(c: Ctx, jobs: int, wait: bool) -> None:
    """Read and verify every stored object and write a fresh index."""
    r = c.mirror.rebuild_index(jobs=jobs, wait=wait)
    c.emit(r, f"index rebuilt: {r['objects']} objects, {human_bytes(r['bytes'])}"
           + (f"; {len(r['removed_corrupt'])} corrupt objects removed" if r["removed_corrupt"] else ""))


# --- bench ----------------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.3g} MiB"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers (e.g. 1,4,16,64)") from None
    if not values or min(values) < 1:
        raise click.BadParameter("give numbers of at least 1")
    return values


@main.command("bench", short_help="Measure GET throughput over -j x part size.")
@version_option
@click.option("-j", "--jobs", "jobs", default="1,4,16,64", show_default=True,
              help="Requests in flight to try, comma-separated.")
@click.option("--part-size", "part_sizes", default="8MiB,32MiB", show_default=True,
              help="Ranged part sizes to try, comma-separated.")
@click.option("--bytes", "budget", default="1GiB", show_default=True,
              help="Bytes fetched per cell: the version's largest objects, up to this much.")
@click.option("--repeat", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Runs of the whole matrix; each cell's median and min-max are reported, and a setting is "
                   "recommended only when it beats the others beyond that spread.")
@click.option("--to-disk", "to_disk", type=click.Path(file_okay=False),
              help="Write the bytes into a scratch directory under DIR (removed after each cell) "
                   "instead of discarding them.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also draw MB/s against -j into this PNG (needs matplotlib: the `plot` extra).")
@click.pass_obj
@handle_errors
def bench_cmd(c: Ctx, version, jobs, part_sizes, budget, repeat, to_disk, plot_path) -> None:
    """Measure GET throughput of the endpoint over a matrix of -j x part size, on real objects."""
    from .bench import plot

    jobs_l = _int_list(jobs)
    parts_l = [part_size_option(p) for p in part_sizes.split(",") if p.strip()]
    try:
        for p in parts_l:
            Limits(part_size=p)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    from .units import parse_size

    budget_b = parse_size(budget, what="--bytes")
    if to_disk:
        Path(to_disk).mkdir(parents=True, exist_ok=True)

    def on_cell(cell) -> None:
        if c.json:
            click.echo(json.dumps({"event": "cell", **cell.to_dict()}))
        else:
            click.echo(f"  -j {cell.jobs:<4} part {_mib(cell.part_size):>9}  {cell.mb_per_s:8.1f} MB/s  "
                       f"{cell.cpu_per_gb:5.2f} CPU s/GB  ({human_bytes(cell.bytes)} in {cell.seconds:.2f}s, "
                       f"{cell.requests} GETs)", err=True)

    where = c.mirror.endpoint_url or "AWS"
    if not c.json:
        click.echo(f"measuring GETs from {where} ({'to disk' if to_disk else 'discarded'})...", err=True)
    cells = c.mirror.bench(version, jobs=tuple(jobs_l), part_sizes=tuple(parts_l), budget=budget_b,
                           repeat=repeat, to_disk=Path(to_disk) if to_disk else None, on_cell=on_cell)
    from .bench import judge, summarize

    rows = summarize(cells)
    verdict = judge(rows, repeat=repeat, budget=budget_b)
    if plot_path:
        plot(rows, Path(plot_path), title=f"vbo-mirror bench: {where}")
    if c.json:
        click.echo(json.dumps({"event": "summary", "ok": True, "cells": [x.to_dict() for x in rows],
                               "recommendation": verdict.to_dict(), "plot": plot_path}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"GET throughput from {where}" + (f" (median of {repeat} runs, min-max)" if repeat > 1 else ""))
    for col in ("-j", "part size", "MB/s", "CPU s/GB", "seconds", "GETs"):
        table.add_column(col, justify="right")
    for x in rows:
        style = "bold green" if x is verdict.best else None
        spread = f" ({x.low:.0f}-{x.high:.0f})" if repeat > 1 else ""
        m = x.median
        table.add_row(str(x.jobs), _mib(x.part_size), f"{m.mb_per_s:.1f}{spread}", f"{m.cpu_per_gb:.2f}",
                      f"{m.seconds:.2f}", str(m.requests), style=style)
    Console().print(table)
    for note in verdict.notes:
        click.echo(f"note: {note}")
    if verdict.best is not None:
        click.echo(f"best: vbo-mirror sync -j {verdict.best.jobs} --part-size {size_flag(verdict.best.part_size)}"
                   + (f"  (plot: {plot_path})" if plot_path else ""))
    else:
        click.echo("no recommendation: keep the defaults" + (f"  (plot: {plot_path})" if plot_path else ""))


# --- sandbox --------------------------------------------------------------------------------


@main.group(short_help="A local S3 server (moto, 127.0.0.1) with a replica.")
def sandbox() -> None:
    """A local S3 server (moto, 127.0.0.1) with a scaled-down replica of the bucket."""


@sandbox.command("up")
@click.option("--port", type=int, default=0, help="Port on 127.0.0.1 (default: a free one).")
@click.option("--scale", type=float, default=1 / 1000, show_default=True, help="NWB sizes relative to the real ones.")
@click.option("--seed", type=int, default=20210322, show_default=True,
              help="Seed of the generated replica (the same seed gives the same bytes).")
@click.pass_obj
@handle_errors
def sandbox_up_cmd(c: Ctx, port: int, scale: float, seed: int) -> None:
    """Start the sandbox in the background and print its endpoint."""
    from .sandbox.replica import ReplicaSpec
    from .sandbox.server import sandbox_up

    if not 0 < scale <= 0.05:
        raise InputError("--scale must be in (0, 0.05]: moto keeps every object in memory")
    state = sandbox_up(ReplicaSpec(seed=seed, scale=scale), port=port)
    joined = (f" (it was already running: now {state['users']} users; `sandbox down` stops it when the last one "
              "leaves)" if state.get("already_running") else "")
    c.emit(state, lambda: (f"sandbox {'already ' if state.get('already_running') else ''}running at {state['endpoint_url']} "
                           f"(pid {state['pid']}, {len(state['manifests'])} manifests, {human_bytes(state['bytes'])})"
                           f"{joined}\n"
                           f"  export AWS_ENDPOINT_URL_S3={state['endpoint_url']}\n"
                           f"  its state: {state.get('state_dir', '')} (VBO_MIRROR_SANDBOX_DIR chooses another)\n"
                           "  stop it with: vbo-mirror sandbox down"))


@sandbox.command("down")
@click.option("--force", is_flag=True, help="Stop it even if other `sandbox up` sessions still use it.")
@click.pass_obj
@handle_errors
def sandbox_down_cmd(c: Ctx, force: bool) -> None:
    """Leave the sandbox; the last to leave stops it."""
    from .sandbox.server import sandbox_down

    state = sandbox_down(force=force)
    if state is None:
        c.emit({"stopped": False, "running": False}, "no sandbox was running")
    elif state["stopped"]:
        c.emit(state, "sandbox stopped")
    else:
        c.emit(state, f"sandbox at {state['endpoint_url']} left running: {state['users']} other `sandbox up` "
                      "still use it (--force stops it anyway)")


@sandbox.command("status")
@click.pass_obj
@handle_errors
def sandbox_status_cmd(c: Ctx) -> None:
    """Whether the sandbox runs, and where."""
    from .sandbox.server import sandbox_status

    state = sandbox_status()
    c.emit({"running": state is not None, **(state or {})},
           f"sandbox running at {state['endpoint_url']} (pid {state['pid']})" if state else "no sandbox is running")


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


def entry() -> None:
    """The `vbo-mirror` command. After the command has run and its output is flushed, the
    process ends without the interpreter's teardown: freeing every object of a 6,000-file
    plan one by one took ~60 ms, an eighth of a no-op resync. Nothing is lost by it: every
    file vbo-mirror writes is written and closed explicitly, and its threads are joined."""
    # SIGTERM (a scheduler's kill) and SIGHUP (a closed terminal) end a run as Ctrl-C does:
    # the job is cancelled, partials kept, the index saved, the lock released; exit 128+N.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    try:
        code = main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        code = 1
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        raise  # a bug: let Python print the traceback and exit the usual way
    code = code if isinstance(code, int) else 0
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)  # a profiler or debugger is watching: let it write its results
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 1
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
