"""`make test-slurm`: the Slurm pre-staging recipe of configs/slurm/ end to end on this machine.

It starts, all on 127.0.0.1 and all in one temporary directory:
  - the sandbox S3 server (moto with the replica of tests/conftest.py's TEST_SPEC),
  - tests/faultproxy.py's proxy in front of it, which records every request,
  - munged with a key made for this run, slurmctld and slurmd with a generated slurm.conf
    (one node: this host; one partition; no accounting);
then submits configs/slurm/prestage.sbatch as a job array of SHARDS tasks for one version of
the replica, and configs/slurm/verify.sbatch with --dependency=afterok on the array; waits;
and checks that every task and the verify job exited 0, that every file of the version is in
the cache with the replica generator's bytes, and that no byte of any object was fetched twice
across the shards. Everything it started is stopped at the end, whatever happens (a failure,
a timeout, Ctrl-C, SIGTERM).

Exit codes: 0 passed; 1 a check failed; 2 vbo-mirror has no `sync --shard` yet; 3 Slurm or
munge cannot run here (the reason is printed).

--bringup (for when `--shard` does not exist, or to tell a Slurm problem from a --shard one):
the same cluster, array and dependency, but VBO_MIRROR is a stand-in that drops `--shard K/N`
and runs a plain `sync` for task 0 and nothing for the other tasks, which proves the daemons,
munge, the array, the dependency and prestage.sbatch's command line work.

Not collected by pytest (no test functions; the project imports happen in main()).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
SCRIPTS = ROOT / "configs" / "slurm"
VBO = Path(sys.executable).parent / "vbo-mirror"
# v1.0.1 of the replica: every session (v1.x), 14 behavior and 10 ophys NWBs (the ophys ones
# multipart uploads), plus 4 metadata tables; see mirror/sandbox/replica.py.
VERSION = "1.0.1"
SHARDS = 3
JOBS = 4
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}
SBIN_PATH = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"


class Failure(Exception):
    """A check failed: the message says which and why."""


class CannotRun(Exception):
    """Slurm or munge cannot run on this machine: the message says why."""


def say(msg: str = "") -> None:
    print(msg, flush=True)


def tool(name: str) -> str:
    path = shutil.which(name, path=SBIN_PATH)
    if not path:
        raise CannotRun(f"{name} not found (apt-get install slurm-wlm munge; `make test-slurm` does it)")
    return path


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"    ({path}: {exc.strerror})"
    return "\n".join(f"    {line}" for line in text[-lines:]) or "    (empty)"


def parse_record(line: str) -> dict[str, str]:
    """One line of `scontrol -o show job` → {Key: Value}."""
    return dict(re.findall(r"(?:^|\s)([A-Za-z][\w:/]*)=(\S*)", line))


def become_subreaper() -> bool:
    """Processes of ours whose parent dies (slurmd double-forks each slurmstepd, which forks the
    job) are re-parented to us instead of PID 1: we can then stop and reap all of them."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def children(exclude: set[int]) -> dict[int, str]:
    """Our child processes not in `exclude` → 'name (state)'."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in exclude:
            continue
        try:
            fields = dict(line.split(":", 1) for line in (d / "status").read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(os.getpid()):
            out[int(d.name)] = f"{fields.get('Name', '?').strip()} ({fields.get('State', '?').strip()})"
    return out


def stop_orphans(exclude: set[int]) -> list[str]:
    """Terminate, then kill, and reap what is left of ours (jobs, slurmstepd) → what it was."""
    left = children(exclude)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, what in children(exclude).items():
            if "zombie" not in what:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any("zombie" not in w for w in children(exclude).values()):
            time.sleep(0.1)
    for pid in children(exclude):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return [f"{what.split(' (')[0]} pid {pid}" for pid, what in left.items() if "zombie" not in what]


# --- the cluster -------------------------------------------------------------------------------


class SlurmCluster:
    """munged + slurmctld + slurmd on this host, all files under `root`, daemons in the
    foreground (-F / -D) as our children in their own sessions, stopped by stop()."""

    def __init__(self, root: Path, *, free_port) -> None:
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.log = root / "log"
        self.munge_socket = root / "munge" / "munge.socket"
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []  # (name, process, its log)
        self.job_ids: list[str] = []
        self.free_port = free_port
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # clients
    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        r = subprocess.run([tool(argv[0]), *argv[1:]], env=self.env, check=False, capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise Failure(f"{' '.join(argv)} exited {r.returncode}: {(r.stderr or r.stdout).strip()}")
        return r

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        out = self.log / f"{name}.out"
        with open(out, "ab") as f:
            p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=self.env, start_new_session=True, cwd=self.root)
        self.procs.append((name, p, out))
        return p

    def _wait_for(self, what: str, proc: subprocess.Popen, logs: list[Path], ready, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise CannotRun(f"{what} exited with code {proc.returncode} at start:\n"
                                + "\n".join(f"  {p}:\n{tail(p)}" for p in logs))
            if ready():
                return
            time.sleep(0.2)
        raise CannotRun(f"{what} did not become ready within {timeout:g}s:\n"
                        + "\n".join(f"  {p}:\n{tail(p)}" for p in logs))

    def start(self) -> None:
        for d in ("munge", "log", "state", "spool", "jobs"):
            (self.root / d).mkdir(exist_ok=True)
        # munged checks permissions: its socket directory (and every parent) must be
        # traversable by all and not writable by others; the key readable by its owner only.
        os.chmod(self.root, 0o755)
        os.chmod(self.root / "munge", 0o755)
        key = self.root / "munge" / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(1024))
        m = self.root / "munge"
        munged = self._spawn("munged", [tool("munged"), "--foreground", f"--key-file={key}",
                                        f"--socket={self.munge_socket}", f"--pid-file={m / 'munged.pid'}",
                                        f"--log-file={self.log / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"])
        self._wait_for("munged", munged, [self.log / "munged.out", self.log / "munged.log"], self.munge_socket.exists)
        r = subprocess.run(f"{tool('munge')} -n -S {self.munge_socket} | {tool('unmunge')} -S {self.munge_socket}",
                           shell=True, check=False, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise CannotRun(f"munge credentials do not round-trip through munged: {(r.stderr or r.stdout).strip()}")

        self.write_conf()
        ctld = self._spawn("slurmctld", [tool("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait_for("slurmctld", ctld, [self.log / "slurmctld.out", self.log / "slurmctld.log"],
                       lambda: "is UP" in self.run("scontrol", "ping", check=False, timeout=10).stdout)
        slurmd = self._spawn("slurmd", [tool("slurmd"), "-D", "-N", self.host, "-f", str(self.conf)])

        def node_up() -> bool:
            r = self.run("scontrol", "-o", "show", "node", self.host, check=False, timeout=10)
            state = parse_record(r.stdout).get("State", "")
            if any(s in state for s in ("DRAIN", "INVAL", "FAIL")):
                raise CannotRun(f"node {self.host} registered as {state}: {parse_record(r.stdout).get('Reason', '')}\n"
                                f"  slurmd.log:\n{tail(self.log / 'slurmd.log')}\n"
                                f"  slurmctld.log:\n{tail(self.log / 'slurmctld.log')}")
            return state.startswith("IDLE")

        self._wait_for("slurmd", slurmd, [self.log / "slurmd.out", self.log / "slurmd.log", self.log / "slurmctld.log"],
                       node_up, timeout=60)

    def write_conf(self) -> None:
        """One node (this host, at 127.0.0.1), one partition, no accounting; every path under root."""
        cpus, mem = 2, 1024
        try:
            hw = parse_record(subprocess.run([tool("slurmd"), "-C"], check=False, capture_output=True, text=True,
                                             timeout=30).stdout.splitlines()[0])
            cpus = max(1, min(2, int(hw.get("CPUs", 2))))
            mem = max(256, int(int(hw.get("RealMemory", 1200)) * 0.9))  # below what slurmd finds, or it drains the node
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass
        r = self.root
        plugin_dir = next((d for d in ("/usr/lib/x86_64-linux-gnu/slurm-wlm", "/usr/lib/aarch64-linux-gnu/slurm-wlm",
                                       "/usr/lib/slurm-wlm", "/usr/lib64/slurm", "/usr/lib/slurm") if Path(d).is_dir()), None)
        (r / "spool").mkdir(exist_ok=True)
        self.conf.write_text(f"""# generated by tests/slurm/prestage_check.py for one run; everything lives in {r}
