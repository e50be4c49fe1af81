#!/usr/bin/env python
"""`make reliability`: a reliability battery against a local S3 sandbox; writes
benchmarks/RELIABILITY.md (figures, not timed tests).

    .venv/bin/python benchmarks/reliability.py [--quick] [--keep] [--out FILE]

Sections (each a table of RELIABILITY.md):
  1. faults     cut / 500 / 503 SlowDown / corrupt / stall injected into GETs of a seeded
                fraction of the version's files, through tests/faultproxy.py; a re-run
                without faults when the first run exits 5;
  2. kill -9    seeded random SIGKILLs of a sync through a rate-limited proxy, then one
                unkilled sync; bytes counted at the proxy;
  3. full disk  a small tmpfs (needs root; skipped with the reason otherwise), then a
                remount bigger and a resume;
  4. concurrency two syncs of one cache; a sync beside status / tables / verify --fast;
  5. hostile    the manifests of tests/test_bad_input.py and symlinks planted in a cache.

Every server it starts (moto, the proxies) listens on 127.0.0.1 only and is stopped at the
end, also on failure or Ctrl-C; the tmpfs is unmounted. `--quick` runs fewer seeds and kills
and writes benchmarks/work/RELIABILITY-quick.md instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from common import machine_info
from conftest import write_dataset_config
from faultproxy import FaultProxy, Rule
from test_bad_input import BUCKET as HOSTILE_BUCKET
from test_bad_input import CASES as HOSTILE_CASES
from test_bad_input import PREFIX as HOSTILE_PREFIX
from test_bad_input import name as hostile_manifest_name
from test_sync import PROJECT, expected_files

from mirror.sandbox import ReplicaSpec, Sandbox
from mirror.sandbox.server import admin_client, create_public_bucket
from mirror.store.layout import CacheLayout

OUT = ROOT / "benchmarks" / "RELIABILITY.md"
QUICK_OUT = ROOT / "benchmarks" / "work" / "RELIABILITY-quick.md"
# tests/conftest.py's TEST_SPEC (copied, not imported: the tests may change theirs): ophys NWBs
# are multipart uploads and span several 64 KiB ranged parts.
SPEC = ReplicaSpec(seed=7, scale=1 / 4000, part_size=64 << 10, multipart_threshold=128 << 10)
VERSION = "1.0.1"
PART = 64 << 10
SYNC_ARGS = ["sync", "--version", VERSION, "-j", "4", "--part-size", "64KiB"]
KINDS = ("cut", "500", "503", "corrupt", "stall")
STALL_READ_TIMEOUT = 2.0  # the client's --read-timeout in the stall rows (default 60 s)
KILL_RATE = 240_000  # bytes/s per response at the proxy: with -j 4 a full sync takes ~3-4 s
# the kill -9 links: the brief's (a full sync ~3-4 s: most of the 20 kills then land after the
# mirror is complete) and a slower one on which nearly every kill lands mid-transfer
KILL_LINKS = (("3-4 s", KILL_RATE), ("~18 s", 40_000))
# The proxy counts a chunk when it hands it to its socket, and learns of a killed client only
# at its next write: each kill counts up to a chunk per connection that the client never got.
# Small chunks keep that error (high, never low) small beside what the client really loses.
KILL_CHUNK = 4 << 10
KILL_WINDOW = 2.0  # kills land uniformly within this many seconds of the start
TIMEOUT = 240  # seconds: a CLI run longer than this is killed and recorded as a timeout
PWNED = Path("/tmp/pwned.nwb")  # where the '..' / absolute-path manifests aim

LIVE: set[subprocess.Popen] = set()  # CLI processes started and not yet reaped


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- running the CLI --------------------------------------------------------------------------


def cli_env() -> dict:
    """No developer AWS settings, no HTTP proxy, nothing past 127.0.0.1 (as tests/conftest.py)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "VBO_MIRROR_")) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true",
               NO_PROXY="127.0.0.1,localhost", PYTHONPATH=str(ROOT))
    return env


@dataclass
class Run:
    argv: list[str]
    rc: int | None  # None: timed out (killed by us); negative: killed by that signal
    out: str = ""
    err: str = ""
    seconds: float = 0.0

    @property
    def summary(self) -> dict:
        for line in reversed(self.out.splitlines()):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict) and d.get("event") == "summary":
                return d
            break
        return {}

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.err

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("vbo-mirror: error:")]

    @property
    def clean_error(self) -> bool:
        """A non-zero exit with exactly one `vbo-mirror: error:` line and no traceback."""
        return self.rc not in (0, None) and len(self.error_lines) == 1 and not self.traceback


def argv_for(args: list[str], *, cache: Path, endpoint: str | None, json_out: bool = True,
             offline: bool = False, dataset: str | None = None, extra: list[str] = ()) -> list[str]:
    argv = [sys.executable, "-m", "mirror.cli", "--cache-dir", str(cache)]
    if dataset:
        argv += ["--dataset", dataset]
    if endpoint and not offline:
        argv += ["--endpoint-url", endpoint]
    if offline:
        argv.append("--offline")
    if json_out:
        argv.append("--json")
    return argv + list(extra) + list(args)


def spawn(argv: list[str], *, cwd: Path | None = None) -> subprocess.Popen:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                         env=cli_env(), cwd=cwd)
    p.t0 = time.monotonic()
    LIVE.add(p)
    return p


def finish(p: subprocess.Popen, timeout: float = TIMEOUT) -> Run:
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        rc = None
    LIVE.discard(p)
    return Run(p.args, rc, out, err, time.monotonic() - p.t0)


def cli(args: list[str], *, cwd: Path | None = None, timeout: float = TIMEOUT, **kw) -> Run:
    return finish(spawn(argv_for(args, **kw), cwd=cwd), timeout)


def kill_live() -> None:
    for p in list(LIVE):
        if p.poll() is None:
            p.kill()
        with contextlib.suppress(Exception):
            p.communicate(timeout=10)
        LIVE.discard(p)


# --- checking a cache -------------------------------------------------------------------------


@dataclass
class Check:
    present: int = 0  # expected files under their final names with the right bytes
    wrong: int = 0  # a final name with other bytes, a symlink, or an unexpected non-hidden file
    hidden: int = 0  # dot-named temporaries left in the version directory
    store_wrong: int = 0  # store objects whose BLAKE2b is not their name
    missing: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.missing == 0 and self.wrong == 0 and self.store_wrong == 0


