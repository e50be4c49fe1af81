"""`vbo-mirror bench`: GET throughput over -j x part size, and what it can tell."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..units import size_flag
from ..limits import Limits
from .root import Ctx, handle_errors, human_bytes, InputError, main, part_size_option, version_option


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
    from ..bench import plot

    jobs_l = _int_list(jobs)
    parts_l = [part_size_option(p) for p in part_sizes.split(",") if p.strip()]
    try:
        for p in parts_l:
            Limits(part_size=p)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    from ..units import parse_size

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
    from ..bench import judge, summarize

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


