"""Real networks: the whole job through what AWS S3, proxies and clusters send, not only what
the lab's servers send.

- an "AWS-shaped" front (tests/awsfront.py) re-framing the sandbox's answers as AWS does:
  chunked listings, error documents and object bodies, 1xx answers, `Connection: close`, 307
  Temporary Redirect, 301 PermanentRedirect with `x-amz-bucket-region`;
- a real forward proxy, Debian's tinyproxy (installed by `make test` where it can be), with
  its own log counting what went through it: plain http (absolute form), a CONNECT tunnel to a
  TLS front, NO_PROXY, a dead proxy, a proxy that wants credentials.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import warnings
from pathlib import Path

import pytest
from awsfront import AwsFront
from conftest import Cli
from faultproxy import FaultProxy
from test_sync import assert_mirror

from mirror.errors import RegionWarning
from mirror.sandbox.replica import BUCKET, VERSIONS

def _latest() -> str:
    return max(VERSIONS, key=lambda v: tuple(int(x) for x in v.split(".")))


def _run_the_job(cli: Cli, replica, version: str, flags: tuple[str, ...] = ()) -> None:
    """manifests list, sync, get, a deleted view repaired, verify: every byte checked."""
    if flags:
        plain = cli
        cli = lambda *args, **kw: plain(*flags, *args, **kw)  # noqa: E731
        cli.cache_dir = plain.cache_dir
    names = cli("manifests", "list", json_out=True).data
    assert [n.rsplit("_v", 1)[1].removesuffix(".json") for n in names] == list(VERSIONS)
    cli("sync", "--version", "latest" if version == _latest() else version, "--part-size", "64KiB")
    files = assert_mirror(cli.cache_dir, replica, version)
    bid = replica.behavior_ids[version][0]
    got = Path(cli("get", "behavior-session", str(bid), "--version", version).stdout.strip())
    assert got.read_bytes() == files[str(got.relative_to(cli.cache_dir))]
    victim = cli.cache_dir / sorted(k for k in files if k.endswith(".nwb"))[-1]
    victim.unlink()
    assert "MISSING VIEW" in cli("verify", expect=5).stdout
    cli("verify", "--repair")
    assert_mirror(cli.cache_dir, replica, version)
    assert cli("verify").stdout.strip().endswith("ok")


@pytest.mark.parametrize("transport", ["lean", "aiohttp"])
def test_the_main_job_through_an_aws_shaped_front_asks_the_server_for_exactly_the_same(sandbox, replica, tmp_path,
                                                                                      transport):
    """Chunked listings, error documents and half the object bodies, 1xx before every answer,
    a third of the connections closed, the first GET of each object redirected (307): the
    job ends with every byte verified, and moto was asked for exactly what a plain run asks.
    Both transports take the same way (the same redirect rules, the same checks)."""
    version = _latest()
    flags = ("--transport", transport)
    with AwsFront(sandbox.url, seed=3, chunk_objects=0.5, close_rate=0.3, redirect_first_get=True) as front:
        _run_the_job(Cli(front.url, tmp_path / "shaped"), replica, version, flags)
    with AwsFront(sandbox.url, chunk_listings=False, chunk_errors=False, informational=False) as plain:
        _run_the_job(Cli(plain.url, tmp_path / "plain"), replica, version, flags)
    for what in ("chunked", "informational", "close", "307"):  # the front did re-frame: not a vacuous pass
        assert front.counts[what] > 0, (what, front.counts)
    assert plain.counts["chunked"] == 0
    assert sorted(front.upstream_requests) == sorted(plain.upstream_requests)


def test_a_sharded_sync_through_the_front(sandbox, replica, tmp_path):
    version = "1.0.1"
    with AwsFront(sandbox.url, seed=5, chunk_objects=1.0, close_rate=0.5, redirect_first_get=True) as front:
        cli = Cli(front.url, tmp_path / "cache")
        for k in range(2):
            cli("sync", "--version", version, "--shard", f"{k}/2")
        assert_mirror(cli.cache_dir, replica, version)
        assert cli("verify").stdout.strip().endswith("ok")
    assert front.counts["chunked"] > 0


def test_a_user_endpoint_in_the_wrong_region_stops_at_once_with_one_line(sandbox, tmp_path):
    with AwsFront(sandbox.url, wrong_region="eu-central-1") as front:
        cli = Cli(front.url, tmp_path / "cache")
        r = cli("sync", "--version", "1.0.1", expect=2)
        assert front.counts["301"] == 1  # not retried: every request would get the same answer
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert "eu-central-1" in lines[0] and "Traceback" not in r.stderr
    assert "--endpoint-url https://s3.eu-central-1.amazonaws.com" in r.stderr


def test_aws_addressing_follows_the_buckets_region_once_for_the_whole_run(sandbox, replica):
    """Without --endpoint-url the client builds AWS URLs from the dataset's region; S3's 301
    with x-amz-bucket-region moves it to the right one, once, with a warning. (The AWS host
    names are mapped onto the front: /<region>/<bucket>/<key>.)"""
    import asyncio
    import dataclasses

    from mirror.remote import Remote, RemoteSettings

    @dataclasses.dataclass(frozen=True)
    class LocalAws(RemoteSettings):
        front: str = ""

        def bucket_url(self, bucket: str) -> str:
            return f"{self.front}/{self.region}/{bucket}"

    entry = next(iter(replica.data[_latest()].values()))  # its current version on the server

    async def go(front: AwsFront):
        from mirror.model import ObjectRef

        settings = LocalAws(bucket=BUCKET, region="us-east-1", front=front.url, signed=True)
        async with Remote(settings) as remote:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                keys = await remote.list_keys("visual-behavior-ophys/manifests/")
                info = await remote.head(ObjectRef(BUCKET, entry.key))
                body = await remote.read_all(ObjectRef(BUCKET, entry.key))
            return remote.settings.region, keys, info, body, [w for w in seen if w.category is RegionWarning]

    with AwsFront(sandbox.url, regions=("us-west-2", "prefix")) as front:
        region, keys, info, body, warned = asyncio.run(go(front))
    assert region == "us-west-2"
    assert front.counts["301"] == 1 and len(warned) == 1 and "us-west-2" in str(warned[0].message)
    assert len(keys) == len(VERSIONS) and info.size == len(body) == entry.size


# --- a real forward proxy --------------------------------------------------------------------------


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class TinyProxy:
    def __init__(self, workdir: Path, *, auth: tuple[str, str] | None = None) -> None:
        self.port = _free_port()
        self.log = workdir / "tinyproxy.log"
        self.conf = workdir / "tinyproxy.conf"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 60", "LogLevel Info", f"LogFile \"{self.log}\"",
                 "MaxClients 200", "Allow 127.0.0.1"]
        if auth:
            lines.append(f"BasicAuth {auth[0]} {auth[1]}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "TinyProxy":
        exe = shutil.which("tinyproxy") or shutil.which("tinyproxy", path="/usr/bin:/usr/sbin")
        self.proc = subprocess.Popen([exe, "-d", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError("tinyproxy did not start")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def requests(self, method: str | None = None) -> list[str]:
        """What the proxy's own log says it was asked, one line per request."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        lines = [line.split("): ", 1)[1] for line in text.splitlines() if "Request (file descriptor" in line]
        return [x for x in lines if method is None or x.startswith(method + " ")]


