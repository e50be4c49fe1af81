"""What the environment says about the network, read as curl reads it (proxies, NO_PROXY, the
CA bundle), AWS addressing, and how answers about the network become our error kinds."""

from __future__ import annotations

import asyncio

import pytest

from mirror.errors import Action, ProxyAuthRequired, Redirected, RequestRejected, TransferError
from mirror.model import ObjectRef
from mirror.remote.netenv import NoProxy, ProxyConfig, ProxySettingError, ca_bundle, parse_proxy
from mirror.remote.settings import RemoteSettings
from mirror.remote.translate import from_status


def test_lowercase_wins_and_each_scheme_has_its_variable():
    env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2", "HTTP_PROXY": "http://plain:3"}
    cfg = ProxyConfig.from_env(env)
    assert (cfg.select("https", "s3.amazonaws.com", 443).host, cfg.https.source) == ("lower", "https_proxy")
    assert cfg.select("http", "s3.amazonaws.com", 80).host == "plain"
    assert ProxyConfig.from_env({"HTTPS_PROXY": "http://upper:1"}).select("http", "h", 80) is None
    both = ProxyConfig.from_env({"ALL_PROXY": "http://all:4"})
    assert both.select("https", "h", 443).host == both.select("http", "h", 80).host == "all"


def test_a_proxy_url_as_curl_reads_it():
    p = parse_proxy("proxy.site.org", "HTTPS_PROXY")
    assert (p.host, p.port, p.auth, p.url) == ("proxy.site.org", 1080, None, "http://proxy.site.org:1080")
    p = parse_proxy("http://us%65r:p%40ss@10.0.0.1:3128/", "--proxy")
    assert p.auth == "Basic dXNlcjpwQHNz"  # user:p@ss
    assert "p@ss" not in p.url and p.url == "http://10.0.0.1:3128"
    for bad in ("socks5://h:1080", "https://h:443", "http://h:port", "http://:3128"):
        with pytest.raises(ProxySettingError):
            parse_proxy(bad, "HTTPS_PROXY")


@pytest.mark.parametrize("entries,host,port,bypass", [
    ("*", "anything.example", 443, True),
    ("example.com", "example.com", 443, True),
    ("example.com", "s3.example.com", 443, True),
    (".example.com", "s3.example.com", 443, True),
    (".example.com", "example.com", 443, True),
    ("example.com", "badexample.com", 443, False),
    ("10.0.0.0/8, 192.168.1.1", "10.20.30.40", 80, True),
    ("10.0.0.0/8 192.168.1.1", "192.168.1.1", 80, True),
    ("10.0.0.0/8", "11.0.0.1", 80, False),
    ("[::1]", "::1", 9000, True),
    ("::1", "::1", 9000, True),
    ("fd00::/8", "fd12::5", 443, True),
    ("internal.site:8443", "internal.site", 8443, True),
    ("internal.site:8443", "internal.site", 443, False),
    ("", "example.com", 443, False),
    ("EXAMPLE.com.", "Sub.Example.COM", 443, True),
])
def test_no_proxy(entries, host, port, bypass):
    assert NoProxy.parse(entries).bypasses(host, port) is bypass


def test_no_proxy_lowercase_wins_and_applies_to_an_explicit_proxy_too():
    cfg = ProxyConfig.from_env({"NO_PROXY": "a.org", "no_proxy": "b.org", "https_proxy": "http://p:1"})
    assert cfg.select("https", "b.org", 443) is None and cfg.select("https", "a.org", 443) is not None
    explicit = ProxyConfig.from_env({"no_proxy": "b.org", "https_proxy": "http://env:1"}, explicit="http://cli:2")
    assert explicit.select("https", "x.org", 443).host == "cli" and explicit.select("https", "b.org", 443) is None
    assert ProxyConfig.from_env({"https_proxy": "http://env:1"}, explicit="").select("https", "x.org", 443) is None


def test_the_ca_bundle_comes_from_the_first_variable_set():
    assert ca_bundle({"REQUESTS_CA_BUNDLE": "/r", "SSL_CERT_FILE": "/s"}) == ("/s", "SSL_CERT_FILE")
    assert ca_bundle({"AWS_CA_BUNDLE": "/a", "SSL_CERT_FILE": "/s"}) == ("/a", "AWS_CA_BUNDLE")
    assert ca_bundle({}) == (None, None)


