"""What a user meets (issue 10): truthful verify, endpoints named one way in the CLI and the
API, the data version given where it belongs."""

from __future__ import annotations

import os

import pytest
from test_sync import PROJECT, assert_mirror


def test_a_deleted_view_is_reported_by_verify_and_relinked_by_repair(cli, replica):
    cli("sync", "--version", "1.0.1")
    victim = next((cli.cache_dir / f"{PROJECT}-1.0.1").rglob("*.nwb"))
    victim.unlink()
    r = cli("verify", expect=5)
    assert "MISSING VIEW" in r.stdout and victim.name in r.stdout
    r = cli("--json", "verify", "--fast", expect=5)
    assert any(victim.name in v for v in __import__("json").loads(r.stdout)["views_missing"])
    cli("verify", "--repair")
    assert_mirror(cli.cache_dir, replica, "1.0.1")
    assert cli("verify").stdout.strip().endswith("ok")


def test_views_a_narrower_selection_never_made_are_not_damage_but_its_own_are_checked(cli, replica):
    cli("sync", "--version", "1.0.1")  # 1.0.0 shares its NWBs: their content is all in the store
    cli("sync", "--version", "1.0.0", "--where", 'cre_line == "Sst-IRES-Cre"')
    assert cli("verify").stdout.strip().endswith("ok")
    picked = sorted((cli.cache_dir / f"{PROJECT}-1.0.0").rglob("*.nwb"))
    assert picked
    picked[0].unlink()
    r = cli("verify", expect=5)
    assert f"MISSING VIEW {PROJECT}-1.0.0/" in r.stdout and r.stdout.count("MISSING VIEW") == 1


@pytest.mark.parametrize("value", ["127.0.0.1:51851", "localhost", "ftp://x", "http://"])
def test_an_endpoint_without_scheme_or_host_is_one_line_and_exit_2(cli, value):
    r = cli("--endpoint-url", value, "manifests", "list", expect=2, endpoint=None)
    assert "http://" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2


def test_the_api_follows_the_endpoint_environment_like_the_cli(sandbox, tmp_path, monkeypatch):
    from mirror import Mirror
    from mirror.errors import InputError

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", sandbox.url)
    with Mirror(tmp_path / "c") as m:
        assert m.endpoint_url == sandbox.url
        names = m.list_manifest_file_names()
        assert m.load_manifest(names[-1]).manifest_version  # the same endpoint as the listing
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "127.0.0.1:9")
    with pytest.raises(InputError, match="AWS_ENDPOINT_URL_S3"):
        Mirror(tmp_path / "c")
    with Mirror(tmp_path / "c", endpoint_url="") as m:  # "" is AWS, whatever the environment says
        assert m.endpoint_url is None


def test_a_data_version_before_the_command_is_an_error_not_the_tools_version(cli):
    r = cli("--version", "1.1.0", "sync", expect=2, cache=False, endpoint=None)
    assert "sync --version 1.1.0" in r.stderr
    r = cli("--version", expect=0, cache=False, endpoint=None)
    assert "version" in r.stdout


def _dead_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: connections are refused


def test_a_dead_endpoint_is_named_as_such_and_latest_cannot_be_trusted(cli, replica):
    cli("sync", "--version", "1.0.1")
    cli("manifests", "use", "1.1.0")  # its manifest only: its NWBs are new content
    cli("manifests", "use", "1.0.1")
    dead = ["--endpoint-url", _dead_endpoint(), "--connect-timeout", "1"]
    r = cli(*dead, "sync", "--version", "1.1.0", expect=3, endpoint=None)
    assert ("did not answer" in r.stderr or "cannot reach" in r.stderr)
    assert "--offline was given" not in r.stderr and "drop --offline" not in r.stderr
    assert "0 bytes" not in r.stderr
    r = cli(*dead, "sync", "--version", "latest", expect=3, endpoint=None)
    assert "'latest' cannot be checked" in r.stderr and "--version 1.1.0" in r.stderr
    r = cli(*dead, "sync", "--version", "1.0.1", endpoint=None)  # named, and complete in the cache: fine
    r = cli("--offline", "sync", "--version", "1.1.0", expect=3)
    assert "--offline was given" in r.stderr


def test_the_first_version_synced_becomes_current(cli, replica):
    cli("sync", "--version", "1.0.1")
    assert cli("manifests", "current").stdout.strip().endswith("1.0.1.json")
    cli("sync", "--version", "1.1.0")  # one is current already: it stays
    assert cli("manifests", "current").stdout.strip().endswith("1.0.1.json")


