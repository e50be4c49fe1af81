"""`plan`, `sync`, `get`, `status`, `verify`: what a mirror is made of, and making it."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile

import click

from ..engine.verify import Verify
from ..limits import Limits
from ..units import size_flag
from ..errors import MirrorError
from .root import (_note, _selection, Ctx, handle_errors, human_bytes,
               InputError, main, part_size_option, selection_options, version_option)


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
    _show_plan(c, c.mirror.plan(_selection(c, version, **sel)))


def _show_plan(c: Ctx, plan) -> None:
    if c.json:  # one line, no indentation: a plan can hold a million items
        click.echo(json.dumps({"event": "summary", "command": "plan", "ok": True, **plan.to_dict()},
                              separators=(",", ":")))
    else:
        click.echo(_plan_text(plan))


def _run_with_progress(c: Ctx, fn, stats_every: float = 10.0):
    """Call fn(on_event, on_start) with the right renderer for where stdout goes."""
    from ..progress import LiveProgress, PlainEvents, json_lines

    if c.json:
        return fn(json_lines(), None)
    if sys.stderr.isatty():
        live = LiveProgress()
        with live:
            return fn(live, live.attach)
    return fn(PlainEvents(every=stats_every), None)


def _summary_text(s: dict) -> str:
    text = _shard_counts(s) if s.get("shard") else _counts(s)
    if s["failures"]:
        text += f"\n{len(s['failures'])} files FAILED:" + "".join(f"\n  {f['key']}: {f['message']}" for f in s["failures"])
    return text


def _counts(s: dict) -> str:
    return (f"{s['files']} files: {s['files_fetched']} fetched ({human_bytes(s['bytes_fetched'])}"
            + (f", {human_bytes(s['bytes_resumed'])} resumed" if s['bytes_resumed'] else "")
            + f"), {s['files_linked']} linked ({human_bytes(s['bytes_linked'])}), {s['files_present']} already present"
            + (f", {s['removed']} stray views removed" if s['removed'] else "")
            + f" in {s['seconds']:.1f}s ({s['mb_per_s']:.1f} MB/s)"
            + (f" by {len(s['procs'])} processes" if s.get("procs") else "")
            + (f", {s['retries']} retries" if s['retries'] else ""))


def _shard_counts(s: dict) -> str:
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
    return "\n".join(lines)


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
@click.option("--procs", default="auto", show_default=True, metavar="N|auto",
              help="Processes fetching the selection together (each a shard of it, -j and --bwlimit shared "
                   "out among them); auto: one per 8 cores, at most 8 (one below 16 cores).")
@selection_options
@click.pass_obj
@handle_errors
def sync_cmd(c: Ctx, version, jobs, part_size, verify, link_mode, wait, dry_run, stats_every, bwlimit, procs,
             **sel) -> None:
    """Fetch, verify and link every file of a version; resumes whatever an earlier run left."""

    from ..units import parse_rate

    rate = None
    if bwlimit:
        rate, note = parse_rate(bwlimit)
        if note:
            _note(note)
    try:
        limits = Limits(jobs=jobs, part_size=part_size_option(part_size), bwlimit=rate)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    selection = _selection(c, version, **sel)
    if dry_run:
        _show_plan(c, c.mirror.plan(selection))
        return
    n = min(_procs(procs, selection), jobs)  # at least one GET each

    def run(on_event, on_start):
        def plain(sel, on_event=on_event):
            return c.mirror.sync(sel, limits=limits, verify=Verify(verify), link_mode=link_mode, wait=wait,
                                 on_event=on_event, on_start=on_start)

        if n == 1:
            return plain(selection)
        from ..procs import sync_procs

        with _ids_for_children(selection) as ids_file:
            child = [*c.argv(), "--json", "sync", "--part-size", str(limits.part_size), "--verify", verify,
                     "--link-mode", link_mode, *(["--wait"] if wait else []),
                     *_selection_argv(**{**sel, "ids_file": ids_file})]

            def argv_of(shard, resolved):
                # -j and --bwlimit shared out over the processes this run really starts
                k, count = shard.index, shard.count
                rate = (limits.bwlimit or 0) / count
                return [sys.executable, "-m", "mirror.cli", *child, *(["--version", resolved or version]
                                                                      if resolved or version else []),
                        "-j", str(jobs // count + (1 if k < jobs % count else 0)),
                        *(["--bwlimit", f"{rate:.0f}B/s"] if rate else []), "--shard", str(shard)]

            said: set[str] = set()

            def child_said(shard, line: str) -> None:  # each line once: N children list the same bucket
                if line not in said:
                    said.add(line)
                    click.echo(f"[{shard}] {line}", err=True)

            return sync_procs(c.mirror, selection, n, argv_of, sync=plain, on_event=on_event, on_start=on_start,
                              on_stderr=child_said, wait=wait)

    stats = _run_with_progress(c, run, stats_every)
    s = stats.summary()
    if not c.json:
        click.echo(_summary_text(s))
    if s["failures"]:
        click.get_current_context().exit(5)


def _procs(text: str, selection) -> int:
    from ..procs import default_procs

    if text == "auto":
        return 1 if selection.shard is not None else default_procs()
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise InputError(f"--procs {text!r}: a number of processes from 1 to 64, or auto")
    if int(text) > 1 and selection.shard is not None:
        raise InputError("--procs runs its own shards: give --procs or --shard, not both")
    return int(text)


def _selection_argv(shard=None, where=None, ids_file=None, tables_only=False, view_layout="allensdk"):
    """The selection options again, for a child process (its --version and --shard are added
    per child)."""
    out = ["--where", where] if where is not None else []
    out += ["--ids", str(ids_file)] if ids_file is not None else []
    out += ["--tables-only"] if tables_only else []
    return out + ["--layout", view_layout]


@contextlib.contextmanager
def _ids_for_children(selection):
    """The ids this command read (`--ids`, perhaps from a pipe the children cannot reopen), in a
    file of their own for the child processes; None without --ids."""
    if selection.ids is None:
        yield None
        return
    column, values = selection.ids
    fd, path = tempfile.mkstemp(prefix="vbo-mirror-ids-", suffix=".csv")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{line}\n" for line in ([column] if column else []) + [str(v) for v in values]))
        yield path
    finally:
        os.unlink(path)


class _FileKind(click.ParamType):
    """A file kind of the dataset given by --dataset (its TOML's [file_kinds])."""

    name = "KIND"

    def convert(self, value, param, ctx):
        c = ctx.find_object(Ctx) if ctx is not None else None
        try:
            kinds = sorted(c.dataset_config().file_kinds) if c is not None else []
        except MirrorError:
            return value  # a dataset that does not load: the command says why, as every command does
        if value in kinds:
            return value
        self.fail(f"{value!r} is not a file kind of {c.dataset if c else 'the dataset'}; choose from "
                  f"{', '.join(kinds) or '(none: its dataset file has no [file_kinds])'}", param, ctx)


@main.command("get", short_help="One session's, experiment's or probe's NWB: fetch, print path.")
@click.argument("kind", type=_FileKind())
@click.argument("item_id", type=int)
@click.option("--version", "version", default=None,
              help="V or 'latest' (default: the current version; on a cache with none, the latest, made current).")
@click.pass_obj
@handle_errors
def get_cmd(c: Ctx, kind: str, item_id: int, version: str | None) -> None:
    """Make sure the NWB of one item is present; print its path.

    KIND is one of the dataset's file kinds: for visual-behavior-ophys, behavior-session and
    ophys-experiment; for visual-behavior-neuropixels, ecephys-session, behavior-session and
    probe-lfp (a probe's LFP NWB, by ecephys_probe_id)."""
    path = c.mirror.get_file_path(kind, item_id, version=version)
    c.emit({"kind": kind, "id": item_id, "path": str(path)}, str(path))


@main.command("status", short_help="Per version: files present / missing, bytes.")
@click.pass_obj
@handle_errors
def status_cmd(c: Ctx) -> None:
    """Per downloaded version: files present / missing, logical bytes against bytes on disk."""
    s = c.mirror.status()

    def text() -> str:
        lines = [s.cache_dir]
        for v in s.versions:
            lines.append(f"  {v.version:<8}{'*' if v.current else ' '} {v.present:>6}/{v.files:<6} files present"
                         f"  {v.missing:>6} missing" + (f"  {v.wrong} wrong" if v.wrong else "")
                         + f"  {human_bytes(v.logical_bytes):>10} in views"
                         + ("  (bucket layout)" if v.layout == "bucket" else ""))
        lines.append(f"  store: {s.objects} objects, {human_bytes(s.bytes_on_disk)} on disk for "
                     f"{human_bytes(s.logical_bytes)} of views"
                     + (f"; {s.partials} partial downloads ({human_bytes(s.partial_bytes)} saved, resumed by the next sync)"
                        if s.partials else ""))
        if s.unverified_objects:
            lines.append(f"  {s.unverified_objects} objects were published unverified (--verify none): the next "
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
        lines = [f"checked {r.objects} objects ({human_bytes(r.bytes)}, {r.mode})"]
        lines += [f"  CORRUPT {x.path}: {x.problem}" for x in r.corrupt]
        lines += [f"  WRONG VIEW {v}" for v in r.views_wrong]
        unstored = set(r.views_missing_unstored)
        lines += [f"  MISSING VIEW {v} ({'its content is not in the store: --repair fetches it' if v in unstored else 'its content is in the store: --repair relinks it'})"
                  for v in r.views_missing]
        lines += [f"  VIEW OF DAMAGED CONTENT {v}" for v in r.views_missing_content]
        if r.orphan_partials_removed:
            lines.append(f"  removed {len(r.orphan_partials_removed)} partial downloads no downloaded version wants")
        if r.repaired is not None:
            rep = r.repaired
            lines.append(f"  repaired: {rep.files_fetched} files fetched again, {rep.views_linked} views relinked"
                         + (f", {len(rep.failures)} failed" if rep.failures else ""))
            if r.repair_declined:
                lines.append(f"  not fetched: {len(r.repair_declined)} missing views whose content was never in "
                             "the store (more than damage): `vbo-mirror verify --repair --yes` fetches them")
        elif not r.ok or r.views_missing_content:
            lines.append("  run `vbo-mirror verify --repair` to fetch damaged content again")
        lines.append("ok" if r.ok else "NOT OK")
        return "\n".join(lines)

    c.emit(r, text)
    if not r.ok:
        click.get_current_context().exit(5)


