"""`sync --procs N`: N shard processes of one selection into one cache_dir, with one progress
display and one summary; no object fetched twice; a process killed with SIGKILL is finished by
the others (or by the parent). Real processes against moto through a counting proxy."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from test_shard import _data_gets
from test_sync import assert_mirror, expected_files

from mirror import events as ev
from mirror.procs import default_procs
from mirror.store.layout import CacheLayout

VERSION = "1.0.1"


def _cmd(cache, url, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mirror.cli", "--json", "--cache-dir", str(cache), "--endpoint-url", url,
            "sync", "--version", VERSION, "-j", "6", "--part-size", "64KiB", *extra]


def _lines(stdout: str) -> list[dict]:
    return [json.loads(x) for x in stdout.splitlines() if x.strip()]


def test_three_processes_fill_one_cache_fetch_every_object_once_and_say_it_once(sandbox, replica, tmp_path):
    cache = tmp_path / "c"
    files = expected_files(replica, VERSION)
    with FaultProxy(sandbox.url, rate=900_000, rate_keys=("/behavior_",)) as proxy:  # seconds each: they overlap
        r = subprocess.run(_cmd(cache, proxy.url, "--procs", "3"), capture_output=True, text=True, timeout=240)
        gets = _data_gets(proxy)
    assert r.returncode == 0, r.stderr
    events = _lines(r.stdout)
    summaries = [e for e in events if e["event"] == "summary"]
    assert len(summaries) == 1 and events[-1] is summaries[0]  # one summary, the last line
    s = summaries[0]
    assert s["ok"] and s["failures"] == [] and [p["shard"] for p in s["procs"]] == ["0/3", "1/3", "2/3"]
    assert all(p["exit"] == 0 for p in s["procs"])
    assert sum(1 for p in s["procs"] if p["files_fetched"] > 0) >= 2  # they shared the work
    unique = sum(len(b) for b in set(files.values()))
    assert s["bytes_fetched"] == unique == sum(p["bytes_fetched"] for p in s["procs"])  # each content once
    assert s["files"] == len(files) and s["files_fetched"] + s["files_linked"] + s["files_present"] == len(files)
    assert not {k: n for k, n in gets.items() if n > 1}, "a range fetched twice"
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 1 and starts[0]["procs"] == 3
    assert sum(e["event"] == "file_done" for e in events) == s["files_fetched"]  # every child's, re-emitted once
    if s["seconds"] > 2.5:  # the children say how far they are every second; the parent sums them
        assert any(e["event"] == "progress" and 0 < e["bytes_done"] <= unique for e in events)
    assert_mirror(cache, replica, VERSION)
    again = subprocess.run(_cmd(cache, sandbox.url, "--procs", "3"), capture_output=True, text=True, timeout=120)
    s2 = _lines(again.stdout)[-1]
    assert again.returncode == 0 and s2["files_fetched"] == 0 and "procs" not in s2  # nothing to fetch: no children


def _child_pid(parent: int, shard: str) -> int | None:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"--shard" in argv and argv[argv.index(b"--shard") + 1] == shard.encode():
            return int(d.name)
    return None


def _await_child(parent: int, shard: str, *, then=lambda: True, seconds: float = 90.0) -> int:
    """The pid of `parent`'s child process for `shard`, once it runs and `then()` holds (or,
    past `seconds`, as soon as it runs)."""
    deadline = time.monotonic() + seconds
    pid = None
    while time.monotonic() < deadline:
        pid = pid or _child_pid(parent, shard)
        if pid and then():
            return pid
        time.sleep(0.02)
    assert pid is not None, f"no child process for shard {shard}"
    return pid


def test_a_process_killed_mid_run_is_finished_by_the_others(sandbox, replica, tmp_path):
    cache = tmp_path / "c"
    with FaultProxy(sandbox.url, rate=400_000, rate_keys=("/behavior_",)) as proxy:
        parent = subprocess.Popen(_cmd(cache, proxy.url, "--procs", "2"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            victim = _await_child(parent.pid, "1/2",
                                  then=lambda: bool(list(CacheLayout(cache).objects.glob("*/*/*.partial.json"))))
            os.kill(victim, signal.SIGKILL)
            out, err = parent.communicate(timeout=240)
        finally:
            if parent.poll() is None:
                parent.kill()
    assert parent.returncode == 0, err
    s = _lines(out)[-1]
    assert s["event"] == "summary" and s["ok"] and s["failures"] == []
    assert {p["shard"]: p["exit"] for p in s["procs"]}["1/2"] == -signal.SIGKILL
    warnings = [e["message"] for e in _lines(out) if e["event"] == "warning"]
    assert any("process 1/2 of 2 killed by SIGKILL" in w for w in warnings), warnings
    assert_mirror(cache, replica, VERSION)
    r = subprocess.run([sys.executable, "-m", "mirror.cli", "--cache-dir", str(cache), "--offline", "verify"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("args, message", [
    (("--procs", "2", "--shard", "0/2"), "give --procs or --shard"),
    (("--procs", "0"), "--procs '0'"),
    (("--procs", "many"), "--procs 'many'"),
])
def test_bad_procs_are_refused_with_a_message(cli, args, message):
    r = cli("sync", "--version", VERSION, *args, expect=2)
    assert message in r.stderr


def test_the_default_is_one_process_per_eight_cores_at_most_eight():
    assert [default_procs(c) for c in (1, 2, 8, 15, 16, 32, 64, 256)] == [1, 1, 1, 1, 2, 4, 8, 8]
    assert default_procs() >= 1


def test_every_event_a_child_prints_is_read_back_as_the_same_event():
    """The parent re-emits its children's JSON lines as typed events (events.from_dict)."""
    samples = [
        ev.Started({"manifests": ["m"], "fetch": {"files": 1, "bytes": 5}}),
        ev.FileStarted("k/a", "v1", 5),
        ev.FileDone("k/a", 5, 0, 0.1, ["v/a"]),
        ev.FileDone("k/b", 5, 0, 0.1, ["v/b"], etag_unverifiable=True),
        ev.FileFailed("k/c", "ObjectNotFound", "gone"),
        ev.Retry("k/d", 2, 0.5, "SlowDown", "slow down"),
        ev.Progress(10, 20, 1, 2, 0, 1.5),
        ev.Warned("disk nearly full"),
        ev.IndexReconciled(3, 1),
        ev.Summary({"files": 3, "ok": True}),
    ]
    for e in samples:
        line = json.loads(json.dumps({"t": 1.0, **e.to_dict()}))
        back = ev.from_dict(line)
        assert type(back) is type(e) and dataclasses.asdict(back) == dataclasses.asdict(e)


