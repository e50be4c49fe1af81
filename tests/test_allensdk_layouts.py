"""What AllenSDK reads beside the files (`_downloaded_data.json`), and the bucket layout
(`sync --layout bucket`) that AllenSDK's static cache opens; both checked on real trees. That
AllenSDK itself opens them is `make test-allensdk` (tests/allensdk/)."""

from __future__ import annotations

import json
import os

from test_sync import PROJECT, assert_mirror, expected_files

from mirror.store.layout import CacheLayout


def test_each_sync_records_its_views_for_allensdk(cli, replica):
    cli("sync", "--version", "1.0.1")
    record = cli.cache_dir / "_downloaded_data.json"
    data = json.loads(record.read_text())
    root = os.path.realpath(cli.cache_dir)
    manifest = json.loads(replica.manifests["visual-behavior-ophys_project_manifest_v1.0.1.json"])
    want = {}
    for part in ("metadata_files", "data_files"):
        for e in manifest[part].values():
            rel = e["url"].split(".amazonaws.com/", 1)[1].split("/", 1)[1]
            want[os.path.join(root, f"{PROJECT}-1.0.1", rel)] = e["file_hash"]
    assert data == want  # AllenSDK's format: resolved absolute path -> the manifest's file_hash
    assert record.read_text() == json.dumps(want, indent=2, sort_keys=True)
    before = record.stat().st_mtime_ns
    cli("sync", "--version", "1.0.1")
    assert record.stat().st_mtime_ns == before  # nothing new: not rewritten
    record.write_text('{"half": ')  # AllenSDK interrupted mid-write (it writes in place)
    cli("sync", "--version", "1.1.0")
    data = json.loads(record.read_text())
    assert all(os.path.exists(p) for p in data) and any("-1.1.0/" in p for p in data)


def test_the_bucket_layout_is_one_version_of_links_into_the_same_store(cli, replica):
    cli("sync", "--version", "1.0.1")
    cli("sync", "--version", "1.0.1", "--layout", "bucket")
    files = expected_files(replica, "1.0.1")
    for rel, body in files.items():
        bucket = cli.cache_dir / PROJECT / rel.split("/", 1)[1]
        assert bucket.read_bytes() == body
        assert os.stat(bucket).st_ino == os.stat(cli.cache_dir / rel).st_ino  # one inode, two views
    manifests = cli.cache_dir / PROJECT / "manifests"
    assert sorted(p.name for p in manifests.iterdir()) == ["visual-behavior-ophys_project_manifest_v1.0.1.json"]
    cli("sync", "--version", "1.1.0", "--layout", "bucket")  # the bucket view moves to 1.1.0
    assert sorted(p.name for p in manifests.iterdir()) == ["visual-behavior-ophys_project_manifest_v1.1.0.json"]
    for rel, body in expected_files(replica, "1.1.0").items():
        assert (cli.cache_dir / PROJECT / rel.split("/", 1)[1]).read_bytes() == body
    assert_mirror(cli.cache_dir, replica, "1.0.1")  # the versioned layout is untouched
    status = cli("--json", "status", json_out=True).data
    assert any(v["layout"] == "bucket" and v["version"] == "1.1.0" and v["complete"] for v in status["versions"])
    assert cli("verify").stdout.strip().endswith("ok")
    victim = next((cli.cache_dir / PROJECT / "behavior_sessions").iterdir())
    victim.unlink()
    r = cli("verify", expect=5)
    assert f"MISSING VIEW {PROJECT}/behavior_sessions/{victim.name}" in r.stdout
    cli("verify", "--repair")
    assert victim.exists()
    r = cli("prune", "--keep", "1.0.1", "--yes", expect=2)  # the bucket layout holds 1.1.0
    assert "bucket layout" in r.stderr
    r = cli("sync", "--version", "all", "--layout", "bucket", expect=2)
    assert "one version" in r.stderr
    assert not CacheLayout(cli.cache_dir).read_only()
