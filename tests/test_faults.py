"""Faults that must be exact and repeatable, injected by a proxy in front of moto (broken
streams, SlowDown, flipped bytes, changed objects), by the kernel (kill -9), by cancellation,
and by a filesystem that says ENOSPC."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import write_dataset_config
from faultproxy import FaultProxy, Rule
from test_sync import PROJECT, assert_mirror, expected_files

from mirror.api import Mirror
from mirror.policy import RetryPolicy
from mirror.limits import Limits
from mirror.engine.transfer import Verify
from mirror.errors import (IntegrityError, ObjectChanged)
from mirror.store.layout import CacheLayout

FAST = RetryPolicy(attempts=4, integrity_attempts=3, base_delay=0.01, max_delay=0.05)
SMALL_PARTS = Limits(jobs=4, part_size=64 << 10)


def biggest(replica, version="1.0.1"):
    return max(replica.data[version].values(), key=lambda f: f.size)


def summary(stdout: str) -> dict:
    return json.loads(stdout.splitlines()[-1])


def test_every_get_names_its_version_and_ranged_gets_send_if_match(sandbox, replica, tmp_path):
    big = biggest(replica)
    with FaultProxy(sandbox.url) as proxy:
        m = Mirror(tmp_path / "c", endpoint_url=proxy.url)
        m.load_manifest("1.0.1")
        stats = m.sync(limits=SMALL_PARTS, policy=FAST)
        assert stats.failures == []
        gets = proxy.gets("/visual-behavior-ophys-data/visual-behavior-ophys/")
    data_gets = [(p, h) for p, h in gets if not p.split("?")[0].endswith(".json")]
    assert data_gets and all("versionId=" in p for p, _ in data_gets)
    ranged = [(p, h) for p, h in data_gets if "Range" in h]
    assert len([1 for p, _ in ranged if big.key in p]) == -(-big.size // (64 << 10))
    assert all(h.get("If-Match", "").startswith('"') for _, h in ranged)


def test_a_broken_stream_resumes_at_the_byte_it_reached(sandbox, replica, tmp_path):
    big = biggest(replica)
    rule = Rule(key=big.key, action="cut", after=40_000, times=1)
    with FaultProxy(sandbox.url, rules=[rule]) as proxy:
        m = Mirror(tmp_path / "c", endpoint_url=proxy.url)
        m.load_manifest("1.0.1")
        events = []
        stats = m.sync(limits=Limits(jobs=2, part_size=1 << 20), policy=FAST, on_event=events.append)
        gets = proxy.gets(big.key)
    assert rule.hits == 1 and stats.failures == [] and stats.retries >= 1
    assert any(e.name == "retry" and e.error == "TransferError" for e in events)
    # the retry asked only for what was missing: a Range starting past the cut
    resumed = [h["Range"] for _, h in gets if "Range" in h]
    assert resumed and int(resumed[0].split("=")[1].split("-")[0]) >= 32_768
    assert stats.bytes_done == sum(len(b) for b in expected_files(replica, "1.0.1").values())
    assert_mirror(tmp_path / "c", replica, "1.0.1")


def test_slowdown_is_retried(sandbox, replica, tmp_path):
    rules = [Rule(key="behavior_sessions/", action="status", status=503, code="SlowDown", times=3)]
    with FaultProxy(sandbox.url, rules=rules) as proxy:
        m = Mirror(tmp_path / "c", endpoint_url=proxy.url)
        m.load_manifest("1.0.1")
        events = []
        stats = m.sync(limits=SMALL_PARTS, policy=FAST, on_event=events.append)
    assert stats.failures == [] and rules[0].hits == 3
    assert [e.error for e in events if e.name == "retry"].count("SlowDown") == 3
    assert_mirror(tmp_path / "c", replica, "1.0.1")


def test_a_flipped_byte_is_caught_discarded_and_fetched_again(sandbox, replica, tmp_path):
    f = biggest(replica)
    rule = Rule(key=f.key, action="corrupt", times=1)
    with FaultProxy(sandbox.url, rules=[rule]) as proxy:
        m = Mirror(tmp_path / "c", endpoint_url=proxy.url)
        m.load_manifest("1.0.1")
        events = []
        stats = m.sync(limits=Limits(jobs=2, part_size=4 << 20), policy=FAST, on_event=events.append)
    assert rule.hits == 1 and stats.failures == []
    assert any(e.name == "retry" and e.error == "IntegrityError" for e in events)
    assert_mirror(tmp_path / "c", replica, "1.0.1")


def test_a_persistent_mismatch_fails_that_file_and_the_rest_goes_on(cli, sandbox, replica):
    f = biggest(replica)
    rule = Rule(key=f.key, action="corrupt", times=1000)
    with FaultProxy(sandbox.url, rules=[rule]) as proxy:
        cli.endpoint = proxy.url
        cli("manifests", "use", "1.0.1")
        r = cli("--json", "sync", expect=5)
    s = summary(r.stdout)
    assert [x["key"] for x in s["failures"]] == [f.key]
    assert "BLAKE2b of the downloaded bytes does not match the manifest" in s["failures"][0]["message"]
    view = cli.cache_dir / f"{PROJECT}-1.0.1" / f.key.split("/", 1)[1]
    assert not view.exists()
    files = expected_files(replica, "1.0.1")
    for rel, body in files.items():
        if rel != str(view.relative_to(cli.cache_dir)):
            assert (cli.cache_dir / rel).read_bytes() == body
    assert not list(CacheLayout(cli.cache_dir).objects.glob("*/*/*.partial"))  # the bad bytes are gone


def test_etag_verification_of_multipart_objects(sandbox, replica, tmp_path):
    m = Mirror(tmp_path / "c", endpoint_url=sandbox.url)
    m.load_manifest("1.0.1")
    stats = m.sync(limits=SMALL_PARTS, verify=Verify.ALL, policy=FAST)
    assert stats.failures == []
    f = biggest(replica, "1.1.0")
    rule = Rule(key=f.key, action="corrupt", times=1000)
    with FaultProxy(sandbox.url, rules=[rule]) as proxy:
        m = Mirror(tmp_path / "d", endpoint_url=proxy.url)
        m.load_manifest("1.1.0")
        stats = m.sync(limits=SMALL_PARTS, verify=Verify.ETAG, policy=FAST)
    assert [x.key for x in stats.failures] == [f.key]
    assert isinstance(stats.failures[0].error, IntegrityError)
    assert "ETag" in str(stats.failures[0].error) and "-" in str(stats.failures[0].error)


def test_an_object_that_changed_fails_that_file(sandbox, replica, tmp_path):
    f = biggest(replica)
    rule = Rule(key=f.key, action="status", status=412, code="PreconditionFailed", times=1000)
    with FaultProxy(sandbox.url, rules=[rule]) as proxy:
        m = Mirror(tmp_path / "c", endpoint_url=proxy.url)
        m.load_manifest("1.0.1")
        stats = m.sync(limits=SMALL_PARTS, policy=FAST)
    assert [type(x.error) for x in stats.failures] == [ObjectChanged]
    assert "changed on the server" in str(stats.failures[0].error)
    assert not list(CacheLayout(tmp_path / "c").objects.glob("*/*/*.partial"))


def test_kill_9_mid_sync_then_resume(sandbox, replica, tmp_path):
    cache = tmp_path / "c"
    total = sum(len(b) for b in expected_files(replica, "1.0.1").values())
    with FaultProxy(sandbox.url, rate=1_000_000) as proxy:  # ~1 MB/s: the run takes seconds
        env = {**os.environ, "VBO_MIRROR_CACHE_DIR": str(cache), "AWS_ENDPOINT_URL_S3": proxy.url}
        cmd = [sys.executable, "-m", "mirror.cli", "--json", "sync", "--version", "1.0.1", "-j", "4",
               "--part-size", "64KiB"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            sidecars = []
            while time.monotonic() < deadline:  # kill once resume state is on disk
                sidecars = list(CacheLayout(cache).objects.glob("*/*/*.partial.json"))
                if sidecars:
                    break
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert list(CacheLayout(cache).objects.glob("*/*/*.partial.json")), "killed before any resume state was saved"
    # nothing half-written is visible under a final name
    for rel, body in expected_files(replica, "1.0.1").items():
        path = cache / rel
        if path.exists():
            assert path.read_bytes() == body
    st = subprocess.run([sys.executable, "-m", "mirror.cli", "--json", "--cache-dir", str(cache), "--offline",
                         "status"], capture_output=True, text=True, timeout=60)
    status = summary(st.stdout)
    targets = sum(json.loads(p.read_text())["size"] for p in CacheLayout(cache).objects.glob("*/*/*.partial.json"))
    assert 0 < status["partial_bytes"] < targets  # bytes saved, not the partials' target sizes
    r = subprocess.run([sys.executable, "-m", "mirror.cli", "--json", "--cache-dir", str(cache), "--endpoint-url",
                        sandbox.url, "sync", "--version", "1.0.1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    s = summary(r.stdout)
    assert s["bytes_resumed"] > 0  # partials continued from their recorded ranges
    assert s["bytes_resumed"] <= status["partial_bytes"]
    assert s["bytes_fetched"] + s["bytes_resumed"] <= total
    assert s["bytes_fetched"] < total
    assert s["files_fetched"] + s["files_linked"] + s["files_present"] == s["files"]
    assert_mirror(cache, replica, "1.0.1")
    assert subprocess.run([sys.executable, "-m", "mirror.cli", "--cache-dir", str(cache), "--offline", "verify"],
                          capture_output=True, text=True).returncode == 0


def test_cancel_mid_transfer_leaks_nothing(sandbox, replica, tmp_path):
    from mirror.model import Selection
    from mirror.session import Session

    m = Mirror(tmp_path / "c", endpoint_url=sandbox.url)
    m.load_manifest("1.0.1")

    async def go():
        session = Session(m.dataset, m.layout, m.remote_settings(), limits=Limits(jobs=4, part_size=64 << 10))
        started = asyncio.Event()

        def on_event(e):
            if e.name == "file_start":
                started.set()

        try:
            task = asyncio.create_task(session.sync(Selection(), on_event=on_event))
            await started.wait()
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await session.aclose()
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    fds_before = len(os.listdir("/proc/self/fd"))
    leftover = asyncio.run(go())
    assert leftover == []
    assert len(os.listdir("/proc/self/fd")) <= fds_before
    # whatever was published is whole; the rest resumes
    stats = m.sync(limits=SMALL_PARTS)
    assert stats.failures == []
    assert_mirror(tmp_path / "c", replica, "1.0.1")
    m.close()


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MB filesystem (a tmpfs), so a full disk is the kernel's ENOSPC, not a mock."""
    import shutil

    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a real full disk needs a small tmpfs, and mounting one needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path) -> None:
    """Take every byte the filesystem has left."""
    with open(path, "wb") as f:
        chunk = b"\0" * (64 << 10)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as exc:
            assert exc.errno in (errno.ENOSPC, errno.EDQUOT)


