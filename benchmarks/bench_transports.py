#!/usr/bin/env python
"""GET paths for object bodies, compared on one local S3 server: wall time, CPU seconds per GB
and peak RSS for the same objects, each written to a file and hashed with BLAKE2b-512.

    .venv/bin/python benchmarks/bench_transports.py [URL] [--version 1.0.1] [--repeats 3]
        [--jobs 16] [--part-size 16MiB] [--transports lean,aiohttp,...]
        [--max-files N] [--max-bytes 300MB] [--no-probe] [--json out.json]

URL is the S3 endpoint (default: the dev server of /tmp/dev/server.json). The benchmark exists
so that RESULTS.md can say, with numbers, why vbo-mirror's default transport is its default.
Every transport gets the same work: the objects of one manifest version (sizes and ETags from
a ListObjectVersions of the server), `--jobs` GETs in flight, objects larger than
`--part-size` fetched as ranged parts of that size, bytes written at their offsets into one
file per object and hashed in byte order with hashlib's BLAKE2b; a digest that differs from
the manifest fails the run. What differs is only how the bytes get from the socket to the
writer:

  lean              vbo-mirror's BufferedProtocol client: the kernel copies bodies into
                    page-aligned pool buffers, which go to disk with O_DIRECT.
  lean-buffered     the same, written through the page cache (isolates what O_DIRECT saves).
  aiohttp           vbo-mirror's Remote on aiohttp: its chunks are copied into pool buffers.
  obstore           Rust object_store (PyPI obstore), GetResult.stream() chunks.
  obstore-collect   obstore, each part collected in Rust into one buffer (bytes_async()).
  awscrt-body       aws-c-s3 (PyPI awscrt) S3Client, a Python on_body callback per part.
  awscrt-file       awscrt writing the file itself (recv_filepath), then read back to hash.
  awscrt-file-direct  the same with the CRT's own O_DIRECT writes (S3FileIoOptions.direct_io).
  httpclient        baseline: http.client in `jobs` threads, readinto() pool buffers, O_DIRECT.

The write and hash side is the product's own (mirror.store.objects.Partial.write: O_DIRECT
when offset, length and buffer are block-aligned, else the page cache; and
mirror.engine.writer.OrderedHasher: parts hashed in order, out-of-order buffers held within
the product's budget or read back). Transports whose buffers Python cannot place (obstore's
chunks and collected Rust buffers, awscrt's on_body `bytes`: all at malloc'd, unaligned
addresses) cannot use O_DIRECT without one more copy, so they write through the page cache;
the table says which.

Each run is a fresh child process (imports, threads and RSS are per transport), measured with
wait4 (user+sys CPU of all its threads); peak RSS is the child's own VmHWM. Before each run the
previous run's files are deleted and sync(2) flushes them, so every run writes into the same
state; a first, untimed round warms the page cache and the guest's memory and checks every
transport's files on disk against the manifest. Transports are interleaved, each round in a
rotated order, and the table shows medians. "sync after s" is the sync(2) after the run: the
writeback a page-cache writer left behind, which the child's own numbers do not include.

Before timing, a fault-injecting proxy (FaultProxy) checks the guarantees vbo-mirror relies
on, per transport as driven here: VersionId on every GET, If-Match on every ranged GET, a
shifted Content-Range refused, a version substituted by the server refused, by If-Match and,
with If-Match stripped too, by a check of x-amz-version-id (refused, not merely caught later
by the hash). GUARANTEE_NOTES says what each library does itself and what our wrapper adds.

Library code under `bench_transports.py --child SPEC` runs in the child; `run()` and
`to_markdown()` are what other benchmarks embed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import mmap
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import busy_seconds, check_files, log, parse_size, run_measured, wait_for_quiet  # noqa: E402

BUCKET = "visual-behavior-ophys-data"
REGION = "us-west-2"
PROJECT = "visual-behavior-ophys"
MiB = 1 << 20

DEFAULT_TRANSPORTS = ("lean", "lean-buffered", "aiohttp", "obstore", "obstore-collect", "awscrt-body",
                      "awscrt-file", "awscrt-file-direct", "httpclient")
WRITES = {  # how the bytes reach the disk, per transport
    "lean": "O_DIRECT",
    "lean-buffered": "page cache",
    "aiohttp": "O_DIRECT (after a copy)",
    "obstore": "page cache",
    "obstore-collect": "page cache",
    "awscrt-body": "page cache",
    "awscrt-file": "page cache (CRT), read back",
    "awscrt-file-direct": "O_DIRECT (CRT), read back",
    "httpclient": "O_DIRECT",
}

# What each library does by itself and what the wrapper in this file (or vbo-mirror's Remote)
# adds, from reading their APIs and from the fault probe. Signed requests are not probed (the
# dev server is anonymous); "SigV4" says the path can sign.
GUARANTEE_NOTES = {
    "lean": "vbo-mirror's Remote: ?versionId= on every GET and x-amz-version-id checked; If-Match "
            "on every GET; 206 + exact Content-Range + Content-Length checked; SigV4 via botocore.",
    "aiohttp": "as lean (the same Remote and checks); SigV4 via botocore.",
    "obstore": "GetOptions(version=) sends ?versionId= on each GET, if_match= sends If-Match, "
               "object_store refuses a Content-Range other than the range asked (UnexpectedRange); "
               "the answer's version is not checked by obstore (GetResult.meta['version'] is, here); "
               "SigV4 native (credential chain), anonymous with skip_signature=True. Stream chunks "
               "arrive as Python bytes (a copy), so no O_DIRECT without another copy.",
    "awscrt": "the CRT splits the GET into its own ranged parts (part_size); a ?versionId= in the "
              "request path is repeated on every part; it sends the first answer's ETag as If-Match "
              "on later parts by itself, and a caller's If-Match on every part; it refuses a wrong "
              "Content-Range (AWS_ERROR_S3_INVALID_CONTENT_RANGE_HEADER); it does not check "
              "x-amz-version-id (on_headers lets the caller, for the first part only), so without a "
              "caller If-Match a server that ignores versionId yields another version silently; "
              "SigV4 native (signing_config), anonymous by default.",
    "httpclient": "baseline written here: ?versionId=, If-Match, Content-Range and x-amz-version-id "
                  "all by hand; no signing (it would need botocore like lean).",
}
SIGNED = {"lean": True, "aiohttp": True, "obstore": True, "awscrt": True, "httpclient": False}


def family(transport: str) -> str:
    return transport.split("-", 1)[0] if transport.startswith(("awscrt", "obstore", "lean")) else transport


# ==============================================================================================
# The child: one transport, one run
# ==============================================================================================

def _vm_hwm_mib() -> float:
    """Our own peak RSS: wait4's ru_maxrss would also carry the parent's peak over exec."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Target:
    """One object's output file. Bytes land at their offsets through the product's writer
    rules and in-order hasher, so every transport pays the same for disk and hashing and
    only the path from socket to buffer differs."""

    def __init__(self, obj: dict, path: Path, *, direct: bool, budget, release, open_files: bool = True) -> None:
        from mirror.engine.writer import OrderedHasher
        from mirror.store.objects import Partial, ResumeState, open_direct

        self.obj = obj
        self.path = path
        self.hasher = hashlib.blake2b()
        self.partial = None
        self.ordered = None
        if open_files:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            dfd = open_direct(path) if direct else -1
            self.partial = Partial(path, ResumeState(obj["key"], obj["version_id"], obj["etag"], obj["size"]),
                                   fd, 0, dfd)
            self.ordered = OrderedHasher(fd, self.hasher, [], budget=budget, release=release)

    def land(self, offset: int, buf, n: int) -> None:
        """In a worker thread (or a library's callback thread): write, then hash or hold."""
        self.partial.write(offset, memoryview(buf)[:n])
        self.ordered.landed(offset, buf, n)

    def finish(self) -> str:
        hashed = self.ordered.finish()
        if hashed != self.obj["size"]:
            raise RuntimeError(f"{self.obj['key']}: hashed {hashed} of {self.obj['size']} bytes")
        return self.hasher.hexdigest()

    def read_back(self, direct: bool) -> str:
        """For transports that write the file themselves: the hash has to read it again."""
        flags = os.O_RDONLY | (getattr(os, "O_DIRECT", 0) if direct else 0)
        fd = os.open(self.path, flags)
        try:
            buf = mmap.mmap(-1, 4 * MiB)
            view = memoryview(buf)
            pos = 0
            while True:
                n = os.preadv(fd, [view], pos)
                if n <= 0:
                    break
                self.hasher.update(view[:n])
                pos += n
            view.release()
            buf.close()
        finally:
            os.close(fd)
        if pos != self.obj["size"]:
            raise RuntimeError(f"{self.obj['key']}: file has {pos} bytes, object {self.obj['size']}")
        return self.hasher.hexdigest()

    def close(self) -> None:
        if self.ordered is not None:
            self.ordered.drop()
        if self.partial is not None:
            self.partial.close()


