"""The sandbox replica keeps the relationships of the real release, and its server behaves
like S3 where the mirror depends on it (versions, multipart ETags, anonymous reads)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from conftest import TEST_SPEC, manifest_name

from mirror.manifest import compare_manifests, parse_manifest
from mirror.config import load_dataset
from mirror.remote import Remote, RemoteSettings
from mirror.model import ObjectRef, multipart_count
from mirror.sandbox.replica import BUCKET, VERSIONS, build_replica, payload

DS = load_dataset("visual-behavior-ophys")


def manifests(replica):
    return {v: parse_manifest(replica.manifests[manifest_name(v)], source=manifest_name(v), dataset=DS) for v in VERSIONS}


def test_release_history_relationships(replica):
    m = manifests(replica)
    for a, b in (("0.1.0", "0.2.0"), ("0.2.0", "0.3.0"), ("1.0.0", "1.0.1")):
        kinds = {c.kind for c in compare_manifests(m[a], m[b]).changes}
        assert kinds == {"metadata"}, (a, b)
    # 1.0.0 keeps every old NWB version (same S3 version, same content) and adds files + cells table
    old, new = m["0.3.0"], m["1.0.0"]
    for fid, e in old.data_files.items():
        assert (new.data_files[fid].version_id, new.data_files[fid].file_hash) == (e.version_id, e.file_hash)
    assert len(new.data_files) > len(old.data_files)
    assert "ophys_cells_table" in new.metadata_files and "ophys_cells_table" not in old.metadata_files
    # 1.1.0 replaces every NWB: same keys, new S3 versions, new content
    a, b = m["1.0.1"], m["1.1.0"]
    assert set(a.data_files) == set(b.data_files)
    for fid in a.data_files:
        assert a.data_files[fid].key == b.data_files[fid].key
        assert a.data_files[fid].version_id != b.data_files[fid].version_id
        assert a.data_files[fid].file_hash != b.data_files[fid].file_hash
    # URLs in the real AWS form
    e = next(iter(b.data_files.values()))
    assert e.url.startswith(f"https://{BUCKET}.s3.us-west-2.amazonaws.com/visual-behavior-ophys/")


def test_replica_is_deterministic_by_seed():
    a, b = build_replica(TEST_SPEC), build_replica(TEST_SPEC)
    assert a.tables == b.tables
    assert {v: {k: (f.key, f.size, f.seed) for k, f in d.items()} for v, d in a.data.items()} == \
           {v: {k: (f.key, f.size, f.seed) for k, f in d.items()} for v, d in b.data.items()}
    f = next(iter(a.data["1.0.1"].values()))
    # The same bytes in another interpreter (the loader and the tests are separate processes),
    # other bytes for another seed, the size asked for, an HDF5 signature first.
    import hashlib
    import subprocess
    import sys

    here = hashlib.blake2b(payload(f.seed, f.size)).hexdigest()
    there = subprocess.run([sys.executable, "-c", "import hashlib; from mirror.sandbox.replica import payload; "
                            f"print(hashlib.blake2b(payload({f.seed}, {f.size})).hexdigest())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert here == there
    assert payload(f.seed + 1, f.size) != payload(f.seed, f.size)
    assert len(payload(f.seed, f.size)) == f.size and payload(f.seed, f.size).startswith(b"\x89HDF\r\n\x1a\n")
    other = build_replica(TEST_SPEC.__class__(seed=TEST_SPEC.seed + 1, scale=TEST_SPEC.scale))
    assert other.tables != a.tables


def test_sizes_scale_like_the_real_files(replica):
    for f in replica.data["1.0.1"].values():
        lo, hi = (49e6, 194e6) if f.kind == "behavior" else (231e6, 2.96e9)
        assert lo * TEST_SPEC.scale * 0.99 <= f.size <= hi * TEST_SPEC.scale * 1.01, f


def test_server_has_versions_multipart_etags_and_anonymous_reads(sandbox, replica):
    async def go():
        settings = RemoteSettings(bucket=BUCKET, region="us-west-2", endpoint_url=sandbox.url)
        async with Remote(settings) as r:  # unsigned
            versions = await r.list_versions("visual-behavior-ophys/")
            m = manifests(replica)["1.1.0"]
            multipart = 0
            for e in m.data_files.values():
                info = versions[(e.key, e.version_id)]
                multipart += multipart_count(info.etag) is not None
            assert multipart > 0
            # both generations of a replaced NWB are there, under one key
            e = m.data_files[next(iter(m.data_files))]
            assert sum(1 for (k, _v) in versions if k == e.key) == 2
            body = await r.read_all(ObjectRef(BUCKET, e.key, e.version_id))
            f = replica.data["1.1.0"][int(next(iter(m.data_files)))]
            assert body == payload(f.seed, f.size)

    asyncio.run(go())


def test_sandbox_up_and_down_commands(tmp_path):
    env = {**os.environ, "VBO_MIRROR_SANDBOX_DIR": str(tmp_path)}
    exe = [sys.executable, "-m", "mirror.cli", "--json", "sandbox"]
    up = subprocess.run([*exe, "up", "--scale", "0.0001"], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        state = json.loads(up.stdout)
        assert state["endpoint_url"].startswith("http://127.0.0.1:")
        assert state["manifests"] == sorted(manifest_name(v) for v in VERSIONS)
        status = json.loads(subprocess.run([*exe, "status"], env=env, capture_output=True, text=True).stdout)
        assert status["running"] and status["pid"] == state["pid"]
    finally:
        down = subprocess.run([*exe, "down"], env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(down.stdout)["stopped"] is True
    status = json.loads(subprocess.run([*exe, "status"], env=env, capture_output=True, text=True).stdout)
    assert status["running"] is False


def test_a_second_terminal_joins_the_sandbox_and_does_not_stop_the_firsts(tmp_path):
    """Two `sandbox up` on one account share one server; the first `down` leaves it running
    for the other (it was stopped under the first terminal's feet), the last stops it."""
    env = {**os.environ, "VBO_MIRROR_SANDBOX_DIR": str(tmp_path)}
    exe = [sys.executable, "-m", "mirror.cli", "sandbox"]

    def run(*args):
        r = subprocess.run([*exe, *args], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    first = run("up", "--scale", "0.0001")
    try:
        second = run("up", "--scale", "0.0001")
        assert "already running at http://127.0.0.1:" in second and "2 users" in second
        assert str(tmp_path) in first and "VBO_MIRROR_SANDBOX_DIR" in first
        left = run("down")
        assert "left running" in left and "1 other" in left
        assert "running at" in run("status")
    finally:
        last = run("down")
    assert "sandbox stopped" in last and "no sandbox is running" in run("status")
    run("up", "--scale", "0.0001")
    run("up", "--scale", "0.0001")
    assert "sandbox stopped" in run("down", "--force")
