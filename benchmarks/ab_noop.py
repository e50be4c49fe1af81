#!/usr/bin/env python
"""No-op resync A/B (bench.py's "noop" scenario) of two revisions, interleaved.

    .venv/bin/python benchmarks/ab_noop.py BEFORE AFTER [--rounds 9] [--json out.json]

Reuses bench.py / ab.py / common.py / datasets.py functions by import: the dataset is bench.main's
("small_files", n=6000, mean=16 KiB, name "vbo-noop") loaded with bench.load_everything; argv from
bench._vbo; measurement with bench.measured (Spawner, wait4 user+sys, other CPU); quiet wait with
bench.wait_for_quiet; env from ab.rev_env (PYTHONPATH=<worktree>); worktrees via ab.add_worktree /
ab.remove_worktree. Each revision syncs once into its own cache dir (unmeasured), then one
unmeasured warm-up resync each, then the measured rounds (before, after, ...).
Set "src": the environment as inherited (PYTHONDONTWRITEBYTECODE=1: no .pyc, sources compiled each run).
Set "pyc": after `compileall` of each worktree's mirror/ (same python), the same rounds again.
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import re
import shutil
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ab  # noqa: E402  (imports bench, which puts /work/main on sys.path)
import bench  # noqa: E402
import datasets  # noqa: E402
from common import Spawner, Weed, find_weed, log  # noqa: E402

from mirror.sandbox.replica import ReplicaSpec  # noqa: E402

WORK = Path(__file__).resolve().parent.parent.parent / "ab-noop"  # beside the checkout, outside both trees


COUNTS = re.compile(r"^(\d+) files: (\d+) fetched \(.*?\), (\d+) linked \(.*?\), (\d+) already present")


def summary(log_path: Path) -> dict:
    """bench's noop argv has no --json: read the human summary line (mirror/cli/sync.py _counts)."""
    s = {}
    for line in log_path.read_text(errors="replace").splitlines():
        m = COUNTS.match(line.strip())
        if m:
            f, fe, li, pr = map(int, m.groups())
            s = {"ok": "FAILED" not in log_path.read_text(errors="replace"), "files": f, "files_fetched": fe,
                 "bytes_fetched": 0 if fe == 0 else None, "files_linked": li, "files_present": pr}
    return s


def run(ctx, label, tree, cache, name, version, server, *, idle_wait, expect_noop=True):
    argv = bench._vbo(ctx, "--cache-dir", str(cache), "sync", "--version", version, dataset="vbo-noop")
    os.sync()
    quiet = bench.wait_for_quiet(idle_wait)
    log_path = WORK / f"log-{name}.txt"
    m, server_cpu, other = bench.measured(argv, env=ab.rev_env(tree), cwd=WORK, server=server, log_path=log_path,
                                          timeout=bench.RUN_TIMEOUT)
    s = summary(log_path)
    ok = m.returncode == 0 and bool(s.get("ok"))
    noop = s.get("files_fetched") == 0 and s.get("bytes_fetched") == 0
    r = {"label": label, "name": name, "wall_s": m.wall_s, "user_s": m.user_s, "sys_s": m.sys_s,
         "rss_mib": m.max_rss_mib, "server_cpu_s": server_cpu, "other_cpu_s": other, "quiet_cores_before": quiet,
         "rc": m.returncode, "ok": ok, "files": s.get("files"), "files_fetched": s.get("files_fetched"),
         "files_present": s.get("files_present"), "files_linked": s.get("files_linked")}
    log(f"{name} {label}: wall {m.wall_s:.3f}s CPU {m.user_s + m.sys_s:.3f}s RSS {m.max_rss_mib:.0f}MiB "
        f"server {server_cpu:.2f}s other {other:.2f}s rc {m.returncode} ok {ok} fetched {s.get('files_fetched')} "
        f"present {s.get('files_present')}/{s.get('files')}")
    if not ok or (expect_noop and not noop):
        raise RuntimeError(f"{name} {label}: rc {m.returncode}, ok {ok}, summary {s}; see {log_path}")
    return r


