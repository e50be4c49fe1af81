"""Pieces of the engine whose behaviour must be exact: the pacer (with an injected clock),
the ordered hasher (parts landing out of order), the multipart ETag, the retry backoff."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import threading

from fakes import ScriptedRemote

from mirror.policy import Pacer, RetryPolicy
from mirror.engine.writer import HoldBudget, OrderedHasher
from mirror.hashing import MultiHasher


def test_pacer_spaces_requests_after_slowdown_and_recovers():
    now = [100.0]
    slept = []

    async def sleep(d):
        slept.append(d)
        now[0] += d

    p = Pacer(max_interval=1.0, clock=lambda: now[0], sleep=sleep)

    async def go():
        await p.wait()
        assert slept == []  # no slowdown yet: no waiting
        p.slow_down()
        p.slow_down()
        assert p.interval == 0.1 and p.slowdowns == 2
        for _ in range(3):
            await p.wait()
        assert [round(d, 9) for d in slept] == [0.1, 0.1]  # the first goes at once, the next are spaced
        for _ in range(10):
            p.slow_down()
        assert p.interval == 1.0  # capped
        for _ in range(60):
            p.success()
        assert p.interval < 0.01

    asyncio.run(go())


def test_retry_delays_are_jittered_and_capped():
    pol = RetryPolicy(base_delay=0.5, max_delay=4.0, rng=random.Random(1))
    for attempt in range(10):
        d = pol.delay(attempt)
        assert 0 <= d <= min(4.0, 0.5 * 2 ** attempt)
    assert len({round(pol.delay(3), 6) for _ in range(20)}) > 1


def _hasher(fd, done, budget_buffers):
    released = []
    lock = threading.Lock()

    def release(buf):
        with lock:
            released.append(buf)

    budget = HoldBudget(budget_buffers)
    return OrderedHasher(fd, MultiHasher(), done, budget=budget, release=release), released, budget


def test_ordered_hasher_from_concurrent_writers(tmp_path):
    """Threads write chunks in random order, each calling `landed` after its pwrite, as the
    writer does; the digest is the whole file's, the frontier reaches the end, every buffer
    is given back exactly once and the hold budget is whole again. A tight budget makes most
    chunks go the read-back way; a roomy one keeps them in memory."""
    data = random.Random(6).randbytes(2_000_017)
    for budget_buffers in (1, 64):
        path = tmp_path / f"f{budget_buffers}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, len(data))  # zeros until written: nothing is right by accident
            chunks = [(s, min(s + 50_000, len(data))) for s in range(0, len(data), 50_000)]
            random.Random(7).shuffle(chunks)
            h, released, budget = _hasher(fd, [], budget_buffers)
            queue = list(chunks)
            lock = threading.Lock()

            def writer():
                while True:
                    with lock:
                        if not queue:
                            return
                        s, e = queue.pop()
                    buf = bytearray(data[s:e])
                    os.pwrite(fd, buf, s)
                    h.landed(s, buf, e - s)

            threads = [threading.Thread(target=writer) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert h.finish() == len(data)
            assert h.hasher.digests().blake2b == hashlib.blake2b(data).hexdigest()
            assert len(released) == len(chunks) and len({id(b) for b in released}) == len(chunks)
            assert budget.free == budget_buffers
            if budget_buffers == 1:
                assert h.read_back > 0
        finally:
            os.close(fd)


def test_ordered_hasher_catches_up_over_a_resumed_prefix(tmp_path):
    data = random.Random(3).randbytes(1_000_003)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [(s, min(s + 65_536, len(data))) for s in range(65_536, len(data), 65_536)]
        random.Random(4).shuffle(chunks)
        h, released, budget = _hasher(fd, [[0, 65_536]], 4)  # a resumed prefix, on disk only
        for s, e in chunks:
            h.landed(s, bytearray(data[s:e]), e - s)
        assert h.finish() == len(data)
        assert h.hasher.digests().blake2b == hashlib.blake2b(data).hexdigest()
        assert len(released) == len(chunks) and budget.free == 4
    finally:
        os.close(fd)


def test_ordered_hasher_drop_gives_held_buffers_back(tmp_path):
    data = random.Random(8).randbytes(300_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        h, released, budget = _hasher(fd, [], 8)
        h.landed(100_000, bytearray(data[100_000:200_000]), 100_000)  # ahead of the frontier: held
        assert released == [] and budget.free == 7
        h.drop()
        assert len(released) == 1 and budget.free == 8
    finally:
        os.close(fd)


def test_blake2b_backends_give_hashlibs_digest_whatever_the_chunking(monkeypatch):
    import mirror.hashing as hashing

    rng = random.Random(9)
    for sodium in (True, False):
        if not sodium:
            monkeypatch.setattr(hashing, "_SODIUM", None)
        elif hashing._SODIUM is None:
            continue  # PyNaCl absent: only the fallback to check
        for n in (0, 1, 127, 128, 129, 4097, 3 << 20):
            data = rng.randbytes(n)
            h = hashing.blake2b_512()
            assert isinstance(h, hashing.SodiumBlake2b) == sodium
            pos = 0
            while pos < n:
                k = rng.randint(1, 400_000)
                h.update(memoryview(data)[pos:pos + k])
                pos += k
            assert h.hexdigest() == hashlib.blake2b(data).hexdigest() == h.hexdigest()


def test_multipart_etag_matches_s3s_rule():
    data = random.Random(5).randbytes(300_000)
    part = 100_000
    md5s = b"".join(hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part))
    want = f"{hashlib.md5(md5s).hexdigest()}-3"
    h = MultiHasher(etag_part_size=part)
    for i in range(0, len(data), 7_777):
        h.update(data[i:i + 7_777])
    assert h.digests().etag == want
    h = MultiHasher(want_etag=True)
    h.update(data)
    assert h.digests().etag == hashlib.md5(data).hexdigest()


def test_a_stop_while_another_file_fails_ends_the_run_promptly(tmp_path):
    """A disk error in one worker cancels the others; one whose part has just failed must
    stop too, not record a failure and go on fetching (a fake remote makes the timing exact)."""
    import contextlib

    from mirror.limits import Limits
    from mirror.engine.runner import Engine
    from mirror.engine.transfer import Verify
    from mirror.errors import ObjectChanged, StoreError
    from mirror.plan import Fetch, Plan
    from mirror.model import ObjectRef
    from mirror.store.index import StateIndex
    from mirror.store.layout import CacheLayout
    from mirror.store.facade import Store

    async def script(call, deliver):
        if call.key == "disk":
            await asyncio.sleep(0.05)
            raise StoreError("disk full (injected)")
        if call.key == "changed" and call.start == 0:
            await asyncio.sleep(0.04)
            raise ObjectChanged("412 (injected)")
        if call.key == "changed":
            try:
                await asyncio.sleep(10)
            finally:
                await asyncio.shield(asyncio.sleep(0.05))  # a cleanup that takes a moment

    remote = ScriptedRemote(script)

    def digest(i: int) -> str:
        return hashlib.blake2b(str(i).encode()).hexdigest()

    items = [Fetch(digest(0), ObjectRef("b", "changed", "v"), 256 << 10, None, ("v/a",)),
             Fetch(digest(1), ObjectRef("b", "disk", "v"), 100, None, ("v/b",))]
    items += [Fetch(digest(i), ObjectRef("b", f"other{i}", "v"), 100, None, (f"v/o{i}",)) for i in range(2, 30)]
    layout = CacheLayout(tmp_path)
    engine = Engine(store=Store(layout, link_mode="copy"), remote=remote, index=StateIndex(layout),
                    limits=Limits(jobs=2, part_size=128 << 10), policy=RetryPolicy(attempts=2, base_delay=0.01),
                    verify=Verify.NONE)
    # Both parts of "changed" in flight at once, as at the tail of a run (while files wait for a
    # worker the engine runs one part per object): the case where a part fails while the
    # run's stop arrives.
    engine._part_width = lambda: 2

    async def go():
        with contextlib.suppress(StoreError):
            await asyncio.wait_for(engine.run(Plan(("m",), tuple(items))), 5)
            raise AssertionError("the disk error was not raised")

    fds = len(os.listdir("/proc/self/fd"))  # (what earlier tests of this process left open is theirs)
    asyncio.run(go())
    assert [k for k in remote.keys() if k.startswith("other")] == []  # nothing started after the stop
    assert engine.stats.failures == []  # the cancelled file is not reported as failed
    assert len(os.listdir("/proc/self/fd")) - fds < 10  # no partial's descriptors left open


def test_state_index_round_trips_and_merges_concurrent_writers(tmp_path):
    from mirror.store.index import IndexRecord, StateIndex
    from mirror.store.layout import CacheLayout

    layout = CacheLayout(tmp_path)
    a, b = StateIndex(layout), StateIndex(layout)
    a.load(), b.load()
    a.put(IndexRecord("a" * 128, 10, "x1", "k/a", "v1", "e1", 1_700_000_000.5))
    b.put(IndexRecord("b" * 128, 20, None, "k/b", "v2", None, 1_700_000_001.0))
    a.commit()
    b.commit()  # merges with what a wrote instead of overwriting it
    c = StateIndex(layout)
    assert c.load() is True
    assert sorted(c.records) == ["a" * 128, "b" * 128]
    ra = c.get("a" * 128)
    assert (ra.size, ra.xxh3, ra.key, ra.version_id, ra.etag) == (10, "x1", "k/a", "v1", "e1")
    assert abs(ra.verified_at - 1_700_000_000.5) < 0.01
    assert c.get("b" * 128).xxh3 is None
    c.drop("a" * 128)
    c.commit()
    d = StateIndex(layout)
    d.load()
    assert list(d.records) == ["b" * 128]


def test_parts_of_one_object_go_one_at_a_time_while_files_wait_and_spread_at_the_tail(tmp_path):
    """While files still wait for a worker, each object has one ranged GET in flight (parts
    landing out of order would overflow the reorder window); once all have started, the last
    objects use up to parts_per_file connections each."""
    from mirror.engine.runner import Engine
    from mirror.engine.transfer import Verify
    from mirror.limits import Limits
    from mirror.plan import Fetch, Plan
    from mirror.model import ObjectRef
    from mirror.store.index import StateIndex
    from mirror.store.layout import CacheLayout
    from mirror.store.facade import Store

    in_flight: dict[str, int] = {}
    peak_while_waiting: dict[str, int] = {}
    peak_at_tail: dict[str, int] = {}
    engine = None

    async def script(call, deliver):
        in_flight[call.key] = in_flight.get(call.key, 0) + 1
        peaks = peak_while_waiting if engine._waiting > 0 else peak_at_tail
        peaks[call.key] = max(peaks.get(call.key, 0), in_flight[call.key])
        await asyncio.sleep(0.01)
        in_flight[call.key] -= 1

    size = 4 * (64 << 10)  # four parts each
    items = tuple(Fetch(hashlib.blake2b(str(i).encode()).hexdigest(), ObjectRef("b", f"k{i}", "v"), size, None,
                        (f"v/f{i}",)) for i in range(8))
    layout = CacheLayout(tmp_path)
    engine = Engine(store=Store(layout, link_mode="copy"), remote=ScriptedRemote(script, buffers=256),
                    index=StateIndex(layout), limits=Limits(jobs=4, part_size=64 << 10, parts_per_file=4),
                    verify=Verify.NONE)
    stats = asyncio.run(engine.run(Plan(("m",), items)))
    assert stats.files_done == 8 and stats.failures == []
    assert peak_while_waiting and max(peak_while_waiting.values()) == 1
    assert max(peak_at_tail.values()) > 1


def test_gc_pause_nests_and_restores_the_collector_state():
    import gc

    from mirror.gcpause import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a collector disabled by the caller stays disabled
    finally:
        gc.enable()


def test_scan_finds_objects_only_in_fan_out_directories_that_exist(tmp_path):
    from mirror.manifest import FileEntry
    from mirror.plan import Target
    from mirror.store.layout import CacheLayout
    from mirror.upkeep.scan import scan_local

    layout = CacheLayout(tmp_path)
    present, absent, other = "ab" * 64, "abcd" + "0" * 124, "ff" * 64
    path = layout.object_file(present)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"x" * 7)
    targets = [Target(f"v/{h}", FileEntry("data", str(i), "u", "b", f"p/{h}", "v", h))
               for i, h in enumerate((present, absent, other))]
    local = scan_local(layout, targets)
    assert local.objects == {present: 7}
    many = targets + [Target(f"v/{i}", FileEntry("data", str(i), "u", "b", f"p/{i}", "v", f"{i:0128x}"))
                      for i in range(20_001)]  # past the threshold: the fan-out listing is used
    assert scan_local(layout, many).objects == {present: 7}  # the same ab/ directory, another cd/: not found; ff/: not listed


def test_typed_events_render_the_same_to_json_lines_and_plain_text(capsys):
    import io
    import json

    from mirror import events as ev
    from mirror.progress import PlainEvents, json_lines

    out = io.StringIO()
    emit, plain = json_lines(out), PlainEvents()
    stream = [ev.Started({"manifests": ["m"], "fetch": {"files": 1, "bytes": 5}}),
              ev.FileDone("k/a", 5, 0, 0.1, ["v/a"]),
              ev.FileDone("k/b", 5, 0, 0.1, ["v/b"], etag_unverifiable=True),
              ev.FileFailed("k/c", "ObjectNotFound", "gone"),
              ev.Warned("index not saved: disk full")]
    for e in stream:
        emit(e)
        plain(e)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [{k: v for k, v in x.items() if k != "t"} for x in lines] == [
        {"event": "start", "manifests": ["m"], "fetch": {"files": 1, "bytes": 5}},
        {"event": "file_done", "key": "k/a", "bytes": 5, "resumed_bytes": 0, "seconds": 0.1, "views": ["v/a"]},
        {"event": "file_done", "key": "k/b", "bytes": 5, "resumed_bytes": 0, "seconds": 0.1, "views": ["v/b"],
         "etag_unverifiable": True},
        {"event": "file_failed", "key": "k/c", "error": "ObjectNotFound", "message": "gone"},
        {"event": "warning", "message": "index not saved: disk full"},
    ]
    assert capsys.readouterr().err.splitlines() == ["vbo-mirror: failed: k/c: gone",
                                                    "vbo-mirror: warning: index not saved: disk full"]
    assert stream[3].name == "file_failed" and stream[3].key == "k/c"


def _resume_state_while_hanging(tmp_path, *, count: int, fill: int, pause: float) -> dict:
    """Run one 32 MiB fetch whose server sends `count` buffers of `fill` bytes, `pause` s
    apart, and then hangs; return the resume state on disk at that moment (no cleanup has
    run, as after a kill -9)."""
    import json

    from mirror.engine.runner import Engine
    from mirror.engine.transfer import Verify
    from mirror.limits import Limits
    from mirror.model import ObjectRef
    from mirror.plan import Fetch, Plan
    from mirror.store.facade import Store
    from mirror.store.index import StateIndex
    from mirror.store.layout import CacheLayout

    hanging = asyncio.Event()

    async def script(call, deliver):
        for _ in range(count):
            deliver(b"z" * fill)
            await asyncio.sleep(pause)
        hanging.set()
        await asyncio.sleep(60)

    layout = CacheLayout(tmp_path)
    h = "c" * 128
    engine = Engine(store=Store(layout, link_mode="copy"), remote=ScriptedRemote(script, buffer_size=1 << 20, buffers=16),
                    index=StateIndex(layout), limits=Limits(jobs=1, part_size=64 << 20), verify=Verify.NONE)
    sidecar = layout.partial_path(h).with_name(h + ".partial.json")

    async def go():
        task = asyncio.create_task(engine.run(Plan(("m",), (Fetch(h, ObjectRef("b", "k", "v"), 32 << 20, None,
                                                                     ("v/k",)),))))
        await hanging.wait()
        for _ in range(100):  # the checkpoint is written by a worker thread once the writes land
            if sidecar.exists():
                break
            await asyncio.sleep(0.02)
        state = json.loads(sidecar.read_text())
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return state

    return asyncio.run(go())


def test_a_part_streaming_in_is_checkpointed_every_few_mib_so_a_kill_loses_little(tmp_path):
    """No cleanup runs after kill -9: what saves the bytes is the checkpoint taken while the
    part streams in. Here the server sends 6 MiB and then hangs; the resume state on disk
    must already cover at least 4 MiB of it."""
    from mirror.engine.writer import CHECKPOINT_BYTES

    state = _resume_state_while_hanging(tmp_path, count=6, fill=1 << 20, pause=0.01)
    assert state["done"] and state["done"][0][0] == 0 and state["done"][0][1] >= CHECKPOINT_BYTES


def test_a_slow_part_is_checkpointed_within_a_second_not_only_every_few_mib(tmp_path):
    """On a slow link 4 MiB can take minutes: the checkpoint is also taken by time. Here the
    server sends 3 x 16 KiB, 0.3 s apart, and then hangs; the resume state on disk must cover
    what came before the last buffer without waiting for 4 MiB."""
    state = _resume_state_while_hanging(tmp_path, count=3, fill=16 << 10, pause=0.3)
    assert state["done"] and state["done"][0][0] == 0 and state["done"][0][1] >= 32 << 10