def _need_tinyproxy() -> None:
    if not (shutil.which("tinyproxy") or shutil.which("tinyproxy", path="/usr/bin:/usr/sbin")):
        pytest.skip("tinyproxy is not installed (`make test` installs Debian's tinyproxy-bin when run as root)")


@pytest.mark.parametrize("transport", ["lean", "aiohttp"])
def test_every_request_goes_through_the_proxy_and_no_proxy_bypasses_it(sandbox, replica, tmp_path, monkeypatch,
                                                                        transport):
    _need_tinyproxy()
    flags = ("--transport", transport)
    with TinyProxy(tmp_path) as proxy, AwsFront(sandbox.url, informational=False) as front:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        _run_the_job(Cli(front.url, tmp_path / "cache"), replica, _latest(), flags)
        shards = Cli(front.url, tmp_path / "shards")
        for k in range(2):
            shards(*flags, "sync", "--version", "1.0.1", "--shard", f"{k}/2", "--verify", "all")  # HEADs too
        assert_mirror(shards.cache_dir, replica, "1.0.1")
        assert front.counts["direct"] == 0  # tinyproxy adds Via: to what it forwards
        assert front.counts["via"] > 0 and len(proxy.requests()) == front.counts["via"]
        assert {x.split()[0] for x in proxy.requests()} == {"GET", "HEAD"}
        assert all(x.split()[1].startswith(front.url + "/") for x in proxy.requests())  # the absolute form
        through = len(proxy.requests())
        monkeypatch.setenv("NO_PROXY", "localhost, 127.0.0.0/8")
        shards(*flags, "manifests", "list")
        assert len(proxy.requests()) == through and front.counts["direct"] > 0


