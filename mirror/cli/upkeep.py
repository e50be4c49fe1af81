"""`prune`, `gc`, `adopt`, `urls`, `index rebuild`: looking after a mirror."""

from __future__ import annotations

import sys

import click
from typing import TYPE_CHECKING

from .root import _selection, Ctx, handle_errors, human_bytes, InputError, main, selection_options, version_option

if TYPE_CHECKING:  # (the reports module is loaded only by the commands that make one)
    from ..reports import AdoptReport, PruneReport


def _prune_text(r: PruneReport) -> str:
    lines = []
    if r.dropped:
        lines.append(f"versions removed: {', '.join(r.dropped)}  ({r.views} views)")
    lines.append(f"versions kept: {', '.join(r.kept) or '(none in cache_dir)'}")
    lines.append(f"store objects no kept version needs: {r.objects} ({human_bytes(r.object_bytes)})")
    if r.partials:
        lines.append(f"partial downloads of such objects: {r.partials} ({human_bytes(r.partial_bytes)})")
    if r.temporaries:
        lines.append(f"temporaries of interrupted runs: {r.temporaries}")
    if r.left_not_views_count:
        lines.append(f"left in place, not views of the store: {r.left_not_views_count} files, e.g. "
                     + ", ".join(r.left_not_views[:3]))
    verb = "frees" if r.applied else "would free"
    lines.append(f"{verb} {human_bytes(r.frees_bytes)}" + ("" if r.applied else
                                                          " (dry run)" if r.dry_run else " (nothing removed)"))
    for refusal in r.refused:
        lines.append(f"warning: the real prune would refuse: {refusal.message} ({refusal.hint})")
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
    def confirm(plan: PruneReport) -> bool:
        if yes:
            return True
        if c.json or not sys.stdin.isatty():
            raise InputError("prune removes files: pass --yes to go ahead (or --dry-run to see what goes)")
        click.echo(_prune_text(plan), err=True)
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


def _adopt_text(r: AdoptReport) -> str:
    lines = [f"{r.cache_dir}: {r.entries} files of the manifests looked at"
             + (" (dry run: nothing changed)" if r.dry_run else "")]
    for cat, what in (("adopted", "taken into the store (now hard-linked views)"), ("present", "already views"),
                      ("mismatch", "with other bytes than the manifest says (the next sync replaces them)"),
                      ("missing", "absent or a broken link (the next sync fetches them)"),
                      ("foreign", "links out of cache_dir or to something that is not a file: left alone"),
                      ("failed", "could not be read")):
        x = r.tally(cat)
        if x.files:
            lines.append(f"  {x.files:>6} {what}" + (f", {human_bytes(x.bytes)}" if x.bytes else ""))
    lines.append(f"  {human_bytes(r.logical_bytes)} of files now stored once in {human_bytes(r.stored_bytes)}")
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
    if r.mismatch.files or r.failed.files:
        click.get_current_context().exit(5)


@main.command("urls", short_help="Direct URLs of the files, for wget / aria2c.")
@version_option
@selection_options
@click.pass_obj
@handle_errors
def urls_cmd(c: Ctx, version: str | None, **sel) -> None:
    """Direct download URLs with ?versionId= for every file, one per line (wget -i / aria2c -i)."""
    c.emit(c.mirror.urls(_selection(c, version, **sel)))


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
    c.emit(r, f"index rebuilt: {r.objects} objects, {human_bytes(r.bytes)}"
           + (f"; {len(r.removed_corrupt)} corrupt objects removed" if r.removed_corrupt else ""))