class Context:
    """What every transport of a child shares: the product's Limits (so buffer sizes, I/O
    threads and the reorder budget match a real sync), the I/O threads and the budget."""

    def __init__(self, spec: dict) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from mirror.engine.writer import HoldBudget
        from mirror.limits import Limits

        self.spec = spec
        self.limits = Limits(jobs=spec["jobs"], part_size=spec["part_size"])
        self.io = ThreadPoolExecutor(self.limits.io_threads, thread_name_prefix="bench-io")
        self.budget = HoldBudget(self.limits.held_buffers)
        self.loop = asyncio.get_running_loop()
        self.endpoint = spec["endpoint"].rstrip("/")

    def path_of(self, obj: dict) -> str:
        """Path-style: the bucket and key of the manifest, under the local endpoint's host."""
        return f"/{obj['bucket']}/{quote(obj['key'], safe='/~-._')}?versionId={quote(obj['version_id'], safe='')}"

    async def wait_landed(self, futures: list) -> None:
        for fut in futures:
            await asyncio.wrap_future(fut)


class Transport:
    whole_object = False  # True: the library splits objects into parts itself
    aligned = False  # buffers are page-aligned: O_DIRECT possible
    read_back = False
    read_back_direct = False

    def __init__(self, ctx: Context, name: str) -> None:
        self.ctx = ctx
        self.name = name

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        pass

    def release(self, buf) -> None:
        """Where the hasher gives a buffer back (from any thread)."""


class RemoteTransport(Transport):
    """vbo-mirror's Remote, lean or aiohttp: the product's own GET and its checks."""

    aligned = True

    def __init__(self, ctx: Context, name: str) -> None:
        super().__init__(ctx, name)
        from mirror.remote import Remote, RemoteSettings

        kind = "aiohttp" if name == "aiohttp" else "lean"
        self.remote = Remote(RemoteSettings(BUCKET, REGION, endpoint_url=ctx.endpoint, transport=kind), ctx.limits)

    async def __aenter__(self):
        await self.remote.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.remote.__aexit__(*exc)

    def release(self, buf) -> None:
        self.remote.buffers.give_threadsafe(buf)

    async def part(self, t: Target, start: int, end: int, ranged: bool) -> None:
        from mirror.model import ObjectRef

        futures = []
        pos = start
        io = self.ctx.io

        def sink(buf, n):
            nonlocal pos
            futures.append(io.submit(t.land, pos, buf, n))
            pos += n

        obj = t.obj
        await self.remote.get_into(ObjectRef(obj["bucket"], obj["key"], obj["version_id"]), sink, start=start,
                                   end=end if ranged else None, size=obj["size"], if_match=obj["etag"])
        if pos != end:
            raise RuntimeError(f"{obj['key']}: stream ended at {pos}, wanted {end}")
        await self.ctx.wait_landed(futures)