def check_cache(cache: Path, expected: dict[str, bytes], version: str = VERSION) -> Check:
    """Every existing file under the version directory must be an expected one with its exact
    bytes; every finished store object must hash to its name."""
    c = Check()
    vdir = cache / f"{PROJECT}-{version}"
    for rel, body in expected.items():
        path = cache / rel
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            c.missing += 1
            continue
        if not stat.S_ISREG(st.st_mode):
            c.wrong += 1
            c.details.append(f"not a regular file: {rel}")
        elif path.read_bytes() != body:
            c.wrong += 1
            c.details.append(f"wrong bytes ({st.st_size} of {len(body)}): {rel}")
        else:
            c.present += 1
    if vdir.is_dir() and not vdir.is_symlink():
        for dirpath, _, files in os.walk(vdir):
            for f in files:
                rel = str((Path(dirpath) / f).relative_to(cache))
                if rel in expected:
                    continue
                if f.startswith("."):
                    c.hidden += 1
                else:
                    c.wrong += 1
                    c.details.append(f"unexpected file: {rel}")
    objects = CacheLayout(cache).objects
    if objects.is_dir() and not objects.is_symlink():
        for dirpath, _, files in os.walk(objects):
            for f in files:
                if f.startswith(".") or ".partial" in f:
                    continue
                h = hashlib.blake2b(Path(dirpath, f).read_bytes()).hexdigest()
                if h != f:
                    c.store_wrong += 1
                    c.details.append(f"store object {f[:12]}… hashes to {h[:12]}…")
    return c


def verified(cache: Path) -> bool:
    """`vbo-mirror --offline verify` (every object re-hashed) exits 0."""
    return cli(["verify"], cache=cache, endpoint=None, offline=True, json_out=False).rc == 0


