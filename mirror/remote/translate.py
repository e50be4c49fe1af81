"""Library errors → our error kinds, in one place. Nothing here matches message text:
only exception classes, HTTP status codes and S3 error codes."""

from __future__ import annotations

import asyncio
import ssl

from ..errors import (
    AccessDenied,
    EndpointUnreachable,
    ObjectChanged,
    ObjectNotFound,
    ProtocolError,
    ProxyAuthRequired,
    ProxyUnreachable,
    RemoteError,
    RequestRejected,
    MirrorError,
    ServerError,
    SlowDown,
    TransferError,
)
from . import wire as http  # the lean client's errors

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchVersion", "NoSuchBucket", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_SLOW_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "503"}


def from_status(status: int, *, what: str, code: str | None = None, proxied: str | None = None) -> RemoteError:
    if status == 407:
        return _credentials_wanted(f"{what}: the proxy{' ' + proxied if proxied else ''} asks for credentials "
                                   "(HTTP 407)")
    if status == 408 or code == "RequestTimeout":
        # The server gave up waiting for our request (RFC 9110 15.5.9; S3 says it as 400
        # RequestTimeout): sending it again is what it asks for.
        return TransferError(f"{what}: the server timed out waiting for the request (HTTP {status}"
                             f"{', ' + code if code else ''})")
    if status in (404,) or code in _NOT_FOUND_CODES:
        return ObjectNotFound(f"{what}: not found (HTTP {status}{', ' + code if code else ''})")
    if status == 403 or code in _DENIED_CODES:
        return AccessDenied(f"{what}: access denied (HTTP {status})",
                            hint="the bucket is public: drop --signed, or check your AWS credentials")
    if status == 412 or code == "PreconditionFailed":
        return ObjectChanged(f"{what}: the object changed on the server (If-Match failed)")
    if status in (429, 503) or code in _SLOW_CODES:
        return SlowDown(f"{what}: server asks to slow down (HTTP {status})")
    if status >= 500:
        # Through a proxy a 502/504 is often the proxy's own word that it could not reach the server.
        via = f" (through the proxy {proxied})" if proxied else ""
        return ServerError(f"{what}: server error HTTP {status}{' ' + code if code else ''}{via}")
    if status == 400 and code == "InvalidArgument":
        return ObjectNotFound(f"{what}: rejected by the server (HTTP 400 {code}); is the version id valid?")
    if 400 <= status < 500:
        return RequestRejected(f"{what}: rejected by the server (HTTP {status}{' ' + code if code else ''})")
    return ProtocolError(f"{what}: unexpected HTTP {status}{' ' + code if code else ''}")


def unreachable(url: str, connect_timeout: float, reason: object, proxied: str | None = None) -> EndpointUnreachable:
    via = f" through the proxy {proxied}" if proxied else ""
    cause = getattr(reason, "certificate_error", None) or getattr(reason, "__cause__", None)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return EndpointUnreachable(
            f"cannot reach {url}{via}: its TLS certificate is not trusted ({cause.verify_message or cause})",
            hint="a proxy that inspects TLS signs with its site's CA: point AWS_CA_BUNDLE (or SSL_CERT_FILE) "
                 "at that CA's bundle")
    if proxied:
        hint = ("the proxy answered but could not reach the endpoint: check --endpoint-url and the proxy, "
                "NO_PROXY (or --no-proxy) for endpoints reached directly, or use --offline")
    else:
        hint = ("check --endpoint-url / AWS_ENDPOINT_URL_S3 and your network (a cluster's compute nodes often "
                "reach the internet only through a proxy: HTTPS_PROXY or --proxy), raise --connect-timeout, "
                "or use --offline to work from what cache_dir holds")
    return EndpointUnreachable(f"cannot reach {url}{via} (connect timeout {connect_timeout:g}s): {reason}", hint=hint)


def _credentials_wanted(message: str) -> ProxyAuthRequired:
    """A 407, from a tunnel (https) or an answer (http through the proxy): one message."""
    return ProxyAuthRequired(message, hint="put them in the proxy URL: HTTPS_PROXY=http://USER:PASSWORD@HOST:PORT "
                                           "(or --proxy)")