class Credits:
    """Bounds the chunks between a library and the writer by the product's buffer count, as
    the receive pool bounds lean: a transport that yields chunks of its own must not win by
    queueing an unbounded amount of memory."""

    def __init__(self, ctx: Context, count: int) -> None:
        self.loop = ctx.loop
        self.sem = asyncio.Semaphore(count)

    async def take(self) -> None:
        await self.sem.acquire()

    def give_threadsafe(self, _buf=None) -> None:
        self.loop.call_soon_threadsafe(self.sem.release)


class ObstoreTransport(Transport):
    def __init__(self, ctx: Context, name: str) -> None:
        super().__init__(ctx, name)
        from obstore.store import S3Store

        self.obs = __import__("obstore")
        self.store = S3Store(BUCKET, endpoint=ctx.endpoint, region=REGION, skip_signature=True,
                             virtual_hosted_style_request=False,
                             client_options={"allow_http": True, "timeout": "600s", "connect_timeout": "10s"})
        self.collect = name == "obstore-collect"
        self.chunk = ctx.limits.receive_buffer  # the size of lean's buffers: the same hand-offs
        self.credits = Credits(ctx, ctx.limits.buffers)

    def release(self, buf) -> None:
        self.credits.give_threadsafe()

    async def part(self, t: Target, start: int, end: int, ranged: bool) -> None:
        obj = t.obj
        opts = {"version": obj["version_id"], "if_match": f'"{obj["etag"]}"'}
        if ranged:
            opts["range"] = (start, end)
        r = await self.obs.get_async(self.store, obj["key"], options=opts)
        got_version = r.meta.get("version")
        if got_version not in (None, obj["version_id"]):  # obstore does not check this itself
            raise RuntimeError(f"{obj['key']}: server answered version {got_version}, not {obj['version_id']}")
        if tuple(r.range) != (start, end):
            raise RuntimeError(f"{obj['key']}: range {r.range}, wanted {(start, end)}")
        futures = []
        pos = start
        io = self.ctx.io
        if self.collect:
            data = await r.bytes_async()
            await self.credits.take()
            futures.append(io.submit(t.land, pos, data, len(data)))
            pos += len(data)
        else:
            async for chunk in r.stream(min_chunk_size=self.chunk):
                await self.credits.take()
                futures.append(io.submit(t.land, pos, chunk, len(chunk)))
                pos += len(chunk)
        if pos != end:
            raise RuntimeError(f"{obj['key']}: stream ended at {pos}, wanted {end}")
        await self.ctx.wait_landed(futures)


class CrtTransport(Transport):
    """One CRT meta request per object: the CRT makes its own ranged parts of `part_size`, at
    most `jobs` connections in all; the same `jobs` bound applies to objects in flight."""

    whole_object = True

    def __init__(self, ctx: Context, name: str) -> None:
        super().__init__(ctx, name)
        from awscrt.http import HttpHeaders, HttpRequest
        from awscrt.s3 import S3Client, S3FileIoOptions, S3RequestTlsMode, S3RequestType

        self.HttpHeaders, self.HttpRequest, self.GET = HttpHeaders, HttpRequest, S3RequestType.GET_OBJECT
        self.to_file = name.startswith("awscrt-file")
        self.read_back = self.to_file
        self.read_back_direct = name == "awscrt-file-direct"
        self.fio = S3FileIoOptions(direct_io=True) if self.read_back_direct else None
        parts = urlsplit(ctx.endpoint)
        self.host = parts.netloc
        lim = ctx.limits
        self.client = S3Client(
            region=REGION,
            tls_mode=S3RequestTlsMode.DISABLED if parts.scheme == "http" else S3RequestTlsMode.ENABLED,
            part_size=lim.part_size,
            max_active_connections_override=lim.jobs,
            # the CRT's floor is 256 MiB; it holds parts here to deliver them in order
            memory_limit=max(256 * MiB, lim.jobs * lim.part_size),
            throughput_target_gbps=10.0,
            fio_options=self.fio,
        )

    async def whole(self, t: Target) -> None:
        obj = t.obj
        ctx = self.ctx
        headers = self.HttpHeaders([("Host", self.host), ("If-Match", f'"{obj["etag"]}"')])
        request = self.HttpRequest("GET", ctx.path_of(obj), headers)
        problems: list[str] = []
        holder: list = []

        def on_headers(status_code, headers, **kwargs):
            # The CRT does not compare the answer's version with the one asked for: stop it here
            # rather than let it write another version's bytes.
            vid = next((v for k, v in headers if k.lower() == "x-amz-version-id"), None)
            if vid not in (None, obj["version_id"]):
                problems.append(f"server answered version {vid}, not {obj['version_id']}")
                if holder:
                    holder[0].cancel()

        def on_body(chunk, offset, **kwargs):
            t.land(offset, chunk, len(chunk))  # the CRT delivers one object's parts in order

        kwargs = {}
        if self.to_file:
            kwargs["recv_filepath"] = str(t.path)
            if self.fio is not None:
                kwargs["fio_options"] = self.fio
        else:
            kwargs["on_body"] = on_body
        req = self.client.make_request(type=self.GET, request=request, on_headers=on_headers, **kwargs)
        holder.append(req)
        if problems:  # on_headers ran before make_request returned
            req.cancel()
        try:
            await asyncio.wrap_future(req.finished_future)
        except Exception as exc:
            if problems:
                raise RuntimeError(f"{obj['key']}: {problems[0]}") from exc
            raise RuntimeError(f"{obj['key']}: {exc!r}") from exc
        if problems:
            raise RuntimeError(f"{obj['key']}: {problems[0]}")


