#!/usr/bin/env python
"""Hold every packet of one NFQUEUE for a fixed time, then let it go: the latency half of the
benchmark's emulated WAN link (benchmarks/wan.py), for kernels without netem.

    nfq_delay.py --delay-ms 30 [--queue 0] [--tick-ms 2] [--parent-pid PID] [--max-seconds S]
                 [--rt-priority 10]

Run it in the network namespace whose iptables rule sends packets to the queue (netfilter
queues belong to a namespace). It prints "ready" once the queue is bound, and one JSON line of
counters when it exits. It exits by itself on SIGTERM/SIGINT/SIGHUP, when the process that
started it dies (PR_SET_PDEATHSIG, plus a getppid() check against --parent-pid for the moment
before prctl and as a fallback), or after --max-seconds; before going it accepts whatever it
still holds. It never adds or removes rules: the caller owns those, in a namespace of its own.

Why it speaks netlink itself rather than through PyPI NetfilterQueue: that binding needs a C
compiler, libnetfilter-queue-dev and Python headers to build, makes one Python callback and one
verdict system call per packet, wakes up for every arrival, and cannot set NFQA_CFG_F_GSO
(without it the kernel cuts GSO packets into MTU-sized ones before queueing). Here every packet
gets the same delay, so the queue is FIFO in packet-id order (the kernel numbers a queue's
packets consecutively): the packets read in one wake-up form a group with one release time, one
NFQNL_MSG_VERDICT_BATCH ("accept every id up to N") lets a whole group go, and only the last
message of each recvmmsg(2) batch is parsed. On the 2-core benchmark VM both cost about the same
at 500 Mbit/s (0.06-0.12 CPU s/s with one stream, 0.13-0.23 with eight, run against run, the
spread being the machine's other load), because what dominates is not Python but the kernel:
the wake-ups themselves (~50-150 us each on that VM) and the forwarding work each verdict sets
off, which is charged to whoever gives the verdict. What this design adds is a bound on
wake-ups whatever the packet rate, and no build dependencies.

Wake-ups are rationed: release times lie on a grid of --tick-ms, and while packets keep coming
they are read on the same grid, so one wake-up reads a tick's arrivals and releases the group
that came in one delay earlier (about 1/tick wake-ups per second under load, 500 at the default
2 ms; measured 500-600). A packet read right after a quiet spell woke the program is stamped
with that moment; packets read at a grid point are stamped halfway back to the previous read.
Each group is released at the grid point nearest stamp + delay, so a packet is held
delay +- tick/2 (mean error ~0, plus the machine's scheduling latency). Under SCHED_FIFO
(--rt-priority, on by default when allowed) busy benchmarked tools cannot stretch the delay;
between ticks the program sleeps, so it cannot starve them either.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from collections import deque

# <linux/netlink.h>, <linux/netfilter/nfnetlink.h>, <linux/netfilter/nfnetlink_queue.h>
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; not in Python's socket module
MSG_DONTWAIT = 0x40
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_META = 1  # metadata only: the payload is never copied to us
NFQA_CFG_F_GSO = 0x4
NF_ACCEPT = 1
PR_SET_PDEATHSIG = 1

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, portid
_NLA = struct.Struct("=HH")  # len, type
_ID = struct.Struct("!I")
PACKET_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET


def _attr(kind: int, payload: bytes) -> bytes:
    raw = _NLA.pack(_NLA.size + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_IOVec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


class Queue:
    """One bound netfilter queue on a raw NETLINK_NETFILTER socket."""

    SLOTS, SLOT = 512, 1024  # messages per recvmmsg; bytes per message (metadata only: ~150 used)

    def __init__(self, num: int, maxlen: int, rcvbuf: int) -> None:
        self.num = num
        self.seq = 0
        self.errors = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        try:  # root may exceed rmem_max: a burst of packet messages must not overflow it
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self._config(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET)))
        self._config(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                     + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)))
        try:
            self._config(_attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO))
                         + _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO)))
            self.gso = True
        except OSError:
            self.gso = False  # the kernel then segments GSO packets before queueing: slower, still correct
        self.sock.setblocking(False)

        libc = ctypes.CDLL(None, use_errno=True)
        self._recvmmsg = libc.recvmmsg
        self._recvmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_MMsgHdr), ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        self._recvmmsg.restype = ctypes.c_int
        self._store = (ctypes.c_char * (self.SLOTS * self.SLOT))()
        self._view = memoryview(self._store).cast("B")
        self._iov = (_IOVec * self.SLOTS)()
        self._msgs = (_MMsgHdr * self.SLOTS)()
        base = ctypes.addressof(self._store)
        for i in range(self.SLOTS):
            self._iov[i].base, self._iov[i].len = base + i * self.SLOT, self.SLOT
            self._msgs[i].hdr.iov = ctypes.pointer(self._iov[i])
            self._msgs[i].hdr.iovlen = 1

    def _message(self, msg_type: int, body: bytes, flags: int = 0) -> bytes:
        self.seq += 1
        nfgen = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", self.num)
        return _NLMSGHDR.pack(_NLMSGHDR.size + len(nfgen) + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type,
                              NLM_F_REQUEST | flags, self.seq, 0) + nfgen + body

    def _config(self, attrs: bytes) -> None:
        """Send a config message and wait for its ack (the socket is still blocking here)."""
        self.sock.send(self._message(NFQNL_MSG_CONFIG, attrs, NLM_F_ACK))
        seq = self.seq
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, kind, _, mseq, _ = _NLMSGHDR.unpack_from(data, off)
                if kind == NLMSG_ERROR and mseq == seq:
                    err = struct.unpack_from("=i", data, off + _NLMSGHDR.size)[0]
                    if err:
                        raise OSError(-err, f"nfqueue config: {os.strerror(-err)}")
                    return
                off += max(length + (-length % 4), _NLMSGHDR.size)

    def _packet_id(self, start: int, size: int) -> int | None:
        """The id of the last packet message in one datagram (None if it holds none)."""
        view, found, off, end = self._view, None, start, start + size
        while off + _NLMSGHDR.size <= end:
            length, kind = _NLMSGHDR.unpack_from(view, off)[:2]
            if length < _NLMSGHDR.size:
                break
            if kind == PACKET_TYPE:
                a, stop = off + _NLMSGHDR.size + 4, min(off + length, end)  # attributes follow nfgenmsg
                while a + _NLA.size <= stop:
                    alen, akind = _NLA.unpack_from(view, a)
                    if (akind & 0x3FFF) == NFQA_PACKET_HDR:
                        found = _ID.unpack_from(view, a + _NLA.size)[0]
                        break
                    a += max(alen + (-alen % 4), _NLA.size)
            elif kind == NLMSG_ERROR:
                self.errors += 1  # a verdict the kernel refused (e.g. ids it had already dropped)
            off += length + (-length % 4)
        return found

    def read(self) -> tuple[int, int | None]:
        """Drain the socket without blocking: (messages read, id of the newest packet or None)."""
        total, newest = 0, None
        msgs = self._msgs
        while True:
            n = self._recvmmsg(self.sock.fileno(), msgs, self.SLOTS, MSG_DONTWAIT, None)
            if n <= 0:
                if n < 0 and ctypes.get_errno() not in (0, 11, 4):  # EAGAIN, EINTR
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
                return total, newest
            total += n
            for i in range(n - 1, -1, -1):  # normally only the last one is looked at
                pid = self._packet_id(i * self.SLOT, min(msgs[i].len, self.SLOT))
                if pid is not None:
                    newest = pid
                    break
            if n < self.SLOTS:
                return total, newest

    def accept_through(self, packet_id: int) -> None:
        """Accept every queued packet whose id is <= packet_id (one NFQNL_MSG_VERDICT_BATCH)."""
        msg = self._message(NFQNL_MSG_VERDICT_BATCH, _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id)))
        while True:
            try:
                self.sock.send(msg)
                return
            except (BlockingIOError, InterruptedError):
                select.select([], [self.sock], [], 0.01)

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.send(self._message(NFQNL_MSG_CONFIG, _attr(
                NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, socket.AF_INET))))
        except OSError:
            pass  # closing the socket unbinds it anyway
        self.sock.close()


def kernel_counters(num: int) -> dict:
    """This queue's line of /proc/net/netfilter/nfnetlink_queue (this namespace's)."""
    try:
        with open("/proc/net/netfilter/nfnetlink_queue") as fh:
            for line in fh:
                f = line.split()
                if f and int(f[0]) == num:
                    return {"kernel_held_at_exit": int(f[2]), "queue_dropped": int(f[5]), "user_dropped": int(f[6])}
    except (OSError, ValueError, IndexError):
        pass
    return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--queue", type=int, default=0)
    ap.add_argument("--tick-ms", type=float, default=2.0,
                    help="while packets wait, read new arrivals at most this often (CPU against jitter)")
    ap.add_argument("--maxlen", type=int, default=65536, help="kernel queue length, packets")
    ap.add_argument("--parent-pid", type=int, default=0, help="exit once this process is no longer our parent")
    ap.add_argument("--max-seconds", type=float, default=0.0, help="exit after this long (0: no limit)")
    ap.add_argument("--rt-priority", type=int, default=10, help="SCHED_FIFO priority (0: stay SCHED_OTHER)")
    args = ap.parse_args(argv)

    stop: list[str] = []

    def on_signal(signum, _frame) -> None:
        stop.append(signal.Signals(signum).name)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if args.parent_pid and os.getppid() != args.parent_pid:
        return 0  # the parent died before prctl took effect
    rt = False
    if args.rt_priority > 0:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.rt_priority))
            rt = True
        except (OSError, AttributeError):
            pass

    delay, tick = args.delay_ms / 1000, args.tick_ms / 1000
    q = Queue(args.queue, args.maxlen, 32 << 20)
    print("ready", flush=True)
    clock, nap_for, wait_for = time.monotonic, time.sleep, select.select
    t_start = last_read = clock()
    end = t_start + args.max_seconds if args.max_seconds > 0 else float("inf")
    # Release times lie on a grid of `tick` (multiples of it on the monotonic clock), and while
    # packets keep coming they are read on that grid too, so one wake-up both reads a tick's
    # arrivals and releases the group that came in one delay earlier.
    groups: deque[tuple[float, int, float]] = deque()  # (release time, newest packet id, stamp), oldest first
    packets = batches = wakeups = max_groups = 0
    held_n, held_sum, held_min, held_max = 0, 0.0, float("inf"), 0.0  # per group: release - stamp
    flowing = False  # the last read found packets: read again at the next grid point
    late = 0.0  # how late sleeps end (smoothed); subtracted in advance
    try:
        while not stop:
            now = clock()
            if now >= end:
                stop.append("max-seconds")
                break
            if flowing:
                # the next grid point at least half a tick after the last read (an arrival may
                # have woken us just before a grid point: no second wake-up for that)
                target = (max(now, last_read + tick / 2) // tick + 1) * tick
                if groups and groups[0][0] < target:
                    target = groups[0][0]
                aim = target - late
                if aim > now:
                    nap_for(aim - now)
                woke = clock()
                late = min(max(late + 0.125 * (woke - aim - late), 0.0), tick / 2)
                stamp = (last_read + woke) / 2  # they came in at some point since the last read
            else:
                # Quiet: sleep until a packet arrives (stamped exactly) or the next release.
                timeout = groups[0][0] - late - now if groups else min(1.0, end - now)
                if timeout > 0 and not wait_for([q.sock], [], [], timeout)[0] and not groups:
                    if args.parent_pid and os.getppid() != args.parent_pid:
                        stop.append("parent-gone")
                    continue
                woke = stamp = clock()
            last_read = woke
            wakeups += 1
            n, newest = q.read()
            flowing = newest is not None
            if flowing:
                groups.append((round((stamp + delay) / tick) * tick, newest, stamp))
                packets += n
                max_groups = max(max_groups, len(groups))
            due, release = woke + tick / 2, None
            while groups and groups[0][0] <= due:
                _, release, stamp = groups.popleft()
                held = woke - stamp
                held_n += 1
                held_sum += held
                held_min = min(held_min, held)
                held_max = max(held_max, held)
            if release is not None:
                q.accept_through(release)
                batches += 1
    finally:
        with contextlib.suppress(OSError):  # let everything still held or unread go before unbinding
            newest = q.read()[1]
            if newest is not None or groups:
                q.accept_through(newest if newest is not None else groups[-1][1])
        counters = kernel_counters(args.queue)
        q.close()
        cpu = os.times()
        print(json.dumps({"exit": stop[0] if stop else "error", "packets": packets, "verdict_batches": batches,
                          "wakeups": wakeups, "max_groups_held": max_groups, "verdict_errors": q.errors,
                          "held_ms": {"mean": round(held_sum / held_n * 1000, 3), "min": round(held_min * 1000, 3),
                                      "max": round(held_max * 1000, 3)} if held_n else None,
                          "gso": q.gso, "sched_fifo": rt, "seconds": round(time.monotonic() - t_start, 3),
                          "cpu_s": round(cpu.user + cpu.system, 3), **counters}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
