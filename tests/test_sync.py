"""`vbo-mirror sync` end to end against moto: real bytes on disk, checked against the replica."""

from __future__ import annotations

import json
import os
import stat

import pytest
from conftest import manifest_name

from mirror.store.layout import CacheLayout
from mirror.sandbox.replica import payload

PROJECT = "visual-behavior-ophys"


def expected_files(replica, version: str) -> dict[str, bytes]:
    """view path (relative to cache_dir) → bytes, straight from the replica's generator."""
    out = {}
    root = f"{PROJECT}-{version}"
    for table, body in replica.tables[version].items():
        out[f"{root}/project_metadata/{table}.csv"] = body
    for f in replica.data[version].values():
        out[f"{root}/{f.key.split('/', 1)[1]}"] = payload(f.seed, f.size)
    return out


def assert_mirror(cache_dir, replica, version):
    files = expected_files(replica, version)
    for rel, body in files.items():
        path = cache_dir / rel
        assert path.read_bytes() == body, rel
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
    on_disk = {str(p.relative_to(cache_dir)) for p in (cache_dir / f"{PROJECT}-{version}").rglob("*") if p.is_file()}
    assert on_disk == set(files)
    return files


def test_full_sync_then_a_second_sync_fetches_nothing(cli, replica):
    cli("manifests", "use", "1.0.1")
    s = json.loads(cli("--json", "sync", "--part-size", "64KiB").stdout.splitlines()[-1])
    files = assert_mirror(cli.cache_dir, replica, "1.0.1")
    assert s["event"] == "summary" and s["failures"] == []
    assert s["files"] == len(files) and s["files_fetched"] == len(files)
    assert s["bytes_fetched"] == sum(len(b) for b in files.values())
    again = json.loads(cli("--json", "sync").stdout.splitlines()[-1])
    assert again["bytes_fetched"] == 0 and again["files_fetched"] == 0
    assert again["files_present"] == len(files)
    assert cli("verify").stdout.strip().endswith("ok")


def test_version_bump_fetches_only_new_content_and_links_the_rest(cli, replica):
    cli("sync", "--version", "0.1.0")
    old = expected_files(replica, "0.1.0")
    new = expected_files(replica, "1.0.1")
    old_contents = set(old.values())
    want = sum(len(b) for b in {b for b in new.values() if b not in old_contents})
    plan = cli("plan", "--version", "1.0.1", json_out=True).data
    assert plan["fetch"]["bytes"] == want
    s = json.loads(cli("--json", "sync", "--version", "1.0.1").stdout.splitlines()[-1])
    assert s["bytes_fetched"] == want
    assert s["files_linked"] == sum(1 for b in new.values() if b in old_contents)
    assert_mirror(cli.cache_dir, replica, "1.0.1")
    # an NWB unchanged between the versions is one inode, in the store and in both views
    f = next(iter(replica.data["0.1.0"].values()))
    rel = f.key.split("/", 1)[1]
    a = cli.cache_dir / f"{PROJECT}-0.1.0" / rel
    b = cli.cache_dir / f"{PROJECT}-1.0.1" / rel
    assert os.stat(a).st_ino == os.stat(b).st_ino and os.stat(a).st_nlink == 3
    st = cli("status", json_out=True).data
    assert st["bytes_on_disk"] < st["logical_bytes"]


def test_deleted_view_is_relinked_without_fetching(cli, replica):
    cli("sync", "--version", "1.0.0")
    f = next(iter(replica.data["1.0.0"].values()))
    view = cli.cache_dir / f"{PROJECT}-1.0.0" / f.key.split("/", 1)[1]
    view.unlink()
    plan = cli("plan", "--version", "1.0.0", json_out=True).data
    assert plan["fetch"]["files"] == 0 and plan["link"]["files"] == 1
    s = json.loads(cli("--json", "sync", "--version", "1.0.0").stdout.splitlines()[-1])
    assert s["bytes_fetched"] == 0 and s["files_linked"] == 1
    assert view.read_bytes() == payload(f.seed, f.size)


def test_wrong_content_at_a_view_path_is_replaced(cli, replica):
    cli("sync", "--version", "1.0.0")
    f = list(replica.data["1.0.0"].values())[1]
    view = cli.cache_dir / f"{PROJECT}-1.0.0" / f.key.split("/", 1)[1]
    view.unlink()
    view.write_bytes(b"not the file")
    plan = cli("plan", "--version", "1.0.0", json_out=True).data
    assert plan["replace_items"] == [str(view.relative_to(cli.cache_dir))]
    cli("sync", "--version", "1.0.0")
    assert view.read_bytes() == payload(f.seed, f.size)


