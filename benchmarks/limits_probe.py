"""What this machine can do at all, measured in the same run as the tools: the ceilings every
figure in RESULTS.md should be read against.

- loopback GET rate: curl fetching one large object from the benchmark's own server to
  /dev/null (one connection; the server's cost included, no disk, no hash);
- single-core hash rates: BLAKE2b-512 (hashlib, and OpenSSL's where it differs), MD5, xxh3;
- disk: writing 1 GiB through the page cache then fsync, and with O_DIRECT.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
import subprocess
import time
from pathlib import Path


def hash_rates(mib: int = 256) -> dict[str, float]:
    """MB/s on one core, best of three over `mib` MiB held in memory."""
    import xxhash

    data = os.urandom(64 << 20)
    rounds = max(1, mib // 64)
    makers = {"blake2b (hashlib)": hashlib.blake2b, "md5": hashlib.md5, "xxh3-128": xxhash.xxh3_128}
    try:
        hashlib.new("blake2b512")
        makers["blake2b (OpenSSL)"] = lambda: hashlib.new("blake2b512")
    except ValueError:
        pass
    from mirror.hashing import SodiumBlake2b, blake2b_512

    if isinstance(blake2b_512(), SodiumBlake2b):
        makers["blake2b (libsodium, what vbo-mirror uses)"] = blake2b_512
    out = {}
    for name, make in makers.items():
        best = float("inf")
        for _ in range(3):
            h = make()
            t = time.perf_counter()
            for _ in range(rounds):
                h.update(data)
            best = min(best, time.perf_counter() - t)
        out[name] = rounds * len(data) / best / 1e6
    return out


def disk_rates(directory: Path, size: int = 1 << 30) -> dict[str, float]:
    """MB/s writing `size` bytes in 4 MiB writes: through the page cache followed by fsync
    (what a writer that makes its data durable pays), and with O_DIRECT."""
    buf = mmap.mmap(-1, 4 << 20)
    buf.write(os.urandom(4 << 20))
    view = memoryview(buf)
    out = {}
    path = directory / "vbo-bench-disk-probe"
    try:
        for name, flags in (("write+fsync (page cache)", 0), ("write O_DIRECT+fsync", getattr(os, "O_DIRECT", 0))):
            if name.startswith("write O_DIRECT") and not flags:
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | flags, 0o644)
            except OSError:
                continue
            try:
                t = time.perf_counter()
                for off in range(0, size, len(view)):
                    os.pwritev(fd, [view], off)
                os.fsync(fd)
                out[name] = size / (time.perf_counter() - t) / 1e6
            finally:
                os.close(fd)
                path.unlink()
    finally:
        view.release()
        buf.close()
    return out


def curl_rate(url: str, *, repeats: int = 3) -> float | None:
    """MB/s of one curl GET of `url` to /dev/null (best of `repeats`), or None without curl."""
    curl = shutil.which("curl")
    if curl is None:
        return None
    best = None
    for _ in range(repeats):
        r = subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            return None
        size, secs = r.stdout.split()
        rate = float(size) / float(secs) / 1e6
        best = rate if best is None else max(best, rate)
    return best


def warm_guest_memory(directory: Path, size: int) -> float:
    """Write and delete `size` bytes through the page cache, untimed by the benchmark: on a VM
    whose memory the host maps on first touch (this one: ~4 CPU-s per GB the first time, ~0.4
    after), the first tool run would otherwise pay for it alone. Returns the seconds taken."""
    t = time.perf_counter()
    path = directory / "vbo-bench-warm"
    chunk = os.urandom(8 << 20)
    with open(path, "wb") as f:
        for _ in range(max(1, size // len(chunk))):
            f.write(chunk)
    path.unlink()
    return time.perf_counter() - t
