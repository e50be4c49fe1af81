"""The Mirror as a long-lived session: one loop thread, closing it while a call runs, link
mode and limits given once, events and failures readable as they used to be."""

from __future__ import annotations

import json
import os
import threading

import pytest
from faultproxy import FaultProxy
from test_sync import assert_mirror

from mirror.api import Mirror
from mirror.limits import Limits
from mirror.store.layout import CacheLayout
from mirror.store.lock import CacheLock

SMALL_PARTS = Limits(jobs=4, part_size=64 << 10)


def test_closing_a_mirror_while_another_thread_syncs_cancels_that_sync_cleanly(sandbox, replica, tmp_path):
    cache = tmp_path / "c"
    with FaultProxy(sandbox.url, rate=replica.total_bytes("1.0.1") / 20) as proxy:
        threads_before = {x.ident for x in threading.enumerate()}
        m = Mirror(cache, endpoint_url=proxy.url)
        m.load_manifest("1.0.1")
        started = threading.Event()
        out: dict = {}

        def worker():
            try:
                out["stats"] = m.sync(limits=SMALL_PARTS, on_event=lambda e: e.name == "file_start" and started.set())
            except BaseException as exc:  # noqa: BLE001 - what the thread saw is the point
                out["error"] = exc

        t = threading.Thread(target=worker)
        t.start()
        assert started.wait(20)
        m.close()
        t.join(20)
        assert not t.is_alive(), "the other thread's call never returned"
        assert isinstance(out.get("error"), RuntimeError) and "closed" in str(out["error"])
        assert [x.name for x in threading.enumerate() if x.ident not in threads_before] == []  # loop, I/O, index
        with CacheLock(CacheLayout(cache).lock_path):  # released: taken at once, no waiting
            pass
        with pytest.raises(RuntimeError, match="closed"):
            m.list_manifest_file_names()  # a closed Mirror stays closed
        proxy.rate = None
        with Mirror(cache, endpoint_url=proxy.url) as again:
            assert again.sync(limits=SMALL_PARTS).failures == []
    assert_mirror(cache, replica, "1.0.1")


def test_a_mirror_link_mode_holds_for_sync_too(sandbox, replica, tmp_path):
    cache = tmp_path / "c"
    with Mirror(cache, endpoint_url=sandbox.url, link_mode="copy") as m:
        m.load_manifest("0.1.0")
        m.sync()
        man = m.manifest()
    views = [CacheLayout(cache).view_path(f"{man.view_dir}/{e.relative_path}") for e in man.entries()]
    assert views and all(os.stat(v).st_nlink == 1 for v in views)  # copies, not hard links


def test_other_limits_for_one_sync_leave_the_mirror_own_alone(sandbox, replica, tmp_path):
    """The sync given other limits really used them (its GETs were 64 KiB ranges, at most 4 at
    once), and the Mirror's own came back for the next one (whole-object GETs)."""
    with FaultProxy(sandbox.url) as proxy, Mirror(tmp_path / "c", endpoint_url=proxy.url) as m:
        m.load_manifest("0.1.0")
        own = m.session.limits
        assert m.sync(limits=SMALL_PARTS).failures == []
        ranges = [h.get("Range") for p, h in proxy.gets("/behavior_")]
        spans = [int(b) - int(a) + 1 for a, b in (r.removeprefix("bytes=").split("-") for r in ranges if r)]
        assert spans and max(spans) == 64 << 10  # parts of the sync's size (the Mirror's own: 32 MiB)
        assert proxy.max_in_flight <= SMALL_PARTS.jobs + 1  # (+1: a listing may overlap)
        assert m.session.limits == own
        proxy.requests.clear()
        assert m.sync("1.0.1").failures == []  # the Mirror's own limits again: 32 MiB parts
        assert all("Range" not in h for p, h in proxy.gets("/behavior_"))


def test_events_are_typed_and_their_json_form_is_to_dict(sandbox, replica, tmp_path):
    from mirror import events as ev

    got = []
    with Mirror(tmp_path / "c", endpoint_url=sandbox.url) as m:
        m.load_manifest("0.1.0")
        m.sync(on_event=got.append)
    start = got[0]
    assert isinstance(start, ev.Started) and start.to_dict()["event"] == "start" and "fetch" in start.to_dict()
    assert json.loads(json.dumps(start.to_dict()))["event"] == "start"
    assert {e.name for e in got} >= {"start", "file_start", "file_done", "summary"}
    done = next(e for e in got if isinstance(e, ev.FileDone))
    assert done.to_dict()["key"] == done.key and done.bytes > 0
    with pytest.raises(TypeError):
        start["event"]  # no dict shim: a typed event is read by its attributes