def test_a_second_procs_run_is_refused_while_one_runs_and_jobs_are_never_oversubscribed(sandbox, replica, tmp_path):
    """A second `--procs` run finds the first (exit 3, as a second plain sync would), and
    `-j 2 --procs 3` starts two processes of one GET each, not three."""
    cache = tmp_path / "c"
    with FaultProxy(sandbox.url, rate=300_000, rate_keys=("/behavior_",)) as proxy:
        first = subprocess.Popen(_cmd(cache, proxy.url, "--procs", "2"), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            _await_child(first.pid, "1/2", seconds=60)
            second = subprocess.run(_cmd(cache, proxy.url, "--procs", "2"), capture_output=True, text=True,
                                    timeout=120)
            out, err = first.communicate(timeout=240)
        finally:
            if first.poll() is None:
                first.kill()
    assert first.returncode == 0, err
    assert second.returncode == 3 and "in use" in second.stderr, second.stderr
    again = tmp_path / "d"
    r = subprocess.run([*_cmd(again, sandbox.url, "--procs", "3"), "-j", "2"], capture_output=True, text=True,
                       timeout=240)
    s = _lines(r.stdout)[-1]
    assert r.returncode == 0 and [p["shard"] for p in s["procs"]] == ["0/2", "1/2"], r.stderr
    assert_mirror(again, replica, VERSION)


def test_ids_read_from_a_pipe_reach_every_process(sandbox, replica, tmp_path):
    """`--ids /dev/stdin`: the parent reads the pipe once; the children get the ids in a file."""
    cache = tmp_path / "c"
    ids = replica.behavior_ids[VERSION][:6]  # sessions with an NWB of their own
    assert len(set(ids)) == 6
    r = subprocess.run(_cmd(cache, sandbox.url, "--procs", "2", "--ids", "/dev/stdin"), input="\n".join(map(str, ids)),
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    s = _lines(r.stdout)[-1]
    assert [p["exit"] for p in s["procs"]] == [0, 0] and s["files_fetched"] > 0
    assert not [e for e in _lines(r.stdout) if e["event"] == "warning"]  # no child failed, nothing finished in process
