"""The command tree's root: the options every command takes, errors and exit codes, output,
and the options several commands share. The commands themselves are in the other modules of
this package, which import from here (never the other way round).

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
import signal  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import click  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from ..config import DEFAULT_DATASET, DatasetConfig, load_dataset  # noqa: E402
from ..errors import InputError, MirrorError, MirrorWarning, Terminated  # noqa: E402
from ..remote.settings import TRANSPORTS, Timeouts  # noqa: E402

# The API (asyncio, the store, the engine, pyarrow on demand) is imported by the commands that
# use it, so `--help` and argument errors answer at once.
if TYPE_CHECKING:
    from ..api import Mirror


class Ctx:
    def __init__(self, *, dataset: str, cache_dir: str | None, endpoint_url: str | None, json_out: bool,
                 offline: bool, signed: bool, timeouts: Timeouts, transport: str = "lean",
                 proxy: str | None = None) -> None:
        self.dataset = dataset
        self._dataset_config: DatasetConfig | None = None
        self.cache_dir = cache_dir
        self.endpoint_url = endpoint_url
        self.json = json_out
        self.offline = offline
        self.signed = signed
        self.timeouts = timeouts
        self.transport = transport
        self.proxy = proxy
        self._mirror: Mirror | None = None

    def argv(self) -> list[str]:
        """The global options this command was given, for a child `vbo-mirror` (sync --procs),
        which also inherits the environment (endpoint and proxy variables, credentials). Read
        back from `main`'s own options, so a new one reaches the children with no list to keep."""
        root = click.get_current_context().find_root()
        out: list[str] = []
        for opt in root.command.params:
            if not isinstance(opt, click.Option) or opt.name not in root.params:
                continue
            value = root.params[opt.name]
            if opt.is_flag:
                out += [opt.opts[0]] if value else []
            elif value is not None:
                out += [opt.opts[0], str(value)]
        return out

    def dataset_config(self) -> DatasetConfig:
        if self._dataset_config is None:
            self._dataset_config = load_dataset(self.dataset)
        return self._dataset_config

    @property
    def mirror(self) -> "Mirror":
        if self._mirror is None:
            from ..api import Mirror

            from ..remote.settings import check_endpoint

            if self.endpoint_url:  # the option; without it the API reads (and names) the variables
                check_endpoint(self.endpoint_url, "--endpoint-url")
            self._mirror = Mirror(self.cache_dir, dataset=self.dataset_config(), endpoint_url=self.endpoint_url or None,
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
            elif hasattr(data, "to_dict"):  # a typed result (mirror/reports.py): JSON here, at the edge
                summary = data.to_dict()
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


# --- options several commands share -------------------------------------------------------------------------

def _note(text: str) -> None:
    """One line about how an option was understood (stderr: stdout stays the command's)."""
    click.echo(f"vbo-mirror: note: {text}", err=True)


def part_size_option(text: str, *, what: str = "--part-size") -> int:
    """A part size in any unit, rounded to whole 4 KiB blocks (said once when it is)."""
    from ..units import align_part_size, parse_size

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


def _selection(c: Ctx, version: str | None, shard: str | None = None, where: str | None = None,
               ids_file: str | None = None, tables_only: bool = False, view_layout: str = "allensdk"):
    from ..model import Selection, Shard

    if tables_only and (where is not None or ids_file is not None):
        raise InputError("--tables-only selects no data file: drop --where/--ids, or --tables-only")
    ids = None
    if ids_file is not None:
        from ..ids import read_ids

        column, values = read_ids(Path(ids_file), id_columns=c.dataset_config().id_columns or None)
        ids = (column, tuple(values))
    if where is not None:
        from ..select import parse

        parse(where)  # a syntax error is reported before anything is fetched
    try:
        return Selection(version, shard=Shard.parse(shard) if shard else None, where=where, ids=ids,
                         tables_only=tables_only, layout=view_layout)
    except ValueError as exc:
        raise InputError(str(exc)) from None


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