@pytest.mark.parametrize("transport", ["lean", "aiohttp"])
def test_https_goes_through_a_connect_tunnel_and_trusts_the_sites_ca(sandbox, replica, tmp_path, monkeypatch,
                                                                     transport):
    """The endpoint behind TLS (a CA of the test's own, as a TLS-inspecting site has), reached
    only through the proxy: CONNECT tunnels, every byte verified; without the CA bundle the
    message says what to set."""
    _need_tinyproxy()
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    bundle = tmp_path / "site-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    version = "1.0.1"
    with TinyProxy(tmp_path) as proxy, FaultProxy(sandbox.url, ssl_context=server_ctx) as tls:
        monkeypatch.setenv("https_proxy", proxy.url)
        cli = Cli(tls.url, tmp_path / "cache")
        r = cli("--transport", transport, "manifests", "list", expect=3)
        assert "not trusted" in r.stderr and "AWS_CA_BUNDLE" in r.stderr and "Traceback" not in r.stderr
        monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))
        cli("--transport", transport, "sync", "--version", version, "--part-size", "64KiB")
        assert_mirror(cli.cache_dir, replica, version)
        tunnels = proxy.requests("CONNECT")
        assert tunnels and all(t.startswith(f"CONNECT 127.0.0.1:{tls.url.rsplit(':', 1)[1]} ") for t in tunnels)
        assert len(tls.peers) <= len(tunnels)  # every connection the TLS front took came through a tunnel
        assert len(tls.requests) > len(tunnels)  # kept alive: many requests per tunnel


def test_a_dead_proxy_is_named_as_the_proxy_in_one_line(sandbox, tmp_path, monkeypatch):
    port = _free_port()
    monkeypatch.setenv("HTTP_PROXY", f"127.0.0.1:{port}")  # no scheme: http://, as curl reads it
    r = Cli(sandbox.url, tmp_path / "cache")("manifests", "list", expect=3)
    first = r.stderr.strip().splitlines()[0]
    assert f"cannot reach the proxy http://127.0.0.1:{port} (from HTTP_PROXY)" in first
    assert "--no-proxy" in r.stderr and "Traceback" not in r.stderr
    # --no-proxy goes direct
    Cli(sandbox.url, tmp_path / "cache")("--no-proxy", "manifests", "list")


def test_a_proxy_that_wants_credentials(sandbox, tmp_path, monkeypatch):
    _need_tinyproxy()
    with TinyProxy(tmp_path, auth=("scientist", "s3cret")) as proxy:
        cli = Cli(sandbox.url, tmp_path / "cache")
        r = cli("--proxy", proxy.url, "manifests", "list", expect=3)
        assert "HTTP 407" in r.stderr and "USER:PASSWORD@" in r.stderr
        cli("--proxy", f"http://scientist:s3cr%65t@127.0.0.1:{proxy.port}", "manifests", "list")
        assert len(proxy.requests()) >= 2


