#!/usr/bin/env python
"""`make bench`: vbo-mirror beside s5cmd, rclone, aws-cli (and AllenSDK) on one local S3
server, in one run, interleaved, several times each; every tool's output checked against the
manifest's BLAKE2b by the benchmark. Writes benchmarks/RESULTS.md and benchmarks/results.png.

    .venv/bin/python benchmarks/bench.py [--repeats 3] [--quick] [--allensdk] [--no-wan]
                                         [--scenarios cold,cold-https,noop,bump,small,plan,rss,transports,wan]

Scenarios (each a section of RESULTS.md):
  cold        a version of the replica (>= 2 GB, the release's mix of sizes) into an empty
              directory: every tool, default and best flags;
  cold-https  the same over HTTPS: SeaweedFS's own TLS listener on 127.0.0.1 (a second port of
              the same loaded server), its certificate from a CA made for the run; every tool
              pointed at that CA as its users would (none skips verification), checked first;
  noop        a no-op resync of a 6,000-file version (vbo-mirror; --help start-up beside it);
  bump        1.0.1 -> 1.1.0 in one cache (every NWB replaced, one table shared: dedup);
  small       10,000 files of ~1 MB: files per second, every tool;
  plan        planning a synthetic 1,000,000-entry manifest: time and peak RSS;
  rss         peak RSS with 64 connections on 3 GB objects;
  transports  GET paths compared (benchmarks/bench_transports.py);
  wan         the cold comparison through an emulated WAN link (benchmarks/wan.py).
The machine's limits are measured in the same run: loopback GET rate (curl), single-core
hash rates, disk write rates.

The server is SeaweedFS (`weed mini`, pinned in pyproject's bench extra) on 127.0.0.1, on the
same 2 cores as the clients: figures are ratios between tools in one run, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import datasets  # noqa: E402
import limits_probe  # noqa: E402
import tools  # noqa: E402
from common import (Spawner, Weed, busy_seconds, check_files, find_weed, gb, log, machine_info,  # noqa: E402
                    make_tls, parse_fraction, run_measured, tls_session_info, wait_for_quiet)

from mirror.sandbox.replica import VERSIONS, Replica, ReplicaSpec, build_replica  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
PNG = ROOT / "benchmarks" / "results.png"
RUNS_MARKER = "<!-- runs: newest first; the script inserts new runs below this line -->"
INTRO = """\
# Benchmarks

Written by `make bench` (`benchmarks/bench.py`); do not edit by hand. Each run starts a local
SeaweedFS server on 127.0.0.1, loads a scaled-up replica of the Visual Behavior Ophys bucket
(and synthetic datasets for the small-file, no-op, memory and planning scenarios), and runs
vbo-mirror beside s5cmd, rclone and aws-cli (AllenSDK with `--allensdk`), interleaved, each
several times; tables show medians. Client and server share the machine's cores, so compare
tools by their ratios within one run. Every tool's files are checked against the manifest's
BLAKE2b by the benchmark itself. Newest run first.
"""
SCENARIOS = ("cold", "cold-https", "noop", "bump", "small", "plan", "rss", "transports", "wan")
DISTURBED_CORES = 0.15  # other processes' CPU over a run, in cores, above which a run is called disturbed


# --- one measured tool run ------------------------------------------------------------------------

@dataclass
class Run:
    tool: str
    variant: str
    scenario: str
    files: int
    bytes: int
    wall_s: float
    user_s: float
    sys_s: float
    rss_mib: float
    server_cpu_s: float
    other_cpu_s: float
    correct: int  # files whose BLAKE2b matched
    skip: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    @property
    def mb_s(self) -> float:
        return self.bytes / self.wall_s / 1e6 if self.wall_s else 0.0

    @property
    def cpu_per_gb(self) -> float:
        return self.cpu_s / (self.bytes / 1e9) if self.bytes else 0.0


class Server:
    """The SeaweedFS under test, for its CPU seconds."""

    def __init__(self, weed: Weed) -> None:
        self.weed = weed

    def cpu(self) -> float:
        try:
            return self.weed.cpu_seconds()
        except Exception:  # noqa: BLE001 - a server that died shows as missing figures, not a crash here
            return 0.0


SPAWNER: Spawner | None = None  # started first thing in main(), while this process is small
RUN_TIMEOUT = 900.0  # one tool run; a tool that takes longer is reported, not waited for


def measured(argv, *, env, cwd, server: Server | None, log_path: Path, timeout: float = 3600):
    s0, b0 = (server.cpu() if server else 0.0), busy_seconds()
    if SPAWNER is not None:
        m = SPAWNER.run(argv, env=env, cwd=cwd, out=log_path, timeout=timeout)
    else:
        with open(log_path, "wb") as out:
            m = run_measured(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    s = (server.cpu() if server else 0.0) - s0
    other = max(0.0, busy_seconds() - b0 - s - m.cpu_s)
    return m, s, other


def run_tool(tool: str, variant: str, *, scenario: str, endpoint: str, manifest: dict, version: str,
             work: Path, server: Server | None, dataset_toml: Path | None = None, tuning: dict | None = None,
             prefix_argv: list[str] | None = None, idle_wait: float = 60.0, planning=None,
             ca_bundle: Path | None = None) -> Run:
    """`prefix_argv` and `planning` (a context manager) put the run and the tools' own
    listings in a network namespace (the WAN scenario); `ca_bundle` is the CA of an https://
    endpoint (tools.trust_ca says how each tool is pointed at it)."""
    dest = work / f"dest-{tool}-{variant}"
    shutil.rmtree(dest, ignore_errors=True)
    cfg = work / f"cfg-{tool}-{variant}"
    shutil.rmtree(cfg, ignore_errors=True)
    tuning = dict(tuning or {})
    if dataset_toml is not None:
        tuning["dataset"] = str(dataset_toml)
    import contextlib

    with planning() if planning else contextlib.nullcontext():
        plan = tools.plan_runs(tool, endpoint=endpoint, manifest=manifest, version=version, dest=dest,
                               variant=variant, workdir=cfg, tuning=tuning or None, ca_bundle=ca_bundle)
    total = sum(_sizes(manifest).values())
    if plan.skip:
        return Run(tool, variant, scenario, len(plan.expected), total, 0, 0, 0, 0, 0, 0, 0, skip=plan.skip,
                   notes=plan.notes)
    os.sync()
    wait_for_quiet(idle_wait)
    argv = [*(prefix_argv or []), *plan.argv]
    try:
        m, server_cpu, other = measured(argv, env=plan.env, cwd=plan.cwd, server=server, timeout=RUN_TIMEOUT,
                                        log_path=work / f"log-{scenario}-{tool}-{variant}.txt")
    except TimeoutError:
        shutil.rmtree(dest, ignore_errors=True)
        log(f"{scenario} {tool} ({variant}): did not finish within {RUN_TIMEOUT:g} s")
        return Run(tool, variant, scenario, len(plan.expected), total, 0, 0, 0, 0, 0, 0, 0,
                   skip=f"did not finish within {RUN_TIMEOUT:g} s", notes=plan.notes)
    bad = check_files(plan.expected) if m.returncode == 0 else list(plan.expected)
    run = Run(tool, variant, scenario, len(plan.expected), total, m.wall_s, m.user_s, m.sys_s, m.max_rss_mib,
              server_cpu, other, len(plan.expected) - len(bad), notes=plan.notes)
    if m.returncode != 0:
        run.notes = [*run.notes, f"exit code {m.returncode}"]
    log(f"{scenario} {tool} ({variant}): {m.wall_s:.2f}s, {run.mb_s:.0f} MB/s, CPU {run.cpu_s:.2f}s, "
        f"RSS {m.max_rss_mib:.0f} MiB, server {server_cpu:.2f}s, {run.correct}/{run.files} correct")
    shutil.rmtree(dest, ignore_errors=True)
    return run


def _sizes(manifest: dict) -> dict[str, int]:
    return manifest.get("_sizes", {})


def interleaved(jobs: list[tuple[str, str]], repeats: int, fn) -> list[Run]:
    """Round-robin over (tool, variant), the order rotated each round, so drift in the
    machine's state spreads over every tool instead of favouring one."""
    runs = []
    for r in range(repeats):
        k = r % len(jobs)
        for tool, variant in jobs[k:] + jobs[:k]:
            runs.append(fn(tool, variant))
    return runs