def stats(rs, label):
    w = [r["wall_s"] for r in rs if r["label"] == label]
    return statistics.median(w), min(w), max(w), w


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--idle-wait", type=float, default=60.0)
    ap.add_argument("--json", type=Path, help="also write every run's figures here")
    args = ap.parse_args()

    bench.SPAWNER = Spawner()
    WORK.mkdir(parents=True, exist_ok=True)
    weed = Weed(find_weed(None), WORK / "weed")
    weed.dir.mkdir(exist_ok=True)
    trees, out = [], {"sets": {}}
    try:
        revs, paths = {}, {}
        for lab, rev in (("before", args.before), ("after", args.after)):
            path, sha, created = ab.add_worktree(rev, Path(__file__).resolve().parent.parent.parent)
            trees.append((path, created))
            revs[lab], paths[lab] = sha, path
            info = ab.which_mirror(path, WORK)
            log(f"{lab} {sha[:10]}: mirror from {info['mirror']}")
        out["revs"] = revs
        log(f"starting SeaweedFS {weed.version()} at {weed.url}")
        weed.start()
        spec = ReplicaSpec(scale=1 / 25, behavior_sessions=100, ophys_sessions=15, experiments_per_session=2,
                           added_behavior_sessions=20, added_ophys_sessions=3, part_size=8 << 20,
                           multipart_threshold=16 << 20)  # bench.main's spec; no replica version is loaded
        synth = [("small_files", {"n": 6_000, "mean": 16 << 10, "name": "vbo-noop"})]  # bench.main's noop dataset
        loaded = bench.load_everything(weed.url, spec, synth, WORK, versions=())
        syn = loaded["synthetic"]["vbo-noop"]
        log(f"vbo-noop loaded in {syn['seconds']:.1f}s: {len(syn['manifest']['data_files'])} files, "
            f"{sum(syn['sizes'].values()) / 1e6:.1f} MB")
        cfg = datasets.Synthetic("vbo-noop", syn["bucket"], syn["version"], {}).write_config(WORK / "vbo-noop.toml")
        ctx = SimpleNamespace(url=weed.url, configs={"vbo-noop": cfg})
        server = bench.Server(weed)
        caches = {lab: WORK / f"cache-{lab}" for lab in revs}
        kw = dict(idle_wait=args.idle_wait)
        for lab in revs:  # the one first (full) sync per revision, into its own cache
            shutil.rmtree(caches[lab], ignore_errors=True)
            r = run(ctx, lab, paths[lab], caches[lab], f"first-{lab}", syn["version"], server, expect_noop=False, **kw)
            out[f"first_{lab}"] = r
        for set_name in ("src", "pyc"):
            if set_name == "pyc":
                for lab in revs:
                    ok = compileall.compile_dir(str(paths[lab] / "mirror"), quiet=1, force=True)
                    log(f"compileall {paths[lab] / 'mirror'}: {'ok' if ok else 'FAILED'}")
            for lab in revs:  # unmeasured warm-up resync
                run(ctx, lab, paths[lab], caches[lab], f"{set_name}-warm-{lab}", syn["version"], server, **kw)
            rs = []
            for rnd in range(1, args.rounds + 1):
                for lab in ("before", "after"):
                    r = run(ctx, lab, paths[lab], caches[lab], f"{set_name}-{rnd}-{lab}", syn["version"], server, **kw)
                    r["round"] = rnd
                    rs.append(r)
            out["sets"][set_name] = rs
            mb, lb, hb, wb = stats(rs, "before")
            ma, la, ha, wa = stats(rs, "after")
            log(f"SET {set_name}: before median {mb:.3f} ({lb:.3f}-{hb:.3f}) runs {[round(x, 3) for x in wb]}")
            log(f"SET {set_name}: after  median {ma:.3f} ({la:.3f}-{ha:.3f}) runs {[round(x, 3) for x in wa]}")
            log(f"SET {set_name}: after/before medians {ma / mb:.3f}")
        # cross-check of the cache-format claim: AFTER resyncs a copy of BEFORE's cache; must be a no-op
        cross = WORK / "cache-cross"
        shutil.copytree(caches["before"], cross, symlinks=True)
        out["cross"] = run(ctx, "after", paths["after"], cross, "cross-after-on-before-cache", syn["version"], server,
                           **kw)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        weed.stop()
        bench.SPAWNER.close()
        if args.json is not None:
            args.json.write_text(json.dumps(out, indent=1))
        for path, created in trees:
            if created:
                ab.remove_worktree(path)
        if sys.exc_info()[0] is None:
            shutil.rmtree(WORK, ignore_errors=True)
        else:
            log(f"kept {WORK} for its logs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