def snapshot(root: Path, skip: Path | None = None) -> dict:
    """Names, types, modes, sizes, mtimes and content hashes under `root` (symlinks not
    followed), `skip` left out; plus whether the '..'-manifests' target exists."""
    snap = {}
    for dirpath, dirs, files in os.walk(root):
        d = Path(dirpath)
        if skip is not None and (d == skip or skip in d.parents):
            dirs[:] = []
            continue
        for n in dirs + files:
            p = d / n
            if skip is not None and p == skip:
                continue
            st = os.lstat(p)
            h = hashlib.blake2b(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else (
                os.readlink(p) if stat.S_ISLNK(st.st_mode) else "")
            snap[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size,
                                              st.st_mtime_ns, h)
    snap["<" + str(PWNED) + ">"] = PWNED.exists()
    return snap


# --- sockets ------------------------------------------------------------------------------------


def listening(pids: set[int]) -> list[str]:
    """Local addresses of the TCP sockets `pids` listen on (ss)."""
    try:
        out = subprocess.run(["ss", "-ltnpH"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    addrs = []
    for line in out.splitlines():
        found = {int(x) for x in re.findall(r"pid=(\d+)", line)}
        if found & pids:
            addrs.append(line.split()[3])
    return addrs


# --- the battery ------------------------------------------------------------------------------


@dataclass
class Ctx:
    sb: Sandbox
    work: Path
    quick: bool
    expected: dict[str, bytes]
    keys: dict[str, int]  # S3 key → size, every file of VERSION
    version_bytes: int
    sockets: list[str] = field(default_factory=list)
    must_fail: list[str] = field(default_factory=list)  # MUST-be-0 checks that were not 0
    notes: list[str] = field(default_factory=list)
    seq: int = 0

    def cache(self, name: str) -> Path:
        self.seq += 1
        return self.work / f"{self.seq:03d}-{name}"

    def check_sockets(self, proxy_pid_note: str = "") -> None:
        pids = {os.getpid()}
        if self.sb.server.proc is not None:
            pids.add(self.sb.server.proc.pid)
        self.sockets += listening(pids)


def fault_rules(ctx: Ctx, kind: str, rate: float, seed: int) -> list[Rule]:
    """One rule per chosen file (a seeded sample of round(rate x files) of the version's files),
    hitting its first 1 or 2 GETs."""
    rng = random.Random(f"{kind}/{rate}/{seed}")
    chosen = rng.sample(sorted(ctx.keys), max(1, round(rate * len(ctx.keys))))
    rules = []
    for key in chosen:
        r = Rule(key=key, action=kind if kind in ("cut", "corrupt", "stall") else "status", times=rng.choice((1, 2)))
        if kind in ("cut", "stall"):
            r.after = rng.randrange(0, min(ctx.keys[key], PART))
        elif kind == "500":
            r.status, r.code = 500, "InternalError"
        elif kind == "503":
            r.status, r.code = 503, "SlowDown"
        rules.append(r)
    return rules


def section_faults(ctx: Ctx) -> list[dict]:
    rates = (0.30,) if ctx.quick else (0.10, 0.30)
    seeds = (1,) if ctx.quick else (1, 2, 3)
    plan = [("none", 0.0, 0)] + [(k, r, s) for k in KINDS for r in rates for s in seeds]
    rows = []
    for kind, rate, seed in plan:
        cache = ctx.cache(f"fault-{kind}-{int(rate * 100)}-{seed}")
        rules = fault_rules(ctx, kind, rate, seed) if kind != "none" else []
        extra = ["--read-timeout", f"{STALL_READ_TIMEOUT:g}"] if kind == "stall" else []
        with FaultProxy(ctx.sb.url, rules=rules, count_keys=ctx.keys) as proxy:
            ctx.check_sockets()
            r1 = cli(SYNC_ARGS, cache=cache, endpoint=proxy.url, extra=extra)
            served = sum(r.hits for r in rules)
        c1 = check_cache(cache, ctx.expected)
        r2 = c2 = None
        if r1.rc == 5:
            r2 = cli(SYNC_ARGS, cache=cache, endpoint=ctx.sb.url)
            c2 = check_cache(cache, ctx.expected)
        final = c2 or c1
        ok = final.complete and verified(cache)
        wrong = c1.wrong + c1.store_wrong + (c2.wrong + c2.store_wrong if c2 else 0)
        row = {"kind": kind, "rate": f"{rate:.0%}", "seed": seed if kind != "none" else "-",
               "files hit": len(rules), "faults served": served, "exit": rc_text(r1.rc),
               "s": f"{r1.seconds:.1f}", "published": c1.present, "wrong": wrong,
               "retries": r1.summary.get("retries", "-"),
               "failed files": len(r1.summary.get("failures", [])) if r1.summary else "-",
               "exit after re-run": rc_text(r2.rc) if r2 else "-", "complete": yesno(ok),
               "tb": int(r1.traceback or bool(r2 and r2.traceback))}
        rows.append(row)
        log(f"faults {kind} {rate:.0%} seed {seed}: exit {row['exit']} in {row['s']} s, {served} faults, "
            f"retries {row['retries']}, wrong {wrong}, re-run {row['exit after re-run']}, complete {row['complete']}")
        if wrong:
            ctx.must_fail.append(f"faults {kind} {rate:.0%} seed {seed}: {wrong} wrong file(s) under a final name: "
                                 + "; ".join((c1.details + (c2.details if c2 else []))[:5]))
        if row["tb"]:
            ctx.must_fail.append(f"faults {kind} {rate:.0%} seed {seed}: a traceback:\n{r1.err[-1500:]}")
        if not ok:
            ctx.notes.append(f"faults {kind} {rate:.0%} seed {seed}: mirror not complete "
                             f"(exit {row['exit']}, re-run {row['exit after re-run']}): "
                             f"{(r2 or r1).err.strip()[-300:]}")
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def section_kill(ctx: Ctx) -> tuple[list[dict], list[str]]:
    seeds = (1,) if ctx.quick else (1, 2, 3)
    kills = 5 if ctx.quick else 20
    rows: list[dict] = []
    calibs: list[str] = []
    for link, rate in KILL_LINKS:
        # calibration: one unkilled sync through the same proxy settings
        cache = ctx.cache("kill-calibration")
        with FaultProxy(ctx.sb.url, rate=rate, rate_keys=ctx.keys, count_keys=ctx.keys, chunk_size=KILL_CHUNK) as proxy:
            ctx.check_sockets()
            cal = cli(SYNC_ARGS, cache=cache, endpoint=proxy.url)
            cal_bytes = proxy.payload_bytes
        shutil.rmtree(cache, ignore_errors=True)
        calib = (f"{link} link ({rate / 1000:g} kB/s per response): an unkilled sync through it took "
                 f"{cal.seconds:.1f} s, exit {rc_text(cal.rc)}, {cal_bytes / ctx.version_bytes:.3f} x the "
                 f"version's bytes at the proxy")
        calibs.append(calib)
        log(f"kill calibration: {calib}")
        for seed in seeds:
            rows.append(kill_seed(ctx, link, rate, seed, kills))
    return rows, calibs


def kill_seed(ctx: Ctx, link: str, rate: float, seed: int, kills: int) -> dict:
    rng = random.Random(f"kill/{seed}")
    cache = ctx.cache(f"kill-{seed}")
    mid = before_get = ended = 0
    wrong = hidden = 0
    odd_exits = []
    first_complete = None
    details = []
    with FaultProxy(ctx.sb.url, rate=rate, rate_keys=ctx.keys, count_keys=ctx.keys, chunk_size=KILL_CHUNK) as proxy:
        for i in range(kills):
            delay = rng.uniform(0.0, KILL_WINDOW)
            b0 = proxy.payload_bytes
            p = spawn(argv_for(SYNC_ARGS, cache=cache, endpoint=proxy.url))
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
            r = finish(p)
            if r.rc == -signal.SIGKILL:
                if proxy.payload_bytes > b0:
                    mid += 1
                else:
                    before_get += 1
            else:
                ended += 1
                if r.rc != 0:
                    odd_exits.append(f"run {i + 1}: exit {rc_text(r.rc)}: {r.err.strip()[-200:]}")
                elif first_complete is None:
                    first_complete = i + 1
            c = check_cache(cache, ctx.expected)
            wrong += c.wrong + c.store_wrong
            hidden = max(hidden, c.hidden)
            if c.wrong or c.store_wrong:
                details.append(f"after kill {i + 1} (delay {delay:.3f} s): " + "; ".join(c.details[:3]))
        time.sleep(0.3)  # let the proxy see the last killed connection go
        final = cli(SYNC_ARGS, cache=cache, endpoint=proxy.url)
        total = proxy.payload_bytes
    c = check_cache(cache, ctx.expected)
    wrong += c.wrong + c.store_wrong
    ok = c.complete and final.rc == 0 and verified(cache)
    row = {"link": link, "seed": seed, "kills": kills, "mid-transfer": mid, "before any GET": before_get,
           "ended before its kill": ended, "first run to finish": first_complete or "-",
           "bytes at proxy / version": f"{total / ctx.version_bytes:.3f}",
           "extra KiB per mid-transfer kill": f"{(total - ctx.version_bytes) / 1024 / mid:.0f}" if mid else "-",
           "wrong or partial under final name": wrong, "final exit": rc_text(final.rc),
           "final bytes_fetched / resumed": f"{final.summary.get('bytes_fetched', '-')} / "
                                            f"{final.summary.get('bytes_resumed', '-')}",
           "verified": yesno(ok)}
    log(f"kill {link} seed {seed}: {row}")
    tag = f"kill -9 ({link} link) seed {seed}"
    if wrong:
        ctx.must_fail.append(f"{tag}: {wrong} wrong/partial file(s): " + " | ".join(details[:5]))
    if odd_exits:
        ctx.notes.append(f"{tag}: runs that ended before their kill with a non-zero exit: " + " | ".join(odd_exits[:3]))
    if hidden:
        ctx.notes.append(f"{tag}: up to {hidden} dot-named temporaries seen in the version directory after a kill")
    if not ok:
        ctx.notes.append(f"FAILED: {tag}: the final state does not verify (exit {rc_text(final.rc)}): "
                         f"{final.err.strip()[-300:]}")
    if total > 1.2 * ctx.version_bytes:
        ctx.notes.append(f"{tag}: {total / ctx.version_bytes:.3f} x the version's bytes at the proxy, over the "
                         f"1.2 target")
    shutil.rmtree(cache, ignore_errors=True)
    return row


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str):
    mnt.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mnt)],
                       check=False, capture_output=True, text=True)
    if r.returncode != 0:
        raise PermissionError((r.stderr or r.stdout).strip() or f"mount exited {r.returncode}")
    try:
        yield mnt
    finally:
        for _ in range(5):
            if subprocess.run(["umount", str(mnt)], check=False, capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def df_used(path: Path) -> str:
    u = shutil.disk_usage(path)
    return f"{u.used / 2**20:.1f} of {u.total / 2**20:.0f} MiB"


def fill(path: Path) -> int:
    """Another writer: fill the filesystem of `path` with a file until ENOSPC → bytes written."""
    n = 0
    block = b"\0" * (64 << 10)
    with open(path, "wb") as fh:
        try:
            while True:
                n += fh.write(block)
                fh.flush()
        except OSError:
            pass
        with contextlib.suppress(OSError):
            fh.close()
    return n


def section_disk(ctx: Ctx) -> list[dict]:
    rows = []
    scenarios = [
        ("empty cache, 1.0.1", "2m", None, VERSION, False),
        ("0.1.0 present, then 1.1.0 (new NWBs)", "2m", "0.1.0", "1.1.0", False),
        ("empty cache, 1.0.1; another writer fills the disk once 30 % is fetched", "20m", None, VERSION, True),
    ]
    for title, size, before, version, filler in scenarios:
        mnt = ctx.cache("tmpfs")
        row = {"scenario": title}
        try:
            with tmpfs(mnt, size):
                cache = mnt / "cache"
                want = expected_files(ctx.sb.replica, version)
                row["tmpfs"] = size.replace("m", " MiB")
                keep = None
                if before:
                    r0 = cli(["sync", "--version", before], cache=cache, endpoint=ctx.sb.url)
                    keep = expected_files(ctx.sb.replica, before)
                    if r0.rc != 0 or not check_cache(cache, keep, before).complete:
                        row["note"] = f"the first version did not fit (exit {rc_text(r0.rc)})"
                sync = ["sync", "--version", version, "-j", "4", "--part-size", "64KiB"]
                if filler:
                    with FaultProxy(ctx.sb.url, rate=KILL_RATE, rate_keys=ctx.keys, count_keys=ctx.keys) as proxy:
                        p = spawn(argv_for(sync, cache=cache, endpoint=proxy.url))
                        while p.poll() is None and proxy.payload_bytes < 0.3 * ctx.version_bytes:
                            time.sleep(0.01)
                        fill(mnt / "filler")
                        r1 = finish(p)
                else:
                    r1 = cli(sync, cache=cache, endpoint=ctx.sb.url)
                c1 = check_cache(cache, want, version)
                wrong = c1.wrong + c1.store_wrong
                if keep is not None:
                    ck = check_cache(cache, keep, before)
                    wrong += ck.wrong + ck.store_wrong
                    row["earlier version intact"] = yesno(ck.complete)
                row["exit (full)"] = rc_text(r1.rc)
                row["message"] = (short(r1.error_lines[0].removeprefix("vbo-mirror: error: "), ctx)
                                  if r1.error_lines else "(none)")
                row["tb"] = int(r1.traceback)
                row["disk after"] = df_used(mnt)
                row["published"] = c1.present
                row["wrong"] = wrong
                if wrong:
                    ctx.must_fail.append(f"full disk '{title}': {wrong} wrong file(s): " + "; ".join(c1.details[:5]))
                if r1.traceback:
                    ctx.must_fail.append(f"full disk '{title}': a traceback:\n{r1.err[-1500:]}")
                if filler:
                    (mnt / "filler").unlink()
                    row["then"] = "filler deleted"
                else:
                    subprocess.run(["mount", "-o", "remount,size=20m", str(mnt)], check=True, capture_output=True)
                    row["then"] = "remount 20 MiB"
                r2 = cli(sync, cache=cache, endpoint=ctx.sb.url)
                c2 = check_cache(cache, want, version)
                ok = c2.complete and r2.rc == 0 and verified(cache)
                if keep is not None:
                    ok = ok and check_cache(cache, keep, before).complete
                row["exit of resume"] = rc_text(r2.rc)
                row["resume fetched / resumed B"] = (f"{r2.summary.get('bytes_fetched', '-')} / "
                                                    f"{r2.summary.get('bytes_resumed', '-')}")
                row["complete + verified"] = yesno(ok)
                if c2.wrong or c2.store_wrong:
                    ctx.must_fail.append(f"full disk '{title}' after the resume: wrong files: {c2.details[:5]}")
                if not ok:
                    ctx.notes.append(f"full disk '{title}': not complete after the resume: {r2.err.strip()[-300:]}")
        except PermissionError as exc:
            row["exit (full)"] = f"skipped: {exc}"
        rows.append(row)
        log(f"full disk: {row}")
        shutil.rmtree(mnt, ignore_errors=True)
    return rows


def wait_for_lock(cache: Path, p: subprocess.Popen, timeout: float = 10.0) -> bool:
    lock = CacheLayout(cache).lock_path
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None:
        try:
            if lock.stat().st_size > 0:  # the holder writes who it is once it has the flock
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    return False


def section_concurrency(ctx: Ctx) -> list[dict]:
    rows = []
    # two syncs of one cache: the second exits 3 at once; a third with --wait queues behind
    cache = ctx.cache("two-syncs")
    with FaultProxy(ctx.sb.url, rate=KILL_RATE, rate_keys=ctx.keys, count_keys=ctx.keys) as proxy:
        a = spawn(argv_for(SYNC_ARGS, cache=cache, endpoint=proxy.url))
        held = wait_for_lock(cache, a)
        b = cli(SYNC_ARGS, cache=cache, endpoint=proxy.url)
        c = spawn(argv_for([*SYNC_ARGS, "--wait"], cache=cache, endpoint=proxy.url))
        ra = finish(a)
        a_end = time.monotonic()
        rc_ = finish(c)
        c_end = time.monotonic()
    chk = check_cache(cache, ctx.expected)
    ok = chk.complete and verified(cache)
    in_use = any("in use" in line for line in b.error_lines)
    rows.append({"case": "two syncs at once (+ a third with --wait)",
                 "exit codes": f"first {rc_text(ra.rc)}, second {rc_text(b.rc)}"
                               f"{' (in use: ' + ('yes' if in_use else 'NO') + ')' if b.rc == 3 else ''}, "
                               f"--wait {rc_text(rc_.rc)}",
                 "detail": (f"lock seen held: {yesno(held)}; second: "
                            f"{short(b.error_lines[0].removeprefix('vbo-mirror: error: '), ctx) if b.error_lines else '-'}; "
                            f"--wait ended {c_end - a_end:+.1f} s after the first, fetched "
                            f"{rc_.summary.get('bytes_fetched', '-')} B"),
                 "tb": int(ra.traceback or b.traceback or rc_.traceback),
                 "wrong": chk.wrong + chk.store_wrong, "complete + verified": yesno(ok)})
    if not (ra.rc == 0 and b.rc == 3 and in_use and rc_.rc == 0):
        ctx.notes.append(f"concurrency: unexpected exits: first {ra.rc}, second {b.rc} ({b.err.strip()[:200]}), "
                         f"--wait {rc_.rc} ({rc_.err.strip()[:200]})")
    shutil.rmtree(cache, ignore_errors=True)

    # a sync beside status / tables / verify --fast, rounds of the three at once until it ends
    cache = ctx.cache("beside")
    codes: dict[str, dict] = {"status": {}, "tables": {}, "verify --fast": {}}
    tbs = 0
    msgs = set()
    cmds = {"status": ["status"], "tables": ["tables", "--version", VERSION], "verify --fast": ["verify", "--fast"]}
    rounds = 0
    with FaultProxy(ctx.sb.url, rate=KILL_RATE, rate_keys=ctx.keys, count_keys=ctx.keys) as proxy:
        s = spawn(argv_for(SYNC_ARGS, cache=cache, endpoint=proxy.url))
        wait_for_lock(cache, s)  # beside a running sync: one that has not taken the lock yet is not running
        while s.poll() is None and rounds < 50:
            rounds += 1
            ps = {n: spawn(argv_for(a, cache=cache, endpoint=ctx.sb.url, json_out=False)) for n, a in cmds.items()}
            for n, p in ps.items():
                r = finish(p)
                codes[n][rc_text(r.rc)] = codes[n].get(rc_text(r.rc), 0) + 1
                tbs += r.traceback
                if r.rc not in (0, None) and not r.clean_error:
                    msgs.add(f"{n}: exit {r.rc} without one clean error line: {r.err.strip()[-200:]}")
                for line in r.error_lines:
                    msgs.add(f"{n}: {short(line.removeprefix('vbo-mirror: error: '), ctx)}")
        rs = finish(s)
    chk = check_cache(cache, ctx.expected)
    ok = chk.complete and rs.rc == 0 and verified(cache)
    rows.append({"case": f"sync beside status, tables, verify --fast ({rounds} rounds of the three at once)",
                 "exit codes": f"sync {rc_text(rs.rc)}; " + "; ".join(
                     f"{n}: " + ", ".join(f"{k} x{v}" for k, v in sorted(d.items())) for n, d in codes.items()),
                 "detail": " / ".join(sorted(msgs)[:4]) or "-",
                 "tb": tbs + rs.traceback, "wrong": chk.wrong + chk.store_wrong, "complete + verified": yesno(ok)})
    if tbs or rs.traceback:
        ctx.must_fail.append("concurrency: a traceback beside a sync")
    for r in rows:
        if r["wrong"]:
            ctx.must_fail.append(f"concurrency '{r['case']}': wrong files under final names")
    log(f"concurrency: {rows}")
    shutil.rmtree(cache, ignore_errors=True)
    return rows


async def upload_hostile(url: str) -> None:
    async with admin_client(url) as s3:
        await create_public_bucket(s3, HOSTILE_BUCKET)
        for v, (body, _) in HOSTILE_CASES.items():
            await s3.put_object(Bucket=HOSTILE_BUCKET, Key=f"{HOSTILE_PREFIX}manifests/{hostile_manifest_name(v)}",
                                Body=body)


def nwb_hash(cache: Path) -> tuple[str, str]:
    """(view path, file_hash) of the first NWB of VERSION, from the pinned manifest."""
    doc = json.loads((cache / f"{PROJECT}_project_manifest_v{VERSION}.json").read_bytes())
    for e in doc["data_files"].values():
        key = e["url"].split(".amazonaws.com/", 1)[1]
        if key.endswith(".nwb"):
            return f"{PROJECT}-{VERSION}/{key.split('/', 1)[1]}", e["file_hash"]
    raise AssertionError("no NWB in the manifest")


def plant(case: str, cache: Path, out: Path, victim: Path, ctx: Ctx) -> Path:
    """Plant one hostile symlink into `cache` (the manifest pinned first where a hash is needed) → its path."""
    layout = CacheLayout(cache)
    if case not in ("lock", ".vbo-mirror dir"):
        r = cli(["manifests", "use", VERSION], cache=cache, endpoint=ctx.sb.url, json_out=False)
        assert r.rc == 0, r.err
    if case == "lock":
        layout.meta.mkdir(parents=True)
        link = layout.lock_path
        link.symlink_to(victim)
    elif case == ".vbo-mirror dir":
        cache.mkdir(parents=True)
        link = layout.meta
        link.symlink_to(out, target_is_directory=True)
    elif case in (".partial", ".partial.json"):
        _, h = nwb_hash(cache)
        p = layout.partial_path(h)
        p = p if case == ".partial" else p.with_name(p.name + ".json")
        p.parent.mkdir(parents=True)
        link = p
        link.symlink_to(victim)
    elif case == "version dir":
        link = cache / f"{PROJECT}-{VERSION}"
        link.symlink_to(out, target_is_directory=True)
    elif case == "store fan-out dir":
        _, h = nwb_hash(cache)
        fan = layout.object_path(h).parent.parent
        fan.parent.mkdir(parents=True)
        link = fan
        link.symlink_to(out, target_is_directory=True)
    elif case == "a view file":
        view, _ = nwb_hash(cache)
        (cache / view).parent.mkdir(parents=True)
        link = cache / view
        link.symlink_to(victim)
    elif case == "_manifest_last_used.txt":
        layout.last_used.unlink()
        link = layout.last_used
        link.symlink_to(victim)
    elif case == "the manifest file":
        m = cache / f"{PROJECT}_project_manifest_v{VERSION}.json"
        m.unlink()
        link = m
        link.symlink_to(victim)
    elif case == "index":
        layout.meta.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            layout.index_path.unlink()
        link = layout.index_path
        link.symlink_to(victim)
    else:
        raise ValueError(case)
    return link


def link_state(path: Path) -> str:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "gone"
    if stat.S_ISLNK(st.st_mode):
        return "still the symlink"
    return "a real directory" if stat.S_ISDIR(st.st_mode) else "a real file"


HOSTILE_CACHE_CASES = ("lock", ".vbo-mirror dir", ".partial", ".partial.json", "version dir", "store fan-out dir",
                       "a view file", "_manifest_last_used.txt", "the manifest file", "index")


def section_hostile(ctx: Ctx) -> tuple[list[dict], list[dict]]:
    asyncio.run(upload_hostile(ctx.sb.url))
    ds = write_dataset_config(ctx.work / "hostile.toml", name="hostile", bucket=HOSTILE_BUCKET,
                              prefix=HOSTILE_PREFIX)
    pwned_before = PWNED.exists()
    if pwned_before:
        ctx.notes.append(f"{PWNED} existed before the battery: the hostile checks compare it before/after only")

    def arena(tag: str) -> tuple[Path, Path, Path, Path]:
        root = ctx.cache(tag)
        out = root / "outside"
        out.mkdir(parents=True)
        victim = out / "victim.txt"
        victim.write_text("precious")
        os.chmod(victim, 0o644)
        return root, root / "cache", out, victim

    detail: list[dict] = []
    # manifests: each case through `manifests use` and through `sync --version`
    man = {"cases": 0, "clean message + non-zero exit": 0, "exit 2": 0, "names file + problem": 0,
           "tracebacks": 0, "cache holds only the lock file (or nothing)": 0, "written outside the cache": 0}
    for v, (_, problem) in sorted(HOSTILE_CASES.items(), key=lambda kv: [int(x) for x in kv[0].split(".")]):
        for args in (["manifests", "use", v], ["sync", "--version", v]):
            root, cache, out, victim = arena("hostile-manifest")
            before = snapshot(root, skip=cache)
            r = cli(args, cache=cache, endpoint=ctx.sb.url, dataset=str(ds), json_out=False, cwd=root)
            after = snapshot(root, skip=cache)
            outside = sum(1 for k in set(before) | set(after) if before.get(k) != after.get(k))
            left = {str(p.relative_to(cache)) for p in cache.rglob("*")} if cache.exists() else set()
            lock = cache / ".vbo-mirror" / "lock"
            empty = left <= {".vbo-mirror", ".vbo-mirror/lock"} and (not lock.exists() or lock.stat().st_size == 0)
            names = bool(r.error_lines) and hostile_manifest_name(v) in r.error_lines[0] and problem in r.error_lines[0]
            man["cases"] += 1
            man["clean message + non-zero exit"] += r.clean_error
            man["exit 2"] += r.rc == 2
            man["names file + problem"] += names
            man["tracebacks"] += r.traceback
            man["cache holds only the lock file (or nothing)"] += empty
            man["written outside the cache"] += outside > 0
            if not (r.clean_error and r.rc == 2 and names and empty) or outside:
                detail.append({"what": f"manifest {v} via `{' '.join(args[:2])}`", "exit": rc_text(r.rc),
                               "stderr": short(r.err.strip()[-200:], ctx), "outside changes": outside,
                               "cache left": ", ".join(sorted(left)) or "nothing"})
            if r.traceback or outside:
                ctx.must_fail.append(f"hostile manifest {v} (`{' '.join(args)}`): traceback={r.traceback} "
                                     f"outside={outside}: {r.err.strip()[-600:]}")
            shutil.rmtree(root, ignore_errors=True)
    man_row = {"class": "hostile manifests (tests/test_bad_input.py CASES x {manifests use, sync})", **man}

    cache_stats = {"cases": 0, "clean message + non-zero exit": 0, "synced (exit 0, mirror complete)": 0,
                   "neither": 0, "tracebacks": 0, "written outside the cache": 0}
    per_case = []
    for case in HOSTILE_CACHE_CASES:
        root, cache, out, victim = arena("hostile-cache")
        link = plant(case, cache, out, victim, ctx)
        before = snapshot(root, skip=cache)
        r = cli(["sync", "--version", VERSION, "-j", "4"], cache=cache, endpoint=ctx.sb.url, json_out=False, cwd=root)
        after = snapshot(root, skip=cache)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        complete = r.rc == 0 and check_cache(cache, ctx.expected).complete
        cache_stats["cases"] += 1
        cache_stats["clean message + non-zero exit"] += r.clean_error
        cache_stats["synced (exit 0, mirror complete)"] += complete
        cache_stats["neither"] += not (r.clean_error or complete)
        cache_stats["tracebacks"] += r.traceback
        cache_stats["written outside the cache"] += bool(changed)
        per_case.append({"symlink at": case, "exit": rc_text(r.rc), "its name after": link_state(link),
                         "outcome": "synced, mirror complete" if complete else (
                             short(r.error_lines[0].removeprefix("vbo-mirror: error: "), ctx) if r.error_lines else
                             short(r.err.strip()[-200:], ctx)),
                         "outside changed": ", ".join(changed) or "nothing", "tb": int(r.traceback)})
        if r.traceback or changed:
            ctx.must_fail.append(f"hostile cache '{case}': traceback={r.traceback} outside changed={changed}: "
                                 f"{r.err.strip()[-600:]}")
        if link_state(link) == "still the symlink" and r.rc == 2 and "JSON" in r.err:
            ctx.notes.append(f"hostile cache '{case}': read through the planted symlink (the outside file's "
                             f"content was parsed, then refused as not a manifest: exit 2); nothing written "
                             f"through it")
        if not (r.clean_error or complete):
            ctx.notes.append(f"hostile cache '{case}': neither a clean error nor a complete sync "
                             f"(exit {rc_text(r.rc)}): {r.err.strip()[-300:]}")
        shutil.rmtree(root, ignore_errors=True)
    cache_row = {"class": "hostile caches (symlinks planted, then `sync`)", **cache_stats}
    log(f"hostile: {man_row} {cache_row}")
    return [man_row, cache_row], per_case, detail


# --- the report ---------------------------------------------------------------------------------


def rc_text(rc) -> str:
    if rc is None:
        return "timeout"
    if rc < 0:
        return f"killed ({signal.Signals(-rc).name})"
    return str(rc)


def short(text: str, ctx: Ctx) -> str:
    """A message with the work directory and the case's directory written as $WORK."""
    text = re.sub(r"\b([0-9a-f]{12})[0-9a-f]{116}\b", r"\1…", text)
    return re.sub(re.escape(str(ctx.work)) + r"/[0-9]{3}-[^/ ]+", "$WORK", text)


def yesno(b) -> str:
    return "yes" if b else "NO"


def table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")).replace("|", "\\|").replace("\n", " ") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    m = machine_info(ROOT)
    return f"{m['nproc']} cores ({m['cpu']}), {m['ram_gib']:.1f} GiB RAM, Linux {m['kernel']}, Python {m['python']}"


def commit() -> str:
    def git(*a):
        return subprocess.run(["git", "-C", str(ROOT), *a], check=False, capture_output=True, text=True).stdout.strip()
    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + (" + uncommitted changes" if git("status", "--porcelain") else "")


HOW_TO_READ = """\
Every run is the real CLI (`python -m mirror.cli`, a child process) against moto on 127.0.0.1
holding a generated replica of the dataset; faults come from `tests/faultproxy.py` placed
between the two (extended here with a *stall* and a byte count). After every run the script
itself reads every file under the version directory and compares it with the bytes the
replica generator made, and re-hashes every finished store object against its name: a
**wrong** count is a file under a final name whose bytes are not the expected ones (including
partial content, a symlink, or an unexpected file) and must be 0. **complete** means every
file of the version is present with its bytes and `vbo-mirror --offline verify` exits 0.
Figures are counts over seeded runs, not timings; seconds are shown only to explain
behaviour (the machine has 2 cores shared by moto, the proxy and the client). The seeds fix
which files get faults and when kills are sent, not how far a run has got by then, so the
kill -9 byte figures move a little from one battery to the next."""


def kill_reading(rows: list[dict]) -> str:
    """A paragraph on what the kill -9 figures mean (from the rows)."""
    if not rows:
        return ""
    over = [r for r in rows if float(r["bytes at proxy / version"]) > 1.2]
    extra = [int(r["extra KiB per mid-transfer kill"]) for r in rows if r["extra KiB per mid-transfer kill"] != "-"]
    text = ("Reading: while a part streams in, what a receive buffer holds is handed to the writer at every "
            "watchdog tick (0.25 s, mirror/remote/http.py) and the landed prefix is recorded in the part's "
            "`.partial.json` every 4 MiB or 0.25 s, whichever comes first, and when the part ends "
            "(mirror/engine/writer.py); so a kill -9 costs each connection about its last quarter second of bytes, "
            "plus what the proxy counted but the killed client never read (it learns of the kill at its next "
            f"write: up to one {KILL_CHUNK // 1024} KiB chunk per connection). ")
    if extra:
        text += f"Measured: {min(extra)}-{max(extra)} KiB sent again per mid-transfer kill. "
    if over:
        text += ("Over the 1.2 target: " + ", ".join(f"{r['link']} seed {r['seed']} ({r['bytes at proxy / version']}, "
                                                     f"{r['mid-transfer']} mid-transfer kills)" for r in over)
                 + ". The ratio is about 1 + (mid-transfer kills x the bytes lost per kill) / version size; the "
                 "version here is only 2.7 MB, so a dozen kills at a few tens of KiB each is a noticeable fraction "
                 "of it. Not a wrong byte: on the real data (GB per file) the same loss per kill is negligible. ")
    else:
        text += "Every seed met the 1.2 target."
    return text


def write_report(path: Path, *, ctx: Ctx, started: dt.datetime, wall: float, argv: list[str],
                 sections: dict, calib: list[str], kill_detail: str) -> None:
    s = []
    s.append("# Reliability battery\n")
    s.append("Written by `make reliability` (`benchmarks/reliability.py`); do not edit by hand.\n")
    s.append(f"- Date: {started:%Y-%m-%d %H:%M} UTC; wall time of the battery {wall / 60:.1f} min")
    s.append(f"- Machine: {machine()}")
    s.append(f"- Commit: {commit()}")
    s.append(f"- Command: `{' '.join(argv)}`{' (quick: fewer seeds and kills)' if ctx.quick else ''}")
    s.append(f"- Data: replica seed {SPEC.seed}, scale 1/{round(1 / SPEC.scale)} (tests/conftest.py's TEST_SPEC); "
             f"version {VERSION}: {len(ctx.expected)} files, {ctx.version_bytes:,} bytes; syncs use "
             f"`{' '.join(SYNC_ARGS)}` (so NWBs are fetched as ranged 64 KiB parts)")
    bad = sorted({a for a in ctx.sockets if not a.startswith("127.0.0.1:")})
    s.append(f"- Servers: moto and every proxy on 127.0.0.1 "
             f"({len(ctx.sockets)} listening sockets seen with `ss`, "
             f"{'all on 127.0.0.1' if not bad else 'NOT all on 127.0.0.1: ' + ', '.join(bad)}); all stopped at the end\n")
    s.append("## How to read\n")
    s.append(HOW_TO_READ + "\n")
    s.append("## Verdict\n")
    if ctx.must_fail:
        s.append("**MUST-be-0 checks that failed:**\n")
        s += [f"- {m}" for m in ctx.must_fail]
    else:
        s.append("Every MUST-be-0 check is 0: no wrong or partial file under a final name in any run, after any "
                 "kill, on a full disk, beside other commands; no traceback; nothing written outside a cache.")
    if ctx.notes:
        s.append("\nOther observations:\n")
        s += [f"- {n}" for n in ctx.notes]
    s.append("")
    s.append("## 1. Faults by kind\n")
    s.append(f"A seeded sample of round(rate x {len(ctx.keys)}) of the version's files gets one proxy rule each, "
             "hitting that file's first 1 or 2 GETs (chosen per file by the seed): *cut* drops the connection after "
             "a random number of bytes within the first part; *500* answers InternalError; *503* answers SlowDown; "
             "*corrupt* flips the first byte of the body; *stall* sends a random number of bytes then nothing, "
             f"holding the connection (those runs pass `--read-timeout {STALL_READ_TIMEOUT:g}`: the default 60 s "
             "read timeout / 30 s minimum-rate window would only make them slower). *files hit*: files with a rule; "
             "*faults served*: rule hits at the proxy; *exit*, *s*, *retries*, *failed files*: the first run "
             "(through the proxy); *published*: files right under their final names after it; *exit after "
             "re-run*: a second sync without the proxy, only when the first exited 5; *wrong*: over both runs; "
             "*tb*: runs with a traceback.\n")
    s.append(table(sections["faults"]))
    s.append("## 2. kill -9\n")
    s.append(f"Per link and seed: one cache; {sections['kills_n']} syncs through a rate-limited proxy, each "
             f"SIGKILLed after a seeded uniform delay in [0, {KILL_WINDOW:g}] s from its start unless it ended "
             "first, the cache checked after each (every file under the version directory against its expected "
             "bytes, every store object against its name); then one unkilled sync through the same proxy. The "
             "brief's link makes a full sync last 3-4 s, so the mirror is complete after a few kills and the "
             "later runs are no-op resyncs; the slower link keeps nearly every kill mid-transfer. "
             "Calibration: " + "; ".join(calib) + ". "
             "*mid-transfer*: kills while the proxy was sending that run's bytes; *before any GET*: kills before "
             "that run got any file byte; *ended before its kill*: runs that finished (once the mirror is "
             "complete a run is a no-op resync). *bytes at proxy / version*: response body bytes the proxy sent "
             "for GETs of the version's files over all the runs of the seed, killed ones included (counted in the "
             "proxy as they are handed to the socket: errs high, never low; the killed runs' JSON summary is "
             "lost), divided by the version's size; target <= 1.2. *extra KiB per mid-transfer kill*: the bytes "
             "sent beyond one copy of the version, per kill that interrupted a transfer (what -j 4 x 64 KiB parts "
             "in flight put at stake: at most 256 KiB if only whole parts survive a kill).\n")
    s.append(table(sections["kill"]))
    if kill_detail:
        s.append(kill_detail + "\n")
    s.append("## 3. Full disk\n")
    s.append("The cache on a tmpfs (`mount -t tmpfs -o size=...`), unmounted at the end. Rows 1-2: a 2 MiB tmpfs "
             "and a version larger than it (the replica's versions are 2.7 MB: this is the brief's '20 MiB disk, "
             "larger version' at this scale); then `mount -o remount,size=20m` and the same sync resumes. Row 3: "
             "a 20 MiB tmpfs that another process fills to the last byte once 30 % of the version has passed the "
             "(rate-limited, section 2) proxy, so the disk runs out in the middle of writes; then that file is "
             "deleted and the sync resumes. Each full run must stop with exit 4 and one clear line, with nothing "
             "wrong under a final name (an earlier complete version must stay intact).\n")
    s.append(table(sections["disk"]))
    s.append("## 4. Concurrency\n")
    s.append("Through the rate-limited proxy of section 2 (a sync lasts a few seconds). Two syncs: the second "
             "starts once the first holds the lock (the lock file names its holder) and must exit 3 'in use'; a "
             "third with `--wait` queues and must succeed. Beside: while one sync runs, rounds of `status`, "
             "`tables --version 1.0.1` and `verify --fast` are started at once, until the sync ends.\n")
    s.append(table(sections["concurrency"]))
    s.append("## 5. Hostile manifests and caches\n")
    s.append("Manifests: the cases of `tests/test_bad_input.py` (`CASES`) uploaded into their own bucket, each "
             "tried with `manifests use V` and `sync --version V` in a fresh cache, the process's working directory "
             "a scratch directory beside it. Caches: a symlink to a file or directory outside the cache planted at "
             "the named place (the manifest pinned first where needed), then `sync --version 1.0.1`. "
             "*written outside the cache*: any change (name, type, mode, size, mtime, content) under the scratch "
             f"directory outside the cache, or {PWNED} appearing (must be 0); *tracebacks* must be 0.\n")
    s.append(table(sections["hostile"]))
    s.append("Per hostile cache case (`$WORK`: the scratch directory of the case):\n")
    s.append(table(sections["hostile_cache"]))
    s.append("Manifest cases that were not a clean exit 2 naming file and problem, or left more than the lock file "
             "in the cache:\n")
    s.append(table(sections["hostile_detail"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(s))


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer seeds and kills (a check that everything runs)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", type=Path, help="report path (default benchmarks/RELIABILITY.md, "
                                             "benchmarks/work/RELIABILITY-quick.md with --quick)")
    ap.add_argument("--sections", default="faults,kill,disk,concurrency,hostile")
    args = ap.parse_args()
    out = args.out or (QUICK_OUT if args.quick else OUT)
    wanted = set(args.sections.split(","))
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    # SIGTERM / SIGHUP end the battery like Ctrl-C: every `finally` runs (servers, tmpfs, children)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="vbo-reliability-"))
    sections: dict = {"faults": [], "kill": [], "kills_n": 5 if args.quick else 20, "disk": [], "concurrency": [],
                      "hostile": [], "hostile_cache": [], "hostile_detail": []}
    calib: list[str] = []
    try:
        log(f"starting moto on 127.0.0.1 with the replica (work directory {work})")
        with Sandbox(SPEC, log_path=work / "moto.log") as sb:
            expected = expected_files(sb.replica, VERSION)
            keys = {f.key: f.size for f in sb.replica.data[VERSION].values()}
            keys.update({f"{PROJECT}/project_metadata/{t}.csv": len(b) for t, b in sb.replica.tables[VERSION].items()})
            ctx = Ctx(sb, work, args.quick, expected, keys, sum(len(b) for b in expected.values()))
            try:
                if "faults" in wanted:
                    sections["faults"] = section_faults(ctx)
                if "kill" in wanted:
                    sections["kill"], calib = section_kill(ctx)
                if "disk" in wanted:
                    sections["disk"] = section_disk(ctx)
                if "concurrency" in wanted:
                    sections["concurrency"] = section_concurrency(ctx)
                if "hostile" in wanted:
                    sections["hostile"], sections["hostile_cache"], sections["hostile_detail"] = section_hostile(ctx)
            finally:
                kill_live()
        wall = time.monotonic() - t0
        write_report(out, ctx=ctx, started=started, wall=wall, argv=["make reliability"] if not args.quick and
                     not args.out and wanted == {"faults", "kill", "disk", "concurrency", "hostile"}
                     else [Path(sys.executable).name, "benchmarks/reliability.py", *sys.argv[1:]],
                     sections=sections, calib=calib, kill_detail=kill_reading(sections["kill"]))
        log(f"wrote {out} in {wall / 60:.1f} min; MUST-be-0 failures: {len(ctx.must_fail)}")
        for m in ctx.must_fail:
            log(f"  FAILED: {m}")
        return 1 if ctx.must_fail else 0
    finally:
        kill_live()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted: children, servers and the tmpfs are stopped; no report written")
        sys.exit(130)