def test_a_full_disk_stops_the_run_and_loses_nothing(sandbox, replica, small_disk):
    """The disk fills up as the second version starts (another program took the space): the
    run stops with 'disk full' and a hint, nothing of the first version is touched, and once
    there is room again the same sync finishes, every byte verified."""
    from mirror.errors import StoreError

    cache = small_disk / "cache"
    filler = small_disk / "someone-elses-file"
    with Mirror(cache, endpoint_url=sandbox.url) as m:
        assert m.sync("0.1.0").failures == []
        before = {p: p.read_bytes() for p in (cache / f"{PROJECT}-0.1.0").rglob("*") if p.is_file()}

        def take_the_space(event) -> None:
            if event.name == "file_start" and not filler.exists():
                _fill(filler)

        with pytest.raises(StoreError) as err:
            m.sync("1.0.1", on_event=take_the_space)
        assert "disk full" in str(err.value) and err.value.hint
        filler.unlink()
        for p, body in before.items():
            assert p.read_bytes() == body
        assert m.sync("1.0.1").failures == []
    assert_mirror(cache, replica, "1.0.1")


def test_not_enough_space_is_refused_up_front(cli, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10_000, 9_000, 1_000))
    r = cli("sync", "--version", "1.0.1", expect=4)
    assert "not enough space" in r.stderr and "1,000 are free" in r.stderr
    assert not (cli.cache_dir / f"{PROJECT}-1.0.1").exists()