def test_aws_addressing_virtual_hosted_but_dotted_buckets_path_style():
    s = RemoteSettings(bucket="visual-behavior-ophys-data", region="us-west-2")
    assert s.object_url(ObjectRef("visual-behavior-ophys-data", "p/a b.nwb", "v1")) == \
        "https://visual-behavior-ophys-data.s3.us-west-2.amazonaws.com/p/a%20b.nwb?versionId=v1"
    dotted = RemoteSettings(bucket="allen.brain.data", region="us-west-2")
    assert dotted.object_url(ObjectRef("allen.brain.data", "k", None), partNumber="1") == \
        "https://s3.us-west-2.amazonaws.com/allen.brain.data/k?partNumber=1"
    local = RemoteSettings(bucket="b.c", region="us-west-2", endpoint_url="http://[::1]:9000/")
    assert local.bucket_url("b.c") == "http://[::1]:9000/b.c"


def test_status_codes_about_the_network():
    assert from_status(408, what="GET x").retry is True and isinstance(from_status(408, what="GET x"), TransferError)
    assert from_status(400, what="GET x", code="RequestTimeout").retry is True
    e = from_status(407, what="GET x", proxied="http://p:3128 (from HTTPS_PROXY)")
    assert isinstance(e, ProxyAuthRequired) and not e.retry and e.outcome is Action.STOP_RUN
    assert "http://p:3128" in str(e)
    assert isinstance(from_status(400, what="GET x", code="InvalidRequest"), RequestRejected)
    assert "through the proxy http://p:3128" in str(from_status(502, what="GET x", proxied="http://p:3128"))


# --- redirects the client cannot follow --------------------------------------------------------------


class OneShot:
    """A server on 127.0.0.1 answering every request with the same bytes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.hits = 0

    async def __aenter__(self):
        async def serve(reader, writer):
            try:
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    self.hits += 1
                    writer.write(self.answer)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.parametrize("location,words", [
    (None, "without a Location"),
    ("ftp://elsewhere/x", "refused a redirect"),
    ("/bucket/again", "redirected again"),
])
def test_redirects_that_cannot_be_followed_stop_the_run_in_one_line(location, words):
    from mirror.remote import Remote

    head = b"HTTP/1.1 307 Temporary Redirect\r\nContent-Length: 0\r\n"
    if location:
        head += b"Location: " + location.encode() + b"\r\n"

    async def go():
        async with OneShot(head + b"\r\n") as srv:
            settings = RemoteSettings(bucket="bucket", region="us-west-2", endpoint_url=srv.url)
            async with Remote(settings) as remote:
                with pytest.raises(Redirected) as err:
                    await remote.head(ObjectRef("bucket", "k", "v"))
            return err.value, srv.hits

    err, hits = asyncio.run(go())
    assert words in str(err) and not err.retry and err.outcome is Action.STOP_RUN
    assert hits == (2 if location == "/bucket/again" else 1)


def test_an_unusable_proxy_in_the_environment_stops_only_what_would_use_it(sandbox, tmp_path, monkeypatch):
    """`all_proxy=socks5://...` set for other tools: commands that need no network, and
    endpoints NO_PROXY sends direct, are not stopped; a request that would go through it is,
    in one line naming the variable (exit 2). An explicit --proxy is checked at once."""
    from conftest import Cli

    cli = Cli(sandbox.url, tmp_path / "cache")
    cli("sync", "--version", "0.1.0", "--tables-only")
    monkeypatch.setenv("all_proxy", "socks5://127.0.0.1:1080")
    assert cli("status").exit_code == 0 and cli("--offline", "manifests", "list").exit_code == 0
    r = cli("manifests", "list", expect=2)
    assert "all_proxy" in r.stderr and "only http:// proxies" in r.stderr and "--no-proxy" in r.stderr
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    cli("manifests", "list")
    r = cli("--proxy", "socks5://x:1", "status", expect=2)
    assert "--proxy" in r.stderr


@pytest.mark.parametrize("transport", ["lean", "aiohttp"])
def test_a_ranged_answer_longer_than_its_range_never_writes_past_it(transport):
    """A proxy that re-frames (chunked) and sends more than the Content-Range: the sink gets
    the range's bytes and not one more (the rest would land on the next part's bytes)."""
    from mirror.remote import Remote

    answer = (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-3/10\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"6\r\nabcdef\r\n0\r\n\r\n")

    async def go():
        async with OneShot(answer) as srv:
            settings = RemoteSettings(bucket="b", region="us-west-2", endpoint_url=srv.url, transport=transport)
            async with Remote(settings) as remote:
                got = bytearray()

                def sink(buf, n):
                    got.extend(memoryview(buf)[:n])
                    remote.buffers.give(buf)

                await remote.get_into(ObjectRef("b", "k", "v"), sink, start=0, end=4, size=10)
                return bytes(got)

    assert asyncio.run(go()) == b"abcd"