def test_a_progress_display_reads_snapshots_the_loop_published_not_live_counters(sandbox, replica, tmp_path):
    """The live bar polls from its own thread: what it reads is a frozen copy made on the loop
    thread (published every 0.25 s and at the end), never the Stats the loop is changing."""
    import dataclasses

    from mirror.progress import LiveProgress

    seen = []
    bar = LiveProgress()
    with bar, Mirror(tmp_path / "c", endpoint_url=sandbox.url) as m:
        m.load_manifest("0.1.0")
        stats = m.sync(limits=SMALL_PARTS, on_start=bar.attach,
                       on_event=lambda e: seen.append((threading.current_thread().name, bar.stats.published)))
        bar.refresh()
        shown = bar.progress.tasks[0]
    final = stats.published
    assert dataclasses.is_dataclass(final) and final.__dataclass_params__.frozen
    assert (final.bytes_done, final.files_done, final.failed) == (stats.bytes_done, stats.files_done, 0)
    assert final.bytes_done > 0 and shown.completed == final.bytes_done
    assert {name for name, _ in seen} == {"vbo-mirror-loop"}
    stats.bytes_done += 1  # the live counters move on; a published snapshot does not
    assert stats.published.bytes_done == final.bytes_done


def test_calls_take_the_same_loop_thread_and_callbacks_run_on_it(sandbox, replica, tmp_path):
    names = set()
    threads_before = {x.ident for x in threading.enumerate()}
    with Mirror(tmp_path / "c", endpoint_url=sandbox.url) as m:
        m.load_manifest("0.1.0")
        m.sync(on_event=lambda e: names.add(threading.current_thread().name))
        before = threading.active_count()
        m.list_manifest_file_names()
        m.status()
        assert threading.active_count() == before  # no thread per call
        with pytest.raises(RuntimeError, match="own event loop"):
            m.sync(on_event=lambda e: m.status())  # calling the Mirror from its own callback
    assert names == {"vbo-mirror-loop"}
    assert [t.name for t in threading.enumerate() if t.ident not in threads_before] == []


def test_a_call_from_a_task_that_is_already_being_cancelled_still_runs(sandbox, replica, tmp_path):
    """Cleanup code in a cancelled task (a finally block) may still ask the Mirror something."""
    import asyncio

    with Mirror(tmp_path / "c", endpoint_url=sandbox.url) as m:
        m.load_manifest("0.1.0")
        seen = []

        async def cell():
            try:
                await asyncio.sleep(10)
            finally:
                seen.append(m.status().cache_dir)

        async def main():
            task = asyncio.create_task(cell())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
    assert seen == [str(tmp_path / "c")]


def test_sizes_the_listing_cannot_give_are_asked_by_head_with_progress(sandbox, replica, tmp_path):
    """A bucket that refuses ListObjectVersions: every size comes from a HEAD, and the long
    step says how far it is."""
    from faultproxy import Rule

    from mirror.session import Session

    lines: list[str] = []
    with FaultProxy(sandbox.url, rules=[Rule("versions=", "status", times=99, status=403, code="AccessDenied",
                                             in_query=True)]) as proxy:
        with Mirror(tmp_path / "c", endpoint_url=proxy.url, on_status=lines.append) as m:
            m.session.STATUS_SECONDS = 0.0
            m.load_manifest("0.1.0")
            plan = m.plan()
            heads = [r for r in proxy.requests if r[0] == "HEAD"]
    # (moto answers these anonymous HEADs 403 although GETs pass the same bucket policy, so the
    # sizes stay unknown here; what is tested is that each missing size is asked once, with
    # progress)
    n = len(plan.fetch)
    assert n > 0 and len(heads) == n and len({h[1] for h in heads}) == n
    assert any(line.startswith("listing the object versions") for line in lines)
    assert f"{n:,} object sizes the listing lacks: asking each by HEAD" in lines
    assert lines[-1] == f"HEAD {n:,}/{n:,}"
    assert Session.STATUS_SECONDS == 2.0  # the instance's override did not leak
