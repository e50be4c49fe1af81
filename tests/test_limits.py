"""One `Limits` sizes the connection pool and the request semaphore: more requests than
connections wait for a connection (never counted as a connect timeout), and fewer requests
than connections never open more than they need. Both transports."""

from __future__ import annotations

import pytest
from faultproxy import FaultProxy
from test_sync import assert_mirror

from mirror.api import Mirror
from mirror.policy import RetryPolicy
from mirror.limits import Limits
from mirror.remote import Timeouts

FAST = RetryPolicy(attempts=4, integrity_attempts=3, base_delay=0.01, max_delay=0.05)


@pytest.mark.parametrize("transport", ["lean", "aiohttp"])
def test_many_jobs_on_two_connections_wait_for_one_instead_of_timing_out(sandbox, replica, tmp_path, transport):
    # A slow link: 64 requests queue for 2 connections far longer than the connect timeout.
    with FaultProxy(sandbox.url, rate=2_000_000) as proxy:
        m = Mirror(tmp_path / "c", endpoint_url=proxy.url, transport=transport,
                   timeouts=Timeouts(connect=0.2, read=10))
        m.load_manifest("1.0.1")
        events = []
        stats = m.sync(limits=Limits(jobs=64, connections=2, part_size=64 << 10), policy=FAST,
                       on_event=events.append)
        data_gets = proxy.gets("/visual-behavior-ophys-data/visual-behavior-ophys/")
    assert stats.failures == [] and stats.retries == 0, [e for e in events if e["event"] == "retry"][:3]
    assert len(data_gets) > 2 * 8  # the queue was real: many more requests than connections
    assert proxy.max_in_flight <= 2
    assert stats.seconds > 0.2 * 4  # requests waited well past the connect timeout
    assert_mirror(tmp_path / "c", replica, "1.0.1")


@pytest.mark.parametrize("transport", ["lean", "aiohttp"])
def test_few_jobs_on_a_large_pool_keep_to_the_jobs(sandbox, replica, tmp_path, transport):
    with FaultProxy(sandbox.url) as proxy:
        m = Mirror(tmp_path / "c", endpoint_url=proxy.url, transport=transport)
        m.load_manifest("1.0.1")
        proxy.peers.clear()
        stats = m.sync(limits=Limits(jobs=2, connections=64, part_size=64 << 10), policy=FAST)
    assert stats.failures == []
    assert proxy.max_in_flight <= 2
    assert 1 <= len(proxy.peers) <= 2  # kept alive and reused, never more than the requests in flight
    assert_mirror(tmp_path / "c", replica, "1.0.1")


def test_limits_derive_buffers_within_the_memory_budget():
    for jobs in (1, 2, 16, 64, 256):
        lim = Limits(jobs=jobs)
        assert lim.pool_size == jobs
        assert lim.buffers == lim.pool_size + lim.io_threads + lim.held_buffers
        assert 256 << 10 <= lim.receive_buffer <= 8 << 20
        assert lim.receive_buffer & (lim.receive_buffer - 1) == 0  # a power of two: aligned for direct I/O
        if lim.buffers * (256 << 10) <= lim.memory:
            assert lim.buffers * lim.receive_buffer <= lim.memory
    assert Limits(jobs=64, connections=2).pool_size == 2
    with pytest.raises(ValueError):
        Limits(part_size=10_000_000)  # not a multiple of 4 KiB
    with pytest.raises(ValueError):
        Limits(jobs=0)


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1, and a server context that presents it."""
    import datetime as dt
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = tmp_path / "cert.pem"
    key_pem = tmp_path / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_pem, key_pem)
    return cert_pem, ctx


def test_https_endpoint_with_the_ca_bundle_of_the_environment(sandbox, replica, tmp_path, monkeypatch):
    """The lean transport speaks TLS (real S3 is https) and trusts what AWS_CA_BUNDLE names,
    as botocore does; an endpoint it cannot verify is refused with a message, not fetched."""
    from mirror.errors import EndpointUnreachable

    cert_pem, server_ctx = _self_signed(tmp_path)
    with FaultProxy(sandbox.url, ssl_context=server_ctx) as proxy:
        assert proxy.url.startswith("https://")
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
        m = Mirror(tmp_path / "untrusted", endpoint_url=proxy.url)
        with pytest.raises(EndpointUnreachable) as err:
            m.load_manifest("1.0.1")
        assert "CERTIFICATE" in str(err.value).upper()
        monkeypatch.setenv("AWS_CA_BUNDLE", str(cert_pem))
        m = Mirror(tmp_path / "c", endpoint_url=proxy.url)
        m.load_manifest("1.0.1")
        stats = m.sync(limits=Limits(jobs=4, part_size=64 << 10), policy=FAST)
        assert len(proxy.gets("/visual-behavior-ophys-data/visual-behavior-ophys/")) > 20
    assert stats.failures == []
    assert_mirror(tmp_path / "c", replica, "1.0.1")
