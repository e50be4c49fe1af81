"""Small objects (one receive buffer, one part) are fetched whole into memory and then
hashed, written, synced, published and linked in one worker-thread call; and the store's
directories are reached with one openat2 call where the kernel has it. What must hold: the
same guarantees as the part-by-part path (nothing unverified published, leftovers of any
earlier run handled, a body cut short resumed, symlinks never followed)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import types

import pytest
from faultproxy import FaultProxy, Rule
from test_faults import FAST
from test_sync import assert_mirror

from mirror.api import Mirror
from mirror.engine.transfer import _Body
from mirror.errors import InputError, ObjectChanged, StoreError, ViewBlocked
from mirror.limits import Limits
from mirror.remote.wire import BufferPool
from mirror.store import fsutil
from mirror.store.layout import CacheLayout
from mirror.store.objects import SIDECAR_VERSION


def smallest(replica, version="1.0.1"):
    return min(replica.data[version].values(), key=lambda f: f.size)


@contextlib.contextmanager
def _mirror(root, url, version="1.0.1"):
    with Mirror(root, endpoint_url=url) as m:
        m.load_manifest(version)
        yield m


def _fetch_of(m: Mirror, key: str):
    """The plan's Fetch of `key`: its hash, version and the ETag the run will expect."""
    return next(x for x in m.plan().fetch if x.ref.key == key)


def _leftovers(root) -> list[str]:
    return sorted(p.name for p in CacheLayout(root).objects.glob("*/*/*.partial*"))


# --- the whole-body path against the server -------------------------------------------------------


def test_a_small_object_that_changed_on_the_server_leaves_nothing_behind(sandbox, replica, tmp_path):
    f = smallest(replica)
    rule = Rule(key=f.key, action="status", status=412, code="PreconditionFailed", times=1000)
    with FaultProxy(sandbox.url, rules=[rule]) as proxy, _mirror(tmp_path / "c", proxy.url) as m:
        stats = m.sync(policy=FAST)
    assert [(x.key, type(x.error)) for x in stats.failures] == [(f.key, ObjectChanged)]
    assert rule.hits >= 1 and _leftovers(tmp_path / "c") == []


@pytest.mark.parametrize("sidecar", [False, True], ids=["bare-partial", "partial-with-resume-state"])
def test_a_leftover_partial_of_a_small_object_never_reaches_a_view(sandbox, replica, tmp_path, sidecar):
    """A .partial of garbage left by an earlier run: without resume state it is simply
    replaced; with resume state that claims the garbage, the object goes the part-by-part way,
    its BLAKE2b fails, and it is fetched again. Either way the view has the right bytes."""
    f = smallest(replica)
    root = tmp_path / "c"
    events = []
    with _mirror(root, sandbox.url) as m:
        fetch = _fetch_of(m, f.key)
        partial = CacheLayout(root).partial_path(fetch.file_hash)
        partial.parent.mkdir(parents=True)
        partial.write_bytes(b"\xff" * f.size)
        if sidecar:
            state = {"v": SIDECAR_VERSION, "key": f.key, "version_id": fetch.ref.version_id, "etag": fetch.etag,
                     "size": f.size, "done": [[0, f.size]]}
            partial.with_name(partial.name + ".json").write_text(json.dumps(state))
        stats = m.sync(policy=FAST, on_event=events.append)
    assert stats.failures == []
    assert_mirror(root, replica, "1.0.1")
    assert _leftovers(root) == []
    if sidecar:  # it was resumed (and found wrong), not silently ignored
        assert any(e.name == "retry" and e.error == "IntegrityError" for e in events)


def test_many_small_objects_at_once_give_every_buffer_back(sandbox, replica, tmp_path, monkeypatch):
    """Every file of the version fits one buffer: all go the whole-body way, 16 at once, on a
    pool sized for that, and the run ends with every buffer back in the pool."""
    from mirror.engine.transfer import Transfer

    seen = {}
    real = Transfer._run_whole

    async def counted(self, *a, **kw):
        seen[self.job.ref.key] = True
        seen["pool"] = self.remote.buffers
        return await real(self, *a, **kw)

    monkeypatch.setattr(Transfer, "_run_whole", counted)
    with _mirror(tmp_path / "c", sandbox.url) as m:
        stats = m.sync(limits=Limits(jobs=16), policy=FAST)
    assert stats.failures == []
    assert_mirror(tmp_path / "c", replica, "1.0.1")
    assert {f.key for f in replica.data["1.0.1"].values()} <= set(seen)  # (the tables went this way too)
    pool = seen["pool"]
    assert len(pool._free) == pool._made  # nothing held, nothing lost


# --- the body sink, alone ---------------------------------------------------------------------------


