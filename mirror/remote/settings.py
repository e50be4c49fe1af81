"""What a Remote is told: plain data, importable without loading any network code."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from ..model import ObjectRef

TRANSPORTS = ("lean", "aiohttp")
# Where an endpoint comes from when none is given, first found wins: the CLI and the API agree.
ENDPOINT_ENV = ("VBO_MIRROR_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def endpoint_from_env() -> tuple[str | None, str | None]:
    """(endpoint, the variable it came from), or (None, None)."""
    for var in ENDPOINT_ENV:
        value = os.environ.get(var)
        if value:
            return value, var
    return None, None


def check_endpoint(url: str, source: str) -> str:
    """An endpoint URL with a scheme and a host, or an InputError saying what is wrong."""
    from ..errors import InputError

    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        example = url.strip() if "://" not in url else parts.netloc or "127.0.0.1:9000"
        raise InputError(f"{source} {url!r}: the endpoint needs http:// or https:// and a host",
                         hint=f"e.g. http://{example.split('/')[0]}")
    if parts.query or parts.fragment:
        raise InputError(f"{source} {url!r}: an endpoint has no query or fragment")
    return url.strip()


@dataclass(frozen=True)
class Timeouts:
    """Every timeout is configurable: AllenSDK's fixed ones are a known pain on slow links."""

    connect: float = 10.0  # opening a connection (not waiting for a free one in the pool)
    read: float = 60.0  # without a byte of a response
    min_rate: float = 1024.0  # bytes/s a response body must keep up over `rate_window` (0: off)
    rate_window: float = 30.0
    straggler_factor: float = 8.0  # a response this many times slower than its peers' median is retried (0: off)
    straggler_window: float = 5.0


@dataclass(frozen=True)
class RemoteSettings:
    bucket: str
    region: str
    endpoint_url: str | None = None  # overrides the host; bucket and key are kept
    signed: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    transport: str = "lean"
    proxy: str | None = None  # None: HTTPS_PROXY & co. from the environment; "": none; else this proxy URL

    @property
    def base_url(self) -> str:
        """The host requests go to (for messages): the endpoint, or AWS's for the bucket."""
        if self.endpoint_url:
            return self.endpoint_url.rstrip("/")
        return self.bucket_url(self.bucket)

    def bucket_url(self, bucket: str) -> str:
        """The URL of a bucket's root, no trailing slash. A user-given endpoint gets the
        path-style form under its own host. AWS gets the virtual-hosted form the manifests use,
        except for a bucket name with dots: over HTTPS `a.b.s3...` cannot match the wildcard
        certificate `*.s3.<region>.amazonaws.com`, so that one goes path-style (as botocore)."""
        if self.endpoint_url:
            return f"{self.endpoint_url.rstrip('/')}/{bucket}"
        if "." in bucket:
            return f"https://s3.{self.region}.amazonaws.com/{bucket}"
        return f"https://{bucket}.s3.{self.region}.amazonaws.com"

    def object_url(self, ref: ObjectRef, **params: str) -> str:
        """The object's URL with its version (and any other query parameters)."""
        url = f"{self.bucket_url(ref.bucket)}/{quote(ref.key, safe='/~-._')}"
        query = {"versionId": ref.version_id} if ref.version_id else {}
        query.update(params)
        if query:
            url += "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in sorted(query.items()))
        return url