def test_a_version_missing_on_the_server_fails_that_file_only(cli, sandbox, tmp_path):
    """A manifest naming an object version the server does not have: the listing lacks it,
    its HEAD says 404, and the sync fails that one file with the server's answer."""
    import hashlib

    from mirror.sandbox.server import admin_client, create_public_bucket

    bucket, prefix = "gappy-ophys-data", "gappy/"
    bodies = {f"{prefix}behavior_sessions/b{i}.nwb": os.urandom(5000 + i) for i in range(3)}

    async def upload():
        async with admin_client(sandbox.url) as s3:
            await create_public_bucket(s3, bucket)
            entries = {}
            for i, (key, body) in enumerate(bodies.items()):
                vid = (await s3.put_object(Bucket=bucket, Key=key, Body=body))["VersionId"]
                entries[str(i + 1)] = {"url": f"https://{bucket}.s3.us-west-2.amazonaws.com/{key}",
                                       "version_id": vid, "file_hash": hashlib.blake2b(body).hexdigest()}
            entries["9"] = {"url": f"https://{bucket}.s3.us-west-2.amazonaws.com/{prefix}behavior_sessions/gone.nwb",
                            "version_id": "no-such-version", "file_hash": "ab" * 64}
            doc = {"project_name": "gappy", "manifest_version": "1.0.0", "metadata_file_id_column_name": "file_id",
                   "data_pipeline": [], "metadata_files": {}, "data_files": entries}
            await s3.put_object(Bucket=bucket, Key=f"{prefix}manifests/gappy_manifest_v1.0.0.json",
                                Body=json.dumps(doc).encode())

    asyncio.run(upload())
    cfg = write_dataset_config(tmp_path / "gappy.toml", name="gappy", bucket=bucket, prefix=prefix)
    plan = cli("--dataset", str(cfg), "plan", "--version", "1.0.0", json_out=True).data
    assert plan["fetch"]["files"] == 4 and plan["fetch"]["unknown_sizes"] == 1
    r = cli("--dataset", str(cfg), "--json", "sync", "--version", "1.0.0", expect=5)
    s = summary(r.stdout)
    assert [(f["key"], f["error"]) for f in s["failures"]] == [(f"{prefix}behavior_sessions/gone.nwb", "ObjectNotFound")]
    for i, body in enumerate(bodies.values()):
        assert (cli.cache_dir / "gappy-1.0.0" / "behavior_sessions" / f"b{i}.nwb").read_bytes() == body