class ThreadTransport(Transport):
    """The plainest thing that could work: blocking http.client in `jobs` threads, reading
    into page-aligned buffers with readinto (no copy in Python) and writing from the GET's
    own thread. Worth knowing how far threads get before anything cleverer."""

    aligned = True

    def __init__(self, ctx: Context, name: str) -> None:
        super().__init__(ctx, name)
        import queue
        from concurrent.futures import ThreadPoolExecutor

        lim = ctx.limits
        self.threads = ThreadPoolExecutor(lim.jobs, thread_name_prefix="bench-get")
        self.pool: queue.SimpleQueue = queue.SimpleQueue()
        self.size = lim.receive_buffer
        # one buffer per GET thread plus what the reorder budget may hold: never starved
        for _ in range(lim.jobs + lim.held_buffers + 1):
            self.pool.put(mmap.mmap(-1, self.size))
        self.local = threading.local()
        p = urlsplit(ctx.endpoint)
        self.host, self.port = p.hostname, p.port or 80

    async def __aexit__(self, *exc) -> None:
        self.threads.shutdown(wait=True)

    def release(self, buf) -> None:
        self.pool.put(buf)

    async def part(self, t: Target, start: int, end: int, ranged: bool) -> None:
        await self.ctx.loop.run_in_executor(self.threads, self._get, t, start, end, ranged)

    def _get(self, t: Target, start: int, end: int, ranged: bool) -> None:
        import http.client

        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        obj = t.obj
        headers = {"If-Match": f'"{obj["etag"]}"', "Accept-Encoding": "identity"}
        if ranged:
            headers["Range"] = f"bytes={start}-{end - 1}"
        conn.request("GET", self.ctx.path_of(obj), headers=headers)
        r = conn.getresponse()
        try:
            if r.status != (206 if ranged else 200):
                raise RuntimeError(f"{obj['key']}: HTTP {r.status} {r.read(2048)[:300]!r}")
            vid = r.getheader("x-amz-version-id")
            if vid not in (None, obj["version_id"]):
                raise RuntimeError(f"{obj['key']}: server answered version {vid}, not {obj['version_id']}")
            if ranged:
                m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", r.getheader("content-range") or "")
                if not m or int(m.group(1)) != start or int(m.group(2)) != end - 1:
                    raise RuntimeError(f"{obj['key']}: Content-Range {r.getheader('content-range')!r}, "
                                       f"wanted {start}-{end - 1}")
            if r.length != end - start:
                raise RuntimeError(f"{obj['key']}: Content-Length {r.length}, wanted {end - start}")
            pos = start
            while pos < end:
                buf = self.pool.get()
                view = memoryview(buf)
                want = min(self.size, end - pos)
                n = 0
                try:
                    while n < want:
                        got = r.readinto(view[n:want])
                        if not got:
                            raise RuntimeError(f"{obj['key']}: stream ended at {pos + n}, wanted {end}")
                        n += got
                finally:
                    view.release()
                t.land(pos, buf, n)
                pos += n
        except BaseException:
            conn.close()
            self.local.conn = None
            raise


def _make_transport(ctx: Context, name: str) -> Transport:
    f = family(name)
    if f in ("lean", "aiohttp"):
        return RemoteTransport(ctx, name)
    if f == "obstore":
        return ObstoreTransport(ctx, name)
    if f == "awscrt":
        return CrtTransport(ctx, name)
    if f == "httpclient":
        return ThreadTransport(ctx, name)
    raise ValueError(f"unknown transport {name!r}")


async def _child_run(spec: dict) -> dict:
    ctx = Context(spec)
    name = spec["transport"]
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    lim = ctx.limits
    gets = asyncio.Semaphore(lim.jobs)
    bad: list[str] = []
    read_back = 0
    fetched = 0
    t0 = time.perf_counter()
    async with _make_transport(ctx, name) as tr:
        direct = tr.aligned and not name.endswith("-buffered")
        queue: asyncio.Queue = asyncio.Queue()
        for i, obj in enumerate(spec["objects"]):
            queue.put_nowait((i, obj))

        async def one(i: int, obj: dict) -> None:
            nonlocal read_back, fetched
            t = Target(obj, out / f"{i:05d}", direct=direct, budget=ctx.budget, release=tr.release,
                       open_files=not tr.read_back)
            try:
                if tr.whole_object:
                    async with gets:
                        await tr.whole(t)
                else:
                    size = obj["size"]
                    width = asyncio.Semaphore(lim.parts_per_file)  # FIFO: lowest offsets first

                    async def part(s: int, e: int) -> None:
                        async with width, gets:
                            await tr.part(t, s, e, ranged=size > lim.part_size)

                    await asyncio.gather(*(part(s, min(size, s + lim.part_size))
                                           for s in range(0, max(size, 1), lim.part_size)))
                if tr.read_back:
                    digest = await ctx.loop.run_in_executor(ctx.io, t.read_back, tr.read_back_direct)
                    read_back += obj["size"]
                else:
                    digest = await ctx.loop.run_in_executor(ctx.io, t.finish)
                    read_back += t.ordered.read_back
            finally:
                t.close()
            fetched += obj["size"]
            if digest != obj["file_hash"]:
                bad.append(obj["key"])

        async def worker() -> None:
            while not queue.empty():
                await one(*queue.get_nowait())

        await asyncio.gather(*(worker() for _ in range(min(lim.jobs, len(spec["objects"])))))
    seconds = time.perf_counter() - t0
    ctx.io.shutdown(wait=True)
    return {"transport": name, "files": len(spec["objects"]), "bytes": fetched, "bad": bad,
            "engine_s": seconds, "read_back_bytes": read_back, "hwm_mib": _vm_hwm_mib(),
            "receive_buffer": lim.receive_buffer, "io_threads": lim.io_threads}