def test_corrupted_store_object_is_caught_by_verify_and_repaired(cli, replica):
    cli("sync", "--version", "1.0.1")
    f = max(replica.data["1.0.1"].values(), key=lambda x: x.size)
    view = cli.cache_dir / f"{PROJECT}-1.0.1" / f.key.split("/", 1)[1]
    os.chmod(view, 0o644)  # a view and its object are one inode: this damages the store
    with open(view, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02")
    r = cli("verify", expect=5)
    assert "CORRUPT" in r.stdout and "--repair" in r.stdout
    r = cli("verify", "--repair", json_out=True)
    rep = r.data
    assert rep["repaired"]["files_fetched"] == 1 and rep["repaired"]["failures"] == []
    assert view.read_bytes() == payload(f.seed, f.size)
    assert cli("verify").stdout.strip().endswith("ok")


def test_fast_verify_uses_the_index_fingerprints(cli, replica):
    cli("sync", "--version", "0.3.0")
    assert cli("verify", "--fast", json_out=True).data["ok"] is True
    f = next(iter(replica.data["0.3.0"].values()))
    view = cli.cache_dir / f"{PROJECT}-0.3.0" / f.key.split("/", 1)[1]
    os.chmod(view, 0o644)
    with open(view, "r+b") as fh:
        fh.write(b"X")
    r = cli("verify", "--fast", json_out=True, expect=5)
    report = json.loads(r.stdout)
    assert report["mode"] == "fast"
    assert [c["checked_by"] for c in report["corrupt"]] == ["xxh3"]  # found by the fingerprint, not BLAKE2b


def test_get_prints_the_path_of_one_file(cli, replica):
    cli("manifests", "use", "1.0.1")
    bsid = replica.behavior_ids["1.0.1"][0]
    path = cli("get", "behavior-session", str(bsid)).stdout.strip()
    assert path.endswith(f"behavior_sessions/behavior_session_{bsid}.nwb")
    f = next(f for f in replica.data["1.0.1"].values() if f.key.endswith(f"_{bsid}.nwb"))
    assert open(path, "rb").read() == payload(f.seed, f.size)
    eid = replica.experiment_ids["1.0.1"][-1]
    d = cli("get", "ophys-experiment", str(eid), json_out=True).data
    assert d["path"].endswith(f"behavior_ophys_experiment_{eid}.nwb") and os.path.getsize(d["path"]) > 0
    # only those two NWBs (and the tables used to find them) were fetched
    nwbs = [p for p in (cli.cache_dir / f"{PROJECT}-1.0.1").rglob("*.nwb")]
    assert len(nwbs) == 2


def test_get_for_a_session_without_its_own_file_says_why(cli, replica, sandbox):
    from mirror.api import Mirror

    m = Mirror(cli.cache_dir, endpoint_url=sandbox.url)
    m.load_manifest("1.0.1")
    b = m.get_behavior_session_table()
    no_file = int(b[b["file_id"].isna()].index[0])
    r = cli("get", "behavior-session", str(no_file), expect=2)
    assert "has no NWB file of its own" in r.stderr
    r = cli("get", "behavior-session", "12345", expect=2)
    assert "behavior_session_id 12345 is not in behavior_session_table" in r.stderr


def test_urls_name_every_file_with_its_version(cli, replica, sandbox):
    cli("manifests", "use", "1.0.1")
    # offline and without an endpoint: the real AWS URLs, from the manifest in cache_dir
    lines = cli("--offline", "urls", endpoint=None).stdout.splitlines()
    assert len(lines) == len(replica.data["1.0.1"]) + len(replica.tables["1.0.1"])
    assert all(u.startswith("https://visual-behavior-ophys-data.s3.us-west-2.amazonaws.com/visual-behavior-ophys/")
               and "?versionId=" in u for u in lines)
    local = cli("urls").stdout.splitlines()
    assert all(u.startswith(f"{sandbox.url}/visual-behavior-ophys-data/") for u in local)


def test_a_second_sync_says_who_holds_the_lock(cli):
    from mirror.store.lock import CacheLock

    layout = CacheLayout(cli.cache_dir)
    with CacheLock(layout.lock_path, command="vbo-mirror sync (test)"):
        r = cli("sync", "--version", "0.1.0", expect=3)
    assert f"{cli.cache_dir} is in use by pid {os.getpid()}" in r.stderr and "--wait" in r.stderr


def test_sync_of_all_versions(cli, replica):
    s = json.loads(cli("--json", "sync", "--version", "all").stdout.splitlines()[-1])
    assert s["failures"] == []
    unique = {b for v in replica.data for b in expected_files(replica, v).values()}
    assert s["bytes_fetched"] == sum(len(b) for b in unique)
    for v in replica.data:
        assert_mirror(cli.cache_dir, replica, v)


def test_index_is_rebuilt_from_the_store(cli, replica):
    import pyarrow.parquet as pq

    cli("sync", "--version", "1.0.0")
    layout = CacheLayout(cli.cache_dir)
    n_objects = len(list(layout.objects.glob("*/*/*")))
    table = pq.read_table(layout.index_path)
    assert table.num_rows == n_objects and None not in table["xxh3"].to_pylist()
    # a lost index: the next sync notices and reconciles it with the store, fetching nothing
    layout.index_path.unlink()
    lines = [json.loads(x) for x in cli("--json", "sync", "--version", "1.0.0").stdout.splitlines()]
    assert [(e["added"], e["dropped"]) for e in lines if e["event"] == "index"] == [(n_objects, 0)]
    assert lines[-1]["bytes_fetched"] == 0
    assert pq.read_table(layout.index_path).num_rows == n_objects
    # `index rebuild` reads everything back, fingerprints included, and drops a damaged object
    victim = next(iter(layout.objects.glob("*/*/*")))
    victim.chmod(0o644)
    victim.write_bytes(b"damaged")
    r = cli("index", "rebuild", json_out=True).data
    assert r["objects"] == n_objects - 1 and r["removed_corrupt"] == [victim.name]
    table = pq.read_table(layout.index_path)
    assert table.num_rows == n_objects - 1 and None not in table["xxh3"].to_pylist()
    cli("sync", "--version", "1.0.0")
    assert_mirror(cli.cache_dir, replica, "1.0.0")


def _signature_checks(request_line: tuple[str, str, dict], secret: str, region: str) -> bool:
    """Recompute the SigV4 signature of a request as the server received it."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    method, path_qs, headers = request_line
    auth = headers["Authorization"]
    fields = dict(part.strip().split("=", 1) for part in auth.split(" ", 1)[1].split(","))
    signed = fields["SignedHeaders"].split(";")
    lower = {k.lower(): v for k, v in headers.items()}
    req = AWSRequest(method=method, url=f"http://{lower['host']}{path_qs}",
                     headers={h: lower[h] for h in signed})
    req.context["timestamp"] = lower["x-amz-date"]
    signer = S3SigV4Auth(Credentials(fields["Credential"].split("/")[0], secret), "s3", region)
    want = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
    return want == fields["Signature"]


def test_signed_requests_are_signed_and_anonymous_ones_are_not(sandbox, replica, tmp_path):
    """--signed signs every request it sends (listings and ranged, versioned data GETs alike)
    with the environment's credentials, and the signature holds for what the server got."""
    from faultproxy import FaultProxy

    from mirror.api import Mirror
    from mirror.limits import Limits

    with FaultProxy(sandbox.url) as proxy:
        m = Mirror(tmp_path / "s", endpoint_url=proxy.url, signed=True)
        m.load_manifest("1.0.1")
        stats = m.sync(limits=Limits(jobs=4, part_size=64 << 10))
        signed = list(proxy.requests)
        proxy.requests.clear()
        m = Mirror(tmp_path / "a", endpoint_url=proxy.url)
        m.load_manifest("1.0.1")
        m.sync(limits=Limits(jobs=4, part_size=64 << 10))
        anonymous = list(proxy.requests)
    assert stats.failures == []
    assert_mirror(tmp_path / "s", replica, "1.0.1")
    data = [r for r in signed if "versionId=" in r[1]]
    ranged = [r for r in data if "Range" in r[2]]
    listings = [r for r in signed if "/visual-behavior-ophys-data?" in r[1] or "/visual-behavior-ophys-data/?" in r[1]]
    assert data and ranged and listings
    for r in signed:
        assert r[2].get("Authorization", "").startswith("AWS4-HMAC-SHA256 Credential=testing/"), r[1]
        assert _signature_checks(r, "testing", "us-west-2"), r[1]
    assert all("Authorization" not in h for _, _, h in anonymous)


def test_plan_json_is_the_whole_plan(cli, replica):
    cli("sync", "--version", "0.3.0")
    p = cli("plan", "--version", "1.0.0", json_out=True).data
    assert p["manifests"] == [manifest_name("1.0.0")]
    fetched = {item["ref"]["key"] for item in p["fetch_items"]}
    added = {replica.data["1.0.0"][f].key for f in set(replica.data["1.0.0"]) - set(replica.data["0.3.0"])}
    assert added <= fetched
    assert all(item["size"] > 0 and item["ref"]["version_id"] for item in p["fetch_items"])
    assert p["fetch"]["bytes"] == sum(item["size"] for item in p["fetch_items"])
    assert {x["view"].split("/", 1)[0] for x in p["link_items"]} == {f"{PROJECT}-1.0.0"}


def test_stray_views_of_ours_are_removed_and_user_files_are_not(cli, replica):
    cli("sync", "--version", "1.0.0")
    d = cli.cache_dir / f"{PROJECT}-1.0.0"
    some = next(d.rglob("*.nwb"))
    stray = d / "behavior_sessions" / "behavior_session_1.nwb"
    os.link(some, stray)  # a view of a store object that the manifest does not want
    notes = d / "my_notes.txt"
    notes.write_text("mine")
    plan = cli("plan", "--version", "1.0.0", json_out=True).data
    assert plan["remove_items"] == [str(stray.relative_to(cli.cache_dir))]
    cli("sync", "--version", "1.0.0")
    assert not stray.exists() and notes.read_text() == "mine"


@pytest.mark.filterwarnings("ignore::mirror.errors.LinkFallbackWarning")
def test_views_fall_back_to_stamped_copies_where_links_fail(sandbox, replica, tmp_path, monkeypatch):
    import errno
    import warnings

    from mirror.api import Mirror
    from mirror.errors import LinkFallbackWarning

    def no_links(src, dst, **kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    m = Mirror(tmp_path / "c", endpoint_url=sandbox.url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = m.sync("1.0.0", link_mode="hardlink")
    assert stats.failures == []
    fallbacks = [str(w.message) for w in caught if w.category is LinkFallbackWarning]
    assert len(fallbacks) == 1 and "views are full copies" in fallbacks[0]  # warned once
    files = assert_mirror(tmp_path / "c", replica, "1.0.0")
    view = tmp_path / "c" / next(iter(files))
    assert os.stat(view).st_nlink == 1  # a copy, not a link
    again = m.sync("1.0.0", link_mode="hardlink")
    assert again.files_present == len(files) and again.bytes_done == 0
    # a copy is its own bytes: verify reads it, and --repair makes it again from the store
    view.chmod(0o644)
    with open(view, "r+b") as fh:
        fh.seek(10)
        fh.write(b"rot")
    os.utime(view, ns=(os.stat(view).st_atime_ns, os.stat(m.layout.object_path(
        __import__("hashlib").blake2b(files[next(iter(files))]).hexdigest())).st_mtime_ns))  # same stamp
    report = m.verify()
    assert report.views_wrong == [next(iter(files))] and report.corrupt == []
    report = m.verify(repair=True)
    assert view.read_bytes() == files[next(iter(files))]
    assert m.verify().ok is True


def test_a_directory_in_the_place_of_a_view_fails_that_view_only(cli, replica):
    f = next(iter(replica.data["1.0.0"].values()))
    blocker = cli.cache_dir / f"{PROJECT}-1.0.0" / f.key.split("/", 1)[1]
    blocker.mkdir(parents=True)
    (blocker / "keep.txt").write_text("mine")
    r = cli("--json", "sync", "--version", "1.0.0", expect=5)
    s = json.loads(r.stdout.splitlines()[-1])
    assert [x["error"] for x in s["failures"]] == ["ViewBlocked"]
    assert (blocker / "keep.txt").read_text() == "mine"
    files = expected_files(replica, "1.0.0")
    others = {rel: b for rel, b in files.items() if rel != str(blocker.relative_to(cli.cache_dir))}
    assert all((cli.cache_dir / rel).read_bytes() == b for rel, b in others.items())