def test_an_unusable_proxy_setting_is_bad_input(sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")  # for https URLs: not this http endpoint's
    Cli(sandbox.url, tmp_path / "cache")("manifests", "list")
    monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:1080")
    r = Cli(sandbox.url, tmp_path / "cache")("manifests", "list", expect=2)
    assert "HTTP_PROXY" in r.stderr and "only http:// proxies" in r.stderr
    r = Cli(sandbox.url, tmp_path / "cache")("--proxy", "http://x:1", "--no-proxy", "manifests", "list", expect=2)
    assert "contradict" in r.stderr


@pytest.mark.parametrize("transport", ["lean", "aiohttp"])
def test_aws_itself_through_a_tls_inspecting_proxy_in_the_wrong_region(sandbox, replica, tmp_path, monkeypatch,
                                                                        transport):
    """The cluster case, end to end: no --endpoint-url, so AWS's own names
    (visual-behavior-ophys-data.s3.REGION.amazonaws.com); the node resolves no outside name
    and reaches AWS only through HTTPS_PROXY, which inspects TLS with the site's CA; and the
    dataset file names the wrong region, so S3 answers 301 with x-amz-bucket-region. The
    whole job runs, every byte verified, and not one connection bypassed the proxy."""
    import ssl

    import trustme

    import mirror.remote.http as lean

    ca = trustme.CA()
    intercept = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("*.s3.us-west-2.amazonaws.com", "s3.us-west-2.amazonaws.com", "*.s3.us-east-1.amazonaws.com",
                  "s3.us-east-1.amazonaws.com").configure_cert(intercept)
    bundle = tmp_path / "site-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    dataset = tmp_path / "vbo-east.toml"  # the real dataset file, with the wrong region
    real = (Path(__file__).parents[1] / "configs" / "datasets" / "visual-behavior-ophys.toml").read_text()
    dataset.write_text(real.replace('region = "us-west-2"', 'region = "us-east-1"'))
    assert 'region = "us-east-1"' in dataset.read_text()

    direct: list[str] = []  # a guard: nothing may connect anywhere but 127.0.0.1 by itself
    connect = lean.HttpClient._connect

    async def guarded(self, key, proxy, ctx):
        if proxy is None and key[1] not in ("127.0.0.1", "localhost"):
            direct.append(key[1])
            raise lean.ConnectFailed(f"the test forbids a direct connection to {key[1]}")
        return await connect(self, key, proxy, ctx)

    monkeypatch.setattr(lean.HttpClient, "_connect", guarded)
    import aiohttp.connector

    resolve = aiohttp.connector.TCPConnector._resolve_host

    async def guarded_resolve(self, host, port, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            direct.append(host)
            raise OSError(f"the test forbids resolving {host}")
        return await resolve(self, host, port, *args, **kwargs)

    monkeypatch.setattr(aiohttp.connector.TCPConnector, "_resolve_host", guarded_resolve)

    version = _latest()
    with AwsFront(sandbox.url, intercept=intercept, chunk_objects=0.3, close_rate=0.2, seed=11) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))
        cli = Cli(None, tmp_path / "cache")
        r = cli("--dataset", str(dataset), "--transport", transport, "manifests", "list")
        assert "is in region us-west-2, not us-east-1" in r.stderr
        _run_the_job(cli, replica, version, ("--dataset", str(dataset), "--transport", transport))
        assert direct == []
        assert proxy.tunnels and {t.rsplit(":", 1)[1] for t in proxy.tunnels} == {"443"}
        assert all(t.endswith(".amazonaws.com:443") for t in proxy.tunnels)
        hosts = {k[1]: n for k, n in proxy.counts.items() if isinstance(k, tuple) and k[0] == "host"}
        assert hosts.get("visual-behavior-ophys-data.s3.us-west-2.amazonaws.com", 0) > 20
        # once per command that reached the network (a run keeps the region it learned)
        assert 1 <= proxy.counts["301"] <= 8
        assert proxy.counts["chunked"] > 0
