"""Shared fixtures: one moto S3 server on 127.0.0.1 per test session, loaded with the replica.

The server runs in a child process started here and stopped at the end of the session. The
replica is kept small (moto holds every object in memory and copies them on each listing).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mirror.cli import main
from mirror.sandbox import ReplicaSpec, Sandbox

# Small enough for moto, large enough that ophys NWBs are multipart uploads (`-N` ETags)
# and span several 64 KiB ranged parts.
TEST_SPEC = ReplicaSpec(seed=7, scale=1 / 4000, part_size=64 << 10, multipart_threshold=128 << 10)


PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
             "no_proxy", "AWS_CA_BUNDLE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


@pytest.fixture(autouse=True)
def _no_aws_env(monkeypatch):
    """Tests never see the developer's AWS and proxy settings, and never reach past 127.0.0.1."""
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "VBO_MIRROR_CACHE_DIR", "VBO_MIRROR_ENDPOINT_URL",
                "VBO_MIRROR_DATASET", "AWS_PROFILE", *PROXY_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def sandbox():
    with Sandbox(TEST_SPEC) as sb:
        yield sb


@pytest.fixture
def replica(sandbox):
    return sandbox.replica


@pytest.fixture(scope="session")
def vbn_replica(sandbox):
    """The Visual Behavior Neuropixels replica, loaded into the same server: one endpoint
    serves both buckets, as `sandbox up` does."""
    import asyncio

    from mirror.sandbox.neuropixels import build_neuropixels_replica
    from mirror.sandbox.server import load_replica

    return asyncio.run(load_replica(sandbox.url, build_neuropixels_replica(TEST_SPEC)))


class Cli:
    """Runs `vbo-mirror` in-process against the sandbox, with its own cache_dir."""

    def __init__(self, endpoint: str | None, cache_dir: Path) -> None:
        self.endpoint = endpoint
        self.cache_dir = cache_dir

    def __call__(self, *args: str, json_out: bool = False, expect: int | None = 0, cache: bool = True,
                 endpoint: str | None = "default"):
        argv = []
        if cache:
            argv += ["--cache-dir", str(self.cache_dir)]
        ep = self.endpoint if endpoint == "default" else endpoint
        if ep:
            argv += ["--endpoint-url", ep]
        if json_out:
            argv.append("--json")
        result = CliRunner().invoke(main, [*argv, *args], catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (
                f"exit {result.exit_code}, wanted {expect}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        if json_out and result.exit_code == 0:
            result.data = json_result(result.stdout)
        return result


def json_result(stdout: str):
    """The result of a --json command (JSON lines: items, then a summary with "ok"): the list
    of item values, the summary's single "value", or the summary document."""
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert lines and all("event" in x for x in lines), stdout[:500]
    summary = lines[-1]
    assert summary["event"] == "summary" and "ok" in summary, summary
    items = [x["value"] for x in lines if x["event"] == "item"]
    if items or summary.get("count") == 0:
        return items
    if set(summary) == {"event", "command", "ok", "value"}:
        return summary["value"]
    return summary


@pytest.fixture
def cli(sandbox, tmp_path):
    return Cli(sandbox.url, tmp_path / "cache")


def manifest_name(version: str) -> str:
    return f"visual-behavior-ophys_project_manifest_v{version}.json"


def tree_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def write_dataset_config(path: Path, *, name: str, bucket: str, prefix: str) -> Path:
    """A dataset .toml for a test bucket whose manifests are `{name}_manifest_vX.Y.Z.json`."""
    path.write_text(f"""name = "{name}"
bucket = "{bucket}"
region = "us-west-2"
prefix = "{prefix}"
manifest_prefix = "{prefix}manifests/"
manifest_pattern = '^{name}_manifest_v(?P<version>[0-9]+\\.[0-9]+\\.[0-9]+)\\.json$'
manifest_template = "{name}_manifest_v{{version}}.json"
""")
    return path