def test_without_a_terminal_a_progress_line_comes_every_few_seconds():
    import io

    from mirror.events import Progress, Started
    from mirror.progress import PlainEvents

    now = [0.0]
    out = io.StringIO()
    p = PlainEvents(every=10, clock=lambda: now[0], stream=out)
    p(Started({"manifests": ["visual-behavior-ophys_project_manifest_v1.0.1.json"], "fetch": {"files": 28}}))
    for t in range(1, 25):
        now[0] = float(t)
        p(Progress(t * 1_000_000, 30_000_000, t, 4, 0, 1.0))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # at 10 s and 20 s
    assert lines[0].startswith("vbo-mirror: 1.0.1: files 10/28, 10.0 MB of 30.0 MB (33%), 1.0 MB/s, ETA 0:00:20")


def test_a_sync_into_a_pipe_says_how_far_it_is(cli, replica):
    r = cli("sync", "--version", "1.0.1", "--bwlimit", "1MB/s", "--stats", "0.5")
    progress = [line for line in r.stderr.splitlines() if line.startswith("vbo-mirror: 1.0.1: files ")]
    assert len(progress) >= 2 and "/28, " in progress[0] and "MB/s" in progress[-1] and "ETA" in progress[-1]


def test_wait_says_whom_it_waits_for(sandbox, tmp_path):
    import subprocess
    import sys
    import time

    from mirror.store.layout import CacheLayout
    from mirror.store.lock import CacheLock

    cache = tmp_path / "c"
    lock = CacheLock(CacheLayout(cache).lock_path, command="vbo-mirror verify")
    lock.acquire()
    p = subprocess.Popen([sys.executable, "-m", "mirror.cli", "--cache-dir", str(cache), "--endpoint-url", sandbox.url,
                          "sync", "--version", "1.0.1", "--wait"], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and "waiting for" not in line:
            line = p.stderr.readline()
        assert f"waiting for pid {os.getpid()}" in line and "vbo-mirror verify" in line
    finally:
        lock.release()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err


def test_json_lines_on_every_command_end_with_ok(cli, replica):
    import json

    cli("sync", "--version", "1.0.1")
    for args in (["status"], ["plan", "--version", "1.0.1"], ["manifests", "show"], ["manifests", "list"],
                 ["manifests", "compare", "1.0.1", "1.1.0"], ["verify", "--fast"], ["urls", "--version", "1.0.1"],
                 ["get", "behavior-session", str(replica.behavior_ids["1.0.1"][0])], ["sync", "--version", "1.0.1"],
                 ["gc", "--dry-run"]):
        r = cli("--json", *args)
        lines = [json.loads(x) for x in r.stdout.splitlines()]
        assert all("event" in x for x in lines), args
        assert lines[-1]["event"] == "summary" and lines[-1]["ok"] is True, (args, lines[-1])
    r = cli("sync", "--version", "9.9.9", "--json", expect=2)  # --json after the command, and an error
    last = json.loads(r.stdout.splitlines()[-1])
    assert last["event"] == "summary" and last["ok"] is False and last["error"]["kind"]


def test_sync_dry_run_prints_the_plan_and_get_refuses_all(cli, replica):
    r = cli("sync", "--version", "1.0.1", "-n")
    assert r.stdout.startswith("plan for") and not (cli.cache_dir / f"{PROJECT}-1.0.1").exists()
    r = cli("get", "behavior-session", "1", "--version", "all", expect=2)
    assert "'all'" in r.stderr


def test_a_read_only_mirror_serves_readers_and_tells_writers(cli, replica, tmp_path):
    import subprocess

    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is refused here (not root)")
    try:
        cli.cache_dir = mnt / "c"
        cli("sync", "--version", "1.0.1")
        assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)]).returncode == 0
        for args in (["status"], ["tables"], ["tables", "ophys_experiment_table", "--rows", "2"], ["manifests", "show"],
                     ["plan"], ["urls"], ["verify", "--fast"], ["verify"]):
            r = cli("--offline", *args)
            assert "Traceback" not in r.stderr, args
        for args in (["sync"], ["verify", "--repair"], ["manifests", "use", "1.0.1"], ["gc"]):
            r = cli("--offline", *args, expect=4)
            assert "read-only filesystem" in r.stderr and "Traceback" not in r.stderr, args
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_ctrl_c_ends_the_json_stream_with_an_interrupted_line_and_says_how_to_resume(sandbox, tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time

    from faultproxy import FaultProxy

    with FaultProxy(sandbox.url, rate=200_000, rate_keys=("/behavior_",)) as proxy:
        p = subprocess.Popen([sys.executable, "-m", "mirror.cli", "--cache-dir", str(tmp_path / "c"), "--endpoint-url",
                              proxy.url, "sync", "--version", "1.0.1", "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(k[0] == "GET" and "/behavior_" in k[1] for k in proxy.requests):
            time.sleep(0.02)
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 130
    last = json.loads(out.splitlines()[-1])
    assert last["event"] == "interrupted" and last["ok"] is False and "run the same command again" in last["hint"]
    assert "run the same command again to resume" in err