ClusterName=vbotest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={self.free_port()}
SlurmdPort={self.free_port()}
# bind to the address the host's name resolves to (127.0.0.1 here), not to every address
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={self.log / 'slurmctld.log'}
SlurmdLogFile={self.log / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
{f'PluginDir={plugin_dir}' if plugin_dir else ''}
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# keep finished jobs visible to scontrol for the whole run
MinJobAge=3600
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
# FORCE:4: up to 4 jobs share a core, so that all shards run at once on this one small node,
# as they would on as many nodes of a real cluster
PartitionName=vbo Nodes={self.host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
""")

    def sbatch(self, *argv: str, env: dict) -> str:
        r = subprocess.run([tool("sbatch"), "--parsable", *argv], env=dict(env, SLURM_CONF=str(self.conf)),
                           check=False, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise Failure(f"sbatch {' '.join(argv)} exited {r.returncode}: {r.stderr.strip()}")
        jid = r.stdout.strip().split(";")[0]
        self.job_ids.append(jid)
        return jid

    def records(self, jid: str) -> list[dict[str, str]]:
        r = self.run("scontrol", "-o", "show", "job", jid, check=False)
        if r.returncode != 0:
            raise Failure(f"scontrol show job {jid}: {(r.stderr or r.stdout).strip()}")
        return [parse_record(line) for line in r.stdout.splitlines() if line.strip()]

    def queue(self) -> str:
        return self.run("squeue", check=False).stdout

    def stop(self) -> list[str]:
        """Cancel our jobs, then stop the daemons (last started first); → what went wrong."""
        problems = []
        live = list(self.job_ids)
        if live and any(p.poll() is None for n, p, _ in self.procs if n == "slurmctld"):
            try:
                self.run("scancel", *live, check=False)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    r = self.run("squeue", "-h", "-j", ",".join(live), check=False, timeout=10)
                    if r.returncode != 0 or not r.stdout.strip():
                        break
                    time.sleep(0.5)
                else:
                    problems.append(f"jobs still in the queue after scancel:\n{self.queue()}")
            except (OSError, subprocess.SubprocessError, CannotRun) as exc:
                problems.append(f"scancel: {exc}")
        for name, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    problems.append(f"{name} (pid {proc.pid}) ignored SIGTERM for 15 s: killed")
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait()
            try:  # what else ran in the daemon's session (slurmscriptd, a slurmstepd)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.procs.clear()
        return problems


# --- the bring-up stand-in for `--shard` ------------------------------------------------------


def bringup_standin(path: Path) -> Path:
    """A VBO_MIRROR for --bringup: without --shard it is vbo-mirror; with --shard K/N it runs
    the rest of the command line as a plain sync for K == 0 and does nothing for K > 0."""
    path.write_text(f"""#!/bin/bash
args=(); shard=""
while (($#)); do
    if [[ $1 == --shard ]]; then shard=$2; shift 2; continue; fi
    args+=("$1"); shift
done
if [[ -n $shard && ${{shard%%/*}} != 0 ]]; then
    echo "bring-up: vbo-mirror has no --shard yet; shard $shard does nothing" >&2
    exit 0
fi
[[ -n $shard ]] && echo "bring-up: vbo-mirror has no --shard yet; shard $shard syncs everything" >&2
exec {VBO} "${{args[@]}}"
""")
    path.chmod(0o755)
    return path


# --- checks ---------------------------------------------------------------------------------


def wait_for_jobs(cluster: SlurmCluster, array_id: str, verify_id: str, shards: int, timeout: float) -> dict:
    """Poll `scontrol show job` until the array and the verify job are done → {task: record}."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        tasks = cluster.records(array_id)
        verify = cluster.records(verify_id)[0]
        split = all(re.fullmatch(r"\d+", t.get("ArrayTaskId", "")) for t in tasks)
        done = split and len(tasks) == shards and all(t.get("JobState") in TERMINAL for t in tasks)
        if verify.get("JobState") == "PENDING" and verify.get("Reason") == "DependencyNeverSatisfied":
            cluster.run("scancel", verify_id, check=False)
        elif done and verify.get("JobState") in TERMINAL:
            return {"tasks": {int(t["ArrayTaskId"]): t for t in tasks}, "verify": verify}
        now = " ".join(f"{t.get('ArrayTaskId')}:{t.get('JobState')}" for t in tasks) + f" verify:{verify.get('JobState')}"
        if now != last:
            say(f"  [{time.strftime('%H:%M:%S')}] {now}")
            last = now
        if time.monotonic() > deadline:
            raise Failure(f"the jobs were not done after {timeout:g}s:\n{cluster.queue()}")
        time.sleep(1)


def last_json(path: Path) -> dict:
    for line in reversed(path.read_text(errors="replace").splitlines() if path.exists() else []):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return {}


def json_docs(path: Path) -> list[dict]:
    """The JSON documents printed one after the other (pretty-printed) in a file."""
    text, docs, i = (path.read_text(errors="replace") if path.exists() else ""), [], 0
    dec = json.JSONDecoder()
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return docs
        try:
            doc, i = dec.raw_decode(text, i)
        except ValueError:
            return docs
        docs.append(doc if isinstance(doc, dict) else {})


def fetched_intervals(requests, bucket: str, sizes: dict[str, int]) -> dict[str, list[tuple[int, int]]]:
    """key → the byte intervals [start, end) its GETs asked for, from the proxy's record.

    We count bytes, not requests: the mirror may fetch a large object as ranged parts (several
    GETs of one key, each for other bytes), and a full GET is the interval [0, size). Any two
    intervals of one key that overlap mean that some byte of that object was fetched twice (by
    two shards, or by one); with no overlap and the whole object covered, the object was
    fetched exactly once. No faults are injected here, so a repeated request is a real refetch.
    """
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    prefix = f"/{bucket}/"
    for method, path_qs, headers in requests:
        path = unquote(urlsplit(path_qs).path)
        if method != "GET" or not path.startswith(prefix) or path[len(prefix):] not in sizes:
            continue
        key = path[len(prefix):]
        size = sizes[key]
        rng = next((v for k, v in headers.items() if k.lower() == "range"), None)
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip()) if rng else None
        if rng is None or m is None:
            out[key].append((0, size))
        elif m[1] == "":
            out[key].append((max(0, size - int(m[2])), size))
        else:
            out[key].append((int(m[1]), min(size, int(m[2]) + 1) if m[2] else size))
    return out


def overlapping_bytes(intervals: list[tuple[int, int]]) -> int:
    total, reach = 0, 0
    for start, end in sorted(intervals):
        if start < reach:
            total += min(end, reach) - start
        reach = max(reach, end)
    return total


def run(args, tmp: Path, stack: ExitStack) -> int:
    sys.path.insert(0, str(TESTS))
    from conftest import TEST_SPEC  # the replica the test suite uses
    from faultproxy import FaultProxy
    from test_sync import (  # view path → the replica generator's bytes
        PROJECT,
        expected_files,
    )

    from mirror.sandbox import Sandbox
    from mirror.sandbox.replica import BUCKET, VERSIONS
    from mirror.sandbox.server import free_port

    if args.version not in VERSIONS:
        say(f"--version {args.version}: the replica has {', '.join(VERSIONS)}")
        return 2
    t0 = time.monotonic()
    help_text = subprocess.run([str(VBO), "sync", "--help"], check=False, capture_output=True, text=True).stdout
    has_shard = "--shard" in help_text
    if not has_shard and not args.bringup:
        say("vbo-mirror has no --shard yet (`vbo-mirror sync --help`); "
            "run with --bringup to check the Slurm side with a plain sync in task 0")
        return 2
    for name in ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel"):
        tool(name)

    say(f"temp dir {tmp}")
    if become_subreaper():  # registered first, so it runs last: after every daemon and the sandbox
        stack.callback(lambda: [say(f"cleanup: stopped a leftover process: {p}") for p in stop_orphans(set())])
    say("starting the sandbox S3 server (moto + replica) and the counting proxy ...")
    sandbox = stack.enter_context(Sandbox(TEST_SPEC, log_path=tmp / "log" / "moto.log"))
    replica = sandbox.replica
    # Paced bodies (--rate bytes/s per response): a sync of this small replica would otherwise
    # be over in 0.3 s, before the next task starts, and that shard would take every file
    # (a shard that is done with its own files takes the unclaimed ones of the others).
    proxy = stack.enter_context(FaultProxy(upstream=sandbox.url, count_keys=(f"/{BUCKET}/{PROJECT}/",),
                                           rate=args.rate or None))
    say(f"  moto {sandbox.url}, proxy {proxy.url}" + (f" ({args.rate:,.0f} B/s per response)" if args.rate else ""))

    say("starting munged, slurmctld, slurmd ...")
    cluster = SlurmCluster(tmp, free_port=free_port)
    stack.callback(lambda: [say(f"cleanup: {p}") for p in cluster.stop()])
    # cancelled jobs drop their connections to the proxy mid-body: not worth a traceback each
    stack.callback(lambda: logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL))
    cluster.start()
    t_up = time.monotonic()
    say(f"  cluster up in {t_up - t0:.1f}s (node {cluster.host}, conf {cluster.conf})")

    cache = tmp / "cache"
    out = tmp / "jobs"
    vbo = str(bringup_standin(tmp / "vbo-mirror-bringup")) if args.bringup else str(VBO)
    job_env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VBO_", "AWS_", "SLURM_")) or k == "AWS_EC2_METADATA_DISABLED"}
    job_env.update(AWS_EC2_METADATA_DISABLED="true", PYTHONUNBUFFERED="1")
    # --json: each task's summary is the last line of its stdout (the table below reads it).
    export = (f"ALL,VBO_CACHE_DIR={cache},VBO_VERSION={args.version},VBO_JOBS={args.jobs},VBO_MIRROR={vbo},"
              f"VBO_EXTRA=--endpoint-url {proxy.url} --json")
    # 1 CPU and little memory per task, within this small node (the partition shares its cores
    # between up to 4 jobs, so every shard runs at once, as on a cluster).
    common = ["--cpus-per-task=1", "--mem=512M", f"--chdir={tmp}", f"--export={export}"]
    array_id = cluster.sbatch(*common, f"--array=0-{args.shards - 1}", f"--output={out}/prestage_%a.out",
                              f"--error={out}/prestage_%a.err", str(SCRIPTS / "prestage.sbatch"), env=job_env)
    verify_id = cluster.sbatch(*common, f"--dependency=afterok:{array_id}", f"--output={out}/verify.out",
                               f"--error={out}/verify.err", str(SCRIPTS / "verify.sbatch"), env=job_env)
    say(f"submitted array {array_id} (--array=0-{args.shards - 1}, version {args.version}, -j {args.jobs}"
        f"{', bring-up: task 0 syncs everything' if vbo != str(VBO) else ''}) and verify {verify_id} (afterok)")

    done = wait_for_jobs(cluster, array_id, verify_id, args.shards, args.timeout)
    t_jobs = time.monotonic()

    failures: list[str] = []
    say("")
    say(f"{'job':<12} {'state':<11} {'exit':<5} {'secs':>5} {'files':>5} {'fetched':>7} {'bytes':>10} "
        f"{'present':>7} {'elsewhere':>9}")
    rows = [(f"{array_id}_{k}", rec, out / f"prestage_{k}.out", out / f"prestage_{k}.err")
            for k, rec in sorted(done["tasks"].items())]
    rows.append((f"{verify_id} verify", done["verify"], out / "verify.out", out / "verify.err"))
    fetched_by_shards = 0
    for label, rec, stdout, stderr in rows:
        s = last_json(stdout) if "verify" not in label else {}
        secs = "-"
        try:
            fmt = "%Y-%m-%dT%H:%M:%S"
            secs = str(int(time.mktime(time.strptime(rec["EndTime"], fmt)) - time.mktime(time.strptime(rec["StartTime"], fmt))))
        except (KeyError, ValueError):
            pass
        say(f"{label:<12} {rec.get('JobState', '?'):<11} {rec.get('ExitCode', '?'):<5} {secs:>5} "
            f"{s.get('files', '-'):>5} {s.get('files_fetched', '-'):>7} {s.get('bytes_fetched', '-'):>10} "
            f"{s.get('files_present', '-'):>7} {s.get('files_elsewhere', '-'):>9}")
        fetched_by_shards += int(s.get("files_fetched") or 0)
        if rec.get("JobState") != "COMPLETED" or rec.get("ExitCode") != "0:0":
            failures.append(f"{label}: {rec.get('JobState')} exit {rec.get('ExitCode')} (reason {rec.get('Reason')})\n"
                            f"  {stderr}:\n{tail(stderr)}\n  {stdout}:\n{tail(stdout, 8)}")

    # every file of the version, with the generator's bytes
    want = expected_files(replica, args.version)
    missing = [rel for rel in want if not (cache / rel).is_file()]
    wrong = [rel for rel in want if rel not in missing and (cache / rel).read_bytes() != want[rel]]
    if missing:
        failures.append(f"{len(missing)} of {len(want)} files missing from the cache, e.g. {missing[:3]}")
    if wrong:
        failures.append(f"{len(wrong)} files with wrong bytes, e.g. {wrong[:3]}")

    # no byte of any object fetched twice across all shards
    sizes = {f.key: f.size for f in replica.data[args.version].values()}
    sizes.update({f"{PROJECT}/project_metadata/{t}.csv": len(b) for t, b in replica.tables[args.version].items()})
    got = fetched_intervals(list(proxy.requests), BUCKET, sizes)
    twice = {k: overlapping_bytes(iv) for k, iv in got.items() if overlapping_bytes(iv)}
    unfetched = [k for k in sizes if k not in got]
    gets = sum(len(iv) for iv in got.values())
    manifest_gets = sum(1 for m, p, _ in proxy.requests if m == "GET" and "/manifests/" in p)
    if twice:
        failures.append(f"{len(twice)} objects had bytes fetched more than once: "
                        + ", ".join(f"{k.rsplit('/', 1)[-1]} ({n} B again, {len(got[k])} GETs)" for k, n in list(twice.items())[:5]))
    if unfetched:
        failures.append(f"{len(unfetched)} objects of the version never went through the proxy, e.g. {unfetched[:3]}")

    say("")
    say(f"files: {len(want) - len(missing) - len(wrong)}/{len(want)} present with the right bytes "
        f"({sum(len(b) for b in want.values()):,} B)")
    say(f"GETs of the version's {len(sizes)} objects: {gets} over {len(got)} keys, max "
        f"{max((len(v) for v in got.values()), default=0)} per key, {sum(twice.values())} B fetched twice; "
        f"manifest GETs: {manifest_gets}; requests through the proxy: {len(proxy.requests)}")
    say(f"files fetched according to the tasks' summaries: {fetched_by_shards} "
        f"by {sum(1 for _, r, o, _ in rows[:-1] if int(last_json(o).get('files_fetched') or 0))} of {args.shards} tasks")
    docs = json_docs(out / "verify.out")  # verify --fast, then status (--json from VBO_EXTRA)
    verified = docs[0] if docs else {}
    versions = {v.get("version"): v for v in (docs[1].get("versions", []) if len(docs) > 1 else [])}
    mine = versions.get(args.version, {})
    say(f"verify --fast: ok={verified.get('ok')}, {verified.get('objects')} objects, "
        f"{len(verified.get('corrupt', []))} corrupt, {len(verified.get('views_wrong', []))} views wrong; "
        f"status {args.version}: {mine.get('present')}/{mine.get('files')} present, {mine.get('missing')} missing, "
        f"{mine.get('wrong')} wrong, complete={mine.get('complete')}")
    if done["verify"].get("JobState") == "COMPLETED" and not (verified.get("ok") and mine.get("complete")):
        failures.append(f"the verify job's output does not say ok and complete: {out / 'verify.out'}")
    say(f"time: cluster up {t_up - t0:.0f}s, jobs {t_jobs - t_up:.0f}s, total {time.monotonic() - t0:.0f}s")
    mode = "BRING-UP ONLY: task 0 ran a plain sync, no --shard" if args.bringup else "--shard"
    if failures:
        say("")
        say("FAILED (" + mode + "):")
        for f in failures:
            say(f"  - {f}")
        for name in ("slurmctld.log", "slurmd.log"):
            say(f"  {name}:\n{tail(tmp / 'log' / name, 15)}")
        return 1
    say(f"PASSED ({mode})")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", default=VERSION, help="replica version to pre-stage [%(default)s]")
    ap.add_argument("--shards", type=int, default=SHARDS, help="array tasks [%(default)s]")
    ap.add_argument("--jobs", type=int, default=JOBS, help="VBO_JOBS [%(default)s]")
    ap.add_argument("--rate", type=float, default=150_000,
                    help="proxy pacing, bytes/s per response body, 0: off [%(default)s]")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for the jobs [%(default)s]")
    ap.add_argument("--bringup", action="store_true",
                    help="task 0 runs a plain sync (no --shard), the others nothing: checks the Slurm side only")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (kept anyway on failure)")
    args = ap.parse_args()

    def on_signal(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a background job starts with it ignored
        signal.signal(sig, on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="vbo-slurm-"))
    (tmp / "log").mkdir()
    rc = 1
    try:
        with ExitStack() as stack:
            try:
                rc = run(args, tmp, stack)
            finally:  # a second Ctrl-C must not cut the cleanup short (it is bounded by timeouts)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except CannotRun as exc:
        say(f"Slurm cannot run here: {exc}")
        rc = 3
    except Failure as exc:
        say(f"FAILED: {exc}")
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            say(f"  {name}:\n{tail(tmp / 'log' / name, 15)}")
        rc = 1
    except KeyboardInterrupt as exc:
        say(f"interrupted ({exc or 'SIGINT'}): everything started was stopped")
        rc = 130
    finally:
        if rc == 0 and not args.keep or rc == 2:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            say(f"logs and cache kept in {tmp}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
