"""`vbo-mirror manifests ...`: the versions online and in cache_dir, the one in use, what changed."""

from __future__ import annotations

import click

from .root import Ctx, handle_errors, human_bytes, InputError, main


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


