"""`prune --keep` and `gc` on real mirrors: what a kept version needs stays (checked by hard
link counts and bytes), the rest is freed, and prune refuses whenever it cannot be sure."""

from __future__ import annotations

import os
from pathlib import Path

from test_sync import PROJECT, assert_mirror, expected_files

from mirror.store.layout import CacheLayout
from mirror.store.lock import CacheLock
from mirror.store.objects import ObjectStore


def snapshot(root):
    """Every entry under `root` but the lock file (which each command takes)."""
    return {str(p.relative_to(root)): (p.lstat().st_ino, p.lstat().st_nlink, p.lstat().st_size)
            for p in root.rglob("*") if p.relative_to(root) != Path(".vbo-mirror/lock")}


def two_versions(cli):
    cli("sync", "--version", "1.0.1")
    cli("sync", "--version", "1.1.0")
    cli("manifests", "use", "1.1.0")


def test_prune_keeps_exactly_what_the_kept_version_needs_and_frees_the_rest(cli, replica):
    two_versions(cli)
    layout = CacheLayout(cli.cache_dir)
    old, new = expected_files(replica, "1.0.1"), expected_files(replica, "1.1.0")
    r = cli("--json", "prune", "--keep", "1.1.0", "--yes", json_out=True).data
    assert r["applied"] and r["dropped"] == ["1.0.1"] and r["kept"] == ["1.1.0"]
    assert not (cli.cache_dir / f"{PROJECT}-1.0.1").exists()
    assert not (cli.cache_dir / "visual-behavior-ophys_project_manifest_v1.0.1.json").exists()
    assert_mirror(cli.cache_dir, replica, "1.1.0")
    # every store object left is content 1.1.0 has, linked once per 1.1.0 view of it
    views_of = {}
    for rel, body in new.items():
        views_of.setdefault(body, []).append(rel)
    left = list(ObjectStore(layout).iter_objects())
    assert len(left) == len(views_of)
    for body, rels in views_of.items():
        st = os.stat(cli.cache_dir / rels[0])
        assert st.st_nlink == 1 + len(rels)
    freed = sum(len(b) for b in set(old.values()) - set(new.values()))
    assert r["object_bytes"] == freed and r["frees_bytes"] >= freed
    assert cli("--offline", "verify").stdout.strip().endswith("ok")
    again = cli("--json", "prune", "--keep", "1.1.0", "--yes", json_out=True).data
    assert again["objects"] == 0 and again["views"] == 0 and again["dropped"] == []


def test_dry_run_and_no_yes_change_nothing(cli, replica):
    two_versions(cli)
    before = snapshot(cli.cache_dir)
    r = cli("prune", "--keep", "1.1.0", "--dry-run")
    assert "would free" in r.stdout and "1.0.1" in r.stdout
    r = cli("prune", "--keep", "1.1.0", expect=2)  # stdin is not a terminal here
    assert "--yes" in r.stderr
    assert snapshot(cli.cache_dir) == before


def test_prune_refuses_when_unsure(cli, replica):
    two_versions(cli)
    before = snapshot(cli.cache_dir)
    r = cli("prune", "--keep", "9.9.9", "--yes", expect=2)  # not in this cache
    assert "9.9.9" in r.stderr
    r = cli("prune", "--keep", "1.0.1", "--yes", expect=2)  # 1.1.0 is current
    assert "current" in r.stderr and "1.1.0" in r.stderr
    bad = cli.cache_dir / "visual-behavior-ophys_project_manifest_v1.0.0.json"
    bad.write_text("{not json")
    r = cli("prune", "--keep", "1.1.0", "--yes", expect=4)  # what 1.0.0 needs cannot be read
    assert "1.0.0" in r.stderr and "Traceback" not in r.stderr
    bad.unlink()
    with CacheLock(CacheLayout(cli.cache_dir).lock_path, shared=True, command="vbo-mirror sync --shard 0/2"):
        r = cli("prune", "--keep", "1.1.0", "--yes", expect=3)  # a sync (a shard) is running
        assert "in use" in r.stderr
    assert snapshot(cli.cache_dir) == before


def test_files_that_are_not_views_are_left_and_listed(cli, replica):
    two_versions(cli)
    mine = cli.cache_dir / f"{PROJECT}-1.0.1" / "my_notes.txt"
    mine.write_text("analysis notes")
    r = cli("prune", "--keep", "1.1.0", "--yes")
    assert mine.read_text() == "analysis notes"
    assert "my_notes.txt" in r.stdout
    assert [p.name for p in (cli.cache_dir / f"{PROJECT}-1.0.1").rglob("*") if p.is_file()] == ["my_notes.txt"]


def test_gc_removes_orphans_and_keeps_what_manifests_want(cli, replica):
    cli("sync", "--version", "1.0.1")
    layout = CacheLayout(cli.cache_dir)
    wanted = next(iter(layout.objects.glob("*/*/*")))  # an object 1.0.1 names
    orphan_h = "f" * 128
    orphan = layout.partial_path(orphan_h)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"x" * 1000)
    orphan.with_name(orphan.name + ".json").write_text("{}")
    stray_obj = layout.object_path("e" * 128)
    stray_obj.parent.mkdir(parents=True, exist_ok=True)
    stray_obj.write_bytes(b"y" * 500)
    kept_partial = layout.partial_path(wanted.name)  # a download a manifest still wants: stays
    kept_partial.write_bytes(b"z" * 10)
    tmp = cli.cache_dir / f"{PROJECT}-1.0.1" / ".vbo-link-123-abcd"
    tmp.write_text("t")
    r = cli("--json", "gc", json_out=True).data
    assert r["partials"] == 1 and r["objects"] == 1 and r["temporaries"] == 1
    assert not orphan.exists() and not stray_obj.exists() and not tmp.exists()
    assert wanted.exists() and kept_partial.exists()
    assert_mirror(cli.cache_dir, replica, "1.0.1")
