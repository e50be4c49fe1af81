#!/usr/bin/env python
"""An emulated WAN link for the benchmarks: a fixed round trip, a bandwidth cap and a ~1 MiB
TCP receive window between the S3 server and the tools, on one machine whose kernel has no
netem. Needs root, iproute2 (`ip`, `tc`) and iptables; nothing outside the standard library.

    with WanLink(rtt_ms=30, rate_mbit=500, rcvbuf=1 << 20) as link:
        weed = WanWeed(link, find_weed(None), workdir).start()   # inside the server namespace
        with link.inside(link.server_ns):
            load_in_child(weed.url, spec, replica, tmp)          # loads with no link in between
        m = spawner.run(link.client_argv(["s5cmd", "--endpoint-url", weed.url, ...]), out=log_path)
        link.check()                                             # raises if the delay program died
        weed.stop()

    .venv/bin/python benchmarks/wan.py [--rtt-ms 30 --rate-mbit 500 --streams 8]   # self-check

Layout: three network namespaces in a row, server - router - client, joined by two veth pairs
on private /30s (server 10.199.0.1, client 10.199.0.6). The veths are created inside the router
namespace with their peers placed straight into the others, so the host namespace never holds
an interface, route or rule of ours, and deleting the namespaces removes everything. The host
has no route to 10.199.0.0/29: a tool started outside the client namespace cannot reach the
server (on this sandbox the default gateway even accepts any TCP connect, so such a mistake
shows up as odd errors rather than as a LAN-speed result).

- Server namespace: `weed mini` (WanWeed) listening on server_ip. Whatever is started in it
  (the replica loader, checks) talks to the server directly, not through the link.
- Router namespace: the link. Why a router rather than shaping the server's own veth: a queue
  on the sending host's device is seen by its TCP directly (TCP Small Queues throttle the
  socket; a full qdisc returns an error to it instead of losing a packet), so the server would
  never meet a bottleneck the way it does on a real path. The router's tbf queue drops packets
  like any remote bottleneck, and the server finds out from the ACKs, one RTT later.
- Client namespace: the tools, started with `ip netns exec` (client_argv; ip execs the tool in
  place, so run_measured or Spawner.run still measure the tool itself: ip adds ~1.5 ms of wall
  time and nothing to peak RSS) or from a thread inside it (inside()). Its net.ipv4.tcp_rmem max = rcvbuf gives every tool the same window:
  autotuning stops there, and with 9000-byte frames the kernel advertises ~95% of it (950-990 kB
  for 1 MiB). That binds every socket that leaves its buffer to autotuning, which the tools
  compared all do (vbo-mirror sets only TCP_NODELAY; Go's and Python's HTTP stacks set no
  SO_RCVBUF; s5cmd's sockets were seen at rb=1048576). A socket that sets SO_RCVBUF itself
  escapes it: net.core.rmem_max is read-only outside the initial namespace, and this kernel
  overrides a route's `window` metric as soon as it has measured the traffic (tried: a 4 MiB
  SO_RCVBUF got a 2 MiB window and 59 MB/s on one connection).

Latency: nfq_delay.py (next to this file) holds packets in an NFQUEUE of the router. Only the
client-to-server direction is delayed, by the whole RTT: every round trip (SYN/SYN-ACK,
request/response, data/ACK) crosses the link once each way, so it lasts exactly as long as with
RTT/2 each way, and that direction carries only requests and ACKs, ~1 ACK per 18 kB of data.
The rule has no --queue-bypass: if the delay program dies the link drops packets (the run
stalls and fails) instead of quietly becoming a LAN; check() tells. Packets are released on a
2 ms grid (tick_ms), so single round trips vary by about +-1 ms around the mean; the program's
wake-ups, not the packets, are what cost CPU on this VM (~50-150 us each), hence the grid.
A handshake through the idle link measures ~31 ms: the ~1 ms over is this VM's wake-up latency
(info() records it as measured_rtt_ms).

Bandwidth: tbf on both router egresses (uploads get the same cap), rate_mbit counted at layer 2,
a 128 KiB burst (more than one 64 KiB GSO packet, so tbf never has to cut one up) and a queue of
queue_ms (10 ms: 625 kB at 500 Mbit/s). Why 500 Mbit/s (62.5 MB/s) by default: one connection
with a ~1 MiB window over 30 ms gets at most ~33 MB/s (measured 28-29 MB/s with curl), so a
tool needs at least two connections, in practice three or more, to fill the link, which is what
the comparison is about; 1 GB takes ~17 s and 2 GB ~33 s at the cap; and the delay program stays
at 0.13-0.23 CPU s per second while the link is full (0.06-0.12 with one stream; the spread is
the machine's other load), and that includes the kernel work its verdicts set off: forwarding
the released ACKs, and the server's TCP sending data in reply. At 800 Mbit/s this 2-core
machine ran out of CPU (tools, server, delay program) before the link filled (690-710 Mbit/s).

MTU 9000 on every veth, for CPU: the server's TCP sends 2-segment GSO packets, and the client
ACKs each, so a 9000-byte MTU means ~6x fewer ACKs to delay than 1500. To keep slow start
honest the server's route to the client has initcwnd 2 (2 x 8948 bytes, close to the 10 x 1448
a 1500-byte path starts with); congestion avoidance still grows by one (bigger) segment per RTT,
so recovery after a loss is quicker than on a 1500-byte path. The same route sets the server's
congestion control (server_cc, default cubic, Linux's default; S3's own is not published): a
namespace cannot change its default to anything outside the host's
net.ipv4.tcp_allowed_congestion_control (here the host default is bbr), but a route's congctl
may. With bbr, 8 s5cmd streams lost ~9% of packets at the 10 ms queue, with cubic ~1.5%, for the
same throughput.

Cleanup: __exit__ (and an atexit hook, and a later run with the same name, for leftovers of a
crashed one) stops the delay program, then whatever process is still inside the three
namespaces (only ever something started there for the benchmark, e.g. a weed not stopped), then
deletes the namespaces; the veths, qdiscs and iptables rules go with them. The delay program
also exits by itself within a second of this process dying (PR_SET_PDEATHSIG; so create the
link in the thread that lives longest, normally the main one).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from common import Weed, log, parse_size

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(ns: str):
    """Move the calling thread (only it) into network namespace `ns` for the block. Sockets made
    in the block, and processes started from this thread in it (subprocess, multiprocessing),
    belong to `ns` for good; other threads are unaffected. multiprocessing's spawn also starts
    its resource-tracker helper on first use, which would then live in `ns` and be stopped with
    the link: call multiprocessing.resource_tracker.ensure_running() before the first spawn in
    here to keep it outside."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def _run(argv: list[str], *, check: bool = True) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False)
    if check and p.returncode:
        raise RuntimeError(f"`{' '.join(argv)}` failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def _sysctl(key: str, value: object | None = None) -> str:
    """Read or write a sysctl of the calling thread's network namespace (/proc/sys/net follows
    the namespace of whoever opens it)."""
    path = "/proc/sys/" + key.replace(".", "/")
    if value is not None:
        with open(path, "w") as fh:
            fh.write(str(value))
    with open(path) as fh:
        return fh.read().strip()


def _ns_exists(ns: str) -> bool:
    return os.path.exists(f"/run/netns/{ns}")


def _ns_pids(ns: str) -> list[int]:
    return [int(p) for p in _run(["ip", "netns", "pids", ns], check=False).split() if p.isdigit()]


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class WanLink:
    """The emulated link; see the module docstring. Use as a context manager (or up()/down())."""

    def __init__(self, rtt_ms: float = 30.0, rate_mbit: float = 500.0, rcvbuf: int = 1 << 20, *,
                 mtu: int = 9000, queue_ms: float = 10.0, tick_ms: float = 2.0, initcwnd: int | None = None,
                 server_cc: str | None = "cubic", name: str = "vbo-wan", subnet: str = "10.199.0") -> None:
        self.rtt_ms, self.rate_mbit, self.rcvbuf = rtt_ms, rate_mbit, rcvbuf
        self.mtu, self.queue_ms, self.tick_ms = mtu, queue_ms, tick_ms
        # the initial window, in bytes, of a 1500-byte path (10 x 1448), in our bigger segments
        self.initcwnd = initcwnd if initcwnd is not None else max(2, round(14480 / (mtu - 52)))
        self.server_ns, self.router_ns, self.client_ns = f"{name}-srv", f"{name}-rtr", f"{name}-cli"
        self.server_ip, self._rtr_srv_ip = f"{subnet}.1", f"{subnet}.2"
        self._rtr_cli_ip, self.client_ip = f"{subnet}.5", f"{subnet}.6"
        self._subnet = subnet
        self.delayer: subprocess.Popen | None = None
        self.delay_stats: dict | None = None  # the delay program's own counters, after down()
        self.server_cc = server_cc or ""  # None: the namespace default (the host's default)
        self.measured_rtt_ms: float | None = None  # median TCP connect time right after up()
        self._up = False
        self._atexit = False

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return self.server_ns, self.router_ns, self.client_ns

    # --- running things on either side ----------------------------------------------------

    @staticmethod
    def argv_in(ns: str, cmd: list[str]) -> list[str]:
        """`cmd` run in namespace `ns`. `ip netns exec` execs the command in place (no fork),
        so os.wait4 on the child still measures the tool itself."""
        return ["ip", "netns", "exec", ns, *cmd]

    def client_argv(self, cmd: list[str]) -> list[str]:
        return self.argv_in(self.client_ns, cmd)

    def server_argv(self, cmd: list[str]) -> list[str]:
        return self.argv_in(self.server_ns, cmd)

    inside = staticmethod(inside)

    # --- life cycle -----------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> Self:
        for ns in self.namespaces:
            if _ns_exists(ns):
                log(f"wan: removing namespace {ns} left by an earlier run")
        self._remove_namespaces()
        if not self._atexit:
            atexit.register(self.down)
            self._atexit = True
        try:
            self._build()
            self._start_delayer()
            _run(self.argv_in(self.router_ns, ["iptables", "-w", "10", "-A", "FORWARD", "-i", "to-cli",
                                               "-j", "NFQUEUE", "--queue-num", "0"]))
            self._up = True
            rtts = sorted(self.measure_rtt(5))
            self.measured_rtt_ms = round(rtts[len(rtts) // 2], 2)
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        srv, rtr, cli = self.namespaces
        for ns in self.namespaces:
            _run(["ip", "netns", "add", ns])
            with inside(ns):
                for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
                    with contextlib.suppress(OSError):  # quiet: no link-local addresses, no RS/DAD
                        _sysctl(key, 1)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", rtr, "link", "add", "to-srv", "type", "veth", "peer", "name", "wan0", "netns", srv])
        _run(["ip", "-n", rtr, "link", "add", "to-cli", "type", "veth", "peer", "name", "wan0", "netns", cli])
        for ns, dev, addr in ((srv, "wan0", self.server_ip), (rtr, "to-srv", self._rtr_srv_ip),
                              (rtr, "to-cli", self._rtr_cli_ip), (cli, "wan0", self.client_ip)):
            _run(["ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "mtu", str(self.mtu), "up"])
        _run(["ip", "-n", srv, "route", "add", f"{self._subnet}.4/30", "via", self._rtr_srv_ip,
              "initcwnd", str(self.initcwnd), *(["congctl", self.server_cc] if self.server_cc else [])])
        _run(["ip", "-n", cli, "route", "add", f"{self._subnet}.0/30", "via", self._rtr_cli_ip])
        with inside(rtr):
            _sysctl("net.ipv4.ip_forward", 1)
        with inside(cli):
            _sysctl("net.ipv4.tcp_rmem", f"4096\t{min(131072, self.rcvbuf)}\t{self.rcvbuf}")
        if not self.server_cc:
            with inside(srv):
                self.server_cc = _sysctl("net.ipv4.tcp_congestion_control")
        burst = max(128 << 10, 2 * (self.mtu + 64))
        for dev in ("to-cli", "to-srv"):
            _run(["tc", "-n", rtr, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{self.rate_mbit:g}mbit",
                  "burst", str(burst), "latency", f"{self.queue_ms:g}ms"])

    def _start_delayer(self) -> None:
        cmd = [sys.executable, str(HERE / "nfq_delay.py"), "--queue", "0", "--delay-ms", f"{self.rtt_ms:g}",
               "--tick-ms", f"{self.tick_ms:g}", "--parent-pid", str(os.getpid())]
        with inside(self.router_ns):
            # its own session: a Ctrl-C at the terminal must not kill it before down() runs
            self.delayer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                            start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if select.select([self.delayer.stdout], [], [], 0.2)[0]:
                line = self.delayer.stdout.readline()
                if line.strip() == "ready":
                    return
                if not line:
                    break
        raise RuntimeError(f"the delay program did not start (exit code {self.delayer.poll()}); "
                           "its error, if any, is above")

    def check(self) -> None:
        """Raise unless the link is up and its delay program alive (a dead one means a link
        that drops every client-to-server packet)."""
        if not self._up or self.delayer is None:
            raise RuntimeError("the WAN link is not up")
        if self.delayer.poll() is not None:
            raise RuntimeError(f"the WAN link's delay program exited (code {self.delayer.returncode})")

    def delay_cpu_seconds(self) -> float:
        """CPU time of the delay program so far (exact, from schedstat). It includes the kernel
        work its verdicts set off: forwarding the released packets, and on the server the
        ACK processing and the data sent in reply."""
        if self.delayer is None:
            return 0.0
        try:
            with open(f"/proc/{self.delayer.pid}/schedstat") as fh:
                return int(fh.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    def down(self) -> None:
        """Idempotent; safe on a half-built link."""
        self._up = False
        d, self.delayer = self.delayer, None
        if d is not None:
            if d.poll() is None:
                d.send_signal(signal.SIGTERM)
            try:
                out, _ = d.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                d.kill()
                out, _ = d.communicate()
            for line in reversed((out or "").splitlines()):
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        self.delay_stats = json.loads(line)
                    break
        self._remove_namespaces()

    def _remove_namespaces(self) -> None:
        for ns in self.namespaces:
            if not _ns_exists(ns):
                continue
            pids = _ns_pids(ns)
            if pids:
                log(f"wan: stopping {len(pids)} process(es) still in namespace {ns}: {pids}")
                for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                    for pid in pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, sig)
                    end = time.monotonic() + grace
                    while time.monotonic() < end and any(_pid_alive(p) for p in pids):
                        time.sleep(0.1)
                    if not any(_pid_alive(p) for p in pids):
                        break
            _run(["ip", "netns", "del", ns], check=False)

    # --- facts and checks -----------------------------------------------------------------

    def info(self) -> dict:
        """The link's settings, for a results file. measured_rtt_ms is what a TCP handshake
        took through the idle link just after it came up: the set RTT plus the wake-up
        latencies of this machine (~1 ms on the 2-core benchmark VM)."""
        return {"rtt_ms": self.rtt_ms, "measured_rtt_ms": self.measured_rtt_ms, "rate_mbit": self.rate_mbit,
                "rcvbuf": self.rcvbuf, "mtu": self.mtu, "queue_ms": self.queue_ms, "initcwnd": self.initcwnd,
                "server_cc": self.server_cc, "delay_tick_ms": self.tick_ms}

    def counters(self) -> dict:
        """Cumulative bottleneck counters per direction ("down" = server to client): bytes and
        packets sent, packets dropped by the tbf queue. Take two and subtract to see whether a
        run was link-bound (overlimits grow) and lossy (drops grow)."""
        out = {}
        for direction, dev in (("down", "to-cli"), ("up", "to-srv")):
            doc = json.loads(_run(["tc", "-n", self.router_ns, "-s", "-j", "qdisc", "show", "dev", dev]) or "[]")
            q = next((x for x in doc if x.get("kind") == "tbf"), {})
            out[direction] = {k: q.get(k, 0) for k in ("bytes", "packets", "drops", "overlimits")}
        return out

    def measure_rtt(self, n: int = 10) -> list[float]:
        """TCP connect() times (one round trip each), client to server, in ms."""
        with inside(self.server_ns):
            lsock = socket.socket()
        try:
            lsock.bind((self.server_ip, 0))
            lsock.listen(n + 8)
            port = lsock.getsockname()[1]
            out = []
            for _ in range(n):
                with inside(self.client_ns):
                    s = socket.socket()
                try:
                    s.settimeout(10 + self.rtt_ms / 100)
                    t0 = time.perf_counter()
                    s.connect((self.server_ip, port))
                    out.append((time.perf_counter() - t0) * 1000)
                finally:
                    s.close()
                with contextlib.suppress(OSError):
                    lsock.setblocking(False)
                    lsock.accept()[0].close()
                time.sleep(0.02)
            return out
        finally:
            lsock.close()


class WanWeed(Weed):
    """`weed mini` inside the link's server namespace, listening on its veth address.

    common.Weed binds the module-level HOST (127.0.0.1); rather than copy its command line, this
    points that one name at server_ip for the duration of start(), and runs start() from inside
    the server namespace so that the process and start()'s own readiness checks live there."""

    def __init__(self, link: WanLink, binary: str, workdir: Path, *, tls=None) -> None:
        super().__init__(binary, workdir, tls=tls)
        self.link = link
        self.url = f"http://{link.server_ip}:{self.s3}"
        self.https_url = f"https://{link.server_ip}:{self.s3_https}" if tls else None

    def start(self, timeout: float = 60.0) -> Self:
        g = Weed.start.__globals__
        saved = g["HOST"]
        g["HOST"] = self.link.server_ip
        try:
            with inside(self.link.server_ns):
                super().start(timeout)
        finally:
            g["HOST"] = saved
        return self


# --- self-check ------------------------------------------------------------------------------

def _curl_many(link: WanLink, url: str, streams: int, seconds: float) -> tuple[int, float]:
    """`streams` curl downloads of url in the client namespace for `seconds`: (bytes, wall s)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(link.client_argv(["curl", "-s", "-o", "/dev/null", "--max-time", f"{seconds:g}",
                                                "-w", "%{size_download}", url]),
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
             for _ in range(streams)]
    total = sum(int(p.communicate()[0] or 0) for p in procs)
    return total, time.perf_counter() - t0


def self_check(args: argparse.Namespace) -> dict:
    report: dict = {}
    with WanLink(args.rtt_ms, args.rate_mbit, args.rcvbuf, mtu=args.mtu, tick_ms=args.tick_ms) as link:
        report["link"] = link.info()
        rtts = sorted(link.measure_rtt(20))
        report["connect_ms"] = {"min": round(rtts[0], 2), "median": round(rtts[len(rtts) // 2], 2),
                                "max": round(rtts[-1], 2)}
        log(f"wan: TCP connect through the link: {report['connect_ms']}")
        with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
            with open(Path(tmp) / "big", "wb") as fh:
                fh.truncate(8 << 30)  # sparse: served from zero pages, no memory or disk used
            with inside(link.server_ns):
                server = subprocess.Popen([sys.executable, "-m", "http.server", "-b", link.server_ip, "-d", tmp,
                                           "8080"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                url = f"http://{link.server_ip}:8080/big"
                for _ in range(100):
                    if subprocess.run(link.client_argv(["curl", "-s", "-o", "/dev/null", "-I", url]),
                                      stdin=subprocess.DEVNULL, check=False).returncode == 0:
                        break
                    time.sleep(0.1)
                for label, streams in (("1 stream", 1), (f"{args.streams} streams", args.streams)):
                    cpu0, c0 = link.delay_cpu_seconds(), link.counters()["down"]
                    total, wall = _curl_many(link, url, streams, args.seconds)
                    cpu, c1 = link.delay_cpu_seconds() - cpu0, link.counters()["down"]
                    report[label] = {"MB/s": round(total / wall / 1e6, 1), "Mbit/s": round(total * 8 / wall / 1e6),
                                     "delay_cpu_s_per_s": round(cpu / wall, 3),
                                     "tbf_drops": c1["drops"] - c0["drops"]}
                    log(f"wan: {label}: {report[label]}")
                link.check()
            finally:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    report["delay_program"] = link.delay_stats
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Bring the emulated WAN link up, measure it, take it down.")
    ap.add_argument("--rtt-ms", type=float, default=30.0)
    ap.add_argument("--rate-mbit", type=float, default=500.0)
    ap.add_argument("--rcvbuf", type=parse_size, default=1 << 20)
    ap.add_argument("--mtu", type=int, default=9000)
    ap.add_argument("--tick-ms", type=float, default=2.0)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=6.0, help="per download test")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("wan.py: needs root (network namespaces, tc, iptables)")

    def interrupt(signum, _frame):  # SIGTERM/SIGHUP end the check like Ctrl-C: the link comes down
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    print(json.dumps(self_check(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