def medians(runs: list[Run]) -> list[Run]:
    """One row per (tool, variant): the run with the median wall time (so its CPU, RSS and
    correctness are one real run's, not a mix)."""
    out = []
    seen: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        seen.setdefault((r.tool, r.variant), []).append(r)
    for key, rs in seen.items():
        ok = [r for r in rs if not r.skip]
        if not ok:
            out.append(rs[0])
            continue
        ok.sort(key=lambda r: r.wall_s)
        med = ok[len(ok) // 2]
        med.notes = list(dict.fromkeys([*med.notes, f"walls {', '.join(f'{r.wall_s:.2f}' for r in ok)}"]))
        med.correct = min(r.correct for r in ok)
        out.append(med)
    return out


# --- manifests with sizes -------------------------------------------------------------------------

def with_sizes(manifest: dict, sizes_by_hash: dict[str, int]) -> dict:
    doc = dict(manifest)
    doc["_sizes"] = {e["file_hash"]: sizes_by_hash[e["file_hash"]]
                     for sec in ("metadata_files", "data_files") for e in manifest[sec].values()}
    return doc


# --- markdown -------------------------------------------------------------------------------------

def tool_table(rows: list[Run], *, ncores: int, baseline: str = "s5cmd") -> list[str]:
    base = next((r for r in rows if r.tool == baseline and r.variant == "default" and not r.skip), None)
    lines = ["| client | flags | wall s | MB/s | client CPU s (user+sys) | CPU s/GB | peak RSS MiB | server CPU s "
             "| files correct | wall / s5cmd |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.skip:
            lines.append(f"| {r.tool} | {r.variant} | skipped: {r.skip} | | | | | | | |")
            continue
        ratio = f"{r.wall_s / base.wall_s:.2f}" if base else "n/a"
        lines.append(f"| {r.tool} | {r.variant} | {r.wall_s:.2f} | {r.mb_s:.0f} | {r.cpu_s:.2f} "
                     f"({r.user_s:.2f}+{r.sys_s:.2f}) | {r.cpu_per_gb:.2f} | {r.rss_mib:.0f} | {r.server_cpu_s:.2f} "
                     f"| {r.correct}/{r.files} | {ratio} |")
    return lines


def plot(rows: list[Run], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in rows if not r.skip]
    labels = [f"{r.tool}\n{r.variant}" for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    colors = ["#2b7bba" if r.tool == "vbo-mirror" else "#999999" for r in rows]
    a.bar(labels, [r.mb_s for r in rows], color=colors)
    a.set_ylabel("MB/s (higher is better)")
    b.bar(labels, [r.cpu_per_gb for r in rows], color=colors)
    b.set_ylabel("client CPU s per GB (lower is better)")
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_results(path: Path, run_md: str) -> None:
    earlier = ""
    if path.exists():
        text = path.read_text()
        if RUNS_MARKER in text:
            earlier = text.split(RUNS_MARKER, 1)[1].lstrip("\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(INTRO + "\n" + RUNS_MARKER + "\n\n" + run_md + ("\n" + earlier if earlier else ""))
    os.replace(tmp, path)


# --- loading the server (in a child: Linux carries a parent's peak RSS into its children) -------------

def _load_child(url: str, spec: ReplicaSpec, synth: list[tuple[str, dict]], out: str,
                versions: tuple[str, ...] = VERSIONS) -> None:
    replica = build_replica(spec)
    t0 = time.perf_counter()
    from mirror.sandbox.server import load_replica

    # 1.1 s between versions: rclone picks versions by LastModified second (see tools.py).
    asyncio.run(load_replica(url, replica, versions=versions, pause=1.1))
    loaded = {"replica_s": time.perf_counter() - t0,
              "manifests": {k: v.decode() for k, v in replica.manifests.items()}, "synthetic": {}}
    for kind, kw in synth:
        t0 = time.perf_counter()
        ds = getattr(datasets, kind)(**kw)
        asyncio.run(datasets.load(url, ds))
        loaded["synthetic"][ds.name] = {"seconds": time.perf_counter() - t0, "manifest": ds.manifest,
                                        "sizes": {ds.manifest["data_files"][i]["file_hash"]: size for i, size in
                                                  zip(sorted(ds.manifest["data_files"], key=int),
                                                      [ds.files[k] for k in sorted(ds.files)])},
                                        "bucket": ds.bucket, "version": ds.version, "kind": kind, "kw": kw}
    Path(out).write_text(json.dumps(loaded))


def load_everything(url: str, spec: ReplicaSpec, synth: list[tuple[str, dict]], tmp: Path, *,
                    versions: tuple[str, ...] = VERSIONS) -> dict:
    import multiprocessing

    out = tmp / "loaded.json"
    proc = multiprocessing.get_context("spawn").Process(target=_load_child, args=(url, spec, synth, str(out), versions),
                                                        name="bench-load")
    proc.start()
    try:
        proc.join()
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"loading the server failed (exit code {proc.exitcode})")
    return json.loads(out.read_text())


def replica_sizes(spec: ReplicaSpec, replica: Replica, *, versions: tuple[str, ...] = VERSIONS) -> dict[str, int]:
    sizes = {}
    for version in versions:
        doc = json.loads(replica.manifests[Replica.manifest_name(version)])
        for name, e in doc["metadata_files"].items():
            sizes[e["file_hash"]] = len(replica.tables[version][name])
        for fid, e in doc["data_files"].items():
            sizes[e["file_hash"]] = replica.data[version][int(fid)].size
    return sizes


# --- scenarios ------------------------------------------------------------------------------------

@dataclass
class Context:
    args: argparse.Namespace
    url: str
    server: Server
    work: Path
    ncores: int
    manifests: dict[str, dict]  # replica version -> manifest with _sizes
    synthetic: dict[str, dict]
    configs: dict[str, Path]  # synthetic dataset name -> .toml
    sections: list[str] = field(default_factory=list)
    targets: list[tuple[str, str, str, bool | None]] = field(default_factory=list)  # what, target, measured, met
    facts: dict = field(default_factory=dict)
    https_url: str | None = None  # the same server's TLS listener (cold-https)
    ca_bundle: Path | None = None  # the run's throwaway CA, which signed its certificate

    def tool_jobs(self, *, allensdk: bool, like_for_like: bool = False) -> list[tuple[str, str]]:
        jobs = []
        for tool in ("vbo-mirror", "s5cmd", "rclone", "aws") + (("allensdk",) if allensdk else ()):
            for variant in tools.variants(tool, like_for_like=like_for_like):
                jobs.append((tool, variant))
        return jobs


def _cold_runs(ctx: Context, scenario: str, endpoint: str, ca_bundle: Path | None = None
               ) -> tuple[str, dict, list[Run], list[Run]]:
    """The cold comparison (shared by cold and cold-https): every tool and variant,
    interleaved, `--repeats` rounds. Returns (version, manifest, rows of medians, all runs);
    the runs go to ctx.facts[scenario + "-runs"] too."""
    version = VERSIONS[-1]  # the newest: the one every tool can fetch exactly (aws-cli copies current objects)
    manifest = ctx.manifests[version]
    runs = interleaved(ctx.tool_jobs(allensdk=ctx.args.allensdk, like_for_like=True), ctx.args.repeats,
                       lambda t, v: run_tool(t, v, scenario=scenario, endpoint=endpoint, manifest=manifest,
                                             version=version, work=ctx.work, server=ctx.server,
                                             idle_wait=ctx.args.idle_wait, ca_bundle=ca_bundle))
    ctx.facts[f"{scenario}-runs"] = list(runs)
    return version, manifest, medians(runs), runs


def scenario_cold(ctx: Context) -> None:
    version, manifest, rows, runs = _cold_runs(ctx, "cold", ctx.url)
    ctx.facts["cold"] = rows
    total = sum(_sizes(manifest).values())
    ctx.sections += [f"### Cold sync of {version} ({len(_sizes(manifest))} files, {gb(total)}) into an empty directory",
                     "", *tool_table(rows, ncores=ctx.ncores), "",
                     *[f"- {r.tool} ({r.variant}): {'; '.join(r.notes)}" for r in rows if r.notes], "",
                     *like_for_like(ctx, rows, runs, allensdk=ctx.args.allensdk, what="cold sync over HTTP", limit=1.1), ""]
    if plot(rows, PNG, f"cold sync of {gb(total)}: MB/s and client CPU s/GB (medians of {ctx.args.repeats})"):
        ctx.sections += [f"![MB/s and CPU s/GB per client]({PNG.name})", ""]
    ctx.sections += ["What bounds one process, and N of them:", "", *gil_held(ctx, version, total),
                     *procs_runs(ctx, version, manifest, total), ""]
    vbo = next((r for r in rows if r.tool == "vbo-mirror" and r.variant == "default" and not r.skip), None)
    best = min((r for r in rows if r.tool == "vbo-mirror" and r.variant in ("default", "best") and not r.skip),
               key=lambda r: r.wall_s, default=None)
    s5 = next((r for r in rows if r.tool == "s5cmd" and r.variant == "default" and not r.skip), None)
    if vbo and s5:
        b2 = ctx.facts.get("hash_rates", {}).get("blake2b (hashlib)")
        if b2:
            limit = s5.cpu_per_gb + 1000 / b2
            ctx.targets.append(("client CPU per GB with BLAKE2b of every byte (default flags)",
                                f"<= s5cmd {s5.cpu_per_gb:.2f} + BLAKE2b {1000 / b2:.2f} = {limit:.2f}",
                                f"{vbo.cpu_per_gb:.2f}", vbo.cpu_per_gb <= limit))
        ctx.targets.append(("cold sync wall (default flags)", f"<= 1.25 x s5cmd = {1.25 * s5.wall_s:.2f} s",
                            f"{vbo.wall_s:.2f} s ({vbo.wall_s / s5.wall_s:.2f} x)", vbo.wall_s <= 1.25 * s5.wall_s))
    for other in ("rclone", "aws"):
        o = [r for r in rows if r.tool == other and not r.skip]
        if best and o:
            fastest = min(o, key=lambda r: r.wall_s)
            ctx.targets.append((f"ahead of {other} (best of each)", f"< {fastest.wall_s:.2f} s",
                                f"{best.wall_s:.2f} s", best.wall_s < fastest.wall_s))


def _disturbed(runs: list[Run]) -> list[Run]:
    return [r for r in runs if not r.skip and r.wall_s and r.other_cpu_s / r.wall_s > DISTURBED_CORES]


def _per_round(runs: list[Run], njobs: int, tool: str, other: str, *, variant: str = "default",
               other_variant: str = "default") -> list[float]:
    """wall(tool) / wall(other), default flags unless told, within each interleaved round."""
    out = []
    for i in range(0, len(runs), njobs):
        rnd = {(r.tool, r.variant): r for r in runs[i:i + njobs] if not r.skip}
        a, b = rnd.get((tool, variant)), rnd.get((other, other_variant))
        if a and b and b.wall_s:
            out.append(a.wall_s / b.wall_s)
    return out


def like_for_like(ctx: Context, rows: list[Run], runs: list[Run], *, allensdk: bool, what: str, limit: float
                  ) -> list[str]:
    """Issue 19's open question, answered by each run. s5cmd verifies nothing and vbo-mirror
    the BLAKE2b of every byte, so `default` against `default` compares different work. Here
    the two do the same work, from both sides (tools.LIKE_FOR_LIKE): vbo-mirror `--verify none`
    against s5cmd, and vbo-mirror against s5cmd followed by `b2sum -c`; each ratio in every
    round against `limit`, the issue's wall target (`runs` in their interleaved order, with
    AllenSDK among them if `allensdk`). Also the floor two shared cores set: a run's client
    and server CPU spread over the cores with no idle time at all."""
    njobs = len(ctx.tool_jobs(allensdk=allensdk, like_for_like=True))
    d = {(r.tool, r.variant): r for r in rows if not r.skip}
    vbo, nohash = d.get(("vbo-mirror", "default")), d.get(("vbo-mirror", "no-hash"))
    s5, s5b = d.get(("s5cmd", "default")), d.get(("s5cmd", "b2sum"))
    out = []
    for a, b, name, av, bv in ((nohash, s5, "no hash on either side: vbo-mirror `--verify none` against s5cmd",
                                "no-hash", "default"),
                               (vbo, s5b, "both check every byte: vbo-mirror against s5cmd then `b2sum -c`",
                                "default", "b2sum")):
        if not (a and b):
            continue
        rounds = _per_round(runs, njobs, "vbo-mirror", "s5cmd", variant=av, other_variant=bv)
        out.append(f"- Like for like, {name}: {a.wall_s:.2f} s against {b.wall_s:.2f} s ({a.wall_s / b.wall_s:.2f} x; "
                   f"each round {', '.join(f'{x:.2f}' for x in rounds)}), client CPU {a.cpu_s:.2f} against "
                   f"{b.cpu_s:.2f} s.")
        if rounds:
            ctx.targets.append((f"{what}, like for like ({'no hash' if av == 'no-hash' else 'both verify'}): "
                                f"vbo-mirror{' --verify none' if av == 'no-hash' else ''} / s5cmd"
                                f"{' + b2sum -c' if bv == 'b2sum' else ''}, every round",
                                f"<= {limit:.1f} x", ", ".join(f"{x:.2f} x" for x in rounds),
                                all(x <= limit for x in rounds)))
    if vbo and s5:
        floor = (vbo.cpu_s + vbo.server_cpu_s) / ctx.ncores
        out.append(f"- The floor on {ctx.ncores} shared cores: vbo-mirror's default run and its server spent "
                   f"{vbo.cpu_s:.2f} + {vbo.server_cpu_s:.2f} CPU s, which takes at least {floor:.2f} s of wall with no "
                   f"idle time at all, {floor / s5.wall_s:.2f} x s5cmd's {s5.wall_s:.2f} s (s5cmd's own floor: "
                   f"{(s5.cpu_s + s5.server_cpu_s) / ctx.ncores:.2f} s). Below that only less CPU helps, not better "
                   "overlap.")
        rates = [v for k, v in ctx.facts.get("hash_rates", {}).items() if k.startswith("blake2b")]
        if rates:
            hashing = vbo.bytes / 1e6 / max(rates)
            least = (hashing + s5.server_cpu_s) / ctx.ncores
            out.append(f"- What checking alone costs here: the BLAKE2b of these {gb(vbo.bytes)} at the fastest rate "
                       f"measured on one core ({max(rates):.0f} MB/s) is {hashing:.2f} CPU s. With the server's CPU of "
                       f"s5cmd's run ({s5.server_cpu_s:.2f} s) that is {least:.2f} s of wall on {ctx.ncores} fully busy "
                       f"cores, {least / s5.wall_s:.2f} x s5cmd's wall, for a client that did nothing but hash: "
                       + (f"no client that checks every byte can meet <= {limit:.1f} x s5cmd on this machine."
                          if least > limit * s5.wall_s else
                          f"within <= {limit:.1f} x, so the rest of the client's work is what stands in the way."))
    return out


def scenario_cold_https(ctx: Context) -> None:
    """The cold comparison against the same server's TLS listener (see Weed's tls mode).
    Before any timed run, each tool is probed (tools.tls_probe): a listing without the CA
    must fail on the certificate and one with it (as trust_ca gives it) succeed, so no
    figure below comes from a tool that skipped verification or fell back to plain HTTP."""
    if not ctx.https_url or not ctx.ca_bundle:
        raise RuntimeError("cold-https: the server was started without its TLS listener")
    from mirror.sandbox.replica import BUCKET

    probes = {}
    for tool in [t for t, _ in dict.fromkeys(ctx.tool_jobs(allensdk=False))]:
        if tool in probes:
            continue
        ok, seen = tools.tls_probe(tool, endpoint=ctx.https_url, bucket=BUCKET, prefix="visual-behavior-ophys/",
                                   ca_bundle=ctx.ca_bundle, workdir=ctx.work / f"tls-probe-{tool}")
        log(f"cold-https: TLS probe of {tool}: {'ok' if ok else 'FAILED'}: {seen}")
        if not ok and tools.tool_path(tool) is not None:
            raise RuntimeError(f"cold-https: {tool} does not verify the server's certificate against the run's CA "
                               f"as planned: {seen}")
        probes[tool] = ok
    cipher = tls_session_info(ctx.https_url, ctx.ca_bundle)
    njobs = len(ctx.tool_jobs(allensdk=ctx.args.allensdk, like_for_like=True))
    version, manifest, rows, runs = _cold_runs(ctx, "cold-https", ctx.https_url, ctx.ca_bundle)
    ctx.facts["cold-https"] = rows
    total = sum(_sizes(manifest).values())
    ctx.sections += [f"### Cold sync of {version} over HTTPS ({len(_sizes(manifest))} files, {gb(total)}) "
                     "into an empty directory", "",
                     f"- Server: the same `weed mini` as above, through its own TLS listener (`-s3.cert.file`, "
                     f"`-s3.key.file`, `-s3.port.https`) at {ctx.https_url}; certificate for 127.0.0.1 and localhost "
                     f"(RSA-2048) from a CA made for this run (trustme). Python's OpenSSL negotiates {cipher}.",
                     "- Every tool verifies the certificate against that CA, pointed at it as its users would: "
                     "vbo-mirror, s5cmd and aws-cli through `AWS_CA_BUNDLE`, rclone through `--ca-cert` (rclone 1.60 "
                     "refuses to start with `AWS_CA_BUNDLE` set); none is told to skip verification. Checked before "
                     "the runs: a listing by each tool fails on the certificate without the CA and succeeds with it "
                     f"({', '.join(f'{t} {chr(10003) if ok else chr(10007)}' for t, ok in probes.items())}).", "",
                     *tool_table(rows, ncores=ctx.ncores), "",
                     *[f"- {r.tool} ({r.variant}): {'; '.join(r.notes)}" for r in rows if r.notes], ""]
    d = {(r.tool, r.variant): r for r in rows if not r.skip}
    http = {(r.tool, r.variant): r for r in ctx.facts.get("cold", []) if not r.skip}
    vbo, s5, rc = d.get(("vbo-mirror", "default")), d.get(("s5cmd", "default")), d.get(("rclone", "default"))
    reading = []
    if vbo:
        h = http.get(("vbo-mirror", "default"))
        parts = []
        if h:
            parts.append(f"over HTTPS vbo-mirror takes {vbo.wall_s / h.wall_s:.2f} x its HTTP wall time "
                         f"({vbo.wall_s:.2f} s against {h.wall_s:.2f} s) and {vbo.cpu_per_gb / h.cpu_per_gb:.2f} x its "
                         f"HTTP CPU per GB ({vbo.cpu_per_gb:.2f} against {h.cpu_per_gb:.2f} s/GB)")
        for name, o in (("s5cmd", s5), ("rclone", rc)):
            if o:
                parts.append(f"{vbo.wall_s / o.wall_s:.2f} x {name}'s HTTPS wall and "
                             f"{vbo.cpu_per_gb / o.cpu_per_gb:.2f} x its CPU per GB")
        if parts:
            reading.append("- HTTPS against HTTP and the others (default flags, medians, this run): "
                           + "; ".join(parts) + ".")
        rounds = _per_round(runs, njobs, "vbo-mirror", "s5cmd")
        if rounds:
            reading.append(f"- vbo-mirror / s5cmd wall over HTTPS in each round: "
                           f"{', '.join(f'{x:.2f}' for x in rounds)}.")
        tls_cost = []
        for tool in ("vbo-mirror", "s5cmd", "rclone", "aws"):
            a, b = d.get((tool, "default")), http.get((tool, "default"))
            if a and b:
                tls_cost.append(f"{tool} {a.cpu_per_gb - b.cpu_per_gb:+.2f}")
        server_tls = [(r.server_cpu_s, http[(r.tool, r.variant)].server_cpu_s) for r in rows
                      if not r.skip and (r.tool, r.variant) in http]
        if tls_cost:
            reading.append("- What TLS adds to client CPU per GB (HTTPS - HTTP medians, default flags): "
                           + ", ".join(tls_cost) + "; the server's CPU for the same jobs goes from "
                           f"{statistics.median(b for _, b in server_tls):.2f} s to "
                           f"{statistics.median(a for a, _ in server_tls):.2f} s (median over the tools' rows), "
                           "on the same cores.")
        used = (vbo.cpu_s + vbo.server_cpu_s) / (vbo.wall_s * ctx.ncores)
        reading.append(f"- What bounds it: client and server share {ctx.ncores} cores, and over HTTPS the server "
                       f"encrypts what the client decrypts (vbo-mirror's run kept {100 * used:.0f}% of them busy); "
                       "the client's decryption (AES-GCM in OpenSSL, done with the GIL released in ssl's read) is "
                       "added to the BLAKE2b of every byte and the socket and disk copies, so wall time follows "
                       "CPU; ratios within this run are the figures to compare, not absolutes.")
        b2 = ctx.facts.get("hash_rates", {}).get("blake2b (hashlib)")
        if s5 and rounds:
            ctx.targets.append(("HTTPS cold sync wall (default flags; issue 19): every round",
                                "<= 1.0 x s5cmd over HTTPS", ", ".join(f"{x:.2f} x" for x in rounds),
                                all(x <= 1.0 for x in rounds)))
        if s5 and b2:
            limit = s5.cpu_per_gb + 1000 / b2
            ctx.targets.append(("HTTPS client CPU per GB (default flags; issue 19)",
                                f"<= s5cmd {s5.cpu_per_gb:.2f} + BLAKE2b {1000 / b2:.2f} = {limit:.2f}",
                                f"{vbo.cpu_per_gb:.2f}", vbo.cpu_per_gb <= limit))
    hot = _disturbed(runs)
    hot_http = _disturbed(ctx.facts.get("cold-runs", []))
    reading.append(f"- Disturbed runs (other processes above {DISTURBED_CORES} of a core over the run): "
                   f"{len(hot)} of {len([r for r in runs if not r.skip])} over HTTPS"
                   + (f" ({', '.join(f'{r.tool} {r.variant} {r.other_cpu_s / r.wall_s:.2f}' for r in hot)})" if hot else "")
                   + (f", {len(hot_http)} of {len([r for r in ctx.facts['cold-runs'] if not r.skip])} over HTTP"
                      if "cold-runs" in ctx.facts else "") + ".")
    profile = profile_https(ctx, version, total)
    reading += like_for_like(ctx, rows, runs, allensdk=ctx.args.allensdk, what="cold sync over HTTPS",
                             limit=1.0)
    ctx.sections += ["Reading the HTTPS figures:", "", *reading, *profile, ""]


def _collapsed(path: Path) -> dict[tuple[str, ...], int]:
    """py-spy's raw (collapsed) output: stack (outermost first) -> samples."""
    out: dict[tuple[str, ...], int] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            frames = tuple(re.sub(r":[0-9]+\)$", ")", f) for f in stack.split(";"))
            out[frames] = out.get(frames, 0) + int(n)
    return out


# Categories of a native stack (py-spy --native), first match wins; tested on the whole stack.
NATIVE_IDLE = re.compile(r"SimpleQueue_get|lock_PyThread_acquire_lock|epoll_wait|sem_wait|sem_timedwait")
NATIVE_WAIT = re.compile(r"pthread_cond_(timed)?wait|PyThread_acquire_lock_timed|take_gil")  # else: the GIL
NATIVE_CATEGORIES = (
    ("decryption (SSL_read into the response buffer)", re.compile(r"SSL_read")),
    ("ciphertext copied into OpenSSL's memory BIO (MemoryBIO.write, GIL held)", re.compile(r"MemoryBIO_write|BIO_write")),
    ("BLAKE2b", re.compile(r"blake2b", re.I)),
    ("xxh3", re.compile(r"XXH3", re.I)),
    ("socket reads (uvloop's read(2))", re.compile(r"uv__read;read \(|uv__read \([^;]*;read ")),
    ("file writes (pwritev)", re.compile(r"pwritev|os_pwrite")),
    ("fdatasync, rename, open, link", re.compile(r"fdatasync|os_replace|renameat|os_open|openat|linkat|os_link")),
    ("thread hand-offs (waking pool threads, passing the GIL)", re.compile(r"sem_post|pthread_cond_signal|"
                                                                           r"pthread_cond_broadcast")),
)


def native_shares(stacks: dict[tuple[str, ...], int]) -> tuple[dict[str, float], float]:
    """Shares (%) of busy samples by category, and GIL waits as % of the busy count."""
    busy, gil_wait = 0, 0
    cat: dict[str, int] = {}
    for st, n in stacks.items():
        text = ";".join(st)
        if NATIVE_IDLE.search(text):
            continue
        if NATIVE_WAIT.search(text):
            gil_wait += n
            continue
        busy += n
        name = next((k for k, rx in NATIVE_CATEGORIES if rx.search(text)), "the rest (interpreter, uvloop, h11, ...)")
        cat[name] = cat.get(name, 0) + n
    if not busy:
        return {}, 0.0
    order = [k for k, _ in NATIVE_CATEGORIES] + ["the rest (interpreter, uvloop, h11, ...)"]
    return {k: 100 * cat[k] / busy for k in order if k in cat}, 100 * gil_wait / busy


def profile_https(ctx: Context, version: str, total: int) -> list[str]:
    """Where vbo-mirror's TLS path spends, when py-spy is installed: one default HTTPS cold
    sync under `py-spy record --gil` (samples only while a thread holds the GIL: GIL-held
    seconds and the Python functions they are in), and one under `--native` without --gil
    (every running thread, C frames included: OpenSSL's decryption happens in ssl's read
    with the GIL released, so it shows only there)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(spy, os.X_OK):
        return ["- (py-spy not installed: no profile of the TLS path; pip install py-spy)"]
    found: dict[str, dict[tuple[str, ...], int]] = {}
    for mode, flags in (("gil", ["--gil", "--nonblocking"]), ("native", ["--native"])):
        got = _pyspy(ctx, spy, ctx.https_url, version, flags, f"https-{mode}", ca=True)
        if isinstance(got, str):
            return [got]
        found[mode] = got
    out = [_gil_line(found["gil"], total, "one default HTTPS sync", "over TLS")]
    nat = found["native"]
    shares, waits = native_shares(nat)
    if shares:
        out.append("- `--native` (every thread, C frames; waits taken out): "
                   + ", ".join(f"{k} {v:.0f}%" for k, v in shares.items())
                   + f" of the busy samples. Not counted in them: samples of a thread waiting to take the GIL back "
                   f"(mostly the loop thread after SSL_read, while hashing and writing threads hold it), as many as "
                   f"{waits:.0f}% of the busy ones. py-spy sees no kernel stacks: a system call's kernel time counts as "
                   "its libc wrapper. "
                   "Raw stacks: pyspy-https-gil.txt, pyspy-https-native.txt in the work directory (--keep).")
    return out


PYSPY_RATE = 200


def _pyspy(ctx: Context, spy: str, url: str, version: str, flags: list[str], label: str, *, ca: bool = False
           ) -> dict[tuple[str, ...], int] | str:
    """One default cold sync of `version` from `url` under `py-spy record` (its collapsed
    stacks), or a line saying why not."""
    cache = ctx.work / f"pyspy-cache-{label}"
    shutil.rmtree(cache, ignore_errors=True)
    raw = ctx.work / f"pyspy-{label}.txt"
    argv = [spy, "record", "--rate", str(PYSPY_RATE), "--format", "raw", *flags, "-o", str(raw), "--",
            sys.executable, "-m", "mirror.cli", "--endpoint-url", url, "--cache-dir", str(cache),
            "sync", "--version", version]
    env = tools.trust_ca("vbo-mirror", argv, tools._base_env(), ctx.ca_bundle)[1] if ca else tools._base_env()
    os.sync()
    wait_for_quiet(ctx.args.idle_wait)
    m, _, _ = measured(argv, env=env, cwd=ROOT, server=ctx.server, log_path=ctx.work / f"log-pyspy-{label}.txt")
    shutil.rmtree(cache, ignore_errors=True)
    if m.returncode != 0 or not raw.exists():
        return f"- (py-spy {label} run failed, exit {m.returncode}; see log-pyspy-{label}.txt)"
    return _collapsed(raw)


def _gil_figures(gil: dict[tuple[str, ...], int], total: int) -> tuple[float, float, float]:
    """(GIL-held seconds per GB, start-up included; the seconds of it inside imports; the
    seconds per GB beyond them). `py-spy --gil` samples only while a thread holds the GIL, so
    samples x interval estimates the time it was held. Imports (a stack through importlib's
    bootstrap: the CLI at start, pyarrow in a worker thread for the index) are paid once per
    process, not per GB; what is left bounds one process's rate on a long sync."""
    held = sum(gil.values()) / PYSPY_RATE
    imports = sum(n for st, n in gil.items() if any("importlib._bootstrap" in f for f in st)) / PYSPY_RATE
    return held / (total / 1e9), imports, max(0.0, held - imports) / (total / 1e9)


def _gil_line(gil: dict[tuple[str, ...], int], total: int, what: str, where: str) -> str:
    n = sum(gil.values())
    leaf: dict[str, int] = {}
    for st, c in gil.items():
        leaf[st[-1]] = leaf.get(st[-1], 0) + c
    top = sorted(leaf.items(), key=lambda kv: -kv[1])[:6]
    per_gb, imports, steady = _gil_figures(gil, total)
    return (f"- py-spy, {what} ({PYSPY_RATE} Hz): `--gil` saw the GIL held for ~{n / PYSPY_RATE:.2f} s "
            f"(~{per_gb:.2f} s per GB of this {total / 1e9:.1f} GB; samples x interval, an estimate), of which "
            f"~{imports:.2f} s in imports, paid once per process; beyond them ~{steady:.2f} s per GB, so one "
            f"process could move at most ~{1 / steady:.1f} GB/s {where} on a long sync whatever the cores "
            f"(`sync --procs N`: N times that); its "
            "top Python functions (self): " + ", ".join(f"`{f}` {100 * c / n:.0f}%" for f, c in top)
            + (" (`serve` stands for uvloop's compiled code, which has no Python frames: its protocol callbacks, "
               "the socket reads)" if any(f.startswith("LoopThread._ensure") for f, _ in top) else "") + ".")


def gil_held(ctx: Context, version: str, total: int) -> list[str]:
    """Issue 19's ceiling of one process: GIL-held seconds per GB of a default plain HTTP cold
    sync, with the target row."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(spy, os.X_OK):
        return ["- (py-spy not installed: GIL-held time not measured; pip install py-spy)"]
    got = _pyspy(ctx, spy, ctx.url, version, ["--gil", "--nonblocking"], "http-gil")
    if isinstance(got, str):
        return [got]
    per_gb, imports, steady = _gil_figures(got, total)
    ctx.facts["gil_s_per_gb"] = steady
    ctx.targets.append(("GIL held per GB beyond the one-off imports, default cold sync over HTTP (issue 19)",
                        "<= 0.40 s/GB (>= 2.5 GB/s a process)",
                        f"{steady:.2f} s/GB ({1 / steady:.1f} GB/s a process; {per_gb:.2f} s/GB with "
                        f"{imports:.2f} s of imports over this {total / 1e9:.1f} GB)", steady <= 0.40))
    return [_gil_line(got, total, "one default plain HTTP cold sync", "over HTTP")]


def procs_runs(ctx: Context, version: str, manifest: dict, total: int) -> list[str]:
    """`sync --procs N` against the default (one process) on the same cold sync, interleaved,
    `--repeats` rounds; every file checked. The model: N processes lift the one-process ceiling
    (1 / GIL-held s per GB) N times where cores, disk and network allow."""
    ns = (1, 2) if ctx.ncores < 8 else (1, 2, 4)
    walls: dict[int, list[float]] = {n: [] for n in ns}
    cpus: dict[int, list[float]] = {n: [] for n in ns}
    for i in range(max(1, ctx.args.repeats)):
        for n in ns:
            cache = ctx.work / f"procs-cache-{n}"
            shutil.rmtree(cache, ignore_errors=True)
            m, _, _ = _measure_vbo(ctx, f"procs{n}-{i}", [sys.executable, "-m", "mirror.cli", "--endpoint-url", ctx.url,
                                                        "--cache-dir", str(cache), "sync", "--version", version,
                                                        "--procs", str(n)])
            bad = check_files(tools.expected_files(manifest, version, cache)) if m.returncode == 0 else ["(failed)"]
            shutil.rmtree(cache, ignore_errors=True)
            if bad:
                return [f"- `sync --procs {n}` failed or left wrong files (exit {m.returncode}; log-procs{n}-{i}.txt)"]
            walls[n].append(m.wall_s)
            cpus[n].append(m.cpu_s)
    per = ctx.facts.get("gil_s_per_gb")
    rows = ", ".join(f"`--procs {n}` {statistics.median(walls[n]):.2f} s wall, "
                     f"{statistics.median(cpus[n]) / (total / 1e9):.2f} CPU s/GB" for n in ns)
    base = statistics.median(walls[1])
    return [f"- `sync --procs N`, same cold sync, {len(walls[1])} interleaved rounds, medians: {rows}; speed-up "
            + ", ".join(f"{base / statistics.median(walls[n]):.2f} x with {n}" for n in ns[1:])
            + f". On {ctx.ncores} cores shared with the server a second process has no core of its own"
            + (f"; the model: N processes move at most N x {1 / per:.1f} GB/s (the one-process GIL ceiling), "
               "where the cores, the disk and the network allow" if per else "") + "."]


def _vbo(ctx: Context, *args: str, dataset: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "mirror.cli", "--endpoint-url", ctx.url]
    if dataset:
        argv += ["--dataset", str(ctx.configs[dataset])]
    return argv + list(args)


def _measure_vbo(ctx: Context, name: str, argv: list[str]) -> tuple:
    os.sync()
    wait_for_quiet(ctx.args.idle_wait)
    return measured(argv, env=tools._base_env(), cwd=ROOT, server=ctx.server, log_path=ctx.work / f"log-{name}.txt")


def scenario_noop(ctx: Context) -> None:
    name = "vbo-noop"
    syn = ctx.synthetic[name]
    cache = ctx.work / "noop-cache"
    shutil.rmtree(cache, ignore_errors=True)
    first, _, _ = _measure_vbo(ctx, "noop-first", _vbo(ctx, "--cache-dir", str(cache), "sync", "--version",
                                                       syn["version"], dataset=name))
    if first.returncode != 0:
        raise RuntimeError(f"noop: the first sync failed; see {ctx.work / 'log-noop-first.txt'}")
    walls, rss = [], []
    for i in range(max(3, ctx.args.repeats)):
        m, _, _ = _measure_vbo(ctx, f"noop-{i}", _vbo(ctx, "--cache-dir", str(cache), "sync", "--version",
                                                      syn["version"], dataset=name))
        walls.append(m.wall_s)
        rss.append(m.max_rss_mib)
    helps = []
    for i in range(10):
        m = run_measured([sys.executable, "-m", "mirror.cli", "--help"], cwd=ROOT)
        helps.append(m.wall_s)
    files = len(syn["manifest"]["data_files"])
    noop, help_s = statistics.median(walls), statistics.median(helps)
    ctx.targets.append((f"no-op resync of a {files:,}-file version", "< 0.5 s", f"{noop:.2f} s", noop < 0.5))
    ctx.targets.append(("`vbo-mirror --help`", "< 0.3 s", f"{help_s:.2f} s", help_s < 0.3))
    ctx.sections += [f"### No-op resync of a {files:,}-file version; start-up", "",
                     f"- no-op resync: median {noop:.2f} s wall (runs: {', '.join(f'{w:.2f}' for w in walls)}), "
                     f"peak RSS {statistics.median(rss):.0f} MiB; the first sync of it took {first.wall_s:.1f} s.",
                     f"- `vbo-mirror --help`: median {help_s:.3f} s of 10.", ""]
    shutil.rmtree(cache, ignore_errors=True)


def scenario_bump(ctx: Context) -> None:
    old, new = "1.0.1", "1.1.0"
    results = []
    for i in range(ctx.args.repeats):
        cache = ctx.work / "bump-cache"
        shutil.rmtree(cache, ignore_errors=True)
        m0, _, _ = _measure_vbo(ctx, f"bump-old-{i}", _vbo(ctx, "--json", "--cache-dir", str(cache), "sync",
                                                           "--version", old))
        m1, server, _ = _measure_vbo(ctx, f"bump-{i}", _vbo(ctx, "--json", "--cache-dir", str(cache), "sync",
                                                            "--version", new))
        summary = json.loads((ctx.work / f"log-bump-{i}.txt").read_text().strip().splitlines()[-1])
        results.append((m1, server, summary))
        shutil.rmtree(cache, ignore_errors=True)
    results.sort(key=lambda r: r[0].wall_s)
    m, server, s = results[len(results) // 2]
    have = set(_sizes(ctx.manifests[old]))
    want = {h: n for h, n in _sizes(ctx.manifests[new]).items() if h not in have}
    ok = s["bytes_fetched"] == sum(want.values())
    ctx.targets.append(("version bump fetches only new content", f"{gb(sum(want.values()))}",
                        f"{gb(s['bytes_fetched'])}, {s['files_linked']} linked", ok))
    ctx.sections += [f"### Version bump {old} -> {new} in one cache (every NWB replaced)", "",
                     f"- {m.wall_s:.2f} s wall, {s['bytes_fetched'] / m.wall_s / 1e6:.0f} MB/s, client CPU "
                     f"{m.cpu_s:.2f} s ({m.cpu_s / (s['bytes_fetched'] / 1e9):.2f} s/GB), peak RSS "
                     f"{m.max_rss_mib:.0f} MiB, server CPU {server:.2f} s; {s['files_fetched']} fetched, "
                     f"{s['files_linked']} linked, {s['files_present']} present (median of {len(results)}).", ""]


def scenario_small(ctx: Context) -> None:
    name = "vbo-small"
    syn = ctx.synthetic[name]
    manifest = {**syn["manifest"], "_sizes": syn["sizes"]}
    runs = interleaved(ctx.tool_jobs(allensdk=False, like_for_like=True), ctx.args.repeats,
                       lambda t, v: run_tool(t, v, scenario="small", endpoint=ctx.url, manifest=manifest,
                                             version=syn["version"], work=ctx.work, server=ctx.server,
                                             dataset_toml=ctx.configs[name], idle_wait=ctx.args.idle_wait))
    rows = medians(runs)
    ctx.facts["small"] = rows
    n = len(syn["manifest"]["data_files"])
    lines = ["| client | flags | wall s | files/s | MB/s | client CPU s | peak RSS MiB | files correct |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.skip:
            lines.append(f"| {r.tool} | {r.variant} | skipped: {r.skip} | | | | | |")
        else:
            lines.append(f"| {r.tool} | {r.variant} | {r.wall_s:.2f} | {r.files / r.wall_s:.0f} | {r.mb_s:.0f} "
                         f"| {r.cpu_s:.2f} | {r.rss_mib:.0f} | {r.correct}/{r.files} |")
    ctx.sections += [f"### {n:,} small files (~{syn['kw'].get('mean', 1 << 20) >> 20} MiB each, "
                     f"{gb(sum(syn['sizes'].values()))})", "", *lines, "",
                     *like_for_like(ctx, rows, runs, allensdk=False, what="small files", limit=1.0), ""]
    vbo = next((r for r in rows if r.tool == "vbo-mirror" and r.variant == "default" and not r.skip), None)
    s5 = next((r for r in rows if r.tool == "s5cmd" and r.variant == "default" and not r.skip), None)
    if vbo and s5:
        ctx.targets.append(("small files: files per second (default flags)", f">= s5cmd {s5.files / s5.wall_s:.0f}",
                            f"{vbo.files / vbo.wall_s:.0f}", vbo.files / vbo.wall_s >= s5.files / s5.wall_s))


def scenario_plan(ctx: Context) -> None:
    n = ctx.args.plan_entries
    cache = ctx.work / "plan-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir()
    name = "vbo-huge"
    manifest = datasets.million_entry_manifest(cache / f"{name}_manifest_v1.0.0.json", n, name=name)
    toml = datasets.Synthetic(name, f"{name}-data", "1.0.0", {}).write_config(ctx.work / f"{name}.toml")
    walls, rss = [], []
    for i in range(max(1, min(3, ctx.args.repeats))):
        m, _, _ = _measure_vbo(ctx, f"plan-{i}", [sys.executable, "-m", "mirror.cli", "--offline", "--dataset",
                                                  str(toml), "--cache-dir", str(cache), "plan",
                                                  "--version", "1.0.0"])
        if m.returncode != 0:
            raise RuntimeError(f"plan: vbo-mirror failed; see {ctx.work / f'log-plan-{i}.txt'}")
        walls.append(m.wall_s)
        rss.append(m.max_rss_mib)
    wall, peak = statistics.median(walls), statistics.median(rss)
    ctx.targets.append((f"plan of a {n:,}-entry manifest", "< 3 s and < 1 GB RSS",
                        f"{wall:.2f} s, {peak:.0f} MiB", wall < 3 and peak < 1024))
    ctx.sections += [f"### Planning a synthetic {n:,}-entry manifest ({manifest.stat().st_size / 1e6:.0f} MB of JSON)",
                     "", f"- `vbo-mirror --offline plan` on an empty cache: median {wall:.2f} s wall, peak RSS "
                     f"{peak:.0f} MiB (runs: {', '.join(f'{w:.2f}' for w in walls)}).", ""]
    shutil.rmtree(cache, ignore_errors=True)


def scenario_rss(ctx: Context) -> None:
    name = "vbo-big"
    syn = ctx.synthetic[name]
    cache = ctx.work / "rss-cache"
    runs = []
    for i in range(max(1, min(2, ctx.args.repeats))):
        shutil.rmtree(cache, ignore_errors=True)
        m, server, _ = _measure_vbo(ctx, f"rss-{i}", _vbo(ctx, "--json", "--cache-dir", str(cache), "sync",
                                                          "--version", syn["version"], "-j", "64", dataset=name))
        if m.returncode != 0:
            raise RuntimeError(f"rss: vbo-mirror failed; see {ctx.work / f'log-rss-{i}.txt'}")
        runs.append((m, server))
    shutil.rmtree(cache, ignore_errors=True)
    runs.sort(key=lambda r: r[0].max_rss_mib)
    m, server = runs[-1]  # the worst: a ceiling is about the highest seen
    total = sum(syn["sizes"].values())
    ctx.targets.append(("peak RSS, 64 connections on 3 GB objects", "< 200 MB", f"{m.max_rss_mib * 1.048576:.0f} MB",
                        m.max_rss_mib * 1.048576 < 200))
    ctx.sections += [f"### Memory: -j 64 on {len(syn['sizes'])} objects of ~3 GB ({gb(total)})", "",
                     f"- peak RSS {m.max_rss_mib:.0f} MiB (highest of {len(runs)}), {m.wall_s:.1f} s wall, "
                     f"{total / m.wall_s / 1e6:.0f} MB/s, client CPU {m.cpu_s:.1f} s.", ""]


def scenario_transports(ctx: Context) -> None:
    import bench_transports

    # 1.0.1, not the newest: its objects are older versions of their keys, so the guarantee
    # probe's "server drops the versionId" really serves other bytes (1.1.0's are current).
    version = "1.0.1"
    manifest = ctx.manifests[version]
    rows = bench_transports.run(ctx.url, {k: v for k, v in manifest.items() if k != "_sizes"},
                                repeats=ctx.args.repeats, workdir=ctx.work / "transports",
                                server_pid=ctx.server.weed.proc.pid if ctx.server.weed.proc else None)
    ctx.facts["transports"] = rows
    ctx.sections += [f"### GET paths compared on {version} (benchmarks/bench_transports.py)", "",
                     bench_transports.to_markdown(rows), ""]


def profile_sync(ctx: Context) -> list[str]:
    """What bounds a cold sync: the top of `perf record` over one run (kernel and user
    symbols, every thread), when perf is available. The shares by library go to ctx.facts."""
    perf = shutil.which("perf")
    if perf is None:
        return ["- (perf not available: no profile)"]
    version = VERSIONS[-1]
    cache = ctx.work / "profile-cache"
    shutil.rmtree(cache, ignore_errors=True)
    data = ctx.work / "perf.data"
    argv = [perf, "record", "-F", "499", "-g", "-o", str(data), "--", *_vbo(ctx, "--cache-dir", str(cache), "sync",
                                                                             "--version", version)]
    m, _, _ = _measure_vbo(ctx, "profile", argv)
    shutil.rmtree(cache, ignore_errors=True)
    if m.returncode != 0:
        return [f"- (perf record failed, exit {m.returncode})"]
    rep = subprocess.run([perf, "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio", "-g", "none",
                          "--percent-limit", "1"], capture_output=True, text=True)
    rows = [line.strip() for line in rep.stdout.splitlines() if re.match(r"^\s+[0-9.]+%", line)][:14]
    by_dso = subprocess.run([perf, "report", "-i", str(data), "--no-children", "--sort", "dso", "--stdio", "-g", "none"],
                            capture_output=True, text=True)
    shares = {}
    for line in by_dso.stdout.splitlines():
        mt = re.match(r"^\s+([0-9.]+)%\s+(\S+)", line)
        if mt:
            shares[mt.group(2)] = float(mt.group(1))
    ctx.facts["profile_shares"] = shares
    return ["```", *rows, "```"]


def commentary(ctx: Context) -> list[str]:
    """What the figures say, computed from them (so it cannot drift from the tables)."""
    out: list[str] = []
    cold = {(r.tool, r.variant): r for r in ctx.facts.get("cold", []) if not r.skip}
    vbo, s5 = cold.get(("vbo-mirror", "default")), cold.get(("s5cmd", "default"))
    shares = ctx.facts.get("profile_shares", {})
    if vbo and s5:
        b2_dso = next((k for k in shares if "sodium" in k or "blake2" in k), None)
        b2 = shares.get(b2_dso, 0.0) if b2_dso else 0.0
        kern = shares.get("[kernel.kallsyms]", 0.0)
        py = sum(v for k, v in shares.items() if "libpython" in k)
        cores = ctx.ncores
        used = (vbo.cpu_s + vbo.server_cpu_s) / (vbo.wall_s * cores)
        out.append(f"- Cold sync: vbo-mirror takes {vbo.wall_s / s5.wall_s:.2f} x s5cmd's wall time and "
                   f"{vbo.cpu_per_gb / s5.cpu_per_gb:.2f} x its CPU per GB; client and server together kept "
                   f"{100 * used:.0f}% of the {cores} cores busy, so CPU is what bounds it. "
                   + (f"Of vbo-mirror's CPU (perf), BLAKE2b is {b2:.0f}%, the kernel {kern:.0f}% (the socket copy, "
                      f"direct-I/O page pinning, the network stack) and the Python interpreter {py:.0f}%: "
                      f"verifying every byte costs about {b2 / 100 * vbo.cpu_s:.1f} CPU s here, against "
                      f"{s5.cpu_s:.1f} CPU s for all of s5cmd's work (it verifies nothing)." if shares else ""))
    trs = ctx.facts.get("transports")
    if trs:
        by_cpu = sorted(trs, key=lambda r: r["cpu_s_per_gb"])
        by_wall = sorted(trs, key=lambda r: r["wall_s"])
        lean = next((r for r in trs if r["transport"] == "lean"), None)
        if lean:
            out.append(f"- Transports: `lean` ranks {by_cpu.index(lean) + 1} of {len(trs)} on CPU per GB "
                       f"({lean['cpu_s_per_gb']:.2f}; next {by_cpu[1]['transport'] if by_cpu[0] is lean else by_cpu[0]['transport']} "
                       f"{(by_cpu[1] if by_cpu[0] is lean else by_cpu[0])['cpu_s_per_gb']:.2f}) and {by_wall.index(lean) + 1} "
                       f"on wall time, with the lowest or near-lowest peak RSS ({lean['peak_rss_mib']:.0f} MiB), and it keeps "
                       "every guarantee (versionId, If-Match, Content-Range, the answer's version checked) in our own "
                       "code: that is why it is the default. It receives into page-aligned buffers that go to disk "
                       "with O_DIRECT: `lean-buffered` (the same client through the page cache) shows what that saves. "
                       "aiohttp (kept as `--transport aiohttp`) pays a copy and per-chunk Python; obstore and awscrt "
                       "hand over buffers Python cannot align, so they write through the page cache, and awscrt's "
                       "file mode must read everything back to hash it.")
    small = ctx.facts.get("small")
    if small:
        d = {(r.tool, r.variant): r for r in small if not r.skip}
        v, s = d.get(("vbo-mirror", "default")), d.get(("s5cmd", "default"))
        if v and s:
            out.append(f"- Small files: {v.files / v.wall_s:.0f} files/s against s5cmd's {s.files / s.wall_s:.0f}; "
                       f"per file vbo-mirror spends {1000 * v.cpu_s / v.files:.1f} ms of CPU (s5cmd "
                       f"{1000 * s.cpu_s / s.files:.1f} ms) on an HTTP exchange, a hashed write, a data sync before "
                       "the rename, and a hard link for the view.")
    if "wan_cap" in ctx.facts:
        out.append(f"- WAN: at {ctx.facts['wan_cap']:.1f} MB/s every tool is bound by the link; what separates them "
                   "is start-up (listing, TCP slow start on fresh connections) and the tail (the last objects).")
    return out


def render(ctx: Context, *, when: dt.datetime, weed_version: str, machine: dict, load: dict, limits: dict,
           profile: list[str]) -> str:
    a = ctx.args
    lines = [f"## {when:%Y-%m-%d %H:%M} UTC{' (quick)' if a.quick else ''}", "",
             f"- Machine: {machine['nproc']} cores ({machine['cpu'] or 'unknown CPU'}), {machine['ram_gib']} GiB RAM, "
             f"Linux {machine['kernel']}, Python {machine['python']}; work directory on {machine['fs']}.",
             f"- Server: SeaweedFS {weed_version} (`weed mini` on 127.0.0.1, the same cores as the clients); "
             f"replica loaded in {load.get('replica_s', 0):.0f} s"
             + "".join(f", {n} in {s['seconds']:.0f} s" for n, s in load.get("synthetic", {}).items()) + ".",
             "- Tools: " + ", ".join(f"{t} {tools.tool_version(t) or 'not installed'}"
                                       for t in ("s5cmd", "rclone", "aws") + (("allensdk",) if a.allensdk else ()))
             + f"; vbo-mirror {_vbo_version()} (this commit).",
             f"- {a.repeats} runs of each, interleaved (order rotated each round); tables show the run with the "
             "median wall time. Before each run: sync(2), and a wait for the machine to be quiet.",
             "- Client CPU is user+sys of the tool's process tree (wait4); peak RSS is ru_maxrss, each tool started "
             f"by a small helper process so no figure includes the benchmark's own memory (floor: "
             f"{SPAWNER.floor_mib:.0f} MiB, what `true` reports); server CPU is the `weed` process over the same "
             "interval.", ""]
    lines += ["### The machine's limits, measured in this run", ""]
    for k, v in limits.items():
        lines.append(f"- {k}: {v}")
    lines.append("")
    if ctx.targets:
        lines += ["### Targets (issue 6)", "", "| what | target | measured | met |", "|---|---|---|---|"]
        for what, target, got, met in ctx.targets:
            lines.append(f"| {what} | {target} | {got} | {'yes' if met else 'no' if met is not None else 'n/a'} |")
        lines.append("")
    notes = commentary(ctx)
    if notes:
        lines += ["### Reading the figures", "", *notes, ""]
    lines += ctx.sections
    if profile:
        lines += ["### Where a default cold sync spends its CPU (perf, all threads, >= 1%)", "", *profile, ""]
    return "\n".join(lines) + "\n"


def _vbo_version() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = ""
    return rev or "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true",
                    help="smaller datasets and 1 run each: a check that everything works, not figures to keep")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated from {', '.join(SCENARIOS)}")
    ap.add_argument("--allensdk", action="store_true", help="also run AllenSDK 2.16.2 (own venv; slow to install)")
    ap.add_argument("--no-wan", action="store_true", help="skip the emulated WAN (needs root, iproute2 and iptables)")
    ap.add_argument("--wan-mbit", type=float, default=500.0, help="WAN link cap (default 500 Mbit/s)")
    ap.add_argument("--wan-rtt-ms", type=float, default=30.0, help="WAN round trip added (default 30 ms)")
    ap.add_argument("--scale", type=parse_fraction, default=Fraction(1, 25),
                    help="replica NWB sizes relative to the real ones (default 1/25: ~2 GB per v1.x version)")
    ap.add_argument("--small-files", type=int, default=10_000)
    ap.add_argument("--plan-entries", type=int, default=1_000_000)
    ap.add_argument("--big-size", default="3GiB", help="size of each of the 2 objects of the memory scenario")
    ap.add_argument("--idle-wait", type=float, default=60.0, help="max seconds to wait for a quiet machine per run")
    ap.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / "work")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (server data, logs)")
    args = ap.parse_args(argv)
    global SPAWNER
    SPAWNER = Spawner()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.no_wan and "wan" in scenarios:
        scenarios.remove("wan")
    if args.quick:
        args.repeats = 1
        args.small_files = min(args.small_files, 1_000)
        args.plan_entries = min(args.plan_entries, 100_000)
        args.big_size = "256MiB"
    from common import parse_size

    big_size = parse_size(args.big_size)

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)

    if args.allensdk and tools.tool_path("allensdk") is None:
        tools.install_allensdk()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-", dir=args.work_dir))
    when = dt.datetime.now(dt.timezone.utc)
    machine = machine_info(tmp)
    # cold-https: the same server also listens for HTTPS, with a certificate from a CA made now
    tls = make_tls(tmp / "tls") if "cold-https" in scenarios else None
    weed = Weed(find_weed(None), tmp / "weed", tls=tls)
    weed.dir.mkdir()
    synth: list[tuple[str, dict]] = []
    if "noop" in scenarios:
        synth.append(("small_files", {"n": 6_000, "mean": 16 << 10, "name": "vbo-noop"}))
    if "small" in scenarios:
        synth.append(("small_files", {"n": args.small_files, "name": "vbo-small"}))
    if "rss" in scenarios:
        synth.append(("big_files", {"n": 2, "size": big_size}))
    spec = ReplicaSpec(scale=float(args.scale), behavior_sessions=100, ophys_sessions=15, experiments_per_session=2,
                       added_behavior_sessions=20, added_ophys_sessions=3, part_size=8 << 20,
                       multipart_threshold=16 << 20)
    try:
        weed_version = weed.version()
        log(f"starting SeaweedFS {weed_version}")
        weed.start()
        t0 = time.perf_counter()
        loaded = load_everything(weed.url, spec, synth, tmp)
        log(f"server loaded in {time.perf_counter() - t0:.0f} s")
        replica = build_replica(spec)
        replica.manifests = {k: v.encode() for k, v in loaded["manifests"].items()}
        sizes = replica_sizes(spec, replica)
        manifests = {v: with_sizes(json.loads(replica.manifests[Replica.manifest_name(v)]), sizes) for v in VERSIONS}
        configs = {}
        for name, syn in loaded["synthetic"].items():
            ds = datasets.Synthetic(name, syn["bucket"], syn["version"], {})
            configs[name] = ds.write_config(tmp / f"{name}.toml")
        ctx = Context(args, weed.url, Server(weed), tmp, machine["nproc"], manifests, loaded["synthetic"], configs,
                      https_url=weed.https_url, ca_bundle=tls.ca if tls else None)
        ctx.facts["spec"] = spec
        ctx.facts["wan_spec"] = spec if not args.quick else ReplicaSpec(
            scale=1 / 100, behavior_sessions=100, ophys_sessions=15, experiments_per_session=2,
            added_behavior_sessions=20, added_ophys_sessions=3, part_size=8 << 20, multipart_threshold=16 << 20)

        log("measuring the machine's limits")
        limits: dict[str, str] = {}
        rates = limits_probe.hash_rates()
        ctx.facts["hash_rates"] = rates
        limits["single-core hash rates"] = ", ".join(f"{k} {v:.0f} MB/s" for k, v in rates.items())
        limits["disk (1 GiB, 4 MiB writes)"] = ", ".join(f"{k} {v:.0f} MB/s"
                                                         for k, v in limits_probe.disk_rates(tmp).items())
        biggest = max((e for e in manifests[VERSIONS[-1]]["data_files"].values()),
                      key=lambda e: manifests[VERSIONS[-1]]["_sizes"][e["file_hash"]])
        key = biggest["url"].split(".amazonaws.com/", 1)[1]
        curl = limits_probe.curl_rate(f"{weed.url}/{spec_bucket()}/{key}?versionId={biggest['version_id']}")
        limits["loopback GET, one curl connection to /dev/null"] = f"{curl:.0f} MB/s" if curl else "n/a"
        warm = limits_probe.warm_guest_memory(tmp, 6 << 30)
        limits["memory warm-up before the runs"] = (f"6 GiB written and deleted in {warm:.1f} s (on this VM the first "
                                                    "touch of guest memory costs several CPU s per GB)")
        for name in scenarios:
            if name == "wan":
                continue
            log(f"scenario {name}")
            globals()[f"scenario_{name.replace('-', '_')}"](ctx)
        if "wan" in scenarios:
            log("scenario wan")
            scenario_wan(ctx)
        profile = profile_sync(ctx) if "cold" in scenarios else []
    except KeyboardInterrupt:
        log("interrupted; stopping SeaweedFS")
        return 130
    finally:
        weed.stop()
        SPAWNER.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp}")
    md = render(ctx, when=when, weed_version=weed_version, machine=machine, load=loaded, limits=limits,
                profile=profile)
    write_results(args.out, md)
    print(md)
    log(f"wrote {args.out}")
    return 0


def spec_bucket() -> str:
    from mirror.sandbox.replica import BUCKET

    return BUCKET


def scenario_wan(ctx: Context) -> None:
    """The cold comparison through an emulated WAN link (benchmarks/wan.py): the server in a
    namespace of its own behind a router that adds the RTT and caps the rate, the tools in a
    client namespace with a ~1 MiB receive window."""
    import multiprocessing.resource_tracker

    from wan import WanLink, WanWeed

    a = ctx.args
    version = VERSIONS[-1]
    multiprocessing.resource_tracker.ensure_running()  # before any thread enters a namespace
    with WanLink(rtt_ms=a.wan_rtt_ms, rate_mbit=a.wan_mbit, rcvbuf=1 << 20) as link:
        wdir = ctx.work / "wan"
        wdir.mkdir(exist_ok=True)
        tls = None
        try:  # the same TLS listener as cold-https, with a certificate for the server's veth address
            tls = make_tls(wdir / "tls", hosts=(link.server_ip,))
        except ImportError:
            pass  # trustme (the bench extra) absent: HTTP only
        weed = WanWeed(link, find_weed(None), wdir / "weed", tls=tls)
        weed.dir.mkdir(exist_ok=True)
        weed.start()
        try:
            with link.inside(link.server_ns):
                loaded = load_everything(weed.url, ctx.facts["wan_spec"], [], wdir, versions=(version,))
            replica = build_replica(ctx.facts["wan_spec"])
            replica.manifests = {k: v.encode() for k, v in loaded["manifests"].items()}
            manifest = with_sizes(json.loads(replica.manifests[Replica.manifest_name(version)]),
                                  replica_sizes(ctx.facts["wan_spec"], replica, versions=(version,)))
            info = link.info()
            runs = interleaved(ctx.tool_jobs(allensdk=False), a.repeats,
                               lambda t, v: run_tool(t, v, scenario="wan", endpoint=weed.url, manifest=manifest,
                                                     version=version, work=ctx.work, server=Server(weed),
                                                     prefix_argv=link.client_argv([]),
                                                     planning=lambda: link.inside(link.client_ns),
                                                     idle_wait=a.idle_wait))
            https_runs = []
            if weed.https_url:
                # Over TLS too (issue 19): vbo-mirror and s5cmd at their default flags, interleaved.
                https_runs = interleaved([("vbo-mirror", "default"), ("s5cmd", "default")], a.repeats,
                                         lambda t, v: run_tool(t, v, scenario="wan-https", endpoint=weed.https_url,
                                                               manifest=manifest, version=version, work=ctx.work,
                                                               server=Server(weed), prefix_argv=link.client_argv([]),
                                                               planning=lambda: link.inside(link.client_ns),
                                                               idle_wait=a.idle_wait, ca_bundle=tls.ca))
            link.check()
            delay_cpu = link.delay_cpu_seconds()
        finally:
            weed.stop()
    rows = medians(runs)
    cap = a.wan_mbit * 1e6 / 8 / 1e6  # MB/s at layer 2
    ctx.facts["wan_cap"] = cap
    total = sum(_sizes(manifest).values())
    lines = ["| client | flags | wall s | MB/s | % of the cap | client CPU s | peak RSS MiB | files correct |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.skip:
            lines.append(f"| {r.tool} | {r.variant} | skipped: {r.skip} | | | | | |")
        else:
            lines.append(f"| {r.tool} | {r.variant} | {r.wall_s:.2f} | {r.mb_s:.1f} | {100 * r.mb_s / cap:.0f}% "
                         f"| {r.cpu_s:.2f} | {r.rss_mib:.0f} | {r.correct}/{r.files} |")
    ctx.sections += [f"### Through an emulated WAN: {a.wan_rtt_ms:g} ms RTT, {a.wan_mbit:g} Mbit/s cap "
                     f"({cap:.1f} MB/s at layer 2), ~1 MiB receive window; {version}, {gb(total)}", "",
                     *lines, "",
                     f"- Link: {json.dumps(info)}; the delay program used {delay_cpu:.1f} CPU s over the scenario "
                     "(benchmarks/wan.py says how the link is built).",
                     "- MB/s is bytes / the whole run's wall time (start-up, listing and TCP slow start included).", ""]
    if https_runs:
        lines = ["| client | flags | wall s | MB/s | % of the cap | client CPU s | peak RSS MiB | files correct |",
                 "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in medians(https_runs):
            if r.skip:
                lines.append(f"| {r.tool} | {r.variant} | skipped: {r.skip} | | | | | |")
                continue
            lines.append(f"| {r.tool} | {r.variant} | {r.wall_s:.2f} | {r.mb_s:.1f} | {100 * r.mb_s / cap:.0f}% "
                         f"| {r.cpu_s:.2f} | {r.rss_mib:.0f} | {r.correct}/{r.files} |")
            if r.tool == "vbo-mirror":
                ctx.targets.append(("WAN over HTTPS: share of the link cap (default flags; issue 19)", ">= 95%",
                                    f"{100 * r.mb_s / cap:.0f}%", r.mb_s >= 0.95 * cap))
        ctx.sections += ["The same link over HTTPS (SeaweedFS's TLS listener, a certificate for the server's address "
                         "from a CA made for this run):", "", *lines, ""]
    best_vbo = min((r for r in rows if r.tool == "vbo-mirror" and not r.skip), key=lambda r: r.wall_s, default=None)
    vbo = next((r for r in rows if r.tool == "vbo-mirror" and r.variant == "default" and not r.skip), None)
    if vbo:
        ctx.targets.append(("WAN: share of the link cap (default flags)", ">= 95%", f"{100 * vbo.mb_s / cap:.0f}%",
                            vbo.mb_s >= 0.95 * cap))
    for other in ("s5cmd", "rclone"):
        o = [r for r in rows if r.tool == other and not r.skip]
        if best_vbo and o:
            fastest = min(o, key=lambda r: r.wall_s)
            ctx.targets.append((f"WAN: ahead of {other} at its best flags", f"< {fastest.wall_s:.2f} s",
                                f"{best_vbo.wall_s:.2f} s", best_vbo.wall_s < fastest.wall_s))


if __name__ == "__main__":
    sys.exit(main())
