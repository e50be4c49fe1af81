"""`--shard K/N`: a deterministic size-balanced split by content, several processes at once
into one cache_dir (shared cache lock, per-object claims), and a killed shard's work taken
on by the next run of any shard. Real processes against moto through a counting proxy."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from faultproxy import FaultProxy
from test_sync import assert_mirror, expected_files

from mirror.model import Shard
from mirror.plan import shard_of
from mirror.store.claims import Claims
from mirror.store.layout import CacheLayout

VERSION = "1.0.1"


def test_the_split_puts_every_object_in_one_shard_balanced_and_is_the_same_in_any_order():
    rng = random.Random(3)
    sizes = {f"{rng.getrandbits(256):064x}": rng.randint(1, 10 << 20) for _ in range(2000)}
    for n in (1, 2, 3, 7):
        parts = [shard_of(sizes, Shard(k, n)) for k in range(n)]
        assert set().union(*parts) == set(sizes) and sum(len(p) for p in parts) == len(sizes)
        loads = [sum(sizes[h] for h in p) for p in parts]
        assert max(loads) - min(loads) <= max(sizes.values())  # within one object: a few % here
        assert max(loads) / min(loads) < 1.03
        shuffled = dict(sorted(sizes.items(), key=lambda kv: rng.random()))
        assert [shard_of(shuffled, Shard(k, n)) for k in range(n)] == parts


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "1/0", "2/1"])
def test_a_bad_shard_is_refused_with_a_message(cli, text):
    r = cli("plan", "--version", VERSION, "--shard", text, expect=2)
    assert "--shard" in r.stderr or "K/N" in r.stderr or "0 <= K < N" in r.stderr


def test_a_claim_excludes_another_holder_and_a_killed_holder_frees_it(tmp_path):
    path = tmp_path / "claims"
    a, b = Claims(path), Claims(path)
    h = "ab" * 64
    assert a.try_claim(h) and not b.try_claim(h)
    assert b.try_claim("cd" * 64)  # another object: independent
    a.release(h)
    assert b.try_claim(h)
    b.close()
    child = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from pathlib import Path
from mirror.store.claims import Claims
assert Claims(Path({str(path)!r})).try_claim({h!r})
print("held", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert not a.try_claim(h)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert a.try_claim(h)  # the kernel dropped the dead process's claim
    a.close()


def _shard_cmd(cache, url, shard: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mirror.cli", "--json", "--cache-dir", str(cache), "--endpoint-url", url,
            "sync", "--version", VERSION, "-j", "4", "--part-size", "64KiB", "--shard", shard, *extra]


def _summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _data_gets(proxy) -> collections.Counter:
    """(key, Range) of every GET of a data file the proxy answered."""
    return collections.Counter((path.split("?")[0], headers.get("Range", "")) for method, path, headers in proxy.requests
                               if method == "GET" and "/behavior_" in path and "list-type" not in path)


def test_three_shards_at_once_fill_one_cache_and_fetch_every_object_once(sandbox, replica, tmp_path):
    cache = tmp_path / "c"
    files = expected_files(replica, VERSION)
    with FaultProxy(sandbox.url, rate=600_000, rate_keys=("/behavior_",)) as proxy:  # seconds each: they overlap
        procs = [subprocess.Popen(_shard_cmd(cache, proxy.url, f"{k}/3"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for k in range(3)]
        outs = [p.communicate(timeout=180) for p in procs]
        gets = _data_gets(proxy)
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    sums = [_summary(out) for out, _ in outs]
    assert [s["shard"] for s in sums] == ["0/3", "1/3", "2/3"]
    assert_mirror(cache, replica, VERSION)
    dupes = {k: n for k, n in gets.items() if n > 1}
    assert not dupes, f"fetched more than once: {dupes}"
    fetched = sum(s["bytes_fetched"] for s in sums)
    unique = sum(len(b) for b in set(files.values()))
    assert fetched == unique  # every distinct content once, over all shards together
    assert all(s["files_fetched"] > 0 for s in sums)  # each did a share (started together)
    _assert_summaries_add_up(sums, files)
    r = subprocess.run([sys.executable, "-m", "mirror.cli", "--cache-dir", str(cache), "--offline", "verify"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _assert_summaries_add_up(sums: list[dict], files: dict) -> None:
    """Each shard's log counts what that process did (issue 17, item 2), in counts that add
    up: its part (fetched here + made from other shards' objects), the rest every shard makes
    sure of (linked, present), and other shards' parts (fetched here, made here from their
    objects, left to them) together are the whole selection, for every shard; over all shards
    every distinct object was fetched once."""
    for s in sums:
        part, others = s["part"], s["others"]
        assert part["views"] == part["fetched_views"] + part["by_others"], s  # nothing failed here
        whole = (part["views"] + s["store_linked"] + s["files_present"]
                 + others["fetched_views"] + others["linked_views"] + others["left_views"])
        assert whole == len(files), s
    stored = {b for b in files.values()}
    assert sum(s["files_fetched"] for s in sums) <= len(stored)


def test_shard_logs_add_up_when_one_shard_does_everything(cli, replica):
    """Shards one after the other: the first fetches its part, then every object nobody has
    claimed; the others find their parts made. Each log says so, in counts that add up."""
    files = expected_files(replica, VERSION)
    runs = [cli("sync", "--version", VERSION, "--shard", f"{k}/3", json_out=True).data for k in range(3)]
    _assert_summaries_add_up(runs, files)
    first, second = runs[0], runs[1]
    assert first["others"]["fetched_objects"] > 0 and first["others"]["left_views"] == 0  # nobody else ran
    assert second["part"]["fetched_objects"] == 0 and second["files_fetched"] == 0
    log = cli("sync", "--version", VERSION, "--shard", "2/3").stdout.splitlines()
    assert log[0].startswith("shard 2/3: its part, ") and "0 fetched" in log[0]
    assert "already present" in log[1]


def test_a_killed_shard_is_finished_by_the_next_run_of_another_shard(sandbox, replica, tmp_path):
    cache = tmp_path / "c"
    with FaultProxy(sandbox.url, rate=300_000, rate_keys=("/behavior_",)) as proxy:
        victim = subprocess.Popen(_shard_cmd(cache, proxy.url, "1/2"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not list(CacheLayout(cache).objects.glob("*/*/*.partial.json")):
                time.sleep(0.02)
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait()
    assert victim.returncode == -signal.SIGKILL
    # shard 0 alone, with nothing else running: its own part, then what shard 1 left
    r = subprocess.run(_shard_cmd(cache, sandbox.url, "0/2"), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    s = _summary(r.stdout)
    assert s["bytes_resumed"] > 0  # the killed shard's partials were continued, not thrown away
    assert_mirror(cache, replica, VERSION)


def test_plan_and_urls_of_the_shards_partition_the_version(cli, replica):
    urls = set(cli("urls", "--version", VERSION).stdout.split())
    parts = [set(cli("urls", "--version", VERSION, "--shard", f"{k}/3").stdout.split()) for k in range(3)]
    assert set().union(*parts) == urls and sum(len(p) for p in parts) == len(urls)
    plans = [cli("plan", "--version", VERSION, "--shard", f"{k}/3", json_out=True).data for k in range(3)]
    assert sum(p["fetch"]["files"] for p in plans) == plans[0]["fetch"]["files"] + plans[0]["steal"]["files"]
    assert all(p["remove"]["files"] == 0 for p in plans)
    text = cli("plan", "--version", VERSION, "--shard", "1/3").stdout
    assert "shard 1/3" in text


def test_an_exclusive_run_waits_for_the_shards_and_the_shards_for_it(tmp_path):
    from mirror.errors import LockHeldError
    from mirror.store.lock import CacheLock

    lock = tmp_path / ".vbo-mirror" / "lock"
    a = CacheLock(lock, shared=True, command="vbo-mirror sync --shard 0/2")
    b = CacheLock(lock, shared=True, command="vbo-mirror sync --shard 1/2")
    a.acquire()
    b.acquire()  # shards share it
    with pytest.raises(LockHeldError, match="shard"):
        CacheLock(lock, command="vbo-mirror verify").acquire()
    a.release()
    b.release()
    with CacheLock(lock, command="vbo-mirror verify"):
        with pytest.raises(LockHeldError, match="verify"):
            CacheLock(lock, shared=True).acquire()


def test_linking_a_view_that_already_is_that_link_leaves_no_temporary(tmp_path):
    """rename() between two hard links of one inode succeeds without doing anything: two
    shards making the same view must not leave the second one's temporary link behind."""
    from mirror.store.views import Linker

    src = tmp_path / "obj"
    src.write_bytes(b"x")
    dst = tmp_path / "v" / "view.nwb"
    dst.parent.mkdir()
    linker = Linker("hardlink")
    dfd = os.open(dst.parent, os.O_RDONLY | os.O_DIRECTORY)
    sdfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        linker.link_at((sdfd, src.name), dfd, dst.name, dst)
        linker.link_at((sdfd, src.name), dfd, dst.name, dst)
    finally:
        os.close(dfd)
        os.close(sdfd)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["view.nwb"]
    assert os.stat(dst).st_ino == os.stat(src).st_ino


def test_the_api_takes_a_selection_with_a_shard_and_a_where(sandbox, replica, tmp_path):
    from mirror import Mirror, Selection, Shard

    with Mirror(tmp_path / "c", endpoint_url=sandbox.url) as m:
        plans = [m.plan(Selection(VERSION, where='cre_line == "Sst-IRES-Cre"', shard=Shard(k, 2))) for k in range(2)]
        whole = m.plan(Selection(VERSION, where='cre_line == "Sst-IRES-Cre"'))
        assert sorted(f.file_hash for p in plans for f in p.fetch) == sorted(f.file_hash for f in whole.fetch)
        stats = m.sync(Selection(VERSION, where='cre_line == "Sst-IRES-Cre"', shard=Shard(0, 2)))
        assert stats.summary()["shard"] == "0/2" and not stats.failures
        # shard 0 alone: its own part, then shard 1's (nobody else claimed it)
        assert stats.files_done == len(whole.fetch)