def child_main(spec_path: str) -> int:
    """Exit 0: every digest right; 2: wrong bytes reached the disk (only BLAKE2b caught them);
    1: the transport (or our checks of its answers) refused, or anything else failed."""
    spec = json.loads(Path(spec_path).read_text())
    result_path = Path(spec["result"])
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            res = runner.run(_child_run(spec))
        rc = 2 if res["bad"] else 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        res = {"transport": spec["transport"], "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc(limit=8), "hwm_mib": _vm_hwm_mib()}
        rc = 1
    result_path.write_text(json.dumps(res))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # library threads (the CRT's, obstore's runtime) must not hold up the exit


# ==============================================================================================
# The parent: work list, fault probe, measured rounds, table
# ==============================================================================================

def manifest_objects(endpoint_url: str, manifest: dict) -> list[dict]:
    """The manifest's files with their size and ETag, from one ListObjectVersions of the
    server (manifests carry neither; If-Match needs the ETag)."""
    from mirror.remote import listing

    want: dict[tuple[str, str], dict] = {}
    for section in ("metadata_files", "data_files"):
        for name, e in manifest[section].items():
            parts = urlsplit(e["url"])
            bucket = parts.hostname.split(".s3", 1)[0]
            key = parts.path.lstrip("/")
            want[(key, e["version_id"])] = {"bucket": bucket, "key": key, "version_id": e["version_id"],
                                            "file_hash": e["file_hash"], "name": f"{section}/{name}"}
    prefix = os.path.commonprefix([k for k, _ in want])
    prefix = prefix[:prefix.rfind("/") + 1]
    base = f"{endpoint_url.rstrip('/')}/{BUCKET}/?"
    params = {"versions": "", "prefix": prefix, "encoding-type": "url"}
    found = 0
    while True:
        with urllib.request.urlopen(base + urlencode(sorted(params.items()), quote_via=quote, safe="~-._"),
                                    timeout=60) as r:
            page = listing.parse(r.read(), what="list versions")
        for info in page.objects:
            o = want.get((info.key, info.version_id))
            if o is not None and "size" not in o:
                o["size"], o["etag"] = info.size, info.etag
                found += 1
        if not page.truncated:
            break
        params["key-marker"] = page.next_key
        if page.next_version_id:
            params["version-id-marker"] = page.next_version_id
    missing = [o["key"] for o in want.values() if "size" not in o]
    if missing:
        raise RuntimeError(f"{len(missing)} manifest objects not on the server, e.g. {missing[0]}")
    return sorted(want.values(), key=lambda o: o["key"])


def subset(objects: list[dict], max_files: int | None, max_bytes: int | None) -> list[dict]:
    """An evenly spread, deterministic sample over the size range, so that a small development
    run still has multipart objects as well as small tables; to fit `max_bytes` the largest
    sizes are left out first."""
    ordered = sorted(objects, key=lambda o: (o["size"], o["key"]))
    cap = ordered[-1]["size"] if ordered else 0
    while True:
        pool = [o for o in ordered if o["size"] <= cap]
        picked = pool
        if max_files and len(pool) > max_files:
            step = len(pool) / max_files
            picked = [pool[int(i * step)] for i in range(max_files - 1)] + [pool[-1]]
        if not max_bytes or sum(o["size"] for o in picked) <= max_bytes or len(picked) <= 1:
            return sorted(picked, key=lambda o: o["key"])
        cap = int(cap * 0.9)


def page_cache_calibration(workdir: Path, *, size: int = 512 * MiB, rounds: int = 2) -> dict:
    """Kernel CPU s per GB to write through the page cache in 2 MiB pieces at 2 MiB-aligned
    offsets, and in 2 MiB + 4 KiB pieces. Why: on a VM with free page reporting (virtio_balloon
    reports free 2 MiB blocks to the host, which drops them) and a filesystem with large folios,
    aligned pieces get 2 MiB folios from memory the host must fault in again, and cost several
    times more than odd-sized ones. That is the machine, not the transport: a page-cache writer
    with aligned pieces (lean-buffered, awscrt) pays it, one with odd-sized chunks (obstore)
    mostly does not, so the table's page-cache rows are read with this next to them."""
    import resource

    out: dict[str, list[float]] = {"aligned": [], "odd": []}
    buf = mmap.mmap(-1, 2 * MiB + 4096)
    buf.write(os.urandom(2 * MiB + 4096))
    path = workdir / "page-cache-calibration"
    try:
        for _ in range(rounds):
            for mode, piece in (("aligned", 2 * MiB), ("odd", 2 * MiB + 4096)):
                os.sync()
                time.sleep(3)  # as before a run: freed memory has had time to be reported (2 s)
                view = memoryview(buf)[:piece]
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                r0 = resource.getrusage(resource.RUSAGE_THREAD)
                try:
                    pos = 0
                    while pos < size:
                        pos += os.pwrite(fd, view, pos)
                finally:
                    os.close(fd)
                    view.release()
                r1 = resource.getrusage(resource.RUSAGE_THREAD)
                out[mode].append((r1.ru_stime - r0.ru_stime + r1.ru_utime - r0.ru_utime) / (pos / 1e9))
                path.unlink()
    finally:
        path.unlink(missing_ok=True)
        buf.close()
    return {mode: statistics.median(v) for mode, v in out.items()}


def _proc_cpu(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _run_child(spec: dict, workdir: Path, *, timeout: float, server_pid: int | None, measure: bool = True,
               idle_wait: float = 20.0) -> dict:
    """One child run into an emptied output directory; the measurements and the child's own
    report, merged."""
    out = Path(spec["out"])
    shutil.rmtree(out, ignore_errors=True)
    os.sync()  # the previous run's writeback is not charged to this one
    tag = spec["transport"]
    spec_path = workdir / f"spec-{tag}.json"
    result_path = workdir / f"result-{tag}.json"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    if measure:
        wait_for_quiet(idle_wait, threshold=0.3)
    s0, b0 = _proc_cpu(server_pid), busy_seconds()
    with open(workdir / f"stderr-{tag}.txt", "wb") as err:
        m = run_measured([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
                         stderr=err, timeout=timeout, cwd=ROOT)
    s1, b1 = _proc_cpu(server_pid), busy_seconds()
    t = time.perf_counter()
    os.sync()
    sync_s = time.perf_counter() - t
    try:
        res = json.loads(result_path.read_text())
    except (OSError, ValueError):
        res = {"error": f"no result (exit {m.returncode}); stderr: "
                        + (workdir / f"stderr-{tag}.txt").read_text(errors="replace")[-2000:]}
    res.update(rc=m.returncode, wall_s=m.wall_s, user_s=m.user_s, sys_s=m.sys_s, cpu_s=m.cpu_s,
               wait4_rss_mib=m.max_rss_mib, server_cpu_s=s1 - s0, sync_s=sync_s,
               other_cpu_s=max(0.0, (b1 - b0) - m.cpu_s - (s1 - s0)))
    return res


# --- the fault probe --------------------------------------------------------------------------------

class FaultProxy:
    """A TCP relay in front of the server that logs each request head and can falsify it:
    `shift` moves every Range 4 KiB later (the server then answers another range, honestly
    labelled), `drop-version` strips ?versionId= (the server then serves the current version,
    which If-Match refuses), `drop-version-and-if-match` strips both (only a client that compares
    the answer's x-amz-version-id notices). A client that checks what it gets refuses each one
    rather than hand over bytes that only the final BLAKE2b would catch."""

    def __init__(self, upstream: str) -> None:
        u = urlsplit(upstream)
        self.up_host, self.up_port = u.hostname, u.port or 80
        self.mode = "log"
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main():
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            self._ready.set()
            async with self.server:
                await self.server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            self.loop.run_until_complete(main())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        def stop():
            self.server.close()
            for t in asyncio.all_tasks(self.loop):
                t.cancel()

        self.loop.call_soon_threadsafe(stop)
        self._thread.join(10)

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(self.up_host, self.up_port)
        except OSError:
            cw.close()
            return

        async def upstream() -> None:
            try:
                while True:
                    head = (await cr.readuntil(b"\r\n\r\n")).decode("latin-1")
                    lines = head.split("\r\n")
                    hdrs = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
                    self.requests.append((lines[0], hdrs))
                    if self.mode == "shift":
                        head = re.sub(r"(?im)^(range:\s*bytes=)(\d+)-",
                                      lambda m: f"{m.group(1)}{int(m.group(2)) + 4096}-", head)
                    elif self.mode.startswith("drop-version"):
                        head = re.sub(r"([?&])versionId=[^ &]*&?", r"\1", head, count=1).replace("? HTTP/", " HTTP/")
                        if self.mode == "drop-version-and-if-match":
                            head = re.sub(r"(?im)^if-match:[^\r\n]*\r\n", "", head)
                    uw.write(head.encode("latin-1"))
                    await uw.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                pass
            finally:
                uw.close()

        async def downstream() -> None:
            try:
                while data := await ur.read(1 << 18):
                    cw.write(data)
                    await cw.drain()
            except ConnectionError:
                pass
            finally:
                cw.close()

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)


def probe_guarantees(endpoint_url: str, objects: list[dict], transports: list[str], *, workdir: Path,
                     jobs: int, part_size: int) -> dict[str, dict]:
    """Per transport, through FaultProxy, on one object of several parts: were versionId and
    If-Match on every GET, and were a shifted range and a substituted version refused?"""
    big = [o for o in objects if o["size"] > 2 * part_size]
    if not big:
        log("probe: no object of more than two parts in the work; guarantees not probed")
        return {}
    obj = min(big, key=lambda o: o["size"])
    workdir.mkdir(parents=True, exist_ok=True)
    proxy = FaultProxy(endpoint_url)
    out: dict[str, dict] = {}
    try:
        for name in transports:
            res = {}
            for mode in ("log", "shift", "drop-version", "drop-version-and-if-match"):
                proxy.mode = mode
                proxy.requests.clear()
                spec = {"transport": name, "endpoint": proxy.url, "objects": [obj], "jobs": jobs,
                        "part_size": part_size, "out": str(workdir / "probe-out")}
                r = _run_child(spec, workdir, timeout=300, server_pid=None, measure=False)
                gets = [(line, h) for line, h in proxy.requests if line.startswith("GET ")]
                if mode == "log":
                    if r["rc"] != 0:
                        raise RuntimeError(f"probe: {name} failed without a fault: {r.get('error') or r.get('bad')}")
                    res["gets"] = len(gets)
                    res["version_every_get"] = bool(gets) and all("versionid=" in line.lower() for line, _ in gets)
                    ranged = [h for _, h in gets if "range" in h]
                    res["ranged_gets"] = len(ranged)
                    res["if_match_every_ranged"] = bool(ranged) and all("if-match" in h for h in ranged)
                else:
                    res[mode] = {0: "accepted", 1: "refused", 2: "wrong bytes (hash caught)"}.get(r["rc"], f"rc {r['rc']}")
                    res[mode + "_error"] = (r.get("error") or "")[:300]
            out[name] = res
            log(f"probe {name}: {res['gets']} GETs, versionId on all: {res['version_every_get']}, If-Match on all "
                f"{res['ranged_gets']} ranged: {res['if_match_every_ranged']}; shifted range: {res['shift']}; "
                f"substituted version: {res['drop-version']}; and without If-Match: {res['drop-version-and-if-match']}")
    finally:
        proxy.close()
        shutil.rmtree(workdir / "probe-out", ignore_errors=True)
    return out


def guarantees_cell(name: str, probed: dict | None) -> str:
    f = family(name)
    signed = "SigV4" if SIGNED.get(f) else "no SigV4"
    if not probed:
        return f"not probed; {signed}"
    ok = []
    bad = []
    (ok if probed["version_every_get"] else bad).append("versionId")
    (ok if probed["if_match_every_ranged"] else bad).append("If-Match")
    (ok if probed["shift"] == "refused" else bad).append("Content-Range")
    (ok if probed["drop-version"] == "refused" else bad).append("version refused")
    (ok if probed["drop-version-and-if-match"] == "refused" else bad).append("version checked")
    cell = " ".join(f"{g} ✓" for g in ok)
    if bad:
        cell += "; " + " ".join(f"{g} ✗" for g in bad)
    return f"{cell}; {signed}"


# --- measured rounds ----------------------------------------------------------------------------------

def run(endpoint_url: str, manifest_dict: dict, *, repeats: int = 3, jobs: int = 16, part_size: int = 16 * MiB,
        workdir: str | os.PathLike, transports: tuple[str, ...] | list[str] = DEFAULT_TRANSPORTS,
        max_files: int | None = None, max_bytes: int | None = None, probe: bool = True,
        server_pid: int | None = None, timeout: float = 1800.0, idle_wait: float = 20.0) -> list[dict]:
    """Rows (one per transport, medians over `repeats`) for `to_markdown`; the raw runs are
    under each row's "runs". Each measured run first waits up to `idle_wait` seconds for the
    rest of the machine to go quiet."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    transports = list(transports)
    for name in transports:
        if name not in WRITES:
            raise ValueError(f"unknown transport {name!r}; known: {', '.join(WRITES)}")
    objects = subset(manifest_objects(endpoint_url, manifest_dict), max_files, max_bytes)
    total = sum(o["size"] for o in objects)
    log(f"work: {len(objects)} objects, {total / 1e9:.3f} GB; jobs {jobs}, part size {part_size >> 20} MiB; "
        f"transports: {', '.join(transports)}")
    base = {"endpoint": endpoint_url, "objects": objects, "jobs": jobs, "part_size": part_size,
            "out": str(workdir / "out")}
    probed = probe_guarantees(endpoint_url, objects, transports, workdir=workdir, jobs=jobs,
                              part_size=part_size) if probe else {}
    calibration = page_cache_calibration(workdir)
    log(f"page-cache writes: {calibration['aligned']:.2f} CPU s/GB in 2 MiB-aligned 2 MiB pieces, "
        f"{calibration['odd']:.2f} in 2 MiB + 4 KiB pieces")

    # Untimed: warms the page cache, the guest's memory and the server; checks the files on disk.
    for name in transports:
        r = _run_child({**base, "transport": name}, workdir, timeout=timeout, server_pid=server_pid,
                           idle_wait=idle_wait)
        _raise_if_failed(name, r)
        expected = {Path(base["out"]) / f"{i:05d}": o["file_hash"] for i, o in enumerate(objects)}
        wrong = check_files(expected)
        if wrong:
            raise RuntimeError(f"{name}: {len(wrong)} files on disk differ from the manifest, e.g. {wrong[0]}")
        log(f"warm-up {name}: {r['wall_s']:.2f}s wall, {r['cpu_s']:.2f} CPU s; files on disk verified")

    runs: dict[str, list[dict]] = {n: [] for n in transports}
    for rnd in range(repeats):
        order = transports[rnd % len(transports):] + transports[:rnd % len(transports)]
        for name in order:
            r = _run_child({**base, "transport": name}, workdir, timeout=timeout, server_pid=server_pid,
                           idle_wait=idle_wait)
            _raise_if_failed(name, r)
            runs[name].append(r)
            log(f"round {rnd + 1}/{repeats} {name}: {r['wall_s']:.2f}s wall, {total / r['wall_s'] / 1e6:.0f} MB/s, "
                f"{r['cpu_s']:.2f} CPU s ({r['user_s']:.2f}+{r['sys_s']:.2f}), {r['hwm_mib']:.0f} MiB, "
                f"server {r['server_cpu_s']:.2f} s, other {r['other_cpu_s']:.2f} s, sync {r['sync_s']:.2f}s")
    shutil.rmtree(workdir / "out", ignore_errors=True)

    rows = []
    for name in transports:
        rs = runs[name]

        def med(k, rs=rs):
            return statistics.median(r[k] for r in rs)

        wall, cpu = med("wall_s"), med("cpu_s")
        rows.append({
            "transport": name, "writes": WRITES[name], "files": len(objects), "bytes": total,
            "wall_s": wall, "mb_s": total / wall / 1e6, "cpu_s": cpu, "user_s": med("user_s"), "sys_s": med("sys_s"),
            "cpu_s_per_gb": cpu / (total / 1e9), "peak_rss_mib": med("hwm_mib"), "server_cpu_s": med("server_cpu_s"),
            "other_cpu_s": med("other_cpu_s"), "sync_s": med("sync_s"), "read_back_mb": med("read_back_bytes") / 1e6
            if all("read_back_bytes" in r for r in rs) else 0.0,
            "guarantees": guarantees_cell(name, probed.get(name)), "probe": probed.get(name), "runs": rs,
            "jobs": jobs, "part_size": part_size, "repeats": repeats, "page_cache_calibration": calibration,
        })
    return rows


def _raise_if_failed(name: str, r: dict) -> None:
    if r["rc"] == 2:
        raise RuntimeError(f"{name} delivered wrong bytes: BLAKE2b differs for {r['bad'][:3]}")
    if r["rc"] != 0:
        raise RuntimeError(f"{name} failed (exit {r['rc']}): {r.get('error')}\n{r.get('traceback', '')}")


def to_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    r0 = rows[0]
    lines = [
        (f"{r0['files']} objects, {r0['bytes'] / 1e9:.3f} GB; {r0['jobs']} GETs in flight, "
         f"{r0['part_size'] >> 20} MiB ranged parts; medians of {r0['repeats']} runs, each a fresh process."),
        "",
        ("| transport | writes | wall s | MB/s | CPU s (user+sys) | CPU s/GB | peak RSS MiB | server CPU s "
         "| other CPU s | sync after s | hash read-back MB | guarantees kept |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['transport']} | {r['writes']} | {r['wall_s']:.2f} | {r['mb_s']:.0f} | {r['cpu_s']:.2f} "
            f"({r['user_s']:.2f}+{r['sys_s']:.2f}) | {r['cpu_s_per_gb']:.2f} | {r['peak_rss_mib']:.0f} "
            f"| {r['server_cpu_s']:.2f} | {r['other_cpu_s']:.2f} | {r['sync_s']:.2f} | {r['read_back_mb']:.0f} "
            f"| {r['guarantees']} |")
    lines += [
        "",
        ("- CPU is the child's user+sys (wait4, all its threads); peak RSS its own VmHWM. Server CPU is the "
         "SeaweedFS process over the same interval; other CPU is the rest of the machine then (noise, "
         "kernel writeback). \"sync after\" is sync(2) once the child has exited: page-cache writers leave "
         "their writeback there. Hash read-back: bytes of parts that landed ahead of their file's hash "
         "frontier beyond the product's reorder budget, hashed by reading the file again (the product's "
         "OrderedHasher; the CRT delivers in order and has none, its file variants read everything back)."),
        ("- Guarantees, per transport as driven here (fault proxy): versionId = ?versionId= on every GET; "
         "If-Match = on every ranged GET; Content-Range = a shifted range refused; version refused = a "
         "server that ignores versionId refused (by If-Match) before the hash; version checked = the same "
         "with If-Match stripped too, so only a check of the answer's x-amz-version-id refuses it. "
         "SigV4 = can sign (not probed)."),
    ]
    cal = r0.get("page_cache_calibration")
    if cal and any(r["writes"].startswith("page cache") for r in rows):
        lines.append(
            f"- Page-cache writes on this machine, measured before the runs: {cal['aligned']:.2f} CPU s/GB in "
            f"2 MiB pieces at 2 MiB-aligned offsets, {cal['odd']:.2f} in 2 MiB + 4 KiB pieces. Where the first "
            "is several times the second (a VM whose free 2 MiB blocks are reported to, and dropped by, the "
            "host, under a filesystem with large folios), page-cache writers with aligned pieces (lean-buffered: "
            "2 MiB buffers; awscrt: whole parts) pay it and obstore's odd-sized chunks mostly do not: compare "
            "those rows' sys CPU with that in mind.")
    for f in dict.fromkeys(family(r["transport"]) for r in rows):
        lines.append(f"- {f}: {GUARANTEE_NOTES[f]}")
    return "\n".join(lines) + "\n"


# ==============================================================================================
# CLI
# ==============================================================================================

def _dev_server() -> tuple[str | None, int | None]:
    with contextlib.suppress(OSError, ValueError, KeyError):
        d = json.loads(Path("/tmp/dev/server.json").read_text())
        return d["url"], d.get("pid")
    return None, None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", nargs="?", help="S3 endpoint (default: /tmp/dev/server.json's)")
    ap.add_argument("--version", default="1.0.1", help="manifest version (default 1.0.1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-j", "--jobs", type=int, default=16)
    ap.add_argument("--part-size", type=parse_size, default=16 * MiB)
    ap.add_argument("--transports", default=",".join(DEFAULT_TRANSPORTS),
                    help=f"comma-separated, from: {', '.join(WRITES)}")
    ap.add_argument("--max-files", type=int, help="an evenly spread sample of this many objects")
    ap.add_argument("--max-bytes", type=parse_size, help="at most this many bytes of objects")
    ap.add_argument("--no-probe", action="store_true", help="skip the fault-proxy guarantee probe")
    ap.add_argument("--idle-wait", type=float, default=20.0,
                    help="seconds each run may wait for the machine to go quiet (default 20)")
    ap.add_argument("--server-pid", type=int, help="the server's pid, for its CPU (default: the dev server's)")
    ap.add_argument("--workdir", type=Path, help="scratch dir (default: a temp dir, removed)")
    ap.add_argument("--json", type=Path, help="also write the rows (with every run) here")
    args = ap.parse_args(argv)
    dev_url, dev_pid = _dev_server()
    url = (args.url or dev_url or "").rstrip("/")
    if not url:
        ap.error("no endpoint URL given and no /tmp/dev/server.json")
    server_pid = args.server_pid or (dev_pid if dev_url and dev_url.rstrip("/") == url else None)
    key = f"{PROJECT}/manifests/{PROJECT}_project_manifest_v{args.version}.json"
    with urllib.request.urlopen(f"{url}/{BUCKET}/{key}", timeout=60) as r:
        manifest = json.load(r)
    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = workdir = Path(tempfile.mkdtemp(prefix="bench-transports-"))
    try:
        rows = run(url, manifest, repeats=args.repeats, jobs=args.jobs, part_size=args.part_size, workdir=workdir,
                   transports=[t.strip() for t in args.transports.split(",") if t.strip()],
                   max_files=args.max_files, max_bytes=args.max_bytes, probe=not args.no_probe,
                   server_pid=server_pid, idle_wait=args.idle_wait)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    print(f"Manifest v{args.version} on {url}\n")
    print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