def test_a_manifest_damaged_in_transit_is_caught_by_its_etag_and_fetched_again(sandbox, replica, tmp_path):
    rule = Rule(key="manifests/visual-behavior-ophys_project_manifest_v1.0.1.json", action="corrupt", times=1)
    with FaultProxy(sandbox.url, rules=[rule]) as proxy:
        m = Mirror(tmp_path / "c", endpoint_url=proxy.url)
        m.load_manifest("1.0.1")
    assert rule.hits == 1
    name = "visual-behavior-ophys_project_manifest_v1.0.1.json"
    assert (tmp_path / "c" / name).read_bytes() == replica.manifests[name]


@pytest.mark.parametrize("status,code,kind", [(404, "NoSuchVersion", "ObjectNotFound"), (403, "AccessDenied", "AccessDenied")])
def test_get_file_path_raises_the_real_error_type(sandbox, replica, tmp_path, status, code, kind):
    """A caller can catch ObjectNotFound or AccessDenied from `get_behavior_session_path`
    (they used to arrive re-wrapped as a generic failure with only the message left)."""
    import mirror.errors

    bsid = replica.behavior_ids["1.0.1"][0]
    with FaultProxy(sandbox.url, rules=[Rule(f"behavior_session_{bsid}.nwb", "status", times=99, status=status,
                                             code=code)]) as proxy:
        m = Mirror(tmp_path / "c", endpoint_url=proxy.url)
        m.load_manifest("1.0.1")
        with pytest.raises(getattr(mirror.errors, kind)) as caught:
            m.get_behavior_session_path(bsid)
    assert f"behavior_session_{bsid}.nwb" in str(caught.value)
    assert not (tmp_path / "c" / f"{PROJECT}-1.0.1" / "behavior_sessions" / f"behavior_session_{bsid}.nwb").exists()


