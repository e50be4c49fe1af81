#!/usr/bin/env python
"""A/B of two git revisions of vbo-mirror on `make bench`'s cold scenario: a default
`vbo-mirror sync` of the replica's newest version (1/25 scale: 160 files, ~2 GB) into an
empty cache directory, from a local SeaweedFS on 127.0.0.1.

    .venv/bin/python benchmarks/ab.py BEFORE AFTER [--repeats 5] [--json out.json]

Each revision is checked out with `git worktree add /work/ab-<rev> <rev>` (removed at the
end) and run as `<this python> -m mirror.cli ...` with PYTHONPATH=<worktree>, from a
directory outside both trees, so the `mirror` imported is the worktree's (printed once per
revision). One unmeasured warm-up sync per revision (it also compiles the worktree's .pyc),
then the measured runs, interleaved: before, after, before, after, ... Every run must exit 0
with a JSON summary that says ok, and every file is checked against the manifest's BLAKE2b
afterwards (outside the timed part). The server, the dataset, the measurement (user+sys of
the sync's process tree from wait4, started by the benchmark's small spawner) and the quiet
wait before each run are bench.py's, imported from it, not copied.

Prints a markdown table: median and min-max of wall s, client CPU s and CPU s per GB for
each revision, the after/before ratio of the medians, and each run's figures with the CPU
the rest of the machine used meanwhile (runs where it was high are marked as disturbed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (puts the repo root on sys.path; its main() is not run)
import limits_probe  # noqa: E402
import tools  # noqa: E402
from common import Spawner, Weed, check_files, find_weed, log, machine_info, parse_fraction  # noqa: E402

from mirror.sandbox.replica import VERSIONS, Replica, ReplicaSpec, build_replica  # noqa: E402

ROOT = bench.ROOT
DISTURBED_CORES = 0.15  # other processes' CPU over a run, in cores, above which a run is marked


@dataclass
class ABRun:
    label: str  # "before" / "after"
    rev: str
    round: int
    wall_s: float
    user_s: float
    sys_s: float
    rss_mib: float
    server_cpu_s: float
    other_cpu_s: float
    rc: int
    ok: bool  # the sync's JSON summary said ok
    bad_files: int
    bytes: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    @property
    def cpu_per_gb(self) -> float:
        return self.cpu_s / (self.bytes / 1e9)

    @property
    def other_cores(self) -> float:
        return self.other_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def disturbed(self) -> bool:
        return self.other_cores > DISTURBED_CORES


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def add_worktree(rev: str, base: Path) -> tuple[Path, str, bool]:
    """(path, full sha, created by us). An existing worktree at the path is reused only if it
    is at the same commit (left over from an interrupted run)."""
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    path = base / f"ab-{rev}"
    if path.exists():
        have = git("rev-parse", "HEAD", cwd=path)
        if have != sha:
            raise RuntimeError(f"{path} exists at {have[:10]}, not {sha[:10]}; remove it first")
        return path, sha, False
    git("worktree", "add", "--detach", str(path), sha)
    return path, sha, True


def remove_worktree(path: Path) -> None:
    try:
        git("worktree", "remove", "--force", str(path))
    except subprocess.CalledProcessError as exc:
        log(f"git worktree remove {path} failed: {exc.stderr.strip()}")
        shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=False)


def rev_env(tree: Path) -> dict[str, str]:
    env = tools._base_env()
    env["PYTHONPATH"] = str(tree)
    env.pop("PYTHONHOME", None)
    return env


def which_mirror(tree: Path, cwd: Path) -> dict:
    """Where `mirror` (and its HTTP module) come from with this environment and cwd, and
    whether h11 got imported: the check that the worktree's code is what runs."""
    code = ("import json, sys, mirror, mirror.cli, mirror.remote.http as h; "
            "print(json.dumps({'mirror': mirror.__file__, 'http': h.__file__, 'h11': 'h11' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], env=rev_env(tree), cwd=cwd, capture_output=True, text=True,
                         check=True).stdout
    info = json.loads(out.strip().splitlines()[-1])
    if not Path(info["mirror"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"mirror imported from {info['mirror']}, not from {tree}")
    return info


def summary_ok(log_path: Path) -> bool:
    ok = False
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "summary":
                ok = bool(ev.get("ok"))
    return ok


def one_sync(label: str, rev: str, tree: Path, rnd: int, *, url: str, manifest: dict, version: str, work: Path,
             server: bench.Server, idle_wait: float, total: int, check: bool) -> ABRun:
    dest = work / f"dest-{label}"
    shutil.rmtree(dest, ignore_errors=True)
    plan = tools.plan_runs("vbo-mirror", endpoint=url, manifest=manifest, version=version, dest=dest,
                           workdir=work / f"cfg-{label}")  # default flags, as bench's cold "default" row
    os.sync()
    bench.wait_for_quiet(idle_wait)
    log_path = work / f"log-{label}-{rnd}.txt"
    m, server_cpu, other = bench.measured(plan.argv, env=rev_env(tree), cwd=work, server=server, log_path=log_path,
                                          timeout=bench.RUN_TIMEOUT)
    ok = m.returncode == 0 and summary_ok(log_path)
    bad = check_files(plan.expected) if check and m.returncode == 0 else ([] if m.returncode == 0 else list(plan.expected))
    shutil.rmtree(dest, ignore_errors=True)
    r = ABRun(label, rev, rnd, m.wall_s, m.user_s, m.sys_s, m.max_rss_mib, server_cpu, other, m.returncode, ok,
              len(bad), total)
    log(f"round {rnd} {label} ({rev}): wall {r.wall_s:.2f}s, CPU {r.cpu_s:.2f}s ({r.user_s:.2f}+{r.sys_s:.2f}), "
        f"{r.cpu_per_gb:.2f} s/GB, server {server_cpu:.2f}s, other {other:.2f}s ({r.other_cores:.2f} cores), "
        f"rc {m.returncode}, ok {ok}, {len(plan.expected) - len(bad)}/{len(plan.expected)} files correct"
        + ("  [disturbed]" if r.disturbed else ""))
    if not ok or bad:
        raise RuntimeError(f"{label} ({rev}) round {rnd} failed (rc {m.returncode}, ok {ok}, {len(bad)} bad files); "
                           f"see {log_path}")
    return r


def stats(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def report(runs: list[ABRun], revs: dict[str, str], *, files: int, total: int, version: str) -> str:
    by = {lab: [r for r in runs if r.label == lab] for lab in ("before", "after")}
    lines = [f"Cold default sync of {version} ({files} files, {total / 1e9:.3f} GB), "
             f"{len(by['before'])} + {len(by['after'])} runs interleaved; median (min-max)", "",
             "| revision | runs | wall s | client CPU s | CPU s/GB | server CPU s |",
             "|---|---:|---:|---:|---:|---:|"]
    med = {}
    for lab in ("before", "after"):
        rs = by[lab]
        cols = []
        for f in (lambda r: r.wall_s, lambda r: r.cpu_s, lambda r: r.cpu_per_gb, lambda r: r.server_cpu_s):
            m, lo, hi = stats([f(r) for r in rs])
            cols.append(f"{m:.2f} ({lo:.2f}-{hi:.2f})")
        med[lab] = {k: statistics.median([getattr(r, k) for r in rs]) for k in ("wall_s", "cpu_s", "cpu_per_gb")}
        lines.append(f"| {lab} {revs[lab][:7]} | {len(rs)} | " + " | ".join(cols) + " |")
    ratio = {k: med["after"][k] / med["before"][k] for k in med["before"]}
    lines.append(f"| after / before (medians) | | {ratio['wall_s']:.3f} | {ratio['cpu_s']:.3f} "
                 f"| {ratio['cpu_per_gb']:.3f} | |")
    quiet = {lab: [r for r in by[lab] if not r.disturbed] for lab in by}
    if all(quiet.values()) and any(r.disturbed for r in runs):
        q = {lab: statistics.median([r.cpu_per_gb for r in quiet[lab]]) for lab in quiet}
        lines.append(f"| undisturbed runs only ({len(quiet['before'])} + {len(quiet['after'])}): CPU s/GB medians "
                     f"{q['before']:.2f} / {q['after']:.2f} | | | | {q['after'] / q['before']:.3f} | |")
    pairs = [(b, a) for b in by["before"] for a in by["after"] if a.round == b.round]
    if pairs:
        pr = [a.cpu_per_gb / b.cpu_per_gb for b, a in pairs]
        m, lo, hi = stats(pr)
        lines += ["", f"Per-round ratio of CPU s/GB (after / before of the same round): median {m:.3f} "
                      f"(min {lo:.3f}, max {hi:.3f}) over {len(pr)} rounds."]
    lines += ["", "| round | revision | wall s | client CPU s (user+sys) | CPU s/GB | peak RSS MiB | server CPU s "
                  "| other CPU s (cores) | files correct |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r.round} | {r.label} {r.rev[:7]} | {r.wall_s:.2f} | {r.cpu_s:.2f} ({r.user_s:.2f}+"
                     f"{r.sys_s:.2f}) | {r.cpu_per_gb:.2f} | {r.rss_mib:.0f} | {r.server_cpu_s:.2f} | "
                     f"{r.other_cpu_s:.2f} ({r.other_cores:.2f}){' disturbed' if r.disturbed else ''} "
                     f"| {files - r.bad_files}/{files} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", help="git revision measured first in each round")
    ap.add_argument("after", help="git revision measured second in each round")
    ap.add_argument("--repeats", type=int, default=5, help="measured runs of each revision (default 5)")
    ap.add_argument("--scale", type=parse_fraction, default=Fraction(1, 25),
                    help="replica NWB sizes relative to the real ones (bench.py's default 1/25: ~2 GB)")
    ap.add_argument("--idle-wait", type=float, default=60.0, help="max seconds to wait for a quiet machine per run")
    ap.add_argument("--worktree-base", type=Path, default=ROOT.parent, help="where ab-<rev> worktrees go (/work)")
    ap.add_argument("--work-dir", type=Path, default=ROOT.parent / "ab-work",
                    help="server data, caches and logs (removed at the end unless --keep)")
    ap.add_argument("--no-check", action="store_true", help="skip the benchmark's own BLAKE2b check after each run")
    ap.add_argument("--no-warmup", action="store_true", help="no unmeasured sync per revision before the rounds")
    ap.add_argument("--json", type=Path, help="also write every run's figures here")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)

    bench.SPAWNER = Spawner()  # measured children started from a small helper (bench.measured uses it)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    version = VERSIONS[-1]  # bench's cold scenario: the newest version
    spec = ReplicaSpec(scale=float(args.scale), behavior_sessions=100, ophys_sessions=15, experiments_per_session=2,
                       added_behavior_sessions=20, added_ophys_sessions=3, part_size=8 << 20,
                       multipart_threshold=16 << 20)  # bench.main's spec
    weed = Weed(find_weed(None), work / "weed")
    weed.dir.mkdir(exist_ok=True)
    trees: list[tuple[Path, bool]] = []
    runs: list[ABRun] = []
    try:
        revs, paths = {}, {}
        for lab, rev in (("before", args.before), ("after", args.after)):
            path, sha, created = add_worktree(rev, args.worktree_base)
            trees.append((path, created))
            revs[lab], paths[lab] = sha, path
            info = which_mirror(path, work)
            print(f"{lab} {sha[:10]}: mirror.__file__ = {info['mirror']}; mirror.remote.http = {info['http']}; "
                  f"h11 imported: {info['h11']}", flush=True)
        machine = machine_info(work)
        log(f"machine: {json.dumps(machine)}")
        log(f"starting SeaweedFS {weed.version()}")
        weed.start()
        t0 = time.perf_counter()
        loaded = bench.load_everything(weed.url, spec, [], work, versions=(version,))
        log(f"replica {version} loaded in {time.perf_counter() - t0:.0f} s")
        replica = build_replica(spec)
        replica.manifests = {k: v.encode() for k, v in loaded["manifests"].items()}
        manifest = bench.with_sizes(json.loads(replica.manifests[Replica.manifest_name(version)]),
                                    bench.replica_sizes(spec, replica, versions=(version,)))
        total = sum(manifest["_sizes"].values())
        files = len(manifest["_sizes"])
        server = bench.Server(weed)
        warm = limits_probe.warm_guest_memory(work, 6 << 30)
        log(f"guest memory warmed (6 GiB written and deleted in {warm:.1f} s)")
        kw = dict(url=weed.url, manifest=manifest, version=version, work=work, server=server,
                  idle_wait=args.idle_wait, total=total, check=not args.no_check)
        if not args.no_warmup:
            for lab in ("before", "after"):
                one_sync(lab, revs[lab][:7], paths[lab], 0, **kw)  # round 0: not reported
        for rnd in range(1, args.repeats + 1):
            for lab in ("before", "after"):
                runs.append(one_sync(lab, revs[lab][:7], paths[lab], rnd, **kw))
        md = report(runs, revs, files=files, total=total, version=version)
        print(f"\nMachine: {machine['nproc']} cores ({machine['cpu']}), {machine['ram_gib']} GiB RAM, Linux "
              f"{machine['kernel']}, Python {machine['python']}; SeaweedFS {weed.version()} on 127.0.0.1\n")
        print(md, flush=True)
        if args.json:
            args.json.write_text(json.dumps({"revs": revs, "machine": machine, "version": version, "bytes": total,
                                             "runs": [asdict(r) | {"cpu_s": r.cpu_s, "cpu_per_gb": r.cpu_per_gb}
                                                      for r in runs]}, indent=1))
    except KeyboardInterrupt:
        log("interrupted; stopping SeaweedFS")
        return 130
    finally:
        weed.stop()
        bench.SPAWNER.close()
        for path, created in trees:
            if created:
                remove_worktree(path)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