def proxy_failed(exc: "http.ProxyFailed", what: str) -> RemoteError:
    if exc.status == 407:
        return _credentials_wanted(f"{what}: {exc} (the proxy asks for credentials)")
    if exc.status is not None:
        return ProxyUnreachable(f"{what}: {exc}",
                                hint="the proxy could not reach the endpoint or does not allow it: check "
                                     "--endpoint-url, the proxy's rules, or NO_PROXY / --no-proxy to go direct")
    return ProxyUnreachable(str(exc), hint=f"check {exc.proxy.source} (or --proxy), or --no-proxy to connect "
                                           f"directly, or use --offline to work from what cache_dir holds")


def silent(url: str, read_timeout: float, what: str) -> TransferError:
    return TransferError(
        f"{what}: no answer from {url} within the read timeout ({read_timeout:g}s)",
        hint="the server accepted the connection but sent nothing: check --endpoint-url / AWS_ENDPOINT_URL_S3, "
        "raise --read-timeout on a slow link, or use --offline to work from what cache_dir holds",
    )


def from_exception(exc: BaseException, *, what: str, url: str, connect_timeout: float,
                   read_timeout: float, proxied: str | None = None) -> MirrorError:
    """Translate a transport / botocore / OS exception. CancelledError must never get here.
    aiohttp and botocore are imported only when one of their errors is in hand: the lean
    transport's runs never load them for this."""
    assert not isinstance(exc, asyncio.CancelledError)
    if isinstance(exc, MirrorError):
        return exc
    if isinstance(exc, http.HttpError):
        if isinstance(exc, http.ProxyFailed):
            return proxy_failed(exc, what)
        if isinstance(exc, (http.ConnectFailed, http.ConnectTimeout)):
            return unreachable(url, connect_timeout, exc, proxied)
        if isinstance(exc, http.Straggler):
            return TransferError(f"{what}: asked again on another connection: {exc}")
        if isinstance(exc, http.TooSlow):
            return TransferError(f"{what}: the answer came too slowly: {exc}",
                                 hint="on a slow link, lower --min-rate (or 0 to turn the check off)")
        if isinstance(exc, http.Stalled):
            return silent(url, read_timeout, what)
        if isinstance(exc, http.BadResponse):
            return ProtocolError(f"{what}: {exc}")
        return TransferError(f"{what}: transfer broke: {exc}")
    module = type(exc).__module__ or ""
    if module.startswith(("botocore", "aiobotocore")):
        import botocore.exceptions as bex

        if isinstance(exc, bex.ClientError):
            err = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            return from_status(status, what=what, code=err.get("Code"))
        if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectTimeoutError)):
            return unreachable(url, connect_timeout, exc)
        if isinstance(exc, bex.ReadTimeoutError):
            return silent(url, read_timeout, what)
        if isinstance(exc, (bex.ConnectionClosedError, bex.ResponseStreamingError)):
            return TransferError(f"{what}: transfer broke: {type(exc).__name__}: {exc}")
        if isinstance(exc, bex.BotoCoreError):
            return TransferError(f"{what}: {type(exc).__name__}: {exc}")
    if module.startswith("aiohttp"):
        import aiohttp

        if isinstance(exc, aiohttp.ClientConnectorError):
            return unreachable(url, connect_timeout, exc, proxied)
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return unreachable(url, connect_timeout, "connect timed out")
        if isinstance(exc, aiohttp.ServerTimeoutError):
            return silent(url, read_timeout, what)
        if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                            aiohttp.ClientResponseError)):
            return TransferError(f"{what}: transfer broke: {type(exc).__name__}: {exc}")
        if isinstance(exc, aiohttp.ClientError):
            return TransferError(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return silent(url, read_timeout, what)
    if isinstance(exc, ConnectionError):
        return TransferError(f"{what}: transfer broke: {type(exc).__name__}: {exc}")
    raise exc