@pytest.mark.parametrize("host", ["jupyter", "asyncio.run"])
def test_ctrl_c_from_inside_a_running_loop_cancels_the_job_and_a_rerun_resumes(sandbox, replica, tmp_path, host):
    """Called from a running event loop, a sync is cancelled by Ctrl-C at once, not when the
    job would have finished: in Jupyter (whose SIGINT handler raises KeyboardInterrupt) and
    under `asyncio.run` (whose handler cancels its main task, here blocked in the call). The
    partials are kept, the lock is released, the same Mirror works afterwards, and the next
    sync resumes."""
    import signal
    import threading

    total = replica.total_bytes("1.0.1")
    rate = total / 20  # bytes/s per response: the whole sync would take well over 20 s
    cache = tmp_path / "c"
    with FaultProxy(sandbox.url, rate=rate) as proxy:
        m = Mirror(cache, endpoint_url=proxy.url)
        m.load_manifest("1.0.1")
        got: list[dict] = []

        async def cell() -> None:
            if host == "jupyter":
                signal.signal(signal.SIGINT, signal.default_int_handler)  # as ipykernel's: KeyboardInterrupt
            main = threading.main_thread().ident
            threading.Timer(1.0, lambda: signal.pthread_kill(main, signal.SIGINT)).start()
            m.sync(limits=SMALL_PARTS, on_event=got.append)

        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(cell())
        waited = time.monotonic() - t0
        assert waited < 8, f"Ctrl-C took {waited:.1f} s to stop the job"
        assert any(e.name == "file_start" for e in got)
        assert sum(e.name == "file_done" for e in got) < len(expected_files(replica, "1.0.1"))
        # the lock is free and the Mirror still works: a rerun at full speed finishes the job
        proxy.rate = None
        stats = m.sync(limits=SMALL_PARTS)
    assert stats.failures == []
    assert_mirror(cache, replica, "1.0.1")
    m.close()


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_end_a_sync_as_ctrl_c_does(sandbox, replica, tmp_path, sig, code):
    """A batch scheduler's SIGTERM or a closed terminal's SIGHUP: the run is cancelled, what
    was published is in the saved index, the lock names no holder, the exit code says which
    signal, and the same command resumes."""
    from mirror.store.index import StateIndex

    cache = tmp_path / "c"
    argv = [sys.executable, "-m", "mirror.cli", "--json", "--cache-dir", str(cache)]
    with FaultProxy(sandbox.url, rate=replica.total_bytes("1.0.1") / 15) as proxy:
        proc = subprocess.Popen([*argv, "--endpoint-url", proxy.url, "sync", "--version", "1.0.1", "-j", "4"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        done = None
        for line in proc.stdout:
            event = json.loads(line)
            if event["event"] == "file_done":
                done = event
                break
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        assert signal.Signals(sig).name in err and "run the same command again to resume" in err
        assert (cache / ".vbo-mirror" / "lock").read_bytes() == b""
        manifest = json.loads((cache / f"{PROJECT}_project_manifest_v1.0.1.json").read_bytes())
        by_key = {e["url"].split(".amazonaws.com/", 1)[1]: e["file_hash"]
                  for section in ("metadata_files", "data_files") for e in manifest[section].values()}
        index = StateIndex(CacheLayout(cache))
        assert index.load() and index.get(by_key[done["key"]]) is not None
        proxy.rate = None
        r = subprocess.run([*argv, "--endpoint-url", proxy.url, "sync", "--version", "1.0.1"], capture_output=True,
                           text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert_mirror(cache, replica, "1.0.1")


def test_a_symlink_at_the_lock_is_refused_and_its_target_untouched(cli, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (cli.cache_dir / ".vbo-mirror").mkdir(parents=True)
    (cli.cache_dir / ".vbo-mirror" / "lock").symlink_to(victim)
    r = cli("sync", "--version", "0.1.0", expect=4)
    assert "is a symlink" in r.stderr
    assert victim.read_text() == "precious"


def test_content_published_unverified_is_never_trusted_by_a_default_sync(cli, replica, sandbox):
    """--verify none publishes under the manifest hash without checking it; those objects are
    marked, shown by status, and a default sync checks their BLAKE2b before using them: a
    corrupt one is fetched again, a good one kept (and no longer marked)."""
    from mirror.sandbox.replica import payload
    from mirror.store.objects import ObjectStore

    big = biggest(replica, "0.1.0")
    with FaultProxy(sandbox.url, rules=[Rule(big.key, "corrupt", times=99)]) as proxy:
        cli("sync", "--version", "0.1.0", "--verify", "none", endpoint=proxy.url, expect=0)
    layout = CacheLayout(cli.cache_dir)
    stored = [h for h, _, _ in ObjectStore(layout).iter_objects()]
    assert stored and sorted(ObjectStore(layout).unverified()) == sorted(stored)  # all of that run's objects
    assert cli("status", json_out=True).data["unverified_objects"] == len(stored)
    view = cli.cache_dir / f"{PROJECT}-0.1.0" / big.key.split("/", 1)[1]
    assert view.read_bytes() != payload(big.seed, big.size)  # the corrupt bytes went in, unchecked
    r = cli("--json", "sync", "--version", "0.1.0", expect=0)
    assert summary(r.stdout)["files_fetched"] == 1  # only the corrupt one: the good ones were checked locally
    assert_mirror(cli.cache_dir, replica, "0.1.0")
    assert cli("status", json_out=True).data["unverified_objects"] == 0


@pytest.mark.parametrize("how", [[], ["--part-size", "64KiB"]], ids=["whole-body", "part-by-part"])
@pytest.mark.parametrize("verify", ["none", "etag"])
def test_a_sync_that_checks_no_blake2b_computes_none(cli, replica, monkeypatch, verify, how):
    """`--verify none` and `--verify etag` check no BLAKE2b, so they do not pay for one (~1.4
    CPU s per GB here); what they publish is marked unverified, and the default sync after
    them computes the BLAKE2b of each of those objects, locally, before trusting it."""
    from mirror import hashing
    from mirror.store.objects import ObjectStore

    made = []
    real = hashing.blake2b_512
    monkeypatch.setattr(hashing, "blake2b_512", lambda: made.append(1) or real())
    r = cli("--json", "sync", "--version", "0.1.0", "--verify", verify, *how)
    assert summary(r.stdout)["files_fetched"] > 0 and made == []
    stored = [h for h, _, _ in ObjectStore(CacheLayout(cli.cache_dir)).iter_objects()]
    r = cli("--json", "sync", "--version", "0.1.0")
    assert summary(r.stdout)["files_fetched"] == 0  # the bytes were right: checked here, not fetched again
    assert len(made) >= len(stored) > 0
    assert_mirror(cli.cache_dir, replica, "0.1.0")


def _saved(cache, key: str, *, at_least: int, timeout: float) -> bool:
    """Wait until the resume sidecar of `key`'s partial download records `at_least` bytes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sidecar in (cache / ".vbo-mirror").rglob("*.partial.json"):
            try:
                state = json.loads(sidecar.read_text())
            except (OSError, ValueError):
                continue  # being replaced
            if state.get("key") == key and sum(e - s for s, e in state.get("done", [])) >= at_least:
                return True
        time.sleep(0.02)
    return False


def test_sigterm_mid_file_keeps_the_bytes_that_arrived(sandbox, replica, tmp_path):
    """The file in flight when the run stops is resumed, not fetched again from its start,
    even when it was one whole-object GET (no ranged parts to checkpoint)."""
    big = biggest(replica, "0.1.0")
    cache = tmp_path / "c"
    argv = [sys.executable, "-m", "mirror.cli", "--json", "--cache-dir", str(cache)]
    with FaultProxy(sandbox.url, rate=big.size / 4) as proxy:  # the biggest file takes ~4 s
        proc = subprocess.Popen([*argv, "--endpoint-url", proxy.url, "sync", "--version", "0.1.0", "-j", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in proc.stdout:
            e = json.loads(line)
            if e["event"] == "file_start" and e["key"] == big.key:
                break
        # Stop once its resume state says a quarter arrived (not after a sleep that a slow
        # machine may not fill): the sidecar is what the next run resumes from.
        assert _saved(cache, big.key, at_least=big.size // 4, timeout=60), "no checkpoint of a quarter in 60 s"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == 143
        proxy.rate = None
        r = subprocess.run([*argv, "--endpoint-url", proxy.url, "sync", "--version", "0.1.0"], capture_output=True,
                           text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert summary(r.stdout)["bytes_resumed"] >= big.size // 4  # about half had arrived
    assert_mirror(cache, replica, "0.1.0")


def test_partials_nobody_wants_are_removed_by_verify(cli, replica):
    cli("sync", "--version", "0.1.0")
    layout = CacheLayout(cli.cache_dir)
    orphan = layout.partial_path("e" * 128)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"half of something")
    orphan.with_name(orphan.name + ".json").write_text("{}")
    r = cli("--offline", "verify", json_out=True, expect=0).data
    assert r["orphan_partials_removed"] == [orphan.name]
    assert not orphan.exists() and not orphan.with_name(orphan.name + ".json").exists()