def test_the_body_sink_holds_one_buffer_and_copies_a_body_that_comes_in_pieces(monkeypatch):
    pool = BufferPool(8, 4)
    counted, saves = [], []
    body = _Body(20, pool, counted.append, saves.append)
    clock = [100.0]
    monkeypatch.setattr("mirror.engine.transfer.time.monotonic", lambda: clock[0])
    body.saved_at = clock[0]

    first = pool.take()
    first[:8] = b"abcdefgh"
    body(first, 5)  # part-full: the watchdog handed it over
    assert pool._free == [] and body.view().tobytes() == b"abcde"  # held as it is, no copy
    clock[0] += 1.0
    second = pool.take()
    second[:8] = b"fghijklm"
    body(second, 8)
    assert len(pool._free) == 2  # both went back: the body lives in memory of its own now
    assert body.view().tobytes() == b"abcdefghijklm"
    assert saves == [b"abcdefghijklm"]  # due (a second since the last): what came so far, a copy
    third = pool.take()
    third[:7] = b"nopqrst"
    clock[0] += 1.0
    body(third, 7)
    assert body.view().tobytes() == b"abcdefghijklmnopqrst" and body.pos == 20
    assert saves == [b"abcdefghijklm"]  # whole now: published next, not saved
    assert counted == [5, 8, 7] and len(pool._free) == pool._made


def test_the_body_sink_gives_its_one_buffer_back_on_release():
    pool = BufferPool(8, 1)
    body = _Body(4, pool, lambda n: None, lambda b: None)
    buf = pool.take()
    buf[:4] = b"wxyz"
    body(buf, 4)
    assert pool.take() is None  # held
    body.release()
    body.release()  # twice is harmless
    assert len(pool._free) == 1


# --- the store's directories: one openat2, or the walk -------------------------------------------


@pytest.fixture(params=["openat2", "walk"])
def layout(request, tmp_path, monkeypatch):
    if request.param == "walk":
        monkeypatch.setattr(fsutil, "_beneath", types.SimpleNamespace(ok=False))
    elif fsutil.open_dir_beneath(os.open(tmp_path, os.O_RDONLY), ".") < 0:
        pytest.skip("no openat2 here")
    root = tmp_path / "cache"
    root.mkdir()
    return CacheLayout(root)


def test_open_parent_reaches_and_makes_real_directories(layout):
    fd, name = layout.open_parent(layout.view_file("v/a/b/file.nwb"), create=True)
    try:
        assert name == "file.nwb"
        assert os.path.samestat(os.fstat(fd), os.stat(layout.root / "v" / "a" / "b"))
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError):
        layout.open_parent(layout.view_path("w/x/file.nwb"))


def test_open_parent_refuses_a_symlink_anywhere_on_the_way(layout, tmp_path):
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    (layout.root / "v").mkdir()
    (layout.root / "v" / "a").symlink_to(outside, target_is_directory=True)
    for create in (False, True):
        with pytest.raises(StoreError, match=r"v/a is a symlink"):
            layout.open_parent(layout.view_file("v/a/b/file.nwb"), create=create)
    assert sorted(p.name for p in outside.iterdir()) == ["b"]


def test_open_parent_refuses_even_a_symlink_that_stays_inside_cache_dir(layout):
    """A link from one directory of cache_dir to another (say, a view directory into the
    store) is refused as well: every component must be a real directory."""
    (layout.root / "w" / "b").mkdir(parents=True)
    (layout.root / "v").mkdir()
    (layout.root / "v" / "a").symlink_to("../w", target_is_directory=True)
    with pytest.raises(StoreError, match=r"v/a is a symlink"):
        layout.open_parent(layout.view_file("v/a/b/file.nwb"), create=True)
    assert list((layout.root / "w" / "b").iterdir()) == []


def test_open_parent_names_a_file_in_the_way(layout):
    (layout.root / "v").mkdir()
    (layout.root / "v" / "a").write_text("the user's")
    with pytest.raises(ViewBlocked, match="a file stands where the directory"):
        layout.open_parent(layout.view_file("v/a/file.nwb"), create=True)


@pytest.mark.parametrize("rel", ["../x.nwb", "a/../../x.nwb", "/etc/x.nwb", "a/.."])
def test_view_paths_that_leave_cache_dir_are_refused(tmp_path, rel):
    with pytest.raises(InputError, match="escapes cache_dir"):
        CacheLayout(tmp_path).view_file(rel)


@pytest.mark.skipif(sys.platform != "linux", reason="openat2 is Linux's")
def test_openat2_is_what_this_linux_uses(tmp_path):
    """On a Linux with openat2 (5.6+) the one-call path is taken, not silently the walk."""
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    if (major, minor) < (5, 6):
        pytest.skip("kernel older than 5.6")
    (tmp_path / "a" / "b").mkdir(parents=True)
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = fsutil.open_dir_beneath(root, "a/b")
        assert fd >= 0
        os.close(fd)
        (tmp_path / "link").symlink_to(tmp_path / "a")
        assert fsutil.open_dir_beneath(root, "link/b") == -1  # refused in the kernel: the walk says why
    finally:
        os.close(root)
